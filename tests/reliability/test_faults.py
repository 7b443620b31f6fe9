"""Every fault the mock backend can inject, during live sessions with members connected.

Each test runs a collaborative session (a talker, a WebSocket observer and an SSE
observer all connected before the first message) while the mock misbehaves on about
half of its replies. Whatever the fault: the session goes on to its `max_turns`, every
failed turn is a tombstone announced by an `error` and a failed `turn_end`, the
members all receive the same gapless stream, the stored positions are gapless, and no
reply that reaches the history carries the fault's debris.

The disk can fail too: a write that cannot be stored (the database capped at its size,
as a full disk would) ends the session with reason `error`, told to every member, and
every message event any member received is in the file.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from engine.llm.mock import Fault, MockLLM, MockReply
from engine.store.sqlite import SqliteStore
from engine.store.timed import TimedStore
from tests.integration.conftest import (
    RunningServer,
    ServerFactory,
    WsMember,
    check_stream,
    create_session,
    spec_dict,
    ws_join,
)
from tests.reliability.conftest import (
    assert_gapless_positions,
    history_of,
    session_part,
    sse_join,
    stop_sse,
)
from tests.support.engine import WAIT_SECONDS

FAULT_RATE = 0.5
MAX_TURNS = 10
# Seconds a call may take before it counts as failed: only the endless stream needs it,
# and it keeps that test short. Not a speed check: a slow call just fails the turn.
CALL_TIMEOUT = 1.0
DISK_GROWTH = 1000  # how far the database may grow again once the disk "has room"

FAILING = {
    Fault.HTTP_500,
    Fault.HTTP_503,
    Fault.HTTP_429,
    Fault.DROP,
    Fault.CUT_STREAM,
    Fault.MALFORMED_JSON,
    Fault.EMPTY_CHOICES,
    Fault.ENDLESS_STREAM,
}
BOTS = ["Alice", "Bob", "Carol"]
TALKER = "Dana"
NAMES = [*BOTS, TALKER, "Someone"]  # the mock impersonates "Someone" when nobody is named


def debris(content: str, speaker: str) -> list[str]:
    """What a cleaned reply must not contain, found in `content` (empty when clean)."""
    found = []
    if "<think>" in content or "</think>" in content:
        found.append("think tag")
    for name in NAMES:
        if re.match(rf"\s*{re.escape(name)}\s*:", content):
            found.append(f"leading {name}:")
        if name != speaker and re.search(rf"\n\s*{re.escape(name)}\s*:", content):
            found.append(f"line as {name}")
    return found


async def run_session_with_fault(
    server_factory: ServerFactory,
    mock: MockLLM,
    fault: Fault,
    settings: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run a full session under `fault`; return what every member saw and what was stored."""
    server = await server_factory(
        llm_timeout=CALL_TIMEOUT, llm_read_timeout=CALL_TIMEOUT, **(settings or {})
    )
    mock.set_faults([f"{fault.value}:{FAULT_RATE}"])
    sse_timeout = httpx.Timeout(WAIT_SECONDS, read=None)
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client,
        httpx.AsyncClient(base_url=server.base_url, timeout=sse_timeout) as sse_http,
    ):
        spec = spec_dict(
            BOTS, participation="collaborative", max_turns=MAX_TURNS, debug=True, **options
        )
        created = await create_session(client, spec)
        talker = await ws_join(server, created["token"], role="talker", name=TALKER)
        watcher = await ws_join(server, created["observer_token"], name="watcher")
        reader = await sse_join(sse_http, created["observer_token"], name="reader")
        members: list[WsMember] = [talker, watcher]
        try:
            await watcher.wait_for(lambda m: m.presence() == ([TALKER], 2))  # reader counted
            await talker.say("Coffee or tea?")
            await talker.wait_type("bot_message")
            await talker.say("And what about cocoa?")  # lands mid-conversation
            for member in members:
                await member.wait_closed()
            await reader.wait_closed()
        finally:
            await stop_sse(reader)
            for member in members:
                if not member.closed:
                    await member.close()
        history = await history_of(client, created["token"])
    return {"talker": talker, "watcher": watcher, "reader": reader, "history": history}


def assert_session_went_on(outcome: dict[str, Any]) -> None:
    """The checks every fault must pass."""
    talker, watcher, reader = outcome["talker"], outcome["watcher"], outcome["reader"]
    history = outcome["history"]

    # It ran to its end, and said why.
    end = talker.events[-1]
    assert end["type"] == "session_end", [e["type"] for e in talker.events[-5:]]
    assert end["reason"] == "max_turns"

    # Positions: gapless, every bot turn either a reply or a tombstone, both talker lines kept.
    assert_gapless_positions(history)
    assert sum(1 for m in history if m["kind"] == "bot") == MAX_TURNS
    assert [m["content"] for m in history if m["kind"] == "talker"] == [
        "Coffee or tea?",
        "And what about cocoa?",
    ]
    for message in history:
        if message["kind"] == "bot":
            assert (message["status"] == "complete") == bool(message["content"]), message

    # Nothing broadcast was lost: each member's stream is gapless and all agree.
    for member in (talker, watcher):
        check_stream(member.events)
    start = max(talker.events[0]["seq"], watcher.events[0]["seq"], reader.events[0]["seq"])
    reference = session_part(talker.events, start)
    assert session_part(watcher.events, start) == reference
    assert session_part(reader.events, start) == reference
    assert reference[-1]["type"] == "session_end"

    # Events say what happened: every tombstone has its error, then a failed turn_end.
    failed_turns = [m["turn"] for m in history if m["status"] == "failed"]
    for turn in failed_turns:
        kinds = [e["type"] for e in talker.events if e.get("turn") == turn]
        assert "error" in kinds and kinds[-1] == "turn_end", (turn, kinds)
        turn_end = [e for e in talker.events if e["type"] == "turn_end" and e["turn"] == turn]
        assert turn_end[-1]["status"] == "failed"
    # ... and every reply in the history was broadcast as such.
    said = {e["turn"]: e["content"] for e in talker.of_type("bot_message")}
    replies = [m for m in history if m["kind"] == "bot" and m["status"] == "complete"]
    assert said == {m["turn"]: m["content"] for m in replies}
    # Replies that reached the history are clean, whatever the backend sent.
    for message in history:
        if message["status"] == "complete" and message["kind"] == "bot":
            assert debris(message["content"], message["speaker"]) == [], message


@pytest.mark.parametrize("fault", sorted(FAILING), ids=lambda f: f.value)
async def test_a_failing_backend_leaves_announced_tombstones_and_the_session_goes_on(
    server_factory: ServerFactory, mock: MockLLM, fault: Fault
) -> None:
    outcome = await run_session_with_fault(server_factory, mock, fault)
    assert_session_went_on(outcome)
    history = outcome["history"]
    assert any(m["status"] == "failed" for m in history), "the fault never struck"
    errors = [e for e in outcome["talker"].of_type("error") if e.get("turn") is not None]
    assert errors and all(e["code"].startswith("llm_") for e in errors), errors


@pytest.mark.parametrize(
    "fault",
    [Fault.THINK, Fault.REASONING, Fault.NAME_PREFIX, Fault.OWN_NAME_PREFIX, Fault.IMPERSONATE],
    ids=lambda f: f.value,
)
async def test_a_reply_with_debris_reaches_members_clean(
    server_factory: ServerFactory, mock: MockLLM, fault: Fault
) -> None:
    outcome = await run_session_with_fault(server_factory, mock, fault)
    assert_session_went_on(outcome)
    # The fault did strike, and some replies survived the cleaning.
    assert any(m["status"] == "complete" for m in outcome["history"] if m["kind"] == "bot")
    if fault in (Fault.THINK, Fault.REASONING):
        reasoning = [
            e
            for e in outcome["talker"].of_type("debug")
            if e["category"] == "llm_call" and e["data"].get("reasoning")
        ]
        assert reasoning, "the reasoning was neither shown nor kept for debug"


@pytest.mark.parametrize(
    "fault",
    [f for f in Fault if f.needs_tools],
    ids=lambda f: f.value,
)
async def test_an_orchestrator_that_answers_badly_never_stalls_the_session(
    server_factory: ServerFactory, mock: MockLLM, fault: Fault
) -> None:
    # Tool faults strike tool-call requests: the structured-output rung is left out.
    outcome = await run_session_with_fault(
        server_factory,
        mock,
        fault,
        settings={"llm_structured_output": "off"},
        turn_order="orchestrated",
    )
    assert_session_went_on(outcome)
    talker = outcome["talker"]
    decisions = [e for e in talker.of_type("debug") if e["category"] == "orchestrator"]
    assert decisions, "no orchestrator decision was reported"
    assert {e["bot"] for e in talker.of_type("turn_start")} <= set(BOTS)
    rungs = {e["data"]["rung"] for e in decisions}
    if fault is not Fault.TOOL_VALID:
        # The bad answers were met and read further down the ladder.
        assert rungs - {"tool_call"}, rungs


async def test_a_backend_that_ignores_structured_output_falls_back_to_tool_calls(
    server_factory: ServerFactory, mock: MockLLM
) -> None:
    outcome = await run_session_with_fault(
        server_factory, mock, Fault.STRUCTURED_IGNORED, turn_order="orchestrated"
    )
    assert_session_went_on(outcome)
    decisions = [e for e in outcome["talker"].of_type("debug") if e["category"] == "orchestrator"]
    rungs = [e["data"]["rung"] for e in decisions]
    # Ignored on about half the calls: those went on to the tool call, the rest were JSON.
    assert "structured_output" in rungs and "tool_call" in rungs, rungs


async def test_every_fault_mode_is_covered_by_a_test() -> None:
    tool_faults = {f for f in Fault if f.needs_tools}
    text_faults = {Fault.THINK, Fault.REASONING, Fault.NAME_PREFIX}
    text_faults |= {Fault.OWN_NAME_PREFIX, Fault.IMPERSONATE}
    schema_faults = {f for f in Fault if f.needs_schema}
    assert set(Fault) == FAILING | text_faults | tool_faults | schema_faults


# --- the disk fails ---------------------------------------------------------------------------


async def fill_the_disk(server: RunningServer) -> Callable[[], Awaitable[None]]:
    """Cap the database at its current size, so the next write that needs a page fails
    as `disk_full`; return what lifts the cap again."""
    timed = server.manager.deps.store
    assert isinstance(timed, TimedStore)  # the manager times the writes of its store
    store = timed.inner
    assert isinstance(store, SqliteStore)
    conn = store._conn
    assert conn is not None
    ((pages,),) = await conn.execute_fetchall("PRAGMA page_count")
    await conn.execute_fetchall(f"PRAGMA max_page_count = {pages}")

    async def lift() -> None:
        await conn.execute_fetchall(f"PRAGMA max_page_count = {pages * DISK_GROWTH}")

    return lift


@pytest.mark.parametrize("writer", ["bot", "talker"])
async def test_a_write_that_fails_ends_the_session_and_loses_nothing_broadcast(
    server_factory: ServerFactory, mock: MockLLM, writer: str
) -> None:
    server = await server_factory()
    sse_timeout = httpx.Timeout(WAIT_SECONDS, read=None)
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client,
        httpx.AsyncClient(base_url=server.base_url, timeout=sse_timeout) as sse_http,
    ):
        created = await create_session(client, spec_dict(BOTS, participation="reactive"))
        talker = await ws_join(server, created["token"], role="talker", name=TALKER)
        watcher = await ws_join(server, created["observer_token"], name="watcher")
        reader = await sse_join(sse_http, created["observer_token"], name="reader")
        try:
            await watcher.wait_for(lambda m: m.presence() == ([TALKER], 2))  # reader counted
            await talker.say("Coffee or tea?")
            await talker.wait_type("turn_end")
            lift = await fill_the_disk(server)
            # Too big for the pages left: this write is the one that fails.
            big = "tea " * (server.settings.max_message_chars // len("tea "))
            if writer == "bot":
                mock.enqueue(MockReply(content=big))
                await talker.say("Why?")
            else:
                await talker.say(big)
            for member in (talker, watcher):
                await member.wait_closed()
            await reader.wait_closed()
            await lift()
        finally:
            await stop_sse(reader)
            for member in (talker, watcher):
                if not member.closed:
                    await member.close()
        status = (await client.get(f"/v1/session/{created['token']}")).json()
    assert (status["state"], status["end_reason"]) == ("ended", "error")

    # Every member was told, the same way, and nothing it was told is missing from the
    # file: each message event names a position that is stored with that very text.
    start = max(talker.events[0]["seq"], watcher.events[0]["seq"], reader.events[0]["seq"])
    reference = session_part(talker.events, start)
    assert session_part(watcher.events, start) == reference
    assert session_part(reader.events, start) == reference
    assert reference[-1]["type"] == "session_end" and reference[-1]["reason"] == "error"
    check_stream(watcher.events)
    stored = await server.manager.deps.store.load_messages(created["id"])
    assert [m.turn for m in stored] == list(range(1, len(stored) + 1))
    by_turn = {m.turn: m for m in stored}
    for event in talker.of_type("talker_message", "bot_message"):
        message = by_turn[event["turn"]]
        assert (message.content, message.status) == (event["content"], "complete")
    assert big not in [m.content for m in stored]
