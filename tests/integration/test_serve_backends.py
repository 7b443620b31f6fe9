"""`fellowship serve` as a real process, with each kind of default backend it can run.

- `--mock`: the built-in mock, in-process, answering like a conversation;
- an empty LLM_BASE_URL with a built cache: the embedded backend, supervised (here the
  cache's `llama-server` is `tests/support/fake_llama_server.py`, and the model a stub);
- an empty LLM_BASE_URL and no build tools: the build fails and says what to do.

The real llama-server and model run in `tests/real/test_embedded_backend.py`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from itertools import pairwise
from pathlib import Path

import httpx
import pytest

from engine.embedded.recipe import RECIPE, CachePaths
from tests.integration.conftest import ws_join
from tests.support.engine import WAIT_SECONDS
from tests.support.fake_llama_server import REPLY
from tests.support.served import REPO, Served, alive, start_serve

FAKE_LLAMA = REPO / "tests" / "support" / "fake_llama_server.py"
ECHO = re.compile(r"^\w+ answers \w+:")


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """`await serve(*args, **env)`: `fellowship serve` in this test's folder; killed after."""
    started: list[Served] = []

    async def start(*args: str, **env: str) -> Served:
        served = await start_serve(
            tmp_path, *args, LOCAL_BACKEND_HEALTH_INTERVAL="0.05", **env
        )
        started.append(served)
        return served

    yield start
    for served in started:
        await served.kill()


def fake_cache(tmp_path: Path) -> CachePaths:
    """A cache holding a "built" llama-server: the fake, stamped with today's recipe."""
    paths = CachePaths(root=tmp_path / "cache")
    paths.binary.parent.mkdir(parents=True)
    paths.binary.write_text(f"#!{sys.executable}\nimport runpy\n"
                            f"runpy.run_path({str(FAKE_LLAMA)!r}, run_name='__main__')\n")
    paths.binary.chmod(0o755)
    paths.stamp.write_text(RECIPE + "\n")
    return paths


async def test_serve_mock_runs_a_conversation_that_reads_like_one(serve: Serve) -> None:
    served = await serve("--mock", MOCK_FIRST_TOKEN_MS="0", MOCK_TOKEN_MS="0")
    backend = await served.backend_until(lambda b: b["state"] == "ready")
    assert (backend["kind"], backend["model"], backend["answers"]) == ("mock", "mock", True)
    async with httpx.AsyncClient(base_url=served.base_url, timeout=WAIT_SECONDS) as http:
        created = (
            await http.post(
                "/v1/session/create?library=debate", json={"options": {"max_turns": 4}}
            )
        ).json()
    observer = await ws_join(served.ws_url, created["observer_token"])
    await observer.wait_type("session_end")
    replies = [(e["bot"], e["content"]) for e in observer.of_type("bot_message")]
    assert [bot for bot, _ in replies] == ["Priya", "Marcus", "Chair", "Priya"]
    assert all(text and not ECHO.match(text) for _, text in replies)
    # From the second turn on, each answers the one before it by name.
    assert all(previous in text for (previous, _), (_, text) in pairwise(replies))
    assert await served.stop() == 0
    assert "LLM backend: the built-in mock" in served.output


async def test_serve_with_no_llm_base_url_runs_and_stops_the_embedded_backend(
    serve: Serve, tmp_path: Path
) -> None:
    paths = fake_cache(tmp_path)
    model = tmp_path / "Tiny-Model.Q4_0.gguf"
    model.write_bytes(b"GGUF")
    pid_file = tmp_path / "llama.pid"
    served = await serve(
        LLM_BASE_URL="",
        FELLOWSHIP_REAL_CACHE=str(paths.root),
        LOCAL_MODEL_PATH=str(model),
        FAKE_LLAMA_PID_FILE=str(pid_file),
    )
    backend = await served.backend_until(lambda b: b["state"] == "ready")
    assert (backend["kind"], backend["model"], backend["answers"]) == (
        "embedded",
        "Tiny-Model.Q4_0",
        True,
    )
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", backend["base_url"])
    async with httpx.AsyncClient(base_url=served.base_url, timeout=WAIT_SECONDS) as http:
        spec = {"bots": [{"name": "Ann"}, {"name": "Ben"}], "options": {"max_turns": 2}}
        created = (await http.post("/v1/session/create", json=spec)).json()
    observer = await ws_join(served.ws_url, created["observer_token"])
    await observer.wait_type("session_end")
    assert [e["content"] for e in observer.of_type("bot_message")] == [REPLY, REPLY]
    child = int(pid_file.read_text())
    assert alive(child)
    assert await served.stop() == 0
    assert not alive(child)
    # The child's own output goes to the log file, not to the terminal.
    logged = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "fake llama-server listening" in logged
    assert "fake llama-server listening" not in served.output


async def test_a_failed_build_is_explained_on_the_terminal_healthz_and_create(
    serve: Serve, tmp_path: Path
) -> None:
    empty = tmp_path / "no-tools"
    empty.mkdir()
    served = await serve(
        LLM_BASE_URL="",
        FELLOWSHIP_REAL_CACHE=str(tmp_path / "cache"),
        PATH=str(empty),
        CXX="",
        CC="",
    )
    backend = await served.backend_until(lambda b: b["state"] == "failed")
    assert backend["kind"] == "embedded" and backend["answers"] is False
    for words in ("missing CMake", "a C++ compiler", "LLM_BASE_URL", "Ollama", "LM Studio"):
        assert words in backend["detail"]
    async with httpx.AsyncClient(base_url=served.base_url, timeout=WAIT_SECONDS) as http:
        refused = await http.post("/v1/session/create?library=debate")
    assert (refused.status_code, refused.json()["code"]) == (503, "backend_failed")
    assert await served.stop() == 0
    assert "missing CMake" in served.output
