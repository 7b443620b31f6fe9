"""The LLM client's network streams: a request's head waits for its body, and a pooled
connection's liveness check reads its socket directly."""

from __future__ import annotations

import socket
from typing import Any

import httpcore
import httpx

from engine.llm.transport import _Backend, _Stream, lean_transport


class _Recorder(httpcore.AsyncNetworkStream):
    """A network stream that records what is written and read, in order."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.sock = sock

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self.calls.append(("write", buffer))

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        self.calls.append(("read", b""))
        return b""

    async def aclose(self) -> None:
        self.calls.append(("close", b""))

    def get_extra_info(self, info: str) -> Any:
        return self.sock if info == "socket" else None


HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"


async def test_a_request_head_goes_out_with_its_body_in_one_write() -> None:
    inner = _Recorder()
    stream = _Stream(inner)
    await stream.write(HEAD)
    assert inner.calls == []
    await stream.write(b"{}")
    await stream.write(b"")  # h11's end of a body with a Content-Length
    await stream.read(100)
    assert inner.calls == [("write", HEAD + b"{}"), ("read", b"")]


async def test_a_head_without_a_body_is_sent_before_the_reply_is_read() -> None:
    inner = _Recorder()
    stream = _Stream(inner)
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    await stream.write(head)
    await stream.read(100)
    await stream.write(head)
    await stream.aclose()
    assert inner.calls == [("write", head), ("read", b""), ("close", b"")]


async def test_liveness_is_read_from_the_socket_itself() -> None:
    ours, theirs = socket.socketpair()
    try:
        stream = _Stream(_Recorder(ours))
        assert stream.get_extra_info("is_readable") is False
        theirs.close()  # the server hangs up: the socket turns readable (EOF)
        assert stream.get_extra_info("is_readable") is True
    finally:
        ours.close()


async def test_the_transport_uses_these_streams_and_keeps_httpx_limits() -> None:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=3)
    transport = lean_transport(limits)
    pool = transport._pool
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    assert isinstance(pool._network_backend, _Backend)
    assert pool._max_keepalive_connections == 3
    assert not pool._http2
    await transport.aclose()
