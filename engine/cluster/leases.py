"""Which node runs which session: one `LeaseKeeper` per node (SPEC §21, cluster mode).

A node runs a session's loop only under a lease in the store: a row with its node id,
an epoch and an expiry (`LEASE_SECONDS`, judged by the database's clock). The keeper

- takes a lease when the node starts running a session (`acquire`), and lets it go
  when the session ends (`release`);
- renews every lease it holds each third of `LEASE_SECONDS`, together with the node's
  heartbeat in the `nodes` table;
- notices a lost lease — a renewal that comes back without it, a write refused as
  `Fenced`, or no renewal getting through for a whole lease — drops it, and calls
  `on_lost` so that the session's loop stops without writing;
- scans, three times as often, for expired leases of live sessions (their owner died,
  froze or was cut off) and takes over its share: at least the expired ones divided
  by the live nodes, more while it runs fewer sessions than the others (the store's
  query), so the sessions of a dead node spread over the survivors; `on_taken` then
  starts them;
- on a clean stop hands every lease over at once and leaves the nodes registry.

The keeper is also the store's `Fencing` hook: the store asks it for the epoch of each
write, and tells it when one was refused. The node registry lives in PostgreSQL next to
the leases rather than in Redis: the scan counts live nodes in the same query that
takes leases over, with no second system to keep consistent, and it works with the
database alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from engine.clock import Clock, SystemClock
from engine.config import Settings
from engine.errors import StorageError
from engine.store.base import Store

log = logging.getLogger("fellowship.cluster")

RENEWALS_PER_LEASE: Final = 3
"""Renewals per lease period: two may fail before a lease expires."""
SCANS_PER_RENEWAL: Final = 3
"""Take-over scans per renewal period. A dead node's lease expires at most a lease after
it died; a scan every ninth of a lease (0.56 s at 5 s) then finds it soon enough for a
take-over within about `LEASE_SECONDS` + 1 s."""

LostCallback = Callable[[str], Awaitable[None]]
"""Called with a session's id when this node lost its lease: stop its loop, write nothing."""
TakenCallback = Callable[[str, int], Awaitable[None]]
"""Called with a session's id and epoch when this node took it over: run it from the store."""
Sleep = Callable[[float], Awaitable[None]]


async def _nothing_taken(session_id: str, epoch: int) -> None:
    """The default `on_taken`: a keeper that takes nothing over needs none."""


class LeaseKeeper:
    """Holds, renews, loses, takes over and hands over one node's leases."""

    def __init__(
        self,
        store: Store,
        *,
        lease_seconds: float,
        on_lost: LostCallback,
        on_taken: TakenCallback = _nothing_taken,
        take_over: bool = True,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.take_over = take_over
        self._on_lost = on_lost
        self._on_taken = on_taken
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._held: dict[str, int] = {}
        self._callbacks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        # When the last renewal that got through was sent (the clock's monotonic time).
        self._renewed_at: float | None = None

    @classmethod
    def from_settings(
        cls,
        store: Store,
        settings: Settings,
        *,
        on_lost: LostCallback,
        on_taken: TakenCallback = _nothing_taken,
    ) -> LeaseKeeper:
        """The keeper of `LEASE_SECONDS`, for the store of `NODE_ID`."""
        return cls(store, lease_seconds=settings.lease_seconds, on_lost=on_lost, on_taken=on_taken)

    @property
    def node_id(self) -> str:
        """This node's name in the leases."""
        return self.store.node_id

    @property
    def interval(self) -> float:
        """Seconds between two renewals."""
        return self.lease_seconds / RENEWALS_PER_LEASE

    def held(self) -> dict[str, int]:
        """The leases this node holds: session id -> epoch (a copy)."""
        return dict(self._held)

    # --- the store's Fencing hook ----------
    def epoch_of(self, session_id: str) -> int | None:
        """The epoch this node holds the session under; None when it holds no lease."""
        return self._held.get(session_id)

    def fenced(self, session_id: str, epoch: int) -> None:
        """A write under `epoch` was refused: the lease is lost."""
        self._lose(session_id, epoch, "a write was fenced")

    # --- lifecycle ----------
    async def start(self) -> None:
        """Join the cluster (heartbeat), become the store's fencing hook, start renewing."""
        if self._task is not None:
            return
        self.store.fencing = self
        started = self._clock.monotonic()
        await self.store.heartbeat(self.lease_seconds)
        self._renewed_at = started
        self._task = asyncio.create_task(self._run(), name=f"leases of {self.node_id}")

    async def quiesce(self) -> None:
        """Stop renewing and taking over, and wait for the take-overs under way: the
        first step of a clean stop, before the node stops its loops."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._callbacks:
            await asyncio.wait(list(self._callbacks))

    async def stop(self) -> None:
        """A clean stop: hand every lease over at once and leave the nodes registry.

        Afterwards the store refuses every write of a session (no lease is held), so
        `quiesce`, then stop the sessions' loops, first.
        """
        await self.quiesce()
        held, self._held = dict(self._held), {}
        try:
            await self.store.leave_cluster(held)
        except StorageError as exc:
            # They expire on their own within LEASE_SECONDS.
            log.warning("node %s could not hand over its leases: %s", self.node_id, exc)
        if self._callbacks:
            await asyncio.wait(list(self._callbacks))

    # --- one session ----------
    async def acquire(self, session_id: str) -> int | None:
        """Take the session's lease (a new session, or one whose lease expired).

        Returns the epoch, or None while another node's lease on it is live.
        """
        epoch = await self.store.acquire_lease(session_id, self.lease_seconds)
        if epoch is not None:
            self._held[session_id] = epoch
        return epoch

    async def release(self, session_id: str) -> None:
        """Let the session go at once (it ended, or is handed over)."""
        epoch = self._held.pop(session_id, None)
        if epoch is not None:
            await self.store.release_leases({session_id: epoch})

    # --- each period ----------
    async def tick(self) -> None:
        """One period's work: heartbeat and renew, then take over this node's share."""
        await self.renew()
        if self.take_over:
            await self.scan()

    async def renew(self) -> None:
        """Renew the node's heartbeat and every lease; lose those that did not renew.

        When the store cannot be reached, nothing is known to be lost until a whole
        lease has passed since the last renewal that got through: then every lease
        counts as lost, since another node may have taken them meanwhile.
        """
        held = dict(self._held)
        sent = self._clock.monotonic()
        try:
            await self.store.heartbeat(self.lease_seconds)
            renewed = await self.store.renew_leases(held, self.lease_seconds)
        except StorageError as exc:
            log.warning("node %s could not renew its leases: %s", self.node_id, exc)
            since = sent - (self._renewed_at if self._renewed_at is not None else sent)
            if since >= self.lease_seconds:
                for session_id, epoch in held.items():
                    self._lose(session_id, epoch, "no renewal got through for a whole lease")
            return
        self._renewed_at = sent
        for session_id, epoch in held.items():
            if session_id not in renewed:
                self._lose(session_id, epoch, "its renewal was refused")

    async def scan(self) -> dict[str, int]:
        """Take over this node's share of expired leases; returns them (id -> epoch)."""
        try:
            taken = await self.store.take_expired_leases(
                self.lease_seconds, exclude=list(self._held)
            )
        except StorageError as exc:
            log.warning("node %s could not look for expired leases: %s", self.node_id, exc)
            return {}
        for session_id, epoch in taken.items():
            self._held[session_id] = epoch
            log.info("node %s took over session %s (epoch %d)", self.node_id, session_id, epoch)
            self._call(self._on_taken(session_id, epoch), session_id)
        return taken

    async def _run(self) -> None:
        beat = 0
        while True:
            await self._sleep(self.interval / SCANS_PER_RENEWAL)
            beat = (beat + 1) % SCANS_PER_RENEWAL
            try:
                if beat == 0:
                    await self.tick()
                elif self.take_over:
                    await self.scan()
            except Exception:  # a bug must not stop the renewals of every session
                log.exception("node %s: lease upkeep failed", self.node_id)

    # --- losing ----------
    def _lose(self, session_id: str, epoch: int, why: str) -> None:
        # Only the lease it was about: a newer one (taken again since) stays.
        if self._held.get(session_id) != epoch:
            return
        del self._held[session_id]
        log.warning("node %s lost its lease on session %s: %s", self.node_id, session_id, why)
        self._call(self._on_lost(session_id), session_id)

    def _call(self, callback: Awaitable[None], session_id: str) -> None:
        async def guarded() -> None:
            try:
                await callback
            except Exception:
                log.exception("node %s: lease callback for %s failed", self.node_id, session_id)

        task = asyncio.create_task(guarded())
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)
