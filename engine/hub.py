"""Fan-out of one session's events to its members, with a replay buffer.

Each event is serialized once and pushed onto every member's own bounded queue,
so a slow member costs the others nothing: when its queue is full it is dropped
with a clear reason and may reconnect with `since`. Subscribing takes the
history snapshot and registers the member in one synchronous step, so no event
can fall between the snapshot and the live stream.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.events import BaseEvent, HistoryEvent

Clock = Callable[[], datetime]

CLOSE_SESSION_ENDED = "session ended"
CLOSE_TOO_SLOW = "too slow: fell too far behind; reconnect with since=<last seq>"
CLOSE_SHUTDOWN = "server shutting down"
CLOSE_LEFT = "left"


@dataclass(frozen=True, slots=True)
class Frame:
    """One serialized event ready for the wire."""

    seq: int
    type: str
    data: str


class Subscription:
    """A member's view of the stream: first frames (history or replay), then live frames."""

    def __init__(self, hub: EventHub, member_id: int, limit: int) -> None:
        self._hub = hub
        self.member_id = member_id
        self._limit = limit
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
        self._hub.discard(self)
        self._wakeup.set()

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


class EventHub:
    """Stamps, buffers and fans out one session's events."""

    def __init__(
        self,
        *,
        buffer_size: int,
        member_queue_size: int,
        clock: Clock | None = None,
        first_seq: int = 0,
    ) -> None:
        self._buffer: deque[Frame] = deque(maxlen=buffer_size)
        self._members: dict[int, Subscription] = {}
        self._queue_size = member_queue_size
        self._clock = clock or (lambda: datetime.now(UTC))
        self._ids = itertools.count(1)
        self.last_seq = first_seq
        self.closed = False

    @property
    def member_count(self) -> int:
        """Members currently subscribed."""
        return len(self._members)

    def publish(self, event: BaseEvent) -> Frame:
        """Stamp `seq`/`ts`, serialize once, buffer, and push to every member."""
        self.last_seq += 1
        event.seq = self.last_seq
        event.ts = self._clock()
        frame = Frame(event.seq, event.type, event.model_dump_json())
        self._buffer.append(frame)
        for member in list(self._members.values()):
            member.push(frame)
        return frame

    def subscribe(
        self, snapshot: Callable[[], HistoryEvent], since: int | None = None
    ) -> Subscription:
        """Register a member; its first frames are the missed events or a `history` event.

        `since` is the last seq the member saw. When every event after it is still
        buffered, exactly those are replayed; otherwise (or without `since`) the
        member gets a fresh `history` snapshot stamped with the current last seq.
        """
        sub = Subscription(self, next(self._ids), self._queue_size)
        replay = self._replay_after(since)
        if replay is None:
            history = snapshot()
            history.seq = self.last_seq
            history.ts = self._clock()
            sub.push(Frame(history.seq, history.type, history.model_dump_json()))
        else:
            for frame in replay:
                sub.push(frame)
        if self.closed:
            sub.close(CLOSE_SESSION_ENDED)
        else:
            self._members[sub.member_id] = sub
        return sub

    def buffered_after(self, seq: int) -> list[Frame]:
        """Buffered frames with a seq above `seq` (what persistence has not stored yet)."""
        if not self._buffer or self._buffer[-1].seq <= seq:
            return []
        start = max(0, seq + 1 - self._buffer[0].seq)
        return list(itertools.islice(self._buffer, start, None))

    def preload(self, frames: list[Frame]) -> None:
        """Refill the replay buffer with stored frames (after a restart)."""
        for frame in frames:
            self._buffer.append(frame)

    def _replay_after(self, since: int | None) -> list[Frame] | None:
        if since is None or since < 0 or since > self.last_seq:
            return None
        if since == self.last_seq:
            return []
        if not self._buffer or self._buffer[0].seq > since + 1:
            return None
        return self.buffered_after(since)

    def discard(self, sub: Subscription) -> None:
        """Forget a member (called when its subscription closes)."""
        self._members.pop(sub.member_id, None)

    def close(self, reason: str = CLOSE_SESSION_ENDED) -> None:
        """End every member's stream after the frames already queued."""
        self.closed = True
        for member in list(self._members.values()):
            member.close(reason)
