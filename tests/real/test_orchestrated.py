"""Orchestrated turn order against real servers: the orchestrator must really decide.

Each routing decision is reported in an `orchestrator` debug event with the rung of the
ladder that produced it. Nearly every decision must come from the model (structured
output, a tool call, or its text), not from the round-robin fallback:

- llama-cpp-python with `chatml-function-calling` answers real `tool_calls` (beside a
  legacy `function_call` with a wrong name, which must be ignored); run once with
  structured output off, to measure the tool-call rungs, and once as configured by
  default, where it refuses `json_schema` and honours `json_object` with a schema;
- llama-server takes a `json_schema` response format: every decision is structured.

Each session is run once per test run and shared by the tests below.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from engine.orchestrator.tools import END_SESSION, HOLD, SELECT_SPEAKER
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

TURNS = 12
ROSTER = [name for name, _ in CAST]
MODEL_RUNGS = {"structured_output", "tool_call", "fuzzy_tool_call", "text", "retry"}
RUNGS = {*MODEL_RUNGS, "round_robin"}
# The share of decisions that must come from the model rather than the fallback.
MODEL_SHARE = 0.9


@dataclass
class Routed:
    """What an orchestrated session showed: its decisions and the calls behind them."""

    decisions: list[dict[str, Any]]
    speakers: list[str]
    calls: list[CallRecord]

    @property
    def orchestrator_calls(self) -> list[CallRecord]:
        return [c for c in self.calls if c.purpose == "orchestrator"]

    def by_decision(self) -> list[list[CallRecord]]:
        """The orchestrator calls of each decision, in order."""
        calls = iter(self.orchestrator_calls)
        return [[next(calls) for _ in range(d["attempts"])] for d in self.decisions]

    def model_share(self) -> float:
        return sum(d["rung"] in MODEL_RUNGS for d in self.decisions) / len(self.decisions)


_routed: dict[tuple[str, str], Routed] = {}


async def routed_session(
    backend: RealBackend, engine_factory: EngineFactory, structured: str
) -> Routed:
    """Run the orchestrated session once per backend and setting; check what needs the
    live engine."""
    key = (backend.name, structured)
    if key in _routed:
        return _routed[key]
    engine = await engine_factory(backend, llm_structured_output=structured)
    finished = await run_session(engine, real_spec(turn_order="orchestrated", max_turns=TURNS))
    decisions = [e.data for e in finished.of_type("debug") if e.category == "orchestrator"]
    routed = Routed(decisions, [e.bot for e in finished.of_type("bot_message")], finished.calls)
    describe(
        finished,
        backend,
        f"orchestrated (structured output {structured})",
        stream=False,
        rungs=dict(Counter(d["rung"] for d in decisions)),
        model_share=round(routed.model_share(), 3),
        decisions=[
            (d["bot"], d["rung"], d["attempts"], d["errors"], d["structured_output"])
            for d in decisions
        ],
    )
    check_coherent(finished, TURNS)
    check_clean_replies(finished)
    assert len(decisions) == TURNS
    assert all(d["action"] == "speak" and d["bot"] in ROSTER for d in decisions)
    assert {d["rung"] for d in decisions} <= RUNGS
    assert [e.turn for e in finished.of_type("turn_start")] == list(range(1, TURNS + 1))
    _routed[key] = routed
    return routed


def named_bot(call: str) -> str | None:
    """The roster bot a recorded `select_speaker(...)` call names, if exactly one."""
    if not call.startswith(f"{SELECT_SPEAKER}("):
        return None
    found = [name for name in ROSTER if f'"{name}"' in call]
    return found[0] if len(found) == 1 else None


async def test_real_tool_calls_decide_nearly_every_turn_on_llama_cpp_python(
    function_calling_server: RealBackend, engine_factory: EngineFactory
) -> None:
    routed = await routed_session(function_calling_server, engine_factory, "off")
    assert routed.model_share() >= MODEL_SHARE, routed.decisions
    assert routed.speakers == [d["bot"] for d in routed.decisions]
    calls = routed.orchestrator_calls
    assert [c.error for c in calls] == [None] * len(calls)
    assert not any(c.structured for c in calls)
    # The server does answer with real tool calls, and only offered names are read: the
    # legacy function_call beside them (a wrong name) is never merged in.
    made = [call for c in calls for call in c.tool_calls]
    assert made, "the server made no tool call"
    offered = (SELECT_SPEAKER, HOLD, END_SESSION)
    assert all(call.split("(", 1)[0] in offered for call in made), made


async def test_a_real_select_speaker_call_naming_a_bot_decides_at_the_tool_call_rung(
    function_calling_server: RealBackend, engine_factory: EngineFactory
) -> None:
    routed = await routed_session(function_calling_server, engine_factory, "off")
    usable = 0
    for decision, calls in zip(routed.decisions, routed.by_decision(), strict=True):
        named = [bot for bot in map(named_bot, calls[0].tool_calls) if bot is not None]
        if named:
            usable += 1
            # Exactly right, not "fuzzy": the arguments are no longer doubled.
            assert (decision["rung"], decision["bot"]) == ("tool_call", named[0])
    assert usable > 0


async def test_structured_output_is_found_and_decides_on_llama_cpp_python(
    function_calling_server: RealBackend, engine_factory: EngineFactory
) -> None:
    routed = await routed_session(function_calling_server, engine_factory, "auto")
    assert routed.model_share() >= MODEL_SHARE, routed.decisions
    # It refuses json_schema (a 500 naming response_format) and honours json_object.
    first = routed.decisions[0]
    assert first["structured_output"] == "json_schema"
    assert first["errors"] == ["llm_server_error"]
    later = routed.decisions[1:]
    assert {d["structured_output"] for d in later} == {"json_object"}
    structured = [d for d in later if d["rung"] == "structured_output"]
    assert len(structured) >= MODEL_SHARE * len(later), later


async def test_structured_output_resolves_every_decision_on_llama_server(
    llama_server: RealBackend, engine_factory: EngineFactory
) -> None:
    routed = await routed_session(llama_server, engine_factory, "auto")
    assert [(d["rung"], d["structured_output"], d["attempts"]) for d in routed.decisions] == [
        ("structured_output", "json_schema", 1)
    ] * TURNS
    assert all(c.structured and c.error is None for c in routed.orchestrator_calls)
