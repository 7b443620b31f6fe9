"""Presence: who is connected to a session, announced in aggregate.

Talkers are few and each one matters, so each arrival and departure is its own
`member_joined`/`member_left`. Observers are not announced one by one: N observers
joining would cost N²/2 deliveries. Instead a `presence` event carries the talkers'
names and the observer count, coalesced: a change after a quiet second goes out at
once, and the changes that follow within `PRESENCE_INTERVAL` go out together as one
event when it is over. Whatever happens, the last `presence` sent ends up telling the
current truth; every `history` event carries it too, so a new member knows it at once.

The count is of the members this process holds; in cluster mode each node counts its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from engine.clock import Clock, Timer
from engine.events import BaseEvent, PresenceEvent
from engine.status import MemberCounts

PRESENCE_INTERVAL: Final = 1.0
"""Seconds between two `presence` events of a session, at least."""


class PresenceAnnouncer:
    """Emits a session's coalesced `presence` events.

    `count` reads who is connected now; `emit` publishes an event. Call `changed`
    after every arrival or departure, and `stop` when the session ends or its
    process shuts down: a pending announcement is cancelled, and nothing is sent after.
    """

    def __init__(
        self,
        *,
        count: Callable[[], MemberCounts],
        emit: Callable[[BaseEvent], None],
        clock: Clock,
        interval: float = PRESENCE_INTERVAL,
    ) -> None:
        self._count = count
        self._emit = emit
        self._clock = clock
        self._interval = interval
        self._announced: MemberCounts | None = None  # what the last event said
        self._announced_at: float | None = None  # when (monotonic)
        self._timer: Timer | None = None
        self._stopped = False

    @property
    def scheduled(self) -> bool:
        """Whether an announcement is waiting for the interval to pass."""
        return self._timer is not None

    def changed(self) -> None:
        """Someone arrived or left: announce now, or once the interval since the last is over."""
        if self._stopped or self._timer is not None:
            return  # a pending announcement will read the count when it runs
        now = self._clock.monotonic()
        if self._announced_at is None or now - self._announced_at >= self._interval:
            self._announce()
            return
        wait = self._announced_at + self._interval - now
        self._timer = self._clock.call_later(wait, self._on_timer)

    def stop(self) -> None:
        """Cancel a pending announcement and ignore every later change (idempotent)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if not self._stopped:
            self._announce()

    def _announce(self) -> None:
        counts = self._count()
        if counts == self._announced:
            return  # back to what members were last told: nothing to correct
        self._announced = counts
        self._announced_at = self._clock.monotonic()
        self._emit(PresenceEvent(talkers=counts.talkers, observers=counts.observers))
