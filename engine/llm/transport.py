"""The HTTP transport of the LLM client: httpx's own, on a leaner network layer.

Two costs of httpcore's default network streams showed in profiles of many sessions
(docs/performance.md, "Wave 2 step 4"), both paid on every request:

- Before each request the pool asks every idle pooled connection whether its socket is
  readable (a server that hung up). httpcore's anyio stream finds the socket again each
  time through anyio's attribute table, which calls `getpeername` on the way; here the
  socket is looked up once per connection.
- A request goes out as two socket writes, its head and then its body. Here the head is
  held and sent with the body in one write (or alone before the reply is read, for a
  request without a body), so one system call and one TCP segment instead of two.

Behaviour is otherwise httpx's: same pool, limits, timeouts and exceptions.
"""

# httpcore's network interface takes `timeout` arguments; these classes implement it.
# ruff: noqa: ASYNC109

from __future__ import annotations

import ssl
from typing import Any

import httpcore
import httpx
from httpcore._backends.auto import AutoBackend
from httpcore._utils import is_socket_readable


class _Stream(httpcore.AsyncNetworkStream):
    """One connection's stream: holds a request's head until its body, knows its socket."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket = inner.get_extra_info("socket")
        self._held = b""

    async def _flush(self, timeout: float | None) -> None:
        if self._held:
            held, self._held = self._held, b""
            await self._inner.write(held, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if not self._held and buffer.endswith(b"\r\n\r\n"):
            # A request's head (h11 ends it with a blank line): wait for the body.
            self._held = buffer
            return
        held, self._held = self._held, b""
        await self._inner.write(held + buffer, timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush(timeout)
        return await self._inner.read(max_bytes, timeout)

    async def aclose(self) -> None:
        self._held = b""
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        await self._flush(timeout)
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:
            return is_socket_readable(self._socket)
        return self._inner.get_extra_info(info)


class _Backend(httpcore.AsyncNetworkBackend):
    """httpcore's automatic backend, its streams wrapped in `_Stream`."""

    def __init__(self) -> None:
        self._inner = AutoBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def lean_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's HTTP/1.1 transport with `limits`, whose connections use `_Stream`."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx offers no way to pass a network backend; its pool (no proxy is configured
    # here, so an `AsyncConnectionPool`) takes it from this attribute when it connects.
    pool = transport._pool
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    pool._network_backend = _Backend()
    return transport
