"""Fixtures for tests of the real server: Hypercorn on 127.0.0.1, real clients, mock backend.

`server` is the whole product in-process (`tests.support.server`: `create_app` served on
a random loopback port, talking to a `MockLLM` over loopback). Clients are the real thing
too: `httpx`, `websockets` and `httpx-sse`. Waits are for events, bounded by
`WAIT_SECONDS` only so that a broken test fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from engine.llm.mock import MockLLM
from engine.manager import SessionManager
from tests.support.engine import FAST_HOUSEKEEPING, WAIT_SECONDS, make_settings
from tests.support.server import (
    RunningServer,
    ServerFactory,
    mock,
    server,
    server_factory,
    start_server,
)

__all__ = ["RunningServer", "ServerFactory", "mock", "server", "server_factory", "start_server"]

Event = dict[str, Any]


# --- specs -------------------------------------------------------------------------------------


def spec_dict(bots: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """A small valid spec as JSON-ready data."""
    names = bots or ["Alice", "Bob", "Carol"]
    return {
        "name": "test session",
        "bots": [{"name": n, "system_prompt": f"You are {n}. Be brief."} for n in names],
        "options": options,
    }


# --- engines and clients -----------------------------------------------------------------------


ManagerFactory = Callable[..., Awaitable[SessionManager]]


@pytest.fixture
async def manager_factory(tmp_path: Path, mock: MockLLM) -> AsyncIterator[ManagerFactory]:
    """Start engines (no HTTP server) on the mock with settings overrides; all closed after."""
    managers: list[SessionManager] = []

    async def make(
        *, housekeeping_interval: float = FAST_HOUSEKEEPING, **overrides: Any
    ) -> SessionManager:
        settings = make_settings(tmp_path, mock.base_url, **overrides)
        manager = SessionManager(settings, housekeeping_interval=housekeeping_interval)
        await manager.start()
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.close()


@pytest.fixture
async def manager(manager_factory: ManagerFactory) -> SessionManager:
    """An engine on the mock with the test settings."""
    return await manager_factory()


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as http:
        yield http


async def create_session(
    client: httpx.AsyncClient, spec: dict[str, Any] | None = None, **options: Any
) -> dict[str, Any]:
    """Create a session from `spec` (default: three bots with `options`); return the body."""
    response = await client.post("/v1/session/create", json=spec or spec_dict(**options))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# --- WebSocket members ---------------------------------------------------------------------------


@dataclass
class WsMember:
    """A WebSocket client that collects every event it receives."""

    ws: ClientConnection
    events: list[Event] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> WsMember:
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.events.append(json.loads(raw))
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self._changed.set()

    @property
    def closed(self) -> bool:
        return self._task is not None and self._task.done()

    def of_type(self, *types: str) -> list[Event]:
        return [e for e in self.events if e["type"] in types]

    def presence(self) -> tuple[list[str], int] | None:
        """Talkers and observer count of the last `presence` event received, if any."""
        told = self.of_type("presence")
        return (told[-1]["talkers"], told[-1]["observers"]) if told else None

    def session_events(self) -> list[Event]:
        """Events of the session stream (not `pong`/`error` replies to this client)."""
        return [e for e in self.events if e["type"] not in ("pong", "history")]

    async def wait_for(self, predicate: Callable[[WsMember], bool]) -> None:
        async def loop() -> None:
            while not predicate(self):
                if self.closed:
                    raise AssertionError(
                        f"closed ({self.close_code} {self.close_reason!r}); "
                        f"events: {[e['type'] for e in self.events]}"
                    )
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), WAIT_SECONDS)

    async def wait_type(self, type_: str, count: int = 1) -> list[Event]:
        await self.wait_for(lambda m: len(m.of_type(type_)) >= count)
        return self.of_type(type_)

    async def wait_closed(self) -> None:
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), WAIT_SECONDS)

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def say(self, content: str) -> None:
        await self.send({"type": "user_message", "content": content})

    async def close(self) -> None:
        await self.ws.close()
        await self.wait_closed()


async def ws_join(
    server: RunningServer | str,
    token: str,
    *,
    role: str = "observer",
    name: str | None = None,
    since: int | None = None,
) -> WsMember:
    """Connect over WebSocket (to a running server or a `ws://host:port` base) and collect."""
    base = server if isinstance(server, str) else server.ws_url
    params = {"role": role}
    if name is not None:
        params["name"] = name
    if since is not None:
        params["since"] = str(since)
    query = str(httpx.QueryParams(params))
    ws = await connect(f"{base}/v1/session/{token}/connect?{query}")
    return WsMember(ws).start()


@pytest.fixture
async def members() -> AsyncIterator[list[WsMember]]:
    """Collects WebSocket members to close after the test."""
    joined: list[WsMember] = []
    yield joined
    for member in joined:
        if not member.closed:
            await member.ws.close()


# --- SSE members ---------------------------------------------------------------------------------


class SseReader:
    """Reads one SSE stream in the background: every event as (id, event, data)."""

    def __init__(self, http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.names: list[str] = []
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(http, url, headers))

    async def _read(self, http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        try:
            async with aconnect_sse(http, "GET", url, headers=headers) as source:
                self.status = source.response.status_code
                self.headers = source.response.headers
                if self.status != 200:
                    return
                async for sse in source.aiter_sse():
                    self.ids.append(sse.id)
                    self.names.append(sse.event)
                    self.events.append(sse.json())
                    self._changed.set()
        finally:
            self._changed.set()

    @property
    def done(self) -> bool:
        return self._task.done()

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    async def wait_for(self, predicate: Callable[[SseReader], bool]) -> None:
        async def loop() -> None:
            while not predicate(self):
                if self.done:
                    raise AssertionError(f"stream ended: {[e['type'] for e in self.events]}")
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), WAIT_SECONDS)

    async def wait_type(self, type_: str, count: int = 1) -> None:
        await self.wait_for(lambda r: len(r.of_type(type_)) >= count)

    async def wait_done(self) -> None:
        await asyncio.wait_for(asyncio.shield(self._task), WAIT_SECONDS)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@asynccontextmanager
async def sse(
    server: RunningServer, token: str, *, query: str = "", headers: dict[str, str] | None = None
) -> AsyncIterator[SseReader]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as http:
        reader = SseReader(http, f"/v1/session/{token}/stream{query}", headers or {})
        try:
            yield reader
        finally:
            await reader.stop()


def check_stream(events: list[Event]) -> None:
    """A member's events: `history` first, then strictly consecutive seqs after it.

    `pong` and per-client `error` replies repeat the last seq and are left out.
    """
    assert events and events[0]["type"] == "history", [e["type"] for e in events[:3]]
    seqs: list[int] = []
    for event in events:
        if event["type"] == "pong" or (
            event["type"] == "error" and seqs and event["seq"] == seqs[-1]
        ):
            continue
        seqs.append(event["seq"])
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
