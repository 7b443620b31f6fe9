"""A session whose backend is not there says so once and waits, instead of filling with tombstones.

The backend is an address where nothing listens, then a mock started on that very port.
Probes are counted (the loop's `answers`), so the tests can let many of them fail
before looking, with no timing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine import loop as loop_module
from engine.config import Settings
from engine.llm.client import Backend
from engine.llm.mock import Fault, MockLLM, MockReply
from engine.manager import SessionManager
from tests.support.engine import WAIT_SECONDS, make_settings, spec, watch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Probes:
    """Counts the loop's probes of the backend, letting a test wait for the n-th."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._changed = asyncio.Event()
        real = loop_module.answers

        async def counted(backend: Backend, settings: Settings) -> bool:
            result = await real(backend, settings)
            self.count += 1
            self._changed.set()
            return result

        monkeypatch.setattr(loop_module, "answers", counted)

    async def at_least(self, count: int) -> None:
        async def wait() -> None:
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), WAIT_SECONDS)


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> Probes:
    return Probes(monkeypatch)


@pytest.fixture
async def engine_on(tmp_path: Path) -> AsyncIterator[Callable[[int], SessionManager]]:
    managers: list[SessionManager] = []

    def make(port: int) -> SessionManager:
        manager = SessionManager(
            make_settings(
                tmp_path,
                f"http://127.0.0.1:{port}/v1",
                backend_retry_seconds=0.01,
                backend_retry_max_seconds=0.02,
            )
        )
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.close()


async def test_an_unreachable_backend_is_reported_once_and_the_turn_waits_for_it(
    engine_on: Callable[[int], SessionManager], probes: Probes
) -> None:
    port = free_port()
    manager = engine_on(port)
    await manager.start()
    created = await manager.create(spec(["Alice", "Bob"], max_turns=2))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.wait_type("error")
    await probes.at_least(6)
    errors = watcher.of_type("error")
    assert [(e.code, e.turn) for e in errors] == [("backend_unreachable", 1)]
    assert "cannot be reached" in errors[0].message
    assert f"127.0.0.1:{port}" in errors[0].message
    assert watcher.of_type("turn_end") == []  # no tombstone: the slot is held
    assert [m.status for m in manager.history(handle)] == ["reserved"]
    # Status keeps saying why, for whoever connects after the one error event.
    assert manager.status(handle).backend_outage == errors[0].message
    async with MockLLM(port=port):
        await asyncio.wait_for(handle.loop.ended.wait(), WAIT_SECONDS)
    await watcher.until_closed()
    assert manager.status(handle).backend_outage is None
    assert [e.code for e in watcher.of_type("error")] == ["backend_unreachable"]
    assert [(e.turn, e.status) for e in watcher.of_type("turn_end")] == [
        (1, "complete"),
        (2, "complete"),
    ]
    history = manager.history(handle)
    assert [(m.speaker, m.status) for m in history] == [("Alice", "complete"), ("Bob", "complete")]
    assert history[0].content.startswith("Alice answers")


async def test_pausing_during_an_outage_gives_the_turn_up_without_a_second_error(
    engine_on: Callable[[int], SessionManager], probes: Probes
) -> None:
    port = free_port()
    manager = engine_on(port)
    await manager.start()
    created = await manager.create(spec(["Alice", "Bob"], max_turns=3))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.wait_type("error")
    await manager.pause(handle)
    await watcher.wait_type("turn_end")
    paused = handle.loop.wait_until(lambda loop: loop.loop_state == "paused")
    await asyncio.wait_for(paused, WAIT_SECONDS)
    assert [e.code for e in watcher.of_type("error")] == ["backend_unreachable"]
    assert [(e.turn, e.status) for e in watcher.of_type("turn_end")] == [(1, "failed")]
    async with MockLLM(port=port):
        await manager.resume(handle)
        await asyncio.wait_for(handle.loop.ended.wait(), WAIT_SECONDS)
    statuses = [m.status for m in manager.history(handle)]
    assert statuses == ["failed", "complete", "complete"]


async def test_a_backend_that_answers_but_fails_the_call_still_gives_a_tombstone(
    engine_on: Callable[[int], SessionManager],
) -> None:
    async with MockLLM() as mock:
        mock.enqueue(MockReply(fault=Fault.DROP))
        manager = engine_on(mock.port)
        await manager.start()
        created = await manager.create(spec(["Alice", "Bob"], max_turns=2))
        handle = manager.open(created.token)
        watcher = watch(manager, handle)
        await asyncio.wait_for(handle.loop.ended.wait(), WAIT_SECONDS)
        await watcher.until_closed()
    assert [(e.code, e.turn) for e in watcher.of_type("error")] == [("llm_connection", 1)]
    assert [m.status for m in manager.history(handle)] == ["failed", "complete"]

