"""Housekeeping: idle timeouts and the retention of ended sessions.

Every `HOUSEKEEPING_INTERVAL` seconds a sweep ends each session that has had no
member and no client activity for its `ttl`, and forgets ended sessions once
`ENDED_RETENTION_SECONDS` have passed (the store deletes them; their tokens open
nothing any more). `max_time` is not checked here: the session's loop enforces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from engine.registry import SessionRegistry
from engine.session import EngineDeps

log = logging.getLogger("fellowship.housekeeping")

HOUSEKEEPING_INTERVAL = 1.0
"""Seconds between sweeps: how late an idle session may be ended after its ttl."""


class Housekeeper:
    """Sweeps the sessions of one registry, on a timer or when asked."""

    def __init__(
        self,
        deps: EngineDeps,
        sessions: SessionRegistry,
        *,
        interval: float = HOUSEKEEPING_INTERVAL,
    ) -> None:
        self._deps = deps
        self._interval = interval
        self._sessions = sessions
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sweep every `HOUSEKEEPING_INTERVAL` seconds until `stop`."""
        self._task = asyncio.create_task(self._run(), name="housekeeping")

    async def stop(self) -> None:
        """Stop sweeping (a sweep under way is cancelled)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("housekeeping failed")

    async def sweep(self) -> None:
        """End sessions idle past their ttl; forget ended ones past retention."""
        clock, settings = self._deps.clock, self._deps.settings
        now = clock.monotonic()
        cutoff = clock.now() - timedelta(seconds=settings.ended_retention_seconds)
        for session_id in await self._deps.store.expire_ended(cutoff):
            self._sessions.forget(session_id)
        for loop in self._sessions.loops():
            session = loop.session
            if loop.state == "ended":
                continue
            if not session.members and now - session.last_activity >= session.ttl:
                await loop.end("idle_timeout")
