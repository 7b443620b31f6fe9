"""The WebSocket transport: `WS /v1/session/{token}/connect`.

A connection is accepted first and refused afterwards, if it must be, with an `error`
event and a close code (see `server.errors`), because a browser's WebSocket can read a
close code and reason but never the status of a refused handshake.

Once connected, two tasks run side by side until either ends:

- the *sender* copies the member's subscription (history or replay first, then live
  frames) to the socket. It only ever waits on this member's own queue and socket, so
  a slow client never holds up the session: the engine's bounded queue drops a member
  that falls too far behind, and the sender then closes with 4008.
- the *receiver* reads client frames — `user_message` (talkers) and `ping` — and hands
  messages to the engine. A bad frame gets an `error` event for this client only; the
  connection goes on.

Replies to one client (`pong`, `error`) share a per-connection lock with the sender so
frames never interleave; they repeat the `seq` of the last session event sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError
from quart import Blueprint, websocket
from quart_schema import document_querystring, tag

from engine.errors import BadFrame, FellowshipError, InternalError, InvalidJson, UnknownFrameType
from engine.events import Pong
from engine.input_text import has_lone_surrogate
from engine.manager import Opened, SessionManager
from engine.session import Member
from server.api_models import ConnectQuery, PingFrame, UserMessageFrame, client_frame_adapter
from server.conversions import parse_params
from server.errors import (
    WS_INTERNAL,
    error_event,
    ws_close_code,
    ws_close_for_reason,
    ws_reason,
)
from server.state import current_state

log = logging.getLogger("fellowship.ws")

blueprint = Blueprint("websocket", __name__)

WS_CLOSE_TIMEOUT = 2.0
"""Seconds to wait for a client's own close frame after ours (see `_close`)."""


@blueprint.websocket("/v1/session/<token:token>/connect")
@tag(["streams"])
@document_querystring(ConnectQuery)
async def connect(token: str) -> None:
    """Join a session over WebSocket (talker or observer).

    A WebSocket endpoint (`ws://` or `wss://`), not an HTTP operation: open it with a
    WebSocket client. A plain HTTP request here answers 400. `role=talker` needs the
    full token and a `name`; `role=observer` (the default) works with either token.
    `since=<seq>` replays the events missed since that seq. The handshake is accepted
    whatever the query says; a bad value is refused afterwards (4000), because a
    browser can read a close code but not the status of a refused handshake.

    Server to client: JSON text frames, one event each (schema: the `Event` component).
    The first is `history` (or the replayed events), then every live event in `seq`
    order, with no gap and no duplicate.

    Client to server: `{"type": "user_message", "content": "..."}` (talkers) and
    `{"type": "ping"}` (answered by `pong`). A bad frame (not JSON, unknown type, too
    long, empty, an observer talking) gets an `error` event for this client only; the
    connection goes on.

    Refusals and endings come as an `error` event (refusals) and a close code:
    1000 session ended, 1001 server shutting down, 1011 internal error, 1013 try again
    later, 4000 bad request, 4003 forbidden (observer token as talker, autonomous
    session), 4004 unknown token, 4008 too slow (reconnect with `since`), 4009 no talker
    seat left, 4029 rate limited.
    """
    state = current_state()
    manager = state.manager
    await websocket.accept()
    try:
        state.refuse_if_closing()
        state.limiter.check(websocket.remote_addr or "-")
        query = parse_params(ConnectQuery, dict(websocket.args.items()))
        handle = await manager.find(token)
        member = await manager.join(handle, query.role, query.name, query.since)
    except FellowshipError as exc:
        await _refuse(exc)
        return
    await Connection(manager, handle, member, since=query.since).run()


async def _refuse(exc: FellowshipError) -> None:
    """Tell the client why in an `error` event, then close with the matching code."""
    with contextlib.suppress(Exception):
        await websocket.send(error_event(exc, seq=0).model_dump_json())
    await _close(ws_close_code(exc), ws_reason(exc.message))


async def _close(code: int, reason: str) -> None:
    """Send the close frame, then wait (at most `WS_CLOSE_TIMEOUT`) for the client's.

    Hypercorn drops the TCP connection as soon as the handler returns. A client whose
    own close frame arrives after that gets a reset, and some (Node's and Chromium's
    WebSocket) then lose the frames still unread and report 1006 instead of our code.
    Quart cancels this handler the moment the client's close frame arrives, which ends
    the wait early; the timeout only bounds a client that never answers.
    """
    with contextlib.suppress(Exception):
        await websocket.close(code, reason)
    await asyncio.sleep(WS_CLOSE_TIMEOUT)


class Connection:
    """One connected member: a sender and a receiver task over one socket."""

    def __init__(
        self, manager: SessionManager, handle: Opened, member: Member, *, since: int | None
    ) -> None:
        self.manager = manager
        self.handle = handle
        self.member = member
        # Replies to this client alone (`pong`, `error`) repeat the last seq it has; on a
        # reconnect that is the `since` it came back with until a new event arrives.
        self.last_seq = since or 0
        self._send_lock = asyncio.Lock()

    async def run(self) -> None:
        """Serve the member until the stream ends or the client goes away."""
        sender = asyncio.create_task(self._send_events(), name="ws-send")
        receiver = asyncio.create_task(self._receive_frames(), name="ws-receive")
        closing: tuple[int, str] | None = None  # None: the client went away first
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            failed = [t for t in done if not t.cancelled() and t.exception() is not None]
            if failed:
                exc = failed[0].exception()
                log.error(
                    "session %s: websocket connection failed: %r",
                    self.handle.session_id, exc, exc_info=exc,
                )  # fmt: skip
                internal = InternalError("internal error")
                with contextlib.suppress(Exception):
                    await self._send_to_client(error_event(internal, seq=self.last_seq))
                closing = (WS_INTERNAL, "internal error")
            elif sender in done:
                reason = self.member.subscription.close_reason
                closing = (ws_close_for_reason(reason), ws_reason(reason or ""))
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            # Before closing: a talker's seat is free the moment its stream ends.
            self.manager.disconnect(self.handle, self.member)
        if closing is not None:
            await _close(*closing)

    async def _send_events(self) -> None:
        # Quart's `websocket.send` yields to the event loop before every frame. A member
        # with a backlog would then get one frame per pass of the loop while a burst of
        # arrivals (each announced to everyone) adds many, until its bounded queue
        # overflows and it is dropped as too slow. The socket is accepted and the queue
        # is bounded, so the backlog goes out in one go; waiting on the empty queue is
        # where this task yields.
        send = websocket._send
        async for frame in self.member.subscription:
            async with self._send_lock:
                await send(frame.data)
            self.last_seq = frame.seq

    async def _send_to_client(self, event: BaseModel) -> None:
        async with self._send_lock:
            await websocket.send(event.model_dump_json())

    async def _receive_frames(self) -> None:
        while True:
            raw = await websocket.receive()
            try:
                await self._handle(raw)
            except FellowshipError as exc:
                await self._send_to_client(error_event(exc, seq=self.last_seq))

    async def _handle(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            raise BadFrame("binary frames are not supported; send JSON text")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # deep nesting overflows the parser
            raise InvalidJson("the frame is not valid JSON") from None
        frame = _parse_frame(data)
        if isinstance(frame, PingFrame):
            await self._send_to_client(Pong(seq=self.last_seq, ts=datetime.now(UTC)))
        else:
            await self.manager.post(self.handle, self.member, frame.content)


def _parse_frame(data: object) -> UserMessageFrame | PingFrame:
    """A client frame, or `BadRequest` saying what is wrong with it."""
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise BadFrame('a frame is a JSON object with a "type": "user_message" or "ping"')
    kind = data["type"]
    if kind not in ("user_message", "ping"):
        raise UnknownFrameType(f"unknown frame type {kind[:40]!r}; expected user_message or ping")
    try:
        frame = client_frame_adapter.validate_python(data)
    except ValidationError:
        raise BadFrame('a user_message needs a text "content"') from None
    if isinstance(frame, UserMessageFrame) and has_lone_surrogate(frame.content):
        raise InvalidJson(
            "the frame is not valid JSON text: it escapes a lone surrogate (\\ud800 to \\udfff)"
        )
    return frame
