"""`fellowship.client` through dropped connections: every event once, in order, no gap.

The client reaches the server through a TCP proxy in the test that cuts every
connection on demand (both sides reset at once, as a dying network does) and can
refuse new ones for a while. What the client delivered is compared with what the
server stored: every event is written to the database before anyone is sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.events import parse_event
from engine.llm.mock import MockLLM
from fellowship.client import (
    BotMessage,
    Event,
    EventStream,
    FellowshipClient,
    HistoryEvent,
    Reconnect,
    SessionEnd,
    Talk,
    TalkerMessage,
    Transport,
    TurnEnd,
)
from tests.integration.conftest import RunningServer, spec_dict
from tests.support.engine import WAIT_SECONDS

# Quick reconnects: the proxy's outages last a fraction of a second.
POLICY = Reconnect(initial=0.05, maximum=0.3, give_up_after=WAIT_SECONDS / 2)


@pytest.fixture
async def mock() -> AsyncIterator[MockLLM]:
    # Streaming slowly enough that cuts land in the middle of replies.
    async with MockLLM(first_token_ms=20, token_ms=8) as backend:
        yield backend


class CuttingProxy:
    """Forwards TCP to a port: `cut()` resets every connection, `refusing` turns new ones away."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refusing = False
        self.cuts = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Reset every connection going through, client side and server side."""
        for client, upstream in list(self._pairs):
            client.transport.abort()
            upstream.transport.abort()
        self._pairs.clear()
        self.cuts += 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )
        self._pairs.discard(pair)
        for side in pair:
            side.transport.abort()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(65536):
        sink.write(data)
        await sink.drain()
    with contextlib.suppress(OSError):
        sink.write_eof()


@pytest.fixture
async def proxy(server: RunningServer) -> AsyncIterator[tuple[CuttingProxy, str]]:
    cutter = CuttingProxy(server.port)
    base = await cutter.start()
    yield cutter, base
    await cutter.close()


class Reader:
    """Reads a stream in the background and keeps every event, for the test to wait on."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.stream:
                self.events.append(event)
                self._changed.set()
        finally:
            self._changed.set()

    async def until(self, predicate: Callable[[list[Event]], bool]) -> None:
        async def wait() -> None:
            while not predicate(self.events):
                if self.task.done():
                    self.task.result()  # raises what ended it
                    raise AssertionError(f"stream ended: {[e.type for e in self.events]}")
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), WAIT_SECONDS)

    def count(self, kind: type[Event]) -> int:
        return sum(1 for e in self.events if isinstance(e, kind))

    async def until_count(self, kind: type[Event], count: int) -> None:
        await self.until(lambda _: self.count(kind) >= count)

    async def finish(self) -> list[Event]:
        await asyncio.wait_for(self.task, WAIT_SECONDS)
        return self.events


def stored_events(database: Path, session_id: str) -> dict[int, Event]:
    """Every event the server stored for a session, by seq."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT seq, data FROM events WHERE session_id = ?", (session_id,))
        return {int(seq): parse_event(data) for seq, data in rows}


def check_delivered_once(events: list[Event], stored: dict[int, Event]) -> None:
    """`history` first, then every event after it exactly once, in order, as stored.

    A later `history` (a resync) is allowed: the events then go on right after its seq.
    """
    assert isinstance(events[0], HistoryEvent), [e.type for e in events[:3]]
    expected_next = events[0].seq + 1
    for event in events[1:]:
        if isinstance(event, HistoryEvent):
            assert event.seq >= expected_next - 1, (event.seq, expected_next)
            expected_next = event.seq + 1
            continue
        assert event.seq == expected_next, (event.type, event.seq, expected_next)
        # The store keeps the last EVENT_BUFFER_SIZE events of a session.
        assert event == stored.get(event.seq, event), event.seq
        expected_next += 1
    assert expected_next - 1 == max(stored), (expected_next - 1, max(stored))


def conversation(events: list[Event]) -> dict[int, str]:
    """The messages as an application rebuilds them from the events (turn → content)."""
    seen: dict[int, str] = {}
    for event in events:
        if isinstance(event, HistoryEvent):
            seen = {m.turn: m.content for m in event.messages if m.status == "complete"}
        elif isinstance(event, BotMessage | TalkerMessage):
            assert event.turn not in seen, ("turn twice", event.turn)
            seen[event.turn] = event.content
    return seen


async def final_conversation(fc: FellowshipClient, token: str) -> dict[int, str]:
    return {m.turn: m.content for m in await fc.history(token) if m.status == "complete"}


async def keep_cutting(proxy: CuttingProxy, rng: random.Random, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.05, 0.25))
        proxy.cut()


# --- observers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "ws"])
@pytest.mark.parametrize("seed", [5, 17])
async def test_an_observer_gets_every_event_once_through_cut_connections(
    server: RunningServer, proxy: tuple[CuttingProxy, str], transport: Transport, seed: int
) -> None:
    cutter, base = proxy
    rng = random.Random(seed)
    async with (
        FellowshipClient(server.base_url) as direct,
        FellowshipClient(base, reconnect=POLICY) as fc,
    ):
        created = await direct.create(spec_dict(max_turns=14, stream_tokens=True))
        reader = Reader(fc.observe(created.observer_token, transport=transport))
        stop = asyncio.Event()
        cutting = asyncio.create_task(keep_cutting(cutter, rng, stop))
        try:
            events = await reader.finish()
        finally:
            stop.set()
            await cutting
        final = await final_conversation(direct, created.token)

    assert reader.stream.reconnects >= 3, reader.stream.reconnects
    assert isinstance(events[-1], SessionEnd)
    check_delivered_once(events, stored_events(server.settings.database_path, created.id))
    # Every drop was replayed, none needed a fresh history.
    assert sum(isinstance(e, HistoryEvent) for e in events) == 1
    assert conversation(events) == final


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_fresh_history_is_passed_on_when_the_missed_events_are_gone(
    server_factory: Any, transport: Transport
) -> None:
    server: RunningServer = await server_factory(event_buffer_size=16)
    cutter = CuttingProxy(server.port)
    base = await cutter.start()
    try:
        async with (
            FellowshipClient(server.base_url) as direct,
            FellowshipClient(base, reconnect=POLICY) as fc,
        ):
            created = await direct.create(spec_dict(max_turns=10, stream_tokens=True))
            reader = Reader(fc.observe(created.observer_token, transport=transport))
            await reader.until(lambda events: any(isinstance(e, BotMessage) for e in events))
            cutter.refusing = True
            cutter.cut()
            # Away until far more events than the server keeps have gone by.
            away_from = reader.stream.last_seq or 0
            async with direct.observe(created.observer_token) as watching:
                async for event in watching:
                    if event.seq >= away_from + 40:
                        break
            cutter.refusing = False
            events = await reader.finish()
            final = await final_conversation(direct, created.token)
    finally:
        await cutter.close()

    histories = [i for i, e in enumerate(events) if isinstance(e, HistoryEvent)]
    assert len(histories) == 2, [e.type for e in events]
    resync = events[histories[1]]
    assert resync.seq > away_from + 16  # the replay was not possible
    check_delivered_once(events, stored_events(server.settings.database_path, created.id))
    assert conversation(events) == final


# --- talkers -------------------------------------------------------------------------------------


async def test_a_talker_sends_each_message_once_and_hears_everything_through_cuts(
    server: RunningServer, proxy: tuple[CuttingProxy, str]
) -> None:
    cutter, base = proxy
    async with (
        FellowshipClient(server.base_url) as direct,
        FellowshipClient(base, reconnect=POLICY) as fc,
    ):
        created = await direct.create(
            spec_dict(["Alice", "Bob"], participation="reactive", replies_per_message=2)
        )
        talk: Talk = fc.talk(created.token, "Dana")
        reader = Reader(talk)
        await reader.until(lambda events: bool(events))  # joined: the history is in
        for round_ in range(4):
            # Down: the message waits for the reconnect and goes out once, then.
            cutter.refusing = True
            cutter.cut()
            async with asyncio.timeout(WAIT_SECONDS):
                while talk.connected:  # noqa: ASYNC110 - no event tells the client saw the cut
                    await asyncio.sleep(0.01)
            sending = asyncio.create_task(talk.send(f"question {round_}"))
            await asyncio.sleep(0.2)
            assert not sending.done()
            cutter.refusing = False
            await asyncio.wait_for(sending, WAIT_SECONDS)
            await reader.until_count(TalkerMessage, round_ + 1)
            # Cut again while the bots answer: their replies are replayed, not lost.
            cutter.cut()
            await reader.until_count(TurnEnd, 2 * (round_ + 1))
        await direct.end(created.token)
        events = await reader.finish()
        history = await direct.history(created.token)

    talked = [m.content for m in history if m.kind == "talker"]
    assert talked == [f"question {n}" for n in range(4)]  # each once, in order
    assert sum(m.kind == "bot" for m in history) == 8
    check_delivered_once(events, stored_events(server.settings.database_path, created.id))
    assert conversation(events) == {m.turn: m.content for m in history}
    assert talk.reconnects >= 8
