"""The in-process hub: one session's events fanned out to its members, with a replay buffer.

Each event is serialized once and pushed onto every member's own bounded queue,
so a slow member costs the others nothing: when its queue is full it is dropped
with a clear reason and may reconnect with `since`. Subscribing takes the
history snapshot and registers the member in one synchronous step, so no event
can fall between the snapshot and the live stream.

With a `persist` function (the store), an event is stored before anyone sees it.
`publish` queues an event, `commit` queues a history message with the events that
announce it and waits until they are stored. One flush task per hub takes what has
queued up, numbers it, writes it in one store call, then delivers it in order. So
every `seq` a client was ever shown is in the store, with the message it announced,
and after a crash numbering continues from the store with no jump. A member that
subscribes while a write is under way joins in that same order, after the events its
`history` snapshot covers. Numbers are given at write time, so a write that fails
leaves no hole: what is not stored is never numbered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from engine.events import BaseEvent, HistoryEvent
from engine.history import Message
from engine.hub.base import (
    CLOSE_RECONNECT,
    CLOSE_SESSION_ENDED,
    CLOSE_TOO_SLOW,
    Frame,
    Hub,
    HubOptions,
    Now,
    Persist,
    Snapshot,
    Subscription,
)
from engine.metrics import NO_METRICS, Metrics

log = logging.getLogger("fellowship.hub")


@dataclass(slots=True)
class _Write:
    """Events waiting to be stored; a commit also carries its message and a waiter."""

    events: list[BaseEvent]
    message: Message | None = None
    done: asyncio.Future[None] | None = None
    frames: list[Frame] = field(default_factory=list)


@dataclass(slots=True)
class _Join:
    """A member joining behind the events queued before it."""

    sub: Subscription
    since: int | None
    history: HistoryEvent | None  # None: replay the events after `since`


class LocalHub(Hub):
    """Numbers, stores (with `persist`), buffers and fans out one session's events.

    `last_seq` is the last number given; `durable_seq` the last one stored and
    delivered. The replay buffer holds every event above `floor`, so a member that
    saw any seq from `floor` to `durable_seq` gets exactly what followed, even
    across holes in the numbering (files from older versions have them).
    """

    def __init__(
        self,
        *,
        buffer_size: int,
        member_queue_size: int,
        now: Now | None = None,
        first_seq: int = 0,
        persist: Persist | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._buffer: deque[Frame] = deque()
        self._buffer_size = buffer_size
        self._members: dict[int, Subscription] = {}
        self._queue_size = member_queue_size
        self._now = now or (lambda: datetime.now(UTC))
        self._ids = itertools.count(1)
        self._persist = persist
        self._metrics = metrics
        self.on_persist_error = None
        self._pending: list[_Write | _Join] = []
        self._flusher: asyncio.Task[None] | None = None
        self._close_reason = CLOSE_SESSION_ENDED
        self.last_seq = first_seq
        self.durable_seq = first_seq
        self.floor = first_seq
        self.closed = False

    @property
    def member_count(self) -> int:
        """Members currently subscribed."""
        return len(self._members)

    @property
    def pending_writes(self) -> int:
        """Writes queued behind the one under way."""
        return sum(1 for entry in self._pending if isinstance(entry, _Write))

    # --- publishing ----------
    def publish(self, event: BaseEvent) -> None:
        """Send `event` to every member: numbered and delivered once stored.

        Without a store it is numbered and delivered at once. If the store fails,
        the event is still delivered (members must hear how the session ends), and
        `on_persist_error` is told so that the session does end.
        """
        if self._persist is None:
            self._deliver([self._stamp(event)])
        else:
            self._enqueue(_Write([event]))

    async def commit(self, message: Message | None, events: list[BaseEvent]) -> None:
        """Store `message` with `events` in one write, then deliver the events.

        Returns once both are stored; raises what the store raised, and then the
        events are never numbered nor delivered (nobody hears of a message that is
        not stored).
        """
        if self._persist is None:
            if events:
                self._deliver([self._stamp(event) for event in events])
            return
        done = asyncio.get_running_loop().create_future()
        self._enqueue(_Write(events, message, done))
        # Shielded: a cancelled caller must not take the write of its message back.
        await asyncio.shield(done)

    def _stamp(self, event: BaseEvent) -> Frame:
        self.last_seq += 1
        event.seq = self.last_seq
        event.ts = self._now()
        return Frame(event.seq, event.type, event.model_dump_json())

    def _enqueue(self, entry: _Write | _Join) -> None:
        self._pending.append(entry)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="hub-flush")

    async def flushed(self) -> None:
        """Wait until everything published so far is stored and delivered."""
        while (flusher := self._flusher) is not None:
            await asyncio.shield(flusher)

    async def _flush(self) -> None:
        assert self._persist is not None
        try:
            while self._pending:
                entries, self._pending = self._pending, []
                writes = [entry for entry in entries if isinstance(entry, _Write)]
                numbered_from = self.last_seq
                for write in writes:
                    write.frames = [self._stamp(event) for event in write.events]
                frames = [frame for write in writes for frame in write.frames]
                messages = [write.message for write in writes if write.message is not None]
                failure: Exception | None = None
                if frames or messages:
                    try:
                        await self._persist(frames, messages)
                    except Exception as exc:
                        log.error("events after seq %d not stored: %s", numbered_from, exc)
                        failure = exc
                        self.last_seq = numbered_from  # nothing of this batch was stored
                self._settle(entries, failure)
        finally:
            self._flusher = None
        if self.closed:
            self._close_members()

    def _settle(self, entries: list[_Write | _Join], failure: Exception | None) -> None:
        """Deliver a written batch in order; after a failed write, commits are refused."""
        committer_told = False
        for entry in entries:
            if isinstance(entry, _Join):
                self._join(entry)
                continue
            if failure is not None:
                if entry.done is not None:
                    if not entry.done.done():
                        entry.done.set_exception(failure)
                    committer_told = True
                    continue
                entry.frames = [self._stamp(event) for event in entry.events]  # renumbered
            if entry.frames:
                self._deliver(entry.frames)
            if entry.done is not None and not entry.done.done():
                entry.done.set_result(None)
        if failure is not None and not committer_told and self.on_persist_error is not None:
            self.on_persist_error(failure)

    def _deliver(self, frames: list[Frame]) -> None:
        buffer = self._buffer
        self._metrics.events_delivered(len(frames) * len(self._members))
        for frame in frames:
            if len(buffer) >= self._buffer_size:
                self.floor = buffer.popleft().seq
            buffer.append(frame)
            for member in list(self._members.values()):
                member.push(frame)
        self.durable_seq = frames[-1].seq

    # --- members ----------
    def subscribe(self, snapshot: Snapshot, since: int | None = None) -> Subscription:
        """Register a member; its first frames are the missed events or a `history` event.

        `since` is the last seq the member saw. When every event after it is still
        buffered, exactly those are replayed; otherwise (or without `since`) the
        member gets a `history` snapshot. Either way it then gets every later event.
        While a write is under way the member joins behind it, so the snapshot's
        `seq` is that of the last event it covers, and that event is stored.
        """
        sub = Subscription(next(self._ids), self._queue_size, self.discard)
        replay = since is not None and self.floor <= since <= self.durable_seq
        join = _Join(sub, since, None if replay else snapshot())
        if self._flusher is None:
            self._join(join)
            if self.closed:
                sub.close(self._close_reason)
        else:
            self._pending.append(join)
        return sub

    def _join(self, join: _Join) -> None:
        sub = join.sub
        if join.history is not None:
            history = join.history
            history.seq = self.durable_seq
            history.ts = self._now()
            sub.push(Frame(history.seq, history.type, history.model_dump_json()))
        else:
            assert join.since is not None
            if join.since < self.floor:
                sub.close(CLOSE_RECONNECT)  # rare: the buffer turned over while it waited
                return
            for frame in self._replay_after(join.since):
                sub.push(frame)
        if not sub.closed:
            self._members[sub.member_id] = sub

    def restore(self, stored: list[Frame], recorded_last_seq: int) -> None:
        """Go on from the store after a restart: numbering and the replay buffer.

        `stored` are the session's stored events in order, `recorded_last_seq` the
        last seq its row recorded. Every event anyone was shown is stored, so
        numbering continues right after the last one, and a member that saw any
        stored event still held (or any seq since the oldest) gets an exact replay.
        Events that do not reach the recorded seq (files from before events were
        stored first) cannot replay exactly: every reconnect then gets a history.
        """
        if stored and stored[-1].seq < recorded_last_seq:
            stored = []
        last = max(recorded_last_seq, stored[-1].seq if stored else 0, self.last_seq)
        self.last_seq = self.durable_seq = self.floor = last
        kept = stored[-self._buffer_size :]
        self._buffer = deque(kept)
        if kept:
            self.floor = kept[0].seq - 1

    def _replay_after(self, since: int) -> list[Frame]:
        missed: list[Frame] = []
        for frame in reversed(self._buffer):
            if frame.seq <= since:
                break
            missed.append(frame)
        missed.reverse()
        return missed

    def discard(self, sub: Subscription) -> None:
        """Forget a member (called when its subscription closes)."""
        self._members.pop(sub.member_id, None)
        if sub.close_reason == CLOSE_TOO_SLOW:
            self._metrics.member_dropped()

    def close(self, reason: str = CLOSE_SESSION_ENDED) -> None:
        """End every member's stream after the events already published."""
        self.closed = True
        self._close_reason = reason
        if self._flusher is None:
            self._close_members()

    def _close_members(self) -> None:
        for member in list(self._members.values()):
            member.close(self._close_reason)


def local_hub(options: HubOptions) -> LocalHub:
    """The `HubFactory` of a single process: every hub lives in this one."""
    return LocalHub(
        buffer_size=options.buffer_size,
        member_queue_size=options.member_queue_size,
        now=options.now,
        first_seq=options.first_seq,
        persist=options.persist,
        metrics=options.metrics,
    )
