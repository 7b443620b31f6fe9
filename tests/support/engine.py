"""Helpers for tests that drive the engine directly (no HTTP server in between)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import Settings, load_settings
from engine.events import BaseEvent, parse_event
from engine.manager import Handle, SessionManager
from engine.session import Member
from engine.spec.models import SessionSpec

WAIT_SECONDS = 20.0  # upper bound for a wait to fail rather than hang; not a speed check
# Housekeeping (time limits, idle sessions) every 50 ms, so tests of those limits are quick.
FAST_HOUSEKEEPING = 0.05
# The SECRET_KEY of test servers (make run writes a random one into .env).
TEST_SECRET_KEY = "c2VjcmV0LWtleS1vZi10aGUtdGVzdC1zZXJ2ZXJzISE="


def make_settings(tmp_path: Path, base_url: str, **overrides: Any) -> Settings:
    """Settings isolated from any developer `.env`, pointing at a mock backend."""
    values: dict[str, Any] = {
        "_env_file": None,
        "llm_base_url": base_url,
        "database_path": tmp_path / "test.db",
        "log_dir": tmp_path / "logs",
        "llm_retries": 0,
        "llm_retry_delay": 0.0,
        "secret_key": TEST_SECRET_KEY,
        # The mock's default reply echoes the last message, so a long session repeats
        # itself exactly after two rounds: the duplicate guard is on only in its own tests.
        "duplicate_window": 0,
    }
    values.update(overrides)
    return load_settings(**values)


def spec(bots: list[str] | None = None, **options: Any) -> SessionSpec:
    """A small valid spec with the given bots and options."""
    names = bots or ["Alice", "Bob", "Carol"]
    return SessionSpec.model_validate(
        {
            "bots": [{"name": n, "system_prompt": f"You are {n}, be brief."} for n in names],
            "options": options,
        }
    )


class Watcher:
    """An observer (or talker) that collects every event it receives, parsed."""

    def __init__(self, manager: SessionManager, handle: Handle, member: Member) -> None:
        self.manager = manager
        self.handle = handle
        self.member = member
        self.events: list[BaseEvent] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.member.subscription:
            self.events.append(parse_event(frame.data))
            self._changed.set()
        self._changed.set()

    @property
    def closed(self) -> bool:
        return self._task.done()

    def of_type(self, *types: str) -> list[Any]:
        return [e for e in self.events if e.type in types]

    async def wait_for(self, predicate: Callable[[Watcher], bool]) -> None:
        async def loop() -> None:
            while not predicate(self):
                self._changed.clear()
                if self.closed and not predicate(self):
                    raise AssertionError(f"stream closed; events: {[e.type for e in self.events]}")
                await self._changed.wait()

        await asyncio.wait_for(loop(), WAIT_SECONDS)

    async def wait_type(self, type_: str, count: int = 1) -> list[Any]:
        await self.wait_for(lambda w: len(w.of_type(type_)) >= count)
        return self.of_type(type_)

    async def until_closed(self) -> None:
        await asyncio.wait_for(self._task, WAIT_SECONDS)


def watch(
    manager: SessionManager,
    handle: Handle,
    role: str = "observer",
    name: str | None = None,
    since: int | None = None,
) -> Watcher:
    """Connect a member and start collecting its events."""
    member = manager.connect(handle, role, name, since)  # type: ignore[arg-type]
    return Watcher(manager, handle, member)
