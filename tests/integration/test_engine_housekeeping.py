"""Housekeeping on a clock the test moves: idle timeouts and the retention of ended sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.errors import NotFound
from engine.llm.mock import MockLLM
from engine.manager import SessionManager
from tests.support.clock import ManualClock
from tests.support.engine import make_settings, spec

RETENTION = 100


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def manager(
    tmp_path: Path, mock: MockLLM, clock: ManualClock
) -> AsyncIterator[SessionManager]:
    # The timer never fires during a test: each sweep is the test's own call.
    settings = make_settings(tmp_path, mock.base_url, ended_retention_seconds=RETENTION)
    manager = SessionManager(settings, clock=clock, housekeeping_interval=3600)
    await manager.start()
    yield manager
    await manager.close()


async def test_a_sweep_ends_a_session_left_alone_for_its_ttl(
    manager: SessionManager, clock: ManualClock
) -> None:
    handle = manager.open(
        (await manager.create(spec(["A"], participation="reactive", ttl=60))).token
    )
    clock.advance(59)
    await manager.sweep()
    assert handle.loop.state == "active"
    clock.advance(1)
    await manager.sweep()
    assert handle.loop.state == "ended"
    assert handle.session.record.end_reason == "idle_timeout"


async def test_a_connected_member_keeps_a_session_from_idling_out(
    manager: SessionManager, clock: ManualClock
) -> None:
    handle = manager.open(
        (await manager.create(spec(["A"], participation="reactive", ttl=60))).token
    )
    manager.connect(handle, "observer", None, None)
    clock.advance(3600)
    await manager.sweep()
    assert handle.loop.state == "active"


async def test_an_ended_session_is_forgotten_once_its_retention_passes(
    manager: SessionManager, clock: ManualClock
) -> None:
    created = await manager.create(spec(["A"], participation="reactive"))
    await manager.end(manager.open(created.token))
    clock.advance(RETENTION - 1)
    await manager.sweep()
    assert manager.open(created.token).loop.state == "ended"
    clock.advance(2)
    await manager.sweep()
    with pytest.raises(NotFound):
        manager.open(created.token)
    with pytest.raises(NotFound):
        manager.open(created.observer_token)
