"""Restart on the same SQLite database: history kept, live sessions back paused, ended readable."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.errors import NotFound
from engine.llm.mock import MockLLM, MockReply
from engine.manager import Handle, SessionManager
from engine.store.sqlite import SqliteStore
from tests.support.engine import WAIT_SECONDS, make_settings, spec, watch


async def start_manager(tmp_path: Path, mock: MockLLM, **overrides: Any) -> SessionManager:
    settings = make_settings(tmp_path, mock.base_url, **overrides)
    manager = SessionManager(settings, store=SqliteStore.from_settings(settings))
    await manager.start()
    return manager


async def test_a_running_session_comes_back_paused_with_its_history_and_can_finish(
    tmp_path: Path, mock: MockLLM
) -> None:
    first = await start_manager(tmp_path, mock)
    created = await first.create(spec(max_turns=6))
    handle = first.open(created.token)
    watcher = watch(first, handle)
    await watcher.wait_type("bot_message", 3)
    mock.enqueue(MockReply(content="cut off by the restart", delay_ms=5000))
    await watcher.wait_for(lambda w: len(w.of_type("turn_start")) == 4)
    seen = [(e.turn, e.content) for e in watcher.of_type("bot_message")]
    last_seq = watcher.events[-1].seq
    await first.close()  # the process goes away mid-generation

    second = await start_manager(tmp_path, mock)
    try:
        handle = second.open(created.token)
        history = second.history(handle)
        assert [(m.turn, m.content) for m in history[:3]] == seen
        assert history[3].status == "failed"  # the reply in flight became a tombstone
        status = second.status(handle)
        assert status.state == "paused"
        after = watch(second, handle, since=last_seq)
        await second.resume(handle)
        await after.until_closed()
        assert all(e.seq > last_seq for e in after.events)
        final = second.history(handle)
        assert [m.turn for m in final] == list(range(1, len(final) + 1))
        assert after.of_type("session_end")[0].reason == "max_turns"
        assert sum(1 for m in final if m.kind == "bot") == 6
    finally:
        await second.close()


async def test_an_ended_session_stays_readable_after_a_restart(
    tmp_path: Path, mock: MockLLM
) -> None:
    first = await start_manager(tmp_path, mock)
    created = await first.create(spec(max_turns=2))
    await watch(first, first.open(created.token)).until_closed()
    await first.close()
    second = await start_manager(tmp_path, mock)
    try:
        # Read back from the store when first asked for, not at start-up.
        with pytest.raises(NotFound):
            second.open(created.observer_token)
        handle = await second.find(created.observer_token)
        assert isinstance(handle, Handle)
        assert second.status(handle).end_reason == "max_turns"
        assert len(second.history(handle)) == 2
        replay = watch(second, handle)
        await replay.until_closed()
        assert replay.events[0].type == "history"
    finally:
        await second.close()


async def test_memory_can_be_inherited_from_a_session_that_ended_before_a_restart(
    tmp_path: Path, mock: MockLLM
) -> None:
    first = await start_manager(tmp_path, mock)
    created = await first.create(spec(["Alice"], max_turns=1, memory="new"))
    await watch(first, first.open(created.token)).until_closed()
    await asyncio.wait_for(first.settle(), WAIT_SECONDS)
    await first.close()
    second = await start_manager(tmp_path, mock)
    try:
        mock.reset()
        child = await second.create(spec(["Alice"], max_turns=1, memory=f"inherit:{created.token}"))
        await watch(second, second.open(child.token)).until_closed()
        memory = await second.deps.store.load_memory(created.id)
        assert memory and memory in mock.requests[0].system_prompt
    finally:
        await second.close()


async def test_ended_sessions_are_deleted_after_the_retention_period(
    tmp_path: Path, mock: MockLLM
) -> None:
    manager = await start_manager(tmp_path, mock, ended_retention_seconds=0)
    try:
        created = await manager.create(spec(max_turns=1))
        await watch(manager, manager.open(created.token)).until_closed()
        await manager.sweep()
        with pytest.raises(Exception, match="no session"):
            manager.open(created.token)
        assert await manager.deps.store.load_messages(created.id) == []
    finally:
        await manager.close()
