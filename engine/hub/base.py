"""The event hub interface: how one session's events reach its members.

A hub numbers a session's events, stores them (through `persist`) before anyone
sees them, keeps the last ones for replay, and fans them out to its members'
subscriptions. The session and its loop know only `Hub`; which implementation
they get is chosen by the `HubFactory` in `EngineDeps`. `LocalHub`
(engine/hub/local.py) does all of it inside this process. A cluster hub keeps
the same promises across processes: every `seq` a member is shown is stored
first, numbering has no gaps, and a reconnect with `since` replays exactly what
followed or starts again from a `history` snapshot, never silently skipping.

A `Subscription` is always local: it is one member's bounded queue on the
process that holds the member's connection, whatever hub feeds it.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from engine.events import BaseEvent, HistoryEvent
from engine.history import Message
from engine.metrics import NO_METRICS, Metrics

# Why a member's stream closed (the WebSocket close reason; server/errors.py maps them).
CLOSE_SESSION_ENDED = "session ended"
CLOSE_TOO_SLOW = "too slow: fell too far behind; reconnect with since=<last seq>"
CLOSE_SHUTDOWN = "server shutting down"
CLOSE_LEFT = "left"
CLOSE_RECONNECT = "the missed events were trimmed while joining; reconnect with since=<last seq>"

Now = Callable[[], datetime]
"""The current UTC time, stamped on each event (`Clock.now` of engine/clock.py)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One serialized event ready for the wire."""

    seq: int
    type: str
    data: str


Persist = Callable[[list[Frame], list[Message]], Awaitable[None]]
"""Stores frames and history messages durably, in one write; raises if it cannot."""

Snapshot = Callable[[], HistoryEvent]
"""Builds the `history` event a member starts with when no exact replay is possible."""


class Subscription:
    """A member's view of the stream: first frames (history or replay), then live frames."""

    def __init__(
        self, member_id: int, limit: int, on_close: Callable[[Subscription], None]
    ) -> None:
        self.member_id = member_id
        self._limit = limit
        self._on_close = on_close
        self._frames: deque[Frame] = deque()
        self._wakeup = asyncio.Event()
        self.closed = False
        self.close_reason: str | None = None

    def push(self, frame: Frame) -> None:
        """Queue a frame; a member that is too far behind is dropped instead."""
        if self.closed:
            return
        if len(self._frames) >= self._limit:
            self.close(CLOSE_TOO_SLOW, drain=False)
            return
        self._frames.append(frame)
        self._wakeup.set()

    def close(self, reason: str, *, drain: bool = True) -> None:
        """Stop the stream; with `drain` the frames already queued are still delivered."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if not drain:
            self._frames.clear()
        self._on_close(self)
        self._wakeup.set()

    def move_to(self, on_close: Callable[[Subscription], None]) -> None:
        """Hand the member to another hub (a follower that became the owner): the queue,
        and so the member's connection, stay as they are."""
        self._on_close = on_close

    @property
    def pending(self) -> int:
        """Frames queued and not yet read."""
        return len(self._frames)

    def take(self) -> list[Frame]:
        """Every frame queued now, oldest first, without waiting (empty when none).

        A transport that can write several frames at once takes a whole backlog in one
        go: one write instead of one per frame is what keeps a burst cheap to deliver
        to thousands of members.
        """
        frames = list(self._frames)
        self._frames.clear()
        return frames

    async def wait(self) -> None:
        """Return once a frame is queued or the stream is closed (frames stay queued)."""
        while not self._frames and not self.closed:
            self._wakeup.clear()
            await self._wakeup.wait()

    async def next_frame(self) -> Frame | None:
        """The next frame, or None once the stream is closed and drained."""
        while not self._frames:
            if self.closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._frames.popleft()

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Frame]:
        while (frame := await self.next_frame()) is not None:
            yield frame


class Hub(ABC):
    """Numbers, stores, buffers and fans out one session's events.

    `durable_seq` is the last seq stored and delivered: the one a status shows and
    a session row records. `closed` turns true once `close` was called; members
    joining after that get their history (or replay) and then the end of the stream.
    """

    durable_seq: int
    closed: bool
    on_persist_error: Callable[[Exception], None] | None
    """Told when a write of plain events fails (the session's loop then ends the session)."""

    @property
    @abstractmethod
    def member_count(self) -> int:
        """Members subscribed through this hub."""

    @property
    def pending_writes(self) -> int:
        """Writes queued behind the one under way (a metrics gauge; 0 where none queue)."""
        return 0

    @abstractmethod
    def publish(self, event: BaseEvent) -> None:
        """Send `event` to every member: numbered, stored, then delivered.

        Never raises for a failed write: the event is still delivered (members must
        hear how a session ends) and `on_persist_error` is told.
        """

    @abstractmethod
    async def commit(self, message: Message | None, events: list[BaseEvent]) -> None:
        """Store `message` with `events` in one write, then deliver the events.

        Returns once both are stored; raises what the store raised, and then the
        events are never numbered nor delivered.
        """

    @abstractmethod
    async def flushed(self) -> None:
        """Wait until everything published so far is stored and delivered."""

    @abstractmethod
    def subscribe(self, snapshot: Snapshot, since: int | None = None) -> Subscription:
        """Register a member; its first frames are the missed events or a `history` event.

        `since` is the last seq the member saw: when everything after it can be
        replayed exactly, it is; otherwise the member starts from `snapshot()`.
        Registration and snapshot are one step, so no event falls between them.
        """

    @abstractmethod
    def restore(self, stored: list[Frame], recorded_last_seq: int) -> None:
        """Go on from the store after a restart: numbering and the replay buffer.

        `stored` are the session's stored events in order, `recorded_last_seq` the
        last seq its row recorded.
        """

    @abstractmethod
    def close(self, reason: str = CLOSE_SESSION_ENDED) -> None:
        """End every member's stream, with `reason`, after the events already published."""


@dataclass(frozen=True, slots=True)
class HubOptions:
    """What a hub for one session is built from."""

    session_id: str
    first_seq: int  # the last seq the session's row recorded
    persist: Persist | None  # None: nothing is stored, events go out at once
    buffer_size: int  # events kept for replay
    member_queue_size: int  # frames a member may fall behind before it is dropped
    now: Now
    metrics: Metrics = NO_METRICS  # events delivered, members dropped as too slow


HubFactory = Callable[[HubOptions], Hub]
"""Builds the hub of one session; `EngineDeps.hubs` holds the one in use."""
