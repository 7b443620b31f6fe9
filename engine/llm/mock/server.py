"""The mock backend's HTTP server, on plain asyncio streams and h11 (no framework).

Routes: `GET /v1/models`, `GET /health`, `POST /v1/chat/completions` (the `/v1` prefix
is optional). Connections are kept alive between requests. Nothing sleeps unless a
latency is configured, so on loopback it answers thousands of requests per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from itertools import cycle
from typing import Any, Final

import h11
from pydantic import ValidationError

from engine.llm.mock.models import Fault, FaultRate, MockReply, RecordedRequest
from engine.llm.mock.replies import (
    STRUCTURED_KINDS,
    ReplyBook,
    ReplyPlan,
    ReplyStyle,
    tokenize,
    word_count,
)
from engine.llm.types import ToolCall, Usage

logger = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_MODEL: Final = "mock"
"""Model name reported when the request names none."""
DEFAULT_RETRY_AFTER: Final = "1"
"""Retry-After (seconds) sent with the `http_429` fault unless a reply sets its own."""
READ_CHUNK: Final = 65536
TOOL_ARGUMENT_CHUNK: Final = 8
"""Characters per streamed tool-argument fragment."""

Handler = Callable[[RecordedRequest], MockReply | Awaitable[MockReply | None] | None]
"""Decides a reply per request; returning None means the default behaviour."""

_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_MODELS_PATHS = ("/v1/models", "/models")
_HEALTH_PATHS = ("/health", "/v1/health")


class _BadRequest(Exception):
    """The request body is not a usable chat-completions request."""


class MockLLM:
    """An OpenAI-compatible backend for tests, demos and benchmarks.

    Use as `async with MockLLM(**options) as mock:`; point a client at `mock.base_url`.
    Every chat request is parsed and kept in `mock.requests` (unless `record=False`).
    Answers come, in order of precedence, from the FIFO script (`enqueue`), the
    handler (`set_handler`), or the default behaviour documented in
    `engine.llm.mock.replies`; faults set with `set_faults` strike at their rate
    (seeded RNG) on replies that do not name their own fault. `structured_output`
    names the kinds of JSON-schema request it honours (`json_schema`, `json_object`,
    `format`); the others are ignored like an older server would.
    """

    def __init__(
        self,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        model: str = DEFAULT_MODEL,
        first_token_ms: float = 0.0,
        token_ms: float = 0.0,
        latency_ms: float = 0.0,
        faults: Iterable[str | FaultRate] = (),
        seed: int = 0,
        retry_after: str = DEFAULT_RETRY_AFTER,
        record: bool = True,
        structured_output: Iterable[str] = STRUCTURED_KINDS,
        replies: ReplyStyle = "echo",
    ) -> None:
        self.host = host
        self.port = port
        self.model = model
        self.first_token_ms = first_token_ms
        self.token_ms = token_ms
        self.latency_ms = latency_ms
        self.record = record
        self.requests: list[RecordedRequest] = []
        self._seed = seed
        self._retry_after = retry_after
        self._initial_faults = _fault_list(faults)
        self._initial_structured = self._structured = frozenset(structured_output)
        self._replies: ReplyStyle = replies
        unknown = self._structured - STRUCTURED_KINDS
        if unknown:
            raise ValueError(f"unknown structured output kinds: {sorted(unknown)}")
        self._book = ReplyBook(
            seed=seed,
            faults=self._initial_faults,
            retry_after=retry_after,
            structured_output=self._structured,
            style=replies,
        )
        self._script: deque[MockReply] = deque()
        self._handler: Handler | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._count = 0

    # --- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> MockLLM:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind and start accepting connections (port 0 picks a free port)."""
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is None:
            return
        self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    @property
    def base_url(self) -> str:
        """The URL to give a client, ending in `/v1`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def open_connections(self) -> int:
        """Client connections currently open."""
        return len(self._connections)

    @property
    def active_responses(self) -> int:
        """Chat requests currently being answered."""
        return self._active

    async def wait_idle(self) -> None:
        """Return once no chat request is being answered."""
        await self._idle.wait()

    # --- scripting ---------------------------------------------------------------------

    def enqueue(self, *replies: MockReply) -> None:
        """Queue replies; each chat request takes the oldest one."""
        self._script.extend(replies)

    def set_handler(self, handler: Handler | None) -> None:
        """Decide replies with `handler(request)` (sync or async) when the script is empty."""
        self._handler = handler

    def set_structured_output(self, kinds: Iterable[str]) -> None:
        """Change which kinds of structured-output request are honoured (see the class)."""
        self._structured = frozenset(kinds)
        self._book.structured_output = self._structured

    def set_faults(self, faults: Iterable[str | FaultRate]) -> None:
        """Replace the random faults, each `MODE` or `MODE:RATE` (rate defaults to 1)."""
        self._book.faults = _fault_list(faults)

    def reset(self) -> None:
        """Forget requests, script, handler and speaker cycles; restore the initial faults
        and structured-output kinds, and reseed the RNG."""
        self._structured = self._initial_structured
        self.requests.clear()
        self._script.clear()
        self._handler = None
        self._count = 0
        self._book = ReplyBook(
            seed=self._seed,
            faults=list(self._initial_faults),
            retry_after=self._retry_after,
            structured_output=self._structured,
            style=self._replies,
        )

    # --- connections ---------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        conn = h11.Connection(h11.SERVER)
        out = _Output(conn, writer)
        try:
            while True:
                received = await _read_request(conn, reader)
                if received is None:
                    break
                keep_open = await self._dispatch(out, *received)
                await out.flush()
                if not keep_open or conn.our_state is not h11.DONE:
                    break
                if conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass  # the client went away or spoke nonsense: just close
        except asyncio.CancelledError:
            # stop() cancels connection tasks; ending quietly keeps asyncio's stream
            # callback from logging the cancellation as an error.
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _dispatch(self, out: _Output, request: h11.Request, body: bytes) -> bool:
        method = request.method.decode("ascii", errors="replace").upper()
        path = request.target.decode("ascii", errors="replace").split("?", 1)[0]
        if method == "POST" and path in _CHAT_PATHS:
            self._active += 1
            self._idle.clear()
            try:
                return await self._chat(out, method, path, request, body)
            finally:
                self._active -= 1
                if self._active == 0:
                    self._idle.set()
        if method == "GET" and path in _MODELS_PATHS:
            listing = {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "owned_by": "fellowship-mock"}],
            }
            out.json(200, listing)
        elif method == "GET" and path in _HEALTH_PATHS:
            out.json(200, {"status": "ok"})
        else:
            out.json(404, _error_body(404, f"no route for {method} {path}"))
        return True

    # --- chat completions ------------------------------------------------------------------

    async def _chat(
        self, out: _Output, method: str, path: str, request: h11.Request, body: bytes
    ) -> bool:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in request.headers
        }
        try:
            recorded = _parse_chat(self._count, method, path, headers, body)
        except _BadRequest as exc:
            out.json(400, _error_body(400, str(exc)))
            return True
        self._count += 1
        if self.record:
            self.requests.append(recorded)
        reply = await self._next_reply(recorded)
        plan = self._book.plan(recorded, reply)
        timing = _Timing.of(reply, self)
        await _pause(timing.delay_ms)
        if plan.status is not None:
            extra = [("retry-after", plan.retry_after)] if plan.retry_after else []
            out.json(plan.status, _error_body(plan.status, plan.error_message or ""), extra)
            return True
        if plan.fault is Fault.DROP:
            return False
        reply_model = recorded.model or self.model
        stream = _Stream(out, reply_model, timing, reply, recorded, plan)
        if recorded.stream and not (reply is not None and reply.ignore_stream):
            return await stream.send_events()
        return await stream.send_whole()

    async def _next_reply(self, request: RecordedRequest) -> MockReply | None:
        if self._script:
            return self._script.popleft()
        if self._handler is None:
            return None
        result = self._handler(request)
        if inspect.isawaitable(result):
            result = await result
        return result


class _Timing:
    """Latencies for one reply: the reply's own overrides, else the server's options."""

    def __init__(self, delay_ms: float, first_token_ms: float, token_ms: float) -> None:
        self.delay_ms = delay_ms
        self.first_token_ms = first_token_ms
        self.token_ms = token_ms

    @classmethod
    def of(cls, reply: MockReply | None, server: MockLLM) -> _Timing:
        reply = reply or MockReply()
        return cls(
            delay_ms=server.latency_ms + reply.delay_ms,
            first_token_ms=(
                server.first_token_ms if reply.first_token_ms is None else reply.first_token_ms
            ),
            token_ms=server.token_ms if reply.token_ms is None else reply.token_ms,
        )

    @property
    def paced(self) -> bool:
        return self.first_token_ms > 0 or self.token_ms > 0


class _Output:
    """Turns h11 events into bytes, buffered so that a response costs one socket write."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        self.conn = conn
        self.writer = writer
        self._buffer = bytearray()

    def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            self._buffer += data

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
        self.send(h11.Response(status_code=status, headers=headers, reason=reason))

    def json(
        self, status: int, payload: Any, extra_headers: list[tuple[str, str]] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        self.start(status, headers + (extra_headers or []))
        self.send(h11.Data(data=body))
        self.send(h11.EndOfMessage())

    def sse(self, payload: dict[str, Any] | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self.send(h11.Data(data=b"data: " + text.encode() + b"\n\n"))

    async def flush(self) -> None:
        """Write what is buffered and wait until the socket accepts more."""
        if self._buffer:
            self.writer.write(bytes(self._buffer))
            self._buffer.clear()
        await self.writer.drain()


class _Stream:
    """Sends one planned reply, streamed as SSE or as one JSON body."""

    def __init__(
        self,
        out: _Output,
        model: str,
        timing: _Timing,
        reply: MockReply | None,
        request: RecordedRequest,
        plan: ReplyPlan,
    ) -> None:
        self.out = out
        self.model = model
        self.timing = timing
        self.request = request
        self.plan = plan
        self.chunk_chars = reply.chunk_chars if reply else None
        self.whole_tool_calls = reply.whole_tool_calls if reply else False
        self.ident = f"chatcmpl-mock-{request.index}"
        self.created = int(time.time())
        self.pieces = tokenize(plan.content, self.chunk_chars)
        self.reasoning_pieces = tokenize(plan.reasoning, self.chunk_chars)

    # --- whole JSON body ---------------------------------------------------------------

    async def send_whole(self) -> bool:
        plan = self.plan
        count = len(self.pieces) + len(self.reasoning_pieces)
        await _pause(self.timing.first_token_ms + self.timing.token_ms * max(0, count - 1))
        if plan.fault is Fault.ENDLESS_STREAM:
            return await self._endless_whole()
        message: dict[str, Any] = {"role": "assistant", "content": plan.content or None}
        if plan.reasoning:
            message["reasoning_content"] = plan.reasoning
        if plan.tool_calls:
            message["tool_calls"] = [_call_json(call) for call in plan.tool_calls]
        choices = [{"index": 0, "message": message, "finish_reason": plan.finish_reason}]
        payload = {
            "id": self.ident,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [] if plan.fault is Fault.EMPTY_CHOICES else choices,
            "usage": self._usage().model_dump(),
        }
        body = json.dumps(payload).encode()
        if plan.fault is Fault.MALFORMED_JSON:
            body = body[: len(body) // 2]
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        if plan.fault is Fault.CUT_STREAM:
            # Promise the whole body, deliver half, hang up.
            self.out.start(200, headers)
            self.out.send(h11.Data(data=body[: len(body) // 2]))
            await self.out.flush()
            return False
        self.out.start(200, headers)
        self.out.send(h11.Data(data=body))
        self.out.send(h11.EndOfMessage())
        return True

    async def _endless_whole(self) -> bool:
        self.out.start(200, [("content-type", "application/json")])
        head = {"id": self.ident, "object": "chat.completion", "model": self.model}
        opening = json.dumps(head)[:-1] + ', "choices": [{"index": 0, "message": {"content": "'
        self.out.send(h11.Data(data=opening.encode()))
        await self._forever(lambda piece: self.out.send(h11.Data(data=piece.encode())))
        return False

    # --- SSE stream ------------------------------------------------------------------

    async def send_events(self) -> bool:
        plan = self.plan
        out = self.out
        out.start(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")])
        if plan.fault is Fault.EMPTY_CHOICES:
            out.sse(self._envelope([], usage=self._usage()))
            return self._done()
        out.sse(self._chunk({"role": "assistant", "content": ""}))
        if plan.fault is Fault.ENDLESS_STREAM:
            await out.flush()
            await self._forever(lambda piece: out.sse(self._chunk({"content": piece})))
            return False
        first = True
        for piece in self.reasoning_pieces:
            await self._pace(first)
            first = False
            out.sse(self._chunk({"reasoning_content": piece}))
        pieces = self.pieces
        if plan.fault is Fault.CUT_STREAM:
            pieces = pieces[: max(1, len(pieces) // 2)]
        for number, piece in enumerate(pieces):
            await self._pace(first)
            first = False
            out.sse(self._chunk({"content": piece}))
            if plan.fault is Fault.MALFORMED_JSON and number == len(pieces) // 2:
                out.sse('{"choices": [{"index": 0, "delta": {"content": "oops')
        if plan.fault is Fault.CUT_STREAM:
            # The body ends cleanly, but without finish_reason or [DONE].
            out.send(h11.EndOfMessage())
            return True
        for index, call in enumerate(plan.tool_calls):
            await self._pace(first)
            first = False
            for delta in self._tool_deltas(index, call):
                out.sse(self._chunk({"tool_calls": [delta]}))
        out.sse(self._chunk({}, finish_reason=plan.finish_reason))
        if self.request.include_usage:
            out.sse(self._envelope([], usage=self._usage()))
        return self._done()

    def _done(self) -> bool:
        self.out.sse("[DONE]")
        self.out.send(h11.EndOfMessage())
        return True

    async def _pace(self, first: bool) -> None:
        if not self.timing.paced:
            return
        await self.out.flush()
        await _pause(self.timing.first_token_ms if first else self.timing.token_ms)

    async def _forever(self, send: Callable[[str], None]) -> None:
        """Send pieces until the client disconnects (then the write fails and we stop)."""
        pieces = self.pieces or [" more"]
        for piece in cycle(pieces):
            send(piece)
            await self.out.flush()
            if self.out.writer.is_closing():
                return
            # Always yield, so an unpaced endless reply cannot starve other connections.
            await asyncio.sleep(self.timing.token_ms / 1000)

    def _tool_deltas(self, index: int, call: ToolCall) -> list[dict[str, Any]]:
        head = {"index": index, "id": call.id, "type": "function"}
        if self.whole_tool_calls:
            return [{**head, "function": {"name": call.name, "arguments": call.arguments}}]
        size = self.chunk_chars or TOOL_ARGUMENT_CHUNK
        fragments = [
            {"index": index, "function": {"arguments": call.arguments[i : i + size]}}
            for i in range(0, len(call.arguments), size)
        ]
        return [{**head, "function": {"name": call.name, "arguments": ""}}, *fragments]

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return self._envelope([{"index": 0, "delta": delta, "finish_reason": finish_reason}])

    def _envelope(self, choices: list[Any], usage: Usage | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.ident,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage.model_dump()
        return chunk

    def _usage(self) -> Usage:
        if self.plan.usage is not None:
            return self.plan.usage
        prompt = word_count(self.request)
        completion = len(self.pieces) + len(self.reasoning_pieces)
        completion += sum(len(tokenize(call.arguments)) for call in self.plan.tool_calls)
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request, bytes] | None:
    """The next whole request on the connection, or None when the client is done."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ_CHUNK))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        else:  # ConnectionClosed or PAUSED
            return None


def _parse_chat(
    index: int, method: str, path: str, headers: dict[str, str], body: bytes
) -> RecordedRequest:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest("the request body must be a JSON object")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _BadRequest("'messages' must be a non-empty list")
    stream_options = data.get("stream_options")
    max_tokens = data.get("max_tokens", data.get("max_completion_tokens"))
    try:
        return RecordedRequest(
            index=index,
            method=method,
            path=path,
            headers=headers,
            body=data,
            model=data.get("model") or "",
            messages=[_message(item) for item in raw_messages],
            tools=data.get("tools") or [],
            tool_choice=data.get("tool_choice"),
            stream=bool(data.get("stream")),
            include_usage=isinstance(stream_options, dict)
            and bool(stream_options.get("include_usage")),
            stop=_stop_list(data.get("stop")),
            temperature=data.get("temperature"),
            max_tokens=max_tokens,
            top_p=data.get("top_p"),
            frequency_penalty=data.get("frequency_penalty"),
            presence_penalty=data.get("presence_penalty"),
            seed=data.get("seed"),
            response_format=data.get("response_format"),
            format=data.get("format"),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _BadRequest(f"invalid request at {where}: {first['msg']}") from None


def _message(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _BadRequest("each message must be an object")
    content = item.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return {"role": item.get("role"), "content": content or ""}


def _stop_list(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [item for item in stop if isinstance(item, str)]
    return []


def _call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def _error_body(status: int, message: str) -> dict[str, Any]:
    if status == 429:
        kind = "rate_limit_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "code": status}}


def _fault_list(faults: Iterable[str | FaultRate]) -> list[FaultRate]:
    return [item if isinstance(item, FaultRate) else FaultRate.parse(item) for item in faults]


async def _pause(milliseconds: float) -> None:
    if milliseconds > 0:
        await asyncio.sleep(milliseconds / 1000)
