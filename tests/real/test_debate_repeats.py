"""A seeded debate on a real model repeats itself less with the duplicate guard on.

A 135M model in a three-bot debate soon answers with a message that was already said
("You've done it all." from one bot after another). The same seeded 15-turn debate is
run twice on llama-server, with the guard off (`DUPLICATE_WINDOW=0`) and as configured
by default; the guard asks again, with a nudge and repetition penalties, whenever a
reply repeats a recent message, so fewer stored replies are exact repeats.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.spec.models import SessionSpec
from tests.real.conftest import (
    REPLY_TOKENS,
    TEST_TIMEOUT,
    EngineFactory,
    Finished,
    RealBackend,
    check_clean_replies,
    check_coherent,
    describe,
    exact_duplicates,
    run_session,
)

pytestmark = [pytest.mark.real, pytest.mark.timeout(TEST_TIMEOUT)]

TURNS = 15
SEED = 7
# Low enough that the small model falls into loops, as it does in longer debates.
TEMPERATURE = 0.2
DEBATERS = (
    ("Alice", "You are for it: more rest, happier people."),
    ("Bob", "You are against it: shops and customers need people on Fridays."),
    ("Carol", "You are the referee: you ask each side a short question."),
)


def debate_spec() -> SessionSpec:
    return SessionSpec.model_validate(
        {
            "name": "seeded debate",
            "system_prompt": "Three friends argue about whether to work four days a week. "
            "Reply in one or two short sentences.",
            "sampling": {"temperature": TEMPERATURE, "seed": SEED},
            "bots": [
                {"name": name, "system_prompt": prompt, "max_tokens": REPLY_TOKENS}
                for name, prompt in DEBATERS
            ],
            "options": {"max_turns": TURNS, "debug": True},
        }
    )


async def debate(backend: RealBackend, engine_factory: EngineFactory, guard: bool) -> Finished:
    overrides: dict[str, Any] = {} if guard else {"duplicate_window": 0}
    engine = await engine_factory(backend, **overrides)
    finished = await run_session(engine, debate_spec())
    describe(finished, backend, f"debate (duplicate guard {'on' if guard else 'off'})")
    check_coherent(finished, TURNS, [name for name, _ in DEBATERS])
    check_clean_replies(finished, [name for name, _ in DEBATERS])
    return finished


async def test_a_seeded_debate_has_fewer_exact_repeats_with_the_guard(
    llama_server: RealBackend, engine_factory: EngineFactory
) -> None:
    unguarded = await debate(llama_server, engine_factory, guard=False)
    guarded = await debate(llama_server, engine_factory, guard=True)

    before, after = exact_duplicates(unguarded), exact_duplicates(guarded)
    assert len(after) < len(before), (before, after)
    # The guard did its work by asking again, with penalties.
    retried = [c for c in guarded.calls if c.retry]
    assert retried
    repeats = [
        e.data for e in guarded.of_type("debug") if e.category == "hygiene" and e.data["repeats"]
    ]
    assert repeats
