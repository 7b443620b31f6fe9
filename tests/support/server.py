"""A Fellowship server in the test's own event loop: Hypercorn on 127.0.0.1, a random port.

`start_server` is the one way the suites start the whole product in-process: `create_app`
served by `server.hosting.serve` on a socket bound to a random loopback port, returned
once `/healthz` answers. The fixtures `mock`, `server_factory` and `server` build on it
with the mock backend; the integration, reliability, browser and docs suites all take
them from here. (`tests.support.served` starts `fellowship serve` as a child process
instead, for tests of the whole command.)
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart

from engine.config import Settings
from engine.llm.mock import MockLLM
from engine.manager import SessionManager
from server.app import create_app
from server.hosting import serve
from server.state import EXTENSION_KEY, ServerState
from tests.support.engine import WAIT_SECONDS, make_settings
from tests.support.served import OnLoopback

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"


def server_settings(tmp_path: Path, base_url: str, **overrides: Any) -> Settings:
    """Settings for a served app on the backend at `base_url`, with `overrides` on top."""
    values: dict[str, Any] = {
        "specs_dir": SPECS_DIR,
        # Hypercorn keeps a closed WebSocket's ping loop until its next tick; a short
        # interval keeps shutdown at the end of each test quick.
        "ws_ping_seconds": 0.5,
    }
    values.update(overrides)
    return make_settings(tmp_path, base_url, **values)


@dataclass
class RunningServer(OnLoopback):
    """A Fellowship server running in this event loop."""

    app: Quart
    settings: Settings
    port: int
    shutdown: asyncio.Event
    task: asyncio.Task[None]

    @property
    def state(self) -> ServerState:
        state: ServerState = self.app.extensions[EXTENSION_KEY]
        return state

    @property
    def manager(self) -> SessionManager:
        return self.state.manager

    async def stop(self, wait: float = WAIT_SECONDS) -> None:
        """Shut down gracefully and wait (up to `wait` s) until the server has stopped."""
        self.shutdown.set()
        await asyncio.wait_for(self.task, wait)


async def start_server(
    settings: Settings,
    *,
    manager: SessionManager | None = None,
    sndbuf: int | None = None,
    wait: float = WAIT_SECONDS,
) -> RunningServer:
    """Serve a fresh app on a random loopback port; return once it answers (within `wait` s).

    `manager` is the engine to serve (default: the app builds one from `settings`).
    `sndbuf` shrinks the send buffer of accepted connections (Linux: they inherit it
    from the listening socket), to make a slow client fall behind quickly.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections queue up until Hypercorn accepts them
    port = int(sock.getsockname()[1])
    app = create_app(settings, manager=manager)
    shutdown = asyncio.Event()
    task = asyncio.create_task(serve(app, settings, shutdown=shutdown, sock=sock))
    running = RunningServer(app, settings, port, shutdown, task)
    async with httpx.AsyncClient(base_url=running.base_url) as client:
        ready = asyncio.create_task(client.get("/healthz"))
        done, _ = await asyncio.wait(
            {ready, task}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()  # raises the start-up failure
        assert ready in done, "server did not answer /healthz"
        assert ready.result().status_code == 200
    return running


@pytest.fixture
async def mock() -> AsyncIterator[MockLLM]:
    """The mock backend on a loopback port."""
    async with MockLLM() as backend:
        yield backend


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def server_factory(tmp_path: Path, mock: MockLLM) -> AsyncIterator[ServerFactory]:
    """Start servers on the mock with settings overrides; every one is stopped after the test.

    `listen_sndbuf` is passed to `start_server` as `sndbuf`; any other keyword is a setting.
    """
    servers: list[RunningServer] = []

    async def make(*, listen_sndbuf: int | None = None, **overrides: Any) -> RunningServer:
        settings = server_settings(tmp_path, mock.base_url, **overrides)
        running = await start_server(settings, sndbuf=listen_sndbuf)
        servers.append(running)
        return running

    yield make
    for running in servers:
        if not running.task.done():
            await running.stop()


@pytest.fixture
async def server(server_factory: ServerFactory) -> RunningServer:
    """A server on the mock with the test settings."""
    return await server_factory()
