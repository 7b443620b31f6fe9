"""The Server-Sent Events transport: `GET /v1/session/{token}/stream` (observe only).

Every session event becomes one SSE frame — `id: <seq>`, `event: <type>`, `data: <the
event as JSON>` — so a browser's EventSource resumes by itself: on reconnect it sends
`Last-Event-ID` and gets exactly the missed events (or a fresh `history`). A comment
line is sent every SSE_KEEPALIVE_SECONDS so proxies keep the stream open. The stream
ends after `session_end`, on server shutdown, or when the client fell too far behind;
a final comment says why.

A reconnect to a session that has ended, from a client that already saw its last
event, is answered 204: that is how SSE tells EventSource to stop reconnecting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from quart import Blueprint, Response, request
from quart_schema import document_headers, document_querystring, tag

from engine.errors import FellowshipError
from engine.events import BaseEvent
from engine.hub import Frame
from engine.manager import Opened, SessionManager
from server.api_models import StreamHeaders, StreamQuery
from server.conversions import parse_params
from server.errors import error_event
from server.openapi import document_errors, document_raw_response, reference
from server.state import current_state

blueprint = Blueprint("sse", __name__)

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}
# Comment lines stand alone, with no blank line after them: a blank line ends an event,
# and some client libraries then report an empty one.
KEEPALIVE = b": keep-alive\n"

STREAM_HELP = (
    "The event stream. Read it with an SSE client (a browser's EventSource, httpx-sse, "
    "...): every frame has `id: <seq>`, `event: <type>` and `data: <the event as one line "
    "of JSON>`, the first being `history` (or the missed events); the schema describes one "
    "frame. Lines starting with `:` are keep-alive comments, and a last `: closed: <reason>` "
    "comment ends the stream."
)


@blueprint.get("/v1/session/<token:token>/stream")
@tag(["streams"])
@document_querystring(StreamQuery)
@document_headers(StreamHeaders)
@document_raw_response(
    200, STREAM_HELP, {"text/event-stream": {"schema": reference("ServerSentEvent")}}
)
@document_raw_response(204, "The session has ended and this client has seen every event.")
@document_errors(400, 404)
async def stream(token: str) -> Response:
    """Observe a session as Server-Sent Events.

    Read-only; either token. Answers `text/event-stream`. Every frame carries
    `id: <seq>`, `event: <type>` and `data: <event JSON>` (see docs/events.md); the
    first is `history` (the conversation so far), or the events missed since the
    `Last-Event-ID` header / `?since=` value when they are still buffered. Keep-alive
    comments arrive every SSE_KEEPALIVE_SECONDS. The stream ends after `session_end`
    (close your EventSource then), on server shutdown, or when the client falls too far
    behind (reconnect: EventSource does it with `Last-Event-ID`). 204 when the session
    has ended and the client has already seen its last event. 400 when `since`,
    `Last-Event-ID` or `name` is not what this page says.
    """
    state = current_state()
    state.refuse_if_closing()
    manager = state.manager
    query = parse_params(StreamQuery, dict(request.args.items()))
    headers = parse_params(
        StreamHeaders,
        {"Last-Event-ID": request.headers.get("Last-Event-ID")},
        empty_is_absent=False,
    )
    # Checked before the stream starts, so that a bad name is a 400, not an event in a 200.
    manager.display_name(query.name)
    since = headers.last_event_id if headers.last_event_id is not None else query.since
    handle = await manager.find(token)
    if manager.seen_to_the_end(handle, since):
        return Response("", status=204)
    response = Response(
        _frames(manager, handle, query.name, since, state.settings.sse_keepalive_seconds),
        status=200,
        content_type="text/event-stream",
        headers=SSE_HEADERS,
    )
    response.timeout = None  # a stream lasts as long as the session
    return response


def encode_event(event: BaseEvent) -> bytes:
    """A one-client event (not in the session's stream) as an SSE frame."""
    return encode_frame(Frame(event.seq, event.type, event.model_dump_json()))


def encode_frame(frame: Frame) -> bytes:
    """One event as an SSE frame (the JSON is one line: newlines inside it are escaped)."""
    return f"id: {frame.seq}\nevent: {frame.type}\ndata: {frame.data}\n\n".encode()


async def _frames(
    manager: SessionManager,
    handle: Opened,
    name: str | None,
    since: int | None,
    keepalive: float,
) -> AsyncIterator[bytes]:
    # The member joins when the body starts streaming, not before: a client that went
    # away before then leaves nothing registered behind.
    try:
        member = await manager.join(handle, "observer", name, since)
    except FellowshipError as exc:
        yield encode_event(error_event(exc, seq=0))
        return
    subscription = member.subscription
    try:
        while True:
            # Whatever is queued goes out as one chunk: one write for a burst of events
            # rather than one per event, which is what thousands of streams cost most.
            frames = subscription.take()
            if frames:
                yield b"".join(encode_frame(frame) for frame in frames)
                continue
            if subscription.closed:
                break
            try:
                # Cancelling this wait loses nothing: frames stay queued until taken.
                async with asyncio.timeout(keepalive):
                    await subscription.wait()
            except TimeoutError:
                yield KEEPALIVE
        yield f": closed: {subscription.close_reason or 'stream ended'}\n".encode()
    finally:
        manager.disconnect(handle, member)
