"""The embedded backend's supervisor, against real child processes standing in for llama-server.

The child is `tests/support/fake_llama_server.py` (its `/health` says 503 until a file
exists, so the test decides when it is "loaded"), or a command that exits at once, or
one that never answers. Waits are for reported states, bounded by WAIT_SECONDS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import httpx
import pytest

from engine.embedded.supervisor import ChildState, Supervisor, Timings
from tests.support.engine import WAIT_SECONDS

FAKE = Path(__file__).resolve().parents[1] / "support" / "fake_llama_server.py"

FAST = Timings(
    start_timeout=WAIT_SECONDS / 2,
    health_interval=0.05,
    restart_delay=0.05,
    restart_max_delay=0.2,
    stop_timeout=WAIT_SECONDS / 2,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Watched:
    """A supervisor and every `(state, detail)` it reported."""

    def __init__(self, command: Sequence[str], port: int, timings: Timings = FAST) -> None:
        self.states: list[tuple[ChildState, str]] = []
        self._changed = asyncio.Event()
        self.supervisor = Supervisor(
            "fake-llama", command, f"http://127.0.0.1:{port}/health", timings, self._on_state
        )

    def _on_state(self, state: ChildState, detail: str, answers: bool) -> None:
        self.states.append((state, detail))
        self._changed.set()

    @property
    def names(self) -> list[ChildState]:
        return [state for state, _ in self.states]

    async def until(self, predicate: Callable[[Watched], bool]) -> None:
        async def wait() -> None:
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), WAIT_SECONDS)


@pytest.fixture
async def watched() -> AsyncIterator[list[Watched]]:
    made: list[Watched] = []
    yield made
    for entry in made:
        await entry.supervisor.stop()


def fake_command(port: int) -> list[str]:
    return [sys.executable, str(FAKE), "--host", "127.0.0.1", "--port", str(port)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_child_is_started_and_reported_ready_only_once_its_health_answers(
    watched: list[Watched], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready_file = tmp_path / "loaded"
    monkeypatch.setenv("FAKE_LLAMA_READY_FILE", str(ready_file))
    monkeypatch.setenv("FAKE_LLAMA_PID_FILE", str(tmp_path / "pid"))
    port = free_port()
    entry = Watched(fake_command(port), port)
    watched.append(entry)
    entry.supervisor.start()
    # It listens (it wrote its pid once bound; another process, so no event to wait on)
    # and says 503 "loading": still starting.
    async with asyncio.timeout(WAIT_SECONDS):
        while not (tmp_path / "pid").exists():  # noqa: ASYNC110
            await asyncio.sleep(FAST.health_interval)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 503
    assert entry.names == ["starting"]
    ready_file.touch()
    await entry.until(lambda w: "ready" in w.names)
    assert entry.names == ["starting", "ready"]
    assert entry.supervisor.starts == 1


async def test_a_child_that_dies_is_restarted_and_answers_again(watched: list[Watched]) -> None:
    port = free_port()
    entry = Watched(fake_command(port), port)
    watched.append(entry)
    entry.supervisor.start()
    await entry.until(lambda w: "ready" in w.names)
    first = entry.supervisor.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await entry.until(lambda w: w.names.count("ready") == 2)
    assert entry.names == ["starting", "ready", "restarting", "starting", "ready"]
    restarting = dict(entry.states)["restarting"]
    assert "was killed by SIGKILL" in restarting
    assert entry.supervisor.starts == 2
    second = entry.supervisor.pid
    assert second is not None and second != first and not alive(first)


async def test_a_child_that_keeps_failing_is_restarted_with_growing_waits(
    watched: list[Watched],
) -> None:
    port = free_port()
    entry = Watched([sys.executable, "-c", "raise SystemExit(3)"], port)
    watched.append(entry)
    entry.supervisor.start()
    await entry.until(lambda w: w.names.count("restarting") >= 4)
    details = [detail for state, detail in entry.states if state == "restarting"]
    assert all("exited with status 3 while starting" in d for d in details)
    waits = [float(d.rsplit("restarting in ", 1)[1].removesuffix(" s")) for d in details[:4]]
    assert waits == [0.05, 0.1, 0.2, 0.2]  # doubling, capped at restart_max_delay


async def test_a_child_that_never_answers_is_killed_and_started_again(
    watched: list[Watched],
) -> None:
    port = free_port()
    timings = FAST.model_copy(update={"start_timeout": 0.3})
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    entry = Watched(sleeper, port, timings)
    watched.append(entry)
    entry.supervisor.start()
    await entry.until(lambda w: "starting" in w.names)
    first = entry.supervisor.pid
    assert first is not None
    await entry.until(lambda w: "restarting" in w.names)
    assert "did not answer within 0.3 s of starting" in dict(entry.states)["restarting"]
    assert not alive(first)


async def test_a_command_that_cannot_start_fails_with_its_reason_and_is_not_retried(
    watched: list[Watched], tmp_path: Path
) -> None:
    port = free_port()
    entry = Watched([str(tmp_path / "no-such-llama-server")], port)
    watched.append(entry)
    await asyncio.wait_for(entry.supervisor.run(), WAIT_SECONDS)
    assert entry.names == ["failed"]
    assert "cannot start fake-llama" in entry.states[-1][1]
    assert "No such file" in entry.states[-1][1]


async def test_stop_ends_the_child_and_reports_stopped(watched: list[Watched]) -> None:
    port = free_port()
    entry = Watched(fake_command(port), port)
    entry.supervisor.start()
    await entry.until(lambda w: "ready" in w.names)
    pid = entry.supervisor.pid
    assert pid is not None
    await entry.supervisor.stop()
    assert entry.names[-1] == "stopped"
    assert "restarting" not in entry.names  # a stop is not a crash
    assert not alive(pid)
    assert entry.supervisor.pid is None
