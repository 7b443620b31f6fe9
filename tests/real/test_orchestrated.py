"""Orchestrated turn order against a server that returns real tool calls.

llama-cpp-python's `chatml-function-calling` format turns the model's output into
OpenAI `tool_calls`. Each routing decision is reported in an `orchestrator` debug
event with the rung of the robustness ladder that produced it; the run records them.
The session is run once per test run and shared by the tests below.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from engine.orchestrator import SELECT_SPEAKER
from tests.real.conftest import (
    CAST,
    TEST_TIMEOUT,
    CallRecord,
    EngineFactory,
    RealBackend,
    check_clean_replies,
    check_coherent,
    describe,
    real_spec,
    run_session,
)

pytestmark = [pytest.mark.real, pytest.mark.timeout(TEST_TIMEOUT)]

TURNS = 6
ROSTER = [name for name, _ in CAST]
RUNGS = {"tool_call", "fuzzy_tool_call", "text", "retry", "round_robin"}
FROM_A_TOOL_CALL = {"tool_call", "fuzzy_tool_call"}


@dataclass
class Routed:
    """What an orchestrated session showed: its decisions and the calls behind them."""

    decisions: list[dict[str, Any]]
    speakers: list[str]
    calls: list[CallRecord]

    def first_replies(self) -> list[CallRecord]:
        """The first orchestrator call of each decision (a retry makes a second one)."""
        calls = iter(c for c in self.calls if c.purpose == "orchestrator")
        firsts = []
        for decision in self.decisions:
            firsts.append(next(calls))
            for _ in range(decision["attempts"] - 1):
                next(calls)
        return firsts


_routed: dict[str, Routed] = {}


async def routed_session(backend: RealBackend, engine_factory: EngineFactory) -> Routed:
    """Run the orchestrated session once per test run; check what needs the live engine."""
    if backend.name in _routed:
        return _routed[backend.name]
    engine = await engine_factory(backend)
    finished = await run_session(engine, real_spec(turn_order="orchestrated", max_turns=TURNS))
    decisions = [e.data for e in finished.of_type("debug") if e.category == "orchestrator"]
    describe(
        finished,
        backend,
        "orchestrated",
        stream=False,
        rungs=dict(Counter(d["rung"] for d in decisions)),
        decisions=[(d["bot"], d["rung"], d["attempts"], d["errors"]) for d in decisions],
    )
    check_coherent(finished, TURNS)
    check_clean_replies(finished)
    routed = Routed(decisions, [e.bot for e in finished.of_type("bot_message")], finished.calls)
    _routed[backend.name] = routed
    return routed


def named_bot(call: str) -> str | None:
    """The roster bot a `select_speaker(...)` call's arguments name, however malformed."""
    if not call.startswith(f"{SELECT_SPEAKER}("):
        return None
    found = [name for name in ROSTER if json.dumps(name) in call]
    return found[0] if len(found) == 1 else None


async def test_orchestrated_session_on_real_tool_calls_routes_every_turn_and_records_the_rung(
    function_calling_server: RealBackend, engine_factory: EngineFactory
) -> None:
    routed = await routed_session(function_calling_server, engine_factory)
    assert len(routed.decisions) == TURNS
    assert all(d["action"] == "speak" and d["bot"] in ROSTER for d in routed.decisions)
    assert {d["rung"] for d in routed.decisions} <= RUNGS
    assert routed.speakers == [d["bot"] for d in routed.decisions]
    orchestrator_calls = [c for c in routed.calls if c.purpose == "orchestrator"]
    assert [c.error for c in orchestrator_calls] == [None] * len(orchestrator_calls)
    # The server does answer with real tool calls (what the next test relies on).
    assert any(c.tool_calls for c in orchestrator_calls)


async def test_a_real_select_speaker_call_naming_a_bot_decides_the_turn(
    function_calling_server: RealBackend, engine_factory: EngineFactory
) -> None:
    routed = await routed_session(function_calling_server, engine_factory)
    usable = 0
    for decision, first in zip(routed.decisions, routed.first_replies(), strict=True):
        named = [bot for bot in map(named_bot, first.tool_calls) if bot is not None]
        if named:
            usable += 1
            assert (decision["rung"], decision["bot"]) in {(r, named[0]) for r in FROM_A_TOOL_CALL}
    assert usable > 0
