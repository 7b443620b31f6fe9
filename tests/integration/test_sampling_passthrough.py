"""Sampling settings from a spec reach the backend as sent fields, over the real API."""

from __future__ import annotations

from typing import Any

import httpx

from engine.llm.mock import MockLLM
from tests.integration.conftest import RunningServer, create_session, ws_join

SAMPLING_KEYS = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed")
EXTRA_KEYS = ("repeat_penalty", "repeat_last_n", "dry_multiplier", "dry_base", "top_k")


def sent(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in (*SAMPLING_KEYS, *EXTRA_KEYS) if key in body}


async def run(server: RunningServer, client: httpx.AsyncClient, spec: dict[str, Any]) -> None:
    created = await create_session(client, spec)
    observer = await ws_join(server, created["observer_token"], since=0)
    await observer.wait_closed()
    assert [e["reason"] for e in observer.of_type("session_end")] == ["max_turns"]


async def test_session_and_bot_sampling_are_sent_with_each_bots_calls(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM
) -> None:
    spec = {
        "sampling": {
            "temperature": 0.3,
            "top_p": 0.9,
            "frequency_penalty": 0.4,
            "seed": 11,
            "backend_options": {"repeat_penalty": 1.15, "dry_multiplier": 0.8},
        },
        "bots": [
            {
                "name": "Alice",
                "system_prompt": "You are Alice.",
                "temperature": 1.1,
                "presence_penalty": 0.5,
                "backend_options": {"repeat_penalty": 1.3, "top_k": 20},
            },
            {"name": "Bob", "system_prompt": "You are Bob."},
        ],
        "options": {"max_turns": 2},
    }

    await run(server, client, spec)

    alice, bob = mock.requests
    assert sent(alice.body) == {
        "temperature": 1.1,
        "top_p": 0.9,
        "frequency_penalty": 0.4,
        "presence_penalty": 0.5,
        "seed": 11,
        "repeat_penalty": 1.3,
        "dry_multiplier": 0.8,
        "top_k": 20,
    }
    assert sent(bob.body) == {
        "temperature": 0.3,
        "top_p": 0.9,
        "frequency_penalty": 0.4,
        "seed": 11,
        "repeat_penalty": 1.15,
        "dry_multiplier": 0.8,
    }
    assert (alice.top_p, alice.seed, bob.frequency_penalty) == (0.9, 11, 0.4)


async def test_without_sampling_settings_none_is_sent(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM
) -> None:
    spec = {"bots": [{"name": "Alice"}], "options": {"max_turns": 1}}

    await run(server, client, spec)

    [request] = mock.requests
    assert sent(request.body) == {}


async def test_orchestrator_calls_carry_no_bot_sampling(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM
) -> None:
    spec = {
        "sampling": {"top_p": 0.5, "seed": 3, "backend_options": {"repeat_penalty": 1.2}},
        "bots": [{"name": name} for name in ("Alice", "Bob", "Carol")],
        "options": {"max_turns": 2, "turn_order": "orchestrated"},
    }

    await run(server, client, spec)

    orchestrator = [r for r in mock.requests if r.response_format or r.tools]
    bots = [r for r in mock.requests if not (r.response_format or r.tools)]
    assert len(orchestrator) == len(bots) == 2
    assert all(sent(r.body) == {} for r in orchestrator)
    assert all(sent(r.body) == {"top_p": 0.5, "seed": 3, "repeat_penalty": 1.2} for r in bots)
