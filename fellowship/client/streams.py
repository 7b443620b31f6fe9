"""Event streams that reconnect by themselves: what `observe` and `talk` return.

A stream holds at most one connection (a *link*: an SSE response or a WebSocket) at a
time. When it drops, the stream opens a new one with the `seq` of the last session
event it delivered (`Last-Event-ID` on SSE, `?since=` on the WebSocket), so the server
sends exactly what was missed. Whatever arrives goes through one filter, `_accept`:

- a session event whose `seq` is at or below the last one delivered is a duplicate and
  is dropped; one that skips a number makes the stream reconnect from the last one
  (the server promises no gaps, so the replay fills the hole);
- a `history` event is always passed on, and the count starts again from its `seq`:
  the server sends one when it cannot replay (the missed events are gone), and the
  application then redraws from it;
- `pong` is the client's own business and is never passed on; an `error` that repeats
  the last `seq` is a reply to this client alone (a message it sent was refused) and is
  passed on with that `seq`;
- unknown event types are skipped (the protocol allows new ones), their `seq` counted.

The stream ends after `session_end`, when the server says the session is over, or with
an exception for a refusal that retrying cannot fix (see `_retryable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal
from urllib.parse import urlencode

import httpx
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from engine.events import ErrorEvent, Event, SessionEnd, parse_event
from fellowship.client._redact import redact
from fellowship.client.backoff import Reconnect
from fellowship.client.errors import (
    ConnectionFailed,
    FellowshipClientError,
    RateLimited,
    SendUncertain,
    ServerError,
    SessionEnded,
    StreamClosed,
    TooMany,
    Unavailable,
    error_for,
)

log = logging.getLogger("fellowship.client")

Transport = Literal["sse", "ws"]

SESSION_ENDED: Final = "session ended"
"""The close reason (WebSocket) and closing comment (SSE) of a session that is over."""
_WS_FATAL_FRAME_BYTES: Final = 64 * 1024 * 1024
"""Largest frame accepted: a `history` event carries the whole conversation."""
_WS_CLOSE_TIMEOUT: Final = 2.0
_PING: Final = '{"type": "ping"}'


# --- what a link reports besides events ----------------------------------------------------------


class _Dropped(Exception):
    """The connection is gone (or could not be made) for a reason worth another try."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class _Over(Exception):
    """The server said the session is over and this client has seen all of it."""


class _Link(ABC):
    """One live connection of a stream."""

    @property
    @abstractmethod
    def open(self) -> bool:
        """Whether the connection may still deliver events."""

    @abstractmethod
    async def receive(self) -> str:
        """The next event as JSON text; `_Dropped`, `_Over` or a typed error when it ends."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection (never raises)."""


Opener = Callable[[int | None], Awaitable[tuple[_Link, list[str]]]]
"""Opens a link resuming after a seq (None: from the start), with the events it brought."""


# --- Server-Sent Events ---------------------------------------------------------------------------


class _SseLink(_Link):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._lines = response.aiter_lines()
        self._closing_reason: str | None = None
        self._first = True

    @property
    def open(self) -> bool:
        return not self._response.is_closed

    async def receive(self) -> str:
        data: list[str] = []
        try:
            async for line in self._lines:
                if line == "":
                    if data:
                        return self._frame("\n".join(data))
                    continue
                if line.startswith(":"):
                    comment = line[1:].strip()
                    if comment.startswith("closed:"):
                        self._closing_reason = comment.removeprefix("closed:").strip()
                    continue
                field, _, value = line.partition(":")
                if field == "data":
                    data.append(value.removeprefix(" "))
                # `id` and `event` repeat the JSON's `seq` and `type`: nothing to keep.
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _Dropped(_describe(exc)) from None
        if self._closing_reason == SESSION_ENDED:
            raise _Over
        raise _Dropped(f"the stream ended ({self._closing_reason or 'no reason given'})")

    def _frame(self, text: str) -> str:
        first, self._first = self._first, False
        if first:
            # A stream the server could not join answers 200 with one `error` event (seq 0).
            data = _peek(text)
            if data.get("type") == "error" and data.get("seq") == 0:
                raise error_for(data)
        return text

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._response.aclose()


def sse_opener(
    http: httpx.AsyncClient,
    path: str,
    *,
    name: str | None,
    policy: Reconnect,
    read_timeout: float | None,
) -> Opener:
    """Opens `GET path` (the stream route) resuming with `Last-Event-ID`."""

    async def open_sse(since: int | None) -> tuple[_Link, list[str]]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if since is not None:
            headers["Last-Event-ID"] = str(since)
        request = http.build_request(
            "GET",
            path,
            headers=headers,
            params={"name": name} if name else None,
            timeout=httpx.Timeout(policy.join_timeout, read=read_timeout),
        )
        try:
            response = await http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _Dropped(_describe(exc)) from None
        if response.status_code == 204:  # ended, and this client saw its last event
            await response.aclose()
            raise _Over
        if response.status_code != 200:
            try:
                body = _peek((await response.aread()).decode("utf-8", "replace"))
            except httpx.HTTPError:
                body = {}
            finally:
                await response.aclose()
            raise error_for(
                body,
                status=response.status_code,
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        return _SseLink(response), []

    return open_sse


# --- WebSocket ------------------------------------------------------------------------------------


class _WsLink(_Link):
    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    @property
    def open(self) -> bool:
        return self._ws.state is State.OPEN

    async def receive(self) -> str:
        try:
            raw = await self._ws.recv()
        except ConnectionClosed as closed:
            raise _ending(closed) from None
        return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")

    async def send(self, text: str) -> bool:
        """Send one frame; False (nothing written) when the connection is not open."""
        # Checked right before: `send` writes at once when the state is OPEN on entry, so
        # a False here means the frame went nowhere and may be sent on the next link.
        if self._ws.state is not State.OPEN:
            return False
        try:
            await self._ws.send(text)
        except ConnectionClosed:
            raise SendUncertain(
                "the connection dropped while the message was being written; it was not "
                "sent again (a talker_message event shows it if it arrived)"
            ) from None
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()


def ws_opener(
    url: str,
    params: dict[str, str],
    *,
    policy: Reconnect,
    ping_interval: float | None,
) -> Opener:
    """Opens the connect route, resuming with `?since=`, and waits until it is joined.

    The server accepts every handshake and refuses afterwards (an `error` event with
    seq 0, then a close code), so a connection counts as joined only once it answers
    a `ping`: the server reads frames only from members it let in.
    """

    async def open_ws(since: int | None) -> tuple[_Link, list[str]]:
        query = dict(params)
        if since is not None:
            query["since"] = str(since)
        ws: ClientConnection | None = None
        frames: list[str] = []
        refusal: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(policy.join_timeout):
                ws = await connect(
                    f"{url}?{urlencode(query)}",
                    max_size=_WS_FATAL_FRAME_BYTES,
                    open_timeout=None,  # bounded by join_timeout
                    ping_interval=ping_interval,
                    ping_timeout=ping_interval,
                    close_timeout=_WS_CLOSE_TIMEOUT,
                )
                with contextlib.suppress(ConnectionClosed):  # a refusal may close at once
                    await ws.send(_PING)
                while True:
                    raw = await ws.recv()
                    text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
                    data = _peek(text)
                    if data.get("type") == "pong":
                        return _WsLink(ws), frames
                    if not frames and data.get("type") == "error" and data.get("seq") == 0:
                        refusal = data  # the close code follows
                        continue
                    frames.append(text)
        except ConnectionClosed as closed:
            if refusal is not None:
                raise error_for(refusal, close_code=_close_code(closed)) from None
            if frames and ws is not None:
                # Closed before the pong (an ended session sends its history and closes):
                # the events count, and reading on says how it ended.
                return _WsLink(ws), frames
            raise _ending(closed) from None
        except TimeoutError:
            _abort(ws)
            raise _Dropped("the connection was not accepted in time") from None
        except InvalidStatus as exc:  # not the server's WebSocket route (a proxy, a wrong path)
            raise error_for(None, status=exc.response.status_code) from None
        except (OSError, InvalidHandshake) as exc:
            _abort(ws)
            raise _Dropped(_describe(exc)) from None
        except BaseException:
            _abort(ws)
            raise

    return open_ws


def _abort(ws: ClientConnection | None) -> None:
    if ws is not None:
        ws.transport.abort()


def _close_code(closed: ConnectionClosed) -> int:
    return closed.rcvd.code if closed.rcvd is not None else 1006


def _ending(closed: ConnectionClosed) -> Exception:
    """What a WebSocket close means for the stream (see the close codes in docs/api.md)."""
    code = _close_code(closed)
    reason = closed.rcvd.reason if closed.rcvd is not None else ""
    if code == 1000 and reason == SESSION_ENDED:
        return _Over()
    if code in (4000, 4003, 4004, 4009, 4029, 1011, 1013):
        return error_for({"error": reason or f"closed with code {code}"}, close_code=code)
    # 1001 shutting down, 4008 too slow, 1006 lost, 1000 for another reason: come back.
    return _Dropped(f"closed with code {code}" + (f" ({reason})" if reason else ""))


# --- the stream -----------------------------------------------------------------------------------


class EventStream:
    """An async iterator of a session's events that reconnects by itself.

    Yields the server's own event models (`engine.events`): first `history`, then every
    session event once, in `seq` order, across any number of reconnects; a later
    `history` means the server could not replay what was missed, and the application
    should redraw from it. Iteration ends after `session_end` (or at once when the
    session was already over). Use it with `async with` or call `aclose()` to drop the
    connection early.
    """

    def __init__(self, opener: Opener, policy: Reconnect, *, since: int | None = None) -> None:
        self._open = opener
        self._policy = policy
        self._last_seq = since
        self._ready: deque[Event] = deque()
        self._link: _Link | None = None
        self._stale: list[_Link] = []
        self._lock = asyncio.Lock()
        self._done = False
        self._error: FellowshipClientError | None = None  # raised once by the iterator
        self._failure: FellowshipClientError | None = None  # why it stopped, for `send`
        self._closed_by_app = False
        self._joined_once = False
        self._attempt = 0
        self._failing_since: float | None = None
        self._last_failure: FellowshipClientError | None = None
        self._last_cause = ""
        self._gap_at: int | None = None
        self._rng = random.Random()
        self.reconnects = 0
        """How many times the stream joined again after its first connection."""

    @property
    def last_seq(self) -> int | None:
        """The `seq` of the last session event delivered (what a reconnect resumes after)."""
        return self._last_seq

    @property
    def connected(self) -> bool:
        """Whether a connection is open right now (False while reconnecting)."""
        return self._link is not None and self._link.open

    @property
    def finished(self) -> bool:
        """Whether the stream will deliver nothing more."""
        return self._done and not self._ready

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._done:
                await self._close_links()
                error, self._error = self._error, None
                if error is not None:
                    raise error
                raise StopAsyncIteration
            link = await self._connected()
            if link is None:
                continue
            try:
                raw = await link.receive()
            except _Dropped as drop:
                self._lost(link, drop.cause)
            except _Over:
                self._finish()
            except FellowshipClientError as exc:
                self._lost(link, str(exc))
                if not self._retryable(exc):
                    self._fail(exc)
            else:
                self._accept(raw, link)

    async def aclose(self) -> None:
        """Close the connection; the stream delivers nothing more."""
        self._closed_by_app = True
        self._ready.clear()
        self._finish()
        await self._close_links()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- connecting ----------

    async def _connected(self, *, to_send: bool = False) -> _Link | None:
        """The current link, joining (again) first if needed; None once the stream is done.

        A reader keeps a link that has closed until it has read what is left on it and
        how it ended; a sender needs an open one.
        """
        async with self._lock:
            while not self._done:
                if self._link is not None and (self._link.open or not to_send):
                    return self._link
                if self._link is not None:
                    self._lost(self._link, "the connection closed")
                await self._close_stale()
                await self._wait_before_attempt()
                if self._done:
                    break
                try:
                    link, frames = await self._open(self._last_seq)
                except _Dropped as drop:
                    self._failed(drop.cause, None)
                    continue
                except _Over:
                    self._finish()
                    break
                except FellowshipClientError as exc:
                    if not self._retryable(exc):
                        self._fail(exc)
                        break
                    self._failed(str(exc), exc)
                    continue
                if self._done:  # closed by the application while joining
                    await link.close()
                    break
                if self._joined_once:
                    self.reconnects += 1
                    log.info("reconnected after seq %s", self._last_seq)
                self._link, self._joined_once = link, True
                self._attempt, self._failing_since, self._last_failure = 0, None, None
                for raw in frames:
                    self._accept(raw, link)
            return None

    async def _wait_before_attempt(self) -> None:
        policy = self._policy
        if (
            self._failing_since is not None
            and policy.give_up_after is not None
            and time.monotonic() - self._failing_since >= policy.give_up_after
        ):
            self._fail(
                self._last_failure or ConnectionFailed(f"gave up reconnecting: {self._last_cause}")
            )
            return
        delay = policy.delay(self._attempt, self._rng)
        if isinstance(self._last_failure, RateLimited) and self._last_failure.retry_after:
            delay = max(delay, self._last_failure.retry_after)
        if delay > 0:
            await asyncio.sleep(delay)

    def _failed(self, cause: str, error: FellowshipClientError | None) -> None:
        """An attempt to join failed; the next one waits longer."""
        self._attempt += 1
        self._last_cause, self._last_failure = redact(cause), error
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        log.info("could not join (attempt %d): %s", self._attempt, self._last_cause)

    def _retryable(self, exc: FellowshipClientError) -> bool:
        """Whether trying again may help: the server's trouble, or a seat not yet freed."""
        if isinstance(exc, Unavailable | ServerError | RateLimited):
            return True
        if isinstance(exc, TooMany) and (exc.code == "too_many_talkers" or exc.close_code == 4009):
            # On a reconnect the seat may still be held by our own dead connection.
            since = self._failing_since or time.monotonic()
            return self._joined_once and time.monotonic() - since < self._policy.seat_wait
        return False

    def _lost(self, link: _Link, cause: str) -> None:
        """`link` is gone (or abandoned); the next read joins again right away."""
        if link is self._link:
            self._link = None
            self._attempt = 0
            self._stale.append(link)
            if not self._done:
                log.info("connection lost: %s", redact(cause))

    def _finish(self) -> None:
        self._done = True
        if self._link is not None:
            self._stale.append(self._link)
            self._link = None

    def _fail(self, exc: FellowshipClientError) -> None:
        if not self._done:
            self._error = self._failure = exc
        self._finish()

    async def _close_stale(self) -> None:
        stale, self._stale = self._stale, []
        for link in stale:
            await link.close()

    async def _close_links(self) -> None:
        if self._link is not None:
            self._stale.append(self._link)
            self._link = None
        await self._close_stale()

    # --- the filter ----------

    def _accept(self, raw: str, link: _Link) -> None:
        """Pass on what the application should see of one received event (module docs)."""
        if self._done:
            return
        data = _peek(raw)
        kind, seq = data.get("type"), data.get("seq")
        if not isinstance(kind, str) or not isinstance(seq, int) or kind == "pong":
            return
        if kind == "history":
            self._last_seq = seq
            self._deliver(raw)
            return
        last = self._last_seq
        if last is not None and seq <= last:
            if kind == "error":
                self._deliver(raw, seq=last)  # a reply to this client alone
            return  # else: already delivered
        if last is not None and seq > last + 1 and self._gap_at != last:
            # Never pass on a hole: ask again from the last seq. Should the replay show
            # the same jump, it is what the server has and it is passed on.
            self._gap_at = last
            self._lost(link, f"events {last + 1}..{seq - 1} missing")
            return
        self._last_seq = seq
        event = self._deliver(raw)
        if isinstance(event, SessionEnd):
            self._finish()

    def _deliver(self, raw: str, *, seq: int | None = None) -> Event | None:
        try:
            event = parse_event(raw)
        except ValidationError:
            # An event type or shape this version does not know: skipped, as the protocol asks.
            log.debug("skipped an event this client does not know")
            return None
        if seq is not None and isinstance(event, ErrorEvent):
            event = event.model_copy(update={"seq": seq})
        self._ready.append(event)
        return event


class Talk(EventStream):
    """A talker's connection: the session's events as an async iterator, and `send`.

    `send` writes a message at once when connected. While the connection is down it
    waits for the stream to join again and sends it then, in call order: each message
    goes out exactly once or raises. It raises `SendUncertain` when the connection dropped
    in the middle of writing (it is not sent again), the stream's error when the stream
    failed, and `SessionEnded` once the session is over. Sending does not need anyone
    iterating: it joins by itself.

    The server refuses a message it cannot take (empty, too long) with an `error` event
    to this talker alone, which the iterator passes on.
    """

    def __init__(self, opener: Opener, policy: Reconnect, *, since: int | None = None) -> None:
        super().__init__(opener, policy, since=since)
        self._send_lock = asyncio.Lock()

    async def send(self, text: str) -> None:
        """Send `text` as this talker's message (see the class for what happens on a drop)."""
        frame = json.dumps({"type": "user_message", "content": text})
        async with self._send_lock:
            while True:
                link = await self._connected(to_send=True)
                if link is None:
                    raise self._why_done()
                assert isinstance(link, _WsLink)
                if await link.send(frame):
                    return
                self._lost(link, "the connection closed")

    async def ping(self) -> None:
        """Send a `ping` frame (the server's `pong` is not passed on); mostly for tests."""
        link = await self._connected(to_send=True)
        if isinstance(link, _WsLink):
            await link.send(_PING)

    def _why_done(self) -> FellowshipClientError:
        if self._closed_by_app:
            return StreamClosed("this talk was closed")
        if self._failure is not None:
            return self._failure
        return SessionEnded("the session has ended", code="session_ended")

    async def __aenter__(self) -> Talk:
        return self


# --- helpers --------------------------------------------------------------------------------------


def _peek(text: str) -> dict[str, Any]:
    """The JSON object in `text`, or {} when it is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


__all__ = ["EventStream", "Talk", "Transport", "sse_opener", "ws_opener"]
