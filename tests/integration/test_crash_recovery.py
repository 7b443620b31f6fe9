"""SIGKILL mid-generation, restart on the same database: nothing any client saw is lost.

The real server runs as a subprocess (`python -m server serve`) against the mock
backend over loopback. Talkers and observers (WebSocket and SSE) record every
message event they receive; the server is killed at a seeded random moment, started
again on the same SQLite file, and every message any client received must still be
in history at the same position, positions gapless, and the sessions resumable to
their end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.llm.mock import MockLLM
from tests.integration.conftest import SseReader, WsMember, spec_dict, ws_join
from tests.support.engine import WAIT_SECONDS
from tests.support.served import ServeProcess

SEEDS = [11, 23, 42]


@pytest.fixture
async def mock() -> AsyncIterator[MockLLM]:
    # Slow enough streaming that a kill lands mid-generation most of the time.
    async with MockLLM(first_token_ms=30, token_ms=15) as server:
        yield server


def received_messages(events: list[dict[str, Any]]) -> dict[int, str]:
    """Position → content of every message event, and of the history a client was shown."""
    seen: dict[int, str] = {}
    for event in events:
        if event["type"] == "history":
            for message in event["messages"]:
                if message["status"] == "complete":
                    seen[message["turn"]] = message["content"]
        elif event["type"] in ("bot_message", "talker_message"):
            seen[event["turn"]] = event["content"]
    return seen


async def talk(talker: WsMember, rng: random.Random, stop: asyncio.Event) -> None:
    count = 0
    while not stop.is_set() and not talker.closed:
        with contextlib.suppress(Exception):
            await talker.say(f"talker line {count}")
        count += 1
        await asyncio.sleep(rng.uniform(0.05, 0.3))


@pytest.mark.parametrize("seed", SEEDS)
async def test_sigkill_mid_generation_loses_nothing_any_client_received(
    tmp_path: Path, mock: MockLLM, seed: int
) -> None:
    rng = random.Random(seed)
    server = ServeProcess(tmp_path, mock.base_url)
    address = await server.start()
    members: list[WsMember] = []
    # What each session's clients received: session token -> list of event lists.
    seen_by: dict[str, list[list[dict[str, Any]]]] = {}
    stop_talking = asyncio.Event()
    http = httpx.AsyncClient(base_url=f"http://{address}", timeout=WAIT_SECONDS)
    try:
        auto = await create(http, spec_dict(max_turns=24, stream_tokens=True))
        collab = await create(
            http, spec_dict(["Tutor", "Critic"], participation="collaborative", max_talkers=2)
        )
        observer = await ws_join(f"ws://{address}", auto["observer_token"])
        talkers = [
            await ws_join(f"ws://{address}", collab["token"], role="talker", name=name)
            for name in ("Dana", "Eli")
        ]
        collab_observer = await ws_join(f"ws://{address}", collab["observer_token"])
        members += [observer, *talkers, collab_observer]
        readers = [
            SseReader(http, f"/v1/session/{s['observer_token']}/stream", {}) for s in (auto, collab)
        ]
        seen_by[auto["token"]] = [observer.events, readers[0].events]
        seen_by[collab["token"]] = [t.events for t in talkers] + [
            collab_observer.events,
            readers[1].events,
        ]
        chatter = [asyncio.create_task(talk(t, rng, stop_talking)) for t in talkers]

        await observer.wait_type("bot_message", 2)
        await asyncio.sleep(rng.uniform(0.1, 1.5))
        await server.kill()
        stop_talking.set()
        await asyncio.gather(*chatter, return_exceptions=True)
        for member in members:
            await member.wait_closed()
        for reader in readers:
            with contextlib.suppress(Exception):
                await reader.wait_done()  # the stream was cut by the kill
        await http.aclose()

        address = await server.start()
        http = httpx.AsyncClient(base_url=f"http://{address}", timeout=WAIT_SECONDS)
        for token, clients in seen_by.items():
            history = (await http.get(f"/v1/session/{token}/history")).json()["messages"]
            turns = [m["turn"] for m in history]
            assert turns == list(range(1, len(turns) + 1))
            assert all(m["status"] in ("complete", "failed") for m in history)
            stored = {m["turn"]: m["content"] for m in history if m["status"] == "complete"}
            for events in clients:
                for turn, content in received_messages(events).items():
                    assert stored.get(turn) == content, (turn, content)
            assert (await http.get(f"/v1/session/{token}")).json()["state"] == "paused"
        # The autonomous session resumes and finishes by max_turns.
        watcher = await ws_join(f"ws://{address}", auto["observer_token"])
        members.append(watcher)
        assert (await http.post(f"/v1/session/{auto['token']}/resume")).status_code == 200
        await watcher.wait_type("session_end")
        assert watcher.of_type("session_end")[0]["reason"] == "max_turns"
        final = (await http.get(f"/v1/session/{auto['token']}/history")).json()["messages"]
        assert sum(1 for m in final if m["kind"] == "bot") == 24
    finally:
        stop_talking.set()
        for member in members:
            if not member.closed:
                await member.ws.close()
        await http.aclose()
        await server.stop()


async def create(http: httpx.AsyncClient, spec: dict[str, Any]) -> dict[str, Any]:
    response = await http.post("/v1/session/create", json=spec)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# --- replay across a kill: every reconnect gets every missed turn exactly once ----------------


class Watcher:
    """One observer's whole life across connections: every event it was given, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.ws: WsMember | None = None
        self.sse: SseReader | None = None

    @property
    def last_seq(self) -> int:
        return int(self.events[-1]["seq"])

    async def connect_ws(self, address: str, token: str, since: int | None) -> None:
        self.ws = await ws_join(f"ws://{address}", token, since=since)

    def connect_sse(self, http: httpx.AsyncClient, token: str, since: int | None) -> None:
        headers = {} if since is None else {"Last-Event-ID": str(since)}
        self.sse = SseReader(http, f"/v1/session/{token}/stream", headers)

    async def wait_type(self, type_: str, count: int = 1) -> None:
        if self.ws is not None:
            await self.ws.wait_type(type_, count)
        elif self.sse is not None:
            await self.sse.wait_type(type_, count)

    async def drop(self) -> None:
        """Close the connection (or see it cut) and keep what it delivered."""
        if self.ws is not None:
            if not self.ws.closed:
                await self.ws.ws.close()
            await self.ws.wait_closed()
            self.events += self.ws.events
        if self.sse is not None:
            await self.sse.stop()
            self.events += self.sse.events
        self.ws = self.sse = None

    def view(self) -> dict[int, str]:
        """The conversation rebuilt from the events, checking order and duplicates."""
        seen: dict[int, str] = {}
        previous = 0
        for event in self.events:
            assert event["seq"] >= previous, (self.name, previous, event["seq"])
            if event["type"] == "history":
                seen = {
                    m["turn"]: m["content"] for m in event["messages"] if m["status"] == "complete"
                }
            else:
                assert event["seq"] > previous, (self.name, "seq repeated", event["seq"])
                if event["type"] in ("bot_message", "talker_message"):
                    assert event["turn"] not in seen, (self.name, "turn twice", event["turn"])
                    seen[event["turn"]] = event["content"]
            previous = event["seq"]
        return seen


def stored_events(database: Path, session_id: str) -> dict[int, str]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT seq, data FROM events WHERE session_id = ?", (session_id,))
        return {int(seq): str(data) for seq, data in rows}


async def test_reconnects_after_a_sigkill_get_every_missed_turn_exactly_once(
    tmp_path: Path, mock: MockLLM
) -> None:
    server = ServeProcess(tmp_path, mock.base_url)
    address = await server.start()
    http = httpx.AsyncClient(base_url=f"http://{address}", timeout=WAIT_SECONDS)
    sse_http = httpx.AsyncClient(
        base_url=f"http://{address}", timeout=httpx.Timeout(WAIT_SECONDS, read=None)
    )
    early_ws, early_sse, through_ws, late_ws, late_sse = (
        Watcher(name) for name in ("early-ws", "early-sse", "through-ws", "late-ws", "late-sse")
    )
    everyone = [early_ws, early_sse, through_ws, late_ws, late_sse]
    try:
        session = await create(http, spec_dict(max_turns=16, stream_tokens=True))
        token = session["observer_token"]
        await early_ws.connect_ws(address, token, None)
        early_sse.connect_sse(sse_http, token, None)
        await through_ws.connect_ws(address, token, None)
        # The early pair drop after two turns and come back only after the restart.
        for watcher in (early_ws, early_sse):
            await watcher.wait_type("bot_message", 2)
            await watcher.drop()
        await through_ws.wait_type("bot_message", 5)
        await server.kill()  # streaming is slow: the kill lands while a reply is generated
        await through_ws.drop()
        await http.aclose()
        await sse_http.aclose()

        address = await server.start()
        http = httpx.AsyncClient(base_url=f"http://{address}", timeout=WAIT_SECONDS)
        sse_http = httpx.AsyncClient(
            base_url=f"http://{address}", timeout=httpx.Timeout(WAIT_SECONDS, read=None)
        )
        assert (await http.get(f"/v1/session/{token}")).json()["state"] == "paused"
        # The late pair join after the resume, then miss several turns.
        await late_ws.connect_ws(address, token, None)
        late_sse.connect_sse(sse_http, token, None)
        assert (await http.post(f"/v1/session/{session['token']}/resume")).status_code == 200
        for watcher in (late_ws, late_sse):
            await watcher.wait_type("bot_message", 1)
            await watcher.drop()
        pacer = Watcher("pacer")
        await pacer.connect_ws(address, token, None)
        await pacer.wait_type("bot_message", 4)  # several turns go by while they are away
        await early_ws.connect_ws(address, token, early_ws.last_seq)
        early_sse.connect_sse(sse_http, token, early_sse.last_seq)
        await through_ws.connect_ws(address, token, through_ws.last_seq)
        await late_ws.connect_ws(address, token, late_ws.last_seq)
        late_sse.connect_sse(sse_http, token, late_sse.last_seq)
        for watcher in [*everyone, pacer]:
            await watcher.wait_type("session_end")
            await watcher.drop()
        history = (await http.get(f"/v1/session/{token}/history")).json()["messages"]
    finally:
        for watcher in everyone:
            with contextlib.suppress(Exception):
                await watcher.drop()
        await http.aclose()
        await sse_http.aclose()
        await server.stop()

    final = {m["turn"]: m["content"] for m in history if m["status"] == "complete"}
    assert [m["turn"] for m in history] == list(range(1, len(history) + 1))
    assert sum(1 for m in history if m["kind"] == "bot") == 16
    stored = stored_events(tmp_path / "fellowship.db", session["id"])
    for watcher in everyone:
        assert watcher.view() == final, watcher.name
        # Every reconnect was a replay, not a fresh history: the kept events sufficed.
        assert [e["type"] for e in watcher.events].count("history") == 1, watcher.name
        # Everything a member was shown is in the store, byte for byte.
        for event in watcher.events:
            if event["type"] != "history":
                assert json.loads(stored[event["seq"]]) == event, (watcher.name, event["seq"])
    # The events table kept growing after the restart, up to the session's end.
    assert max(stored) == max(e["seq"] for e in pacer.events)


async def test_usage_totals_in_status_survive_a_sigkill(tmp_path: Path, mock: MockLLM) -> None:
    server = ServeProcess(tmp_path, mock.base_url)
    address = await server.start()
    http = httpx.AsyncClient(base_url=f"http://{address}", timeout=WAIT_SECONDS)
    try:
        session = await create(http, spec_dict(max_turns=5))
        watcher = await ws_join(f"ws://{address}", session["observer_token"])
        await watcher.wait_type("session_end")
        before = (await http.get(f"/v1/session/{session['token']}")).json()["tokens"]
        await server.kill()
        await http.aclose()
        address = await server.start()
        http = httpx.AsyncClient(base_url=f"http://{address}", timeout=WAIT_SECONDS)
        after = (await http.get(f"/v1/session/{session['token']}")).json()["tokens"]
    finally:
        await http.aclose()
        await server.stop()
    assert before["backend_prompt"] > 0 and before["backend_completion"] > 0
    assert set(before["by_bot"]) == {"Alice", "Bob", "Carol"}
    assert after == before
