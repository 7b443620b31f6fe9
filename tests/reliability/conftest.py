"""Fixtures for the reliability suite: the real server in-process, real clients, the mock.

The server fixtures are those of `tests.support.server` (a Fellowship server on a random
loopback port, the mock backend), the clients the integration suite's (WebSocket
members); this module adds an SSE observer and a session's full record: every member's
events and the stored history.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Event, WsMember, client, members
from tests.support.engine import WAIT_SECONDS
from tests.support.server import RunningServer, mock, server, server_factory

__all__ = ["client", "members", "mock", "server", "server_factory"]


@dataclass
class SseMember:
    """An SSE observer that collects every event (the `data:` JSON of each frame)."""

    events: list[Event] = field(default_factory=list)
    ended_with: str | None = None
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def _read(self, http: httpx.AsyncClient, url: str) -> None:
        try:
            async with http.stream("GET", url) as response:
                assert response.status_code == 200, response.status_code
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[len("data: ") :]))
                        self._changed.set()
                    elif line.startswith(": closed"):
                        self.ended_with = line
        finally:
            self._changed.set()

    @property
    def closed(self) -> bool:
        return self._task is not None and self._task.done()

    def of_type(self, *types: str) -> list[Event]:
        return [e for e in self.events if e["type"] in types]

    async def wait_type(self, type_: str, count: int = 1) -> None:
        async def loop() -> None:
            while len(self.of_type(type_)) < count:
                if self.closed:
                    raise AssertionError(f"SSE stream closed: {self.ended_with}")
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), WAIT_SECONDS)

    async def wait_closed(self) -> None:
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), WAIT_SECONDS)


@pytest.fixture
async def sse_http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for SSE streams, without read timeout (streams last)."""
    timeout = httpx.Timeout(WAIT_SECONDS, read=None)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=timeout) as http:
        yield http


async def sse_join(http: httpx.AsyncClient, token: str, *, name: str | None = None) -> SseMember:
    """Open an SSE stream and return once its `history` event has arrived."""
    member = SseMember()
    query = f"?name={name}" if name else ""
    member._task = asyncio.create_task(member._read(http, f"/v1/session/{token}/stream{query}"))
    await member.wait_type("history")
    return member


async def stop_sse(*readers: SseMember) -> None:
    """Stop SSE readers that are still open."""
    for reader in readers:
        if reader._task is not None and not reader._task.done():
            reader._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader._task


def session_part(events: list[Event], after: int) -> list[Event]:
    """The session's own events with a seq above `after` (replies to one client left out)."""
    part: list[Event] = []
    previous = 0
    for e in events:
        private = e["type"] == "error" and (
            e.get("code") in PRIVATE_ERROR_CODES or e["seq"] == previous
        )
        if e["seq"] > after and e["type"] not in ("history", "pong") and not private:
            part.append(e)
        previous = e["seq"]
    return part


PRIVATE_ERROR_CODES = frozenset(
    {
        "invalid_json",
        "bad_frame",
        "unknown_frame_type",
        "empty_message",
        "message_too_long",
        "observer_cannot_talk",
    }
)


async def history_of(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    """The stored history, as the API returns it."""
    response = await client.get(f"/v1/session/{token}/history")
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def assert_gapless_positions(history: list[dict[str, Any]]) -> None:
    """History positions are 1..n with nothing reserved left behind."""
    assert [m["turn"] for m in history] == list(range(1, len(history) + 1))
    assert all(m["status"] in ("complete", "failed") for m in history), history


__all__ += [
    "PRIVATE_ERROR_CODES",
    "SseMember",
    "WsMember",
    "assert_gapless_positions",
    "history_of",
    "session_part",
    "sse_http",
    "sse_join",
    "stop_sse",
]


# --- raw sockets: clients that misbehave on purpose ---------------------------------------------


@dataclass
class RawClient:
    """A hand-made WebSocket or SSE client on a plain socket, able to misbehave."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    head: bytes

    def stop_reading(self) -> None:
        """Leave whatever the server sends in the socket buffers: fall behind."""
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    def vanish(self) -> None:
        """Drop the connection with a TCP reset: no close frame, no FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def hang_up(self) -> None:
        """Close the TCP connection (FIN) without a WebSocket close frame."""
        self.writer.close()

    async def frames_until_close(self) -> list[tuple[int, bytes]]:
        """Resume reading; WebSocket frames (opcode, payload) up to and including close."""
        self.writer.transport.resume_reading()  # type: ignore[attr-defined]
        frames: list[tuple[int, bytes]] = []
        async with asyncio.timeout(WAIT_SECONDS):
            while not frames or frames[-1][0] != WS_CLOSE:
                first, second = await self.reader.readexactly(2)
                length = second & 0x7F
                if length == WS_LEN16:
                    length = int.from_bytes(await self.reader.readexactly(2), "big")
                elif length == WS_LEN64:
                    length = int.from_bytes(await self.reader.readexactly(8), "big")
                frames.append((first & 0x0F, await self.reader.readexactly(length)))
        return frames

    async def body_until_end(self) -> bytes:
        """Resume reading; the rest of an SSE response until the server ends it."""
        self.writer.transport.resume_reading()  # type: ignore[attr-defined]
        async with asyncio.timeout(WAIT_SECONDS):
            return await self.reader.read()


WS_CLOSE = 0x8
WS_TEXT = 0x1
WS_LEN16, WS_LEN64 = 126, 127


async def raw_connect(
    port: int, request_path: str, *, websocket: bool, rcvbuf: int | None = None
) -> RawClient:
    """Open a WebSocket (handshake only) or an SSE request on a plain socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf or 2**16)
    if websocket:
        key = base64.b64encode(os.urandom(16)).decode()
        extra = (
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
        )
    else:
        extra = "Accept: text/event-stream\r\n"
    writer.write(f"GET {request_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_SECONDS)
    expected = b"HTTP/1.1 101" if websocket else b"HTTP/1.1 200"
    assert head.startswith(expected), head
    return RawClient(reader, writer, head)


__all__ += ["RawClient", "raw_connect"]
