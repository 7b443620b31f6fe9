"""`fellowship.client` through a server restart: every event once, in order, no gap.

The server goes away and a new one comes up on the same database and the same port,
as after a deploy or a crash: once in process (a graceful stop; members are told
`server shutting down`) and once as a real `fellowship serve` killed with SIGKILL
(connections reset, a reply cut mid-generation). The client keeps iterating through
it and must deliver every event of the session once, as the server stored it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from engine.config import Settings
from engine.llm.mock import MockLLM
from fellowship.client import (
    BotMessage,
    FellowshipClient,
    HistoryEvent,
    Reconnect,
    SessionEnd,
    SessionPaused,
    TalkerMessage,
    TokenEvent,
    Transport,
    TurnEnd,
)
from server.app import create_app
from server.hosting import serve
from tests.integration.conftest import spec_dict
from tests.integration.test_client_reconnect import (
    Reader,
    check_delivered_once,
    conversation,
    final_conversation,
    stored_events,
)
from tests.support.engine import WAIT_SECONDS
from tests.support.served import ServeProcess
from tests.support.server import RunningServer, server_settings

TRANSPORTS: tuple[Transport, ...] = ("sse", "ws")
POLICY = Reconnect(initial=0.05, maximum=0.5, give_up_after=WAIT_SECONDS)


@pytest.fixture
async def mock() -> AsyncIterator[MockLLM]:
    # Slow enough streaming that the restart lands while a reply is being generated.
    async with MockLLM(first_token_ms=30, token_ms=15) as backend:
        yield backend


async def start_on_port(settings: Settings, port: int) -> RunningServer:
    """Serve a fresh app on `port` (0: any free one), on `settings`' database."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    port = int(sock.getsockname()[1])
    app = create_app(settings)
    shutdown = asyncio.Event()
    task = asyncio.create_task(serve(app, settings, shutdown=shutdown, sock=sock))
    running = RunningServer(app, settings, port, shutdown, task)
    async with httpx.AsyncClient(base_url=running.base_url) as http:
        async with asyncio.timeout(WAIT_SECONDS):
            assert (await http.get("/healthz")).status_code == 200
    return running


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_an_observer_gets_every_event_once_across_a_graceful_restart(
    tmp_path: Path, mock: MockLLM, transport: Transport
) -> None:
    settings = server_settings(tmp_path, mock.base_url)
    first = await start_on_port(settings, 0)
    second: RunningServer | None = None
    try:
        async with FellowshipClient(first.base_url, reconnect=POLICY) as fc:
            created = await fc.create(spec_dict(max_turns=10, stream_tokens=True))
            reader = Reader(fc.observe(created.observer_token, transport=transport))
            await reader.until(lambda events: sum(isinstance(e, BotMessage) for e in events) >= 3)
            await first.stop()
            # The client is knocking on a closed port now; the new server takes it over.
            second = await start_on_port(settings, first.port)
            assert (await fc.status(created.token)).state == "paused"
            await fc.resume(created.token)
            events = await reader.finish()
            final = await final_conversation(fc, created.token)
    finally:
        for running in (first, second):
            if running is not None and not running.task.done():
                await running.stop()

    assert reader.stream.reconnects >= 1
    assert isinstance(events[-1], SessionEnd) and events[-1].reason == "max_turns"
    restarted = [e for e in events if isinstance(e, SessionPaused)]
    assert [e.reason for e in restarted] == ["server_restart"]
    check_delivered_once(events, stored_events(settings.database_path, created.id))
    assert sum(isinstance(e, HistoryEvent) for e in events) == 1  # replayed, not resent
    assert conversation(events) == final


async def test_a_talker_goes_on_across_a_graceful_restart(tmp_path: Path, mock: MockLLM) -> None:
    settings = server_settings(tmp_path, mock.base_url)
    first = await start_on_port(settings, 0)
    second: RunningServer | None = None
    try:
        async with FellowshipClient(first.base_url, reconnect=POLICY) as fc:
            created = await fc.create(spec_dict(["Alice", "Bob"], participation="reactive"))
            talk = fc.talk(created.token, "Dana")
            reader = Reader(talk)
            await talk.send("before the restart")
            await reader.until(lambda events: any(isinstance(e, TurnEnd) for e in events))
            await first.stop()
            second = await start_on_port(settings, first.port)
            await fc.resume(created.token)
            await talk.send("after the restart")  # waits for the reconnect, sent once
            await reader.until(lambda events: sum(isinstance(e, TurnEnd) for e in events) >= 2)
            await fc.end(created.token)
            events = await reader.finish()
            history = await fc.history(created.token)
    finally:
        for running in (first, second):
            if running is not None and not running.task.done():
                await running.stop()

    said = [e.content for e in events if isinstance(e, TalkerMessage)]
    assert said == ["before the restart", "after the restart"]
    assert [m.content for m in history if m.kind == "talker"] == said
    check_delivered_once(events, stored_events(settings.database_path, created.id))


async def test_observers_get_every_event_once_across_a_sigkill_and_restart(
    tmp_path: Path, mock: MockLLM
) -> None:
    # One process start costs seconds: an SSE and a WebSocket observer share the run.
    fast_pings = {"WS_PING_SECONDS": "0.5"}
    process = ServeProcess(tmp_path, mock.base_url, port=free_port(), env=fast_pings)
    await process.start()
    try:
        async with FellowshipClient(process.base_url, reconnect=POLICY) as fc:
            created = await fc.create(spec_dict(max_turns=12, stream_tokens=True))
            readers = {
                transport: Reader(fc.observe(created.observer_token, transport=transport))
                for transport in TRANSPORTS
            }
            for reader in readers.values():
                await reader.until(
                    lambda events: sum(isinstance(e, BotMessage) for e in events) >= 3
                )
            await readers["ws"].until(lambda events: isinstance(events[-1], TokenEvent))
            await process.kill()  # a reply is being streamed, slowly: it is cut short
            await process.start()
            await fc.resume(created.token)
            delivered = {t: await reader.finish() for t, reader in readers.items()}
            history = await fc.history(created.token)
    finally:
        with contextlib.suppress(Exception):
            await process.stop()

    stored = stored_events(tmp_path / "fellowship.db", created.id)
    final = {m.turn: m.content for m in history if m.status == "complete"}
    assert any(m.status == "failed" for m in history)  # the reply the kill cut short
    for transport, events in delivered.items():
        assert readers[transport].stream.reconnects >= 1, transport
        assert isinstance(events[-1], SessionEnd) and events[-1].reason == "max_turns"
        check_delivered_once(events, stored)
        assert sum(isinstance(e, HistoryEvent) for e in events) == 1, transport
        assert conversation(events) == final, transport
