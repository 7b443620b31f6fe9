"""One process as a node of a cluster: its Redis links, its leases, and the sessions it
does not run (SPEC §21).

`ClusterNode` gathers what a `SessionManager` needs besides its own sessions when
`DATABASE_URL` and `REDIS_URL` are both set:

- `events` (engine/hub/redis.py): the hubs of the sessions this node runs publish to
  Redis streams; sessions another node runs are *followed* here while this node holds
  members of them;
- `bus` (engine/cluster/bus.py): what changes a session, or reads its live state, is
  carried to the node that runs it (`forward`), which looks the owner up in the leases
  and tries again while a take-over is under way;
- `keeper` (engine/cluster/leases.py): the leases of the sessions this node runs, and
  the take-over of the sessions of nodes that died or stopped.

A member connected here to a session another node runs gets its `history` from the
store and then the follower's stream (`join`). While it has members here, the node
tells the owner every lease interval, so that the owner does not count the session
idle (`touch`); once it has none, it stops following.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from typing import Final

from pydantic import JsonValue

from engine.auth import Access
from engine.clock import Clock
from engine.cluster.bus import CommandBus, CommandHandler, CommandKind
from engine.cluster.leases import LeaseKeeper, LostCallback, TakenCallback
from engine.config import Settings
from engine.errors import (
    FellowshipError,
    Fenced,
    NotFound,
    NotOwner,
    OwnerUnreachable,
)
from engine.events import HistoryEvent, PresenceEvent
from engine.hub import CLOSE_SHUTDOWN, Frame, HubOptions, Subscription
from engine.hub.redis import FollowerHub, RedisEvents
from engine.metrics import Metrics
from engine.status import MemberCounts
from engine.store.base import SessionRecord, StorageProblem, Store

log = logging.getLogger("fellowship.cluster")

OWNER_RETRY_SECONDS: Final = 0.2
"""Pause between two tries to reach a session's owner while none answers (a take-over)."""
TRIES_PAST_LEASE: Final = 2.0
"""Seconds past a whole lease that a forwarded request keeps trying before it gives up:
by then a surviving node has taken the session over."""
TRANSIENT_PROBLEMS: Final[frozenset[StorageProblem]] = frozenset({"io", "locked"})
"""Store failures after which a node lets a session go rather than end it: the store
is unreachable or busy for now, and another node (or this one) takes the session over
from what it holds once it answers."""
_RETRIED: Final = (NotOwner, OwnerUnreachable, Fenced)
"""What a forwarded request meets while the session changes hands: it tries again."""


@dataclass(slots=True)
class RemoteHandle:
    """A session another node runs, opened here by one of its tokens."""

    record: SessionRecord
    access: Access

    @property
    def session_id(self) -> str:
        """The session's public id."""
        return self.record.id


class ClusterNode:
    """Redis events, the command bus and the leases of one node."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        *,
        on_command: CommandHandler,
        on_taken: TakenCallback,
        on_lost: LostCallback,
    ) -> None:
        self.settings = settings
        self.store = store
        self.node_id = store.node_id
        self._clock = clock
        self._metrics = metrics
        url = settings.redis_url.get_secret_value()
        self.events = RedisEvents(url, settings.redis_prefix, node_id=self.node_id)
        self.bus = CommandBus(url, settings.redis_prefix, self.node_id, on_command)
        self.keeper = LeaseKeeper.from_settings(store, settings, on_lost=on_lost, on_taken=on_taken)
        self._followers: dict[str, FollowerHub] = {}
        self._opening: dict[str, asyncio.Task[FollowerHub]] = {}
        self._toucher: asyncio.Task[None] | None = None

    # --- lifecycle ----------
    async def start(self) -> None:
        """Open the Redis links and the command reader; join the cluster."""
        await self.events.open()
        await self.bus.open()
        await self.keeper.start()
        self._toucher = asyncio.create_task(self._touch_loop(), name="cluster-touch")

    async def quiesce(self) -> None:
        """The start of a clean stop: take nothing more over (take-overs under way end
        first), so that every session this node runs is among the loops it stops."""
        await self.keeper.quiesce()

    async def hand_over(self) -> None:
        """A clean stop, once this node's loops are stopped: its leases go at once."""
        await self.keeper.stop()

    async def close(self) -> None:
        """Stop following, reading commands and publishing (after `hand_over`)."""
        if self._toucher is not None:
            self._toucher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._toucher
        for hub in list(self._followers.values()):
            hub.close(CLOSE_SHUTDOWN)
        self._followers.clear()
        await self.bus.close()
        await self.events.close()

    # --- ownership ----------
    async def claim(self, session_id: str) -> None:
        """Take the lease of a session this node just created (before its first write
        after the row)."""
        if await self.keeper.acquire(session_id) is None:
            raise Fenced(f"session {session_id} is already run by another node")

    async def release(self, session_id: str) -> None:
        """Let a session's lease go (it ended, and its last writes are done)."""
        try:
            await self.keeper.release(session_id)
        except FellowshipError as exc:
            log.warning("lease of session %s not released (it expires): %s", session_id, exc)

    # --- requests for sessions another node runs ----------
    async def forward(
        self,
        handle: RemoteHandle,
        kind: CommandKind,
        payload: dict[str, JsonValue] | None = None,
    ) -> JsonValue:
        """Run `kind` on the node that runs the session; its result, or its typed error.

        While nobody holds the session's lease, or its holder does not answer, the
        request waits and tries again (under one command id, so a talker message is
        placed once) for up to a lease (or a reply timeout, if longer) and
        `TRIES_PAST_LEASE` seconds.
        """
        command_id = secrets.token_hex(16)
        # One try at a dead owner lasts a reply timeout, which may exceed a short lease.
        patience = max(self.settings.lease_seconds, self.bus.reply_timeout) + TRIES_PAST_LEASE
        deadline = self._clock.monotonic() + patience
        while True:
            try:
                owner = await self.store.lease_owner(handle.session_id)
                if owner is None:
                    raise OwnerUnreachable(
                        f"no node runs session {handle.session_id} right now; try again"
                    )
                return await self.bus.send(
                    owner, handle.session_id, kind, payload, command_id=command_id
                )
            except _RETRIED as exc:
                if self._clock.monotonic() >= deadline:
                    if isinstance(exc, NotOwner):
                        # Taken over, and its new node still bringing it back: not the
                        # client's mistake (409), a moment's unavailability.
                        raise OwnerUnreachable(
                            f"session {handle.session_id} is changing nodes; try again"
                        ) from exc
                    raise
            await asyncio.sleep(OWNER_RETRY_SECONDS)

    async def join(self, handle: RemoteHandle, since: int | None) -> Subscription:
        """A member here of a session another node runs: its stream through a follower."""
        hub = await self._follower(handle.record)
        if since is not None and hub.floor <= since <= hub.durable_seq:
            # Exact replay from what this node has: no snapshot needed.
            return hub.subscribe(_unused_snapshot, since)
        messages, seq = await self.store.load_history(handle.session_id)
        if hub.closed:  # left by its last member meanwhile
            hub = await self._follower(handle.record)
        history = HistoryEvent(messages=messages, state=handle.record.state)
        history.seq, history.ts = seq, self._clock.now()
        # Who is connected is told by the node that runs the session; its last word on
        # it, as of the snapshot, is in the stream this node follows.
        presence = hub.last_frame("presence", seq)
        if presence is not None:
            told = PresenceEvent.model_validate_json(presence.data)
            history.presence = MemberCounts(talkers=told.talkers, observers=told.observers)
        return hub.subscribe_from(history, since)

    def unfollow(self, session_id: str) -> FollowerHub | None:
        """Stop following a session (this node takes it over); its open hub, if any."""
        hub = self._followers.pop(session_id, None)
        return hub if hub is not None and not hub.closed else None

    async def _follower(self, record: SessionRecord) -> FollowerHub:
        hub = self._followers.get(record.id)
        if hub is not None and not hub.closed:
            return hub
        # Members connecting at once share one follower (and one read of the store).
        task = self._opening.get(record.id)
        if task is None:
            task = asyncio.create_task(self._open_follower(record))
            self._opening[record.id] = task
            task.add_done_callback(lambda _: self._opening.pop(record.id, None))
        return await asyncio.shield(task)

    async def _open_follower(self, record: SessionRecord) -> FollowerHub:
        settings = self.settings
        options = HubOptions(
            session_id=record.id,
            first_seq=record.last_seq,
            persist=None,
            buffer_size=settings.event_buffer_size,
            member_queue_size=settings.member_queue_size,
            now=self._clock.now,
            metrics=self._metrics,
        )

        async def load(after_seq: int) -> list[Frame]:
            stored = await self.store.load_events(record.id, after_seq=after_seq)
            return [Frame(e.seq, e.type, e.data) for e in stored]

        hub = await self.events.follow(options, load)
        self._followers[record.id] = hub
        return hub

    # --- keeping followed sessions alive ----------
    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.keeper.interval)
            for session_id, hub in list(self._followers.items()):
                if hub.closed or not hub.member_count:
                    # Nobody here watches it any more: stop reading its stream.
                    self._followers.pop(session_id, None)
                    hub.close(CLOSE_SHUTDOWN)
                else:
                    task = asyncio.create_task(self._touch(session_id))
                    task.add_done_callback(_quiet)

    async def _touch(self, session_id: str) -> None:
        owner = await self.store.lease_owner(session_id)
        if owner is not None and owner != self.node_id:
            with contextlib.suppress(FellowshipError):
                await self.bus.send(owner, session_id, "touch")


def _unused_snapshot() -> HistoryEvent:
    raise NotFound("no snapshot: the member is replayed exactly")


def _quiet(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("touch failed: %s", exc)
