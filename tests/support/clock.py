"""The test clock: time that moves only when a test says so."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

START = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class ManualTimer:
    """A callback waiting for `ManualClock.advance` to move past `due`."""

    due: float  # elapsed seconds at which it runs
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """Do not run the callback."""
        self.cancelled = True


class ManualClock:
    """An `engine.clock.Clock` that stands still until `advance` moves it.

    Both scales move together: `now()` starts at `start`, `monotonic()` at
    `monotonic_start`, and each `advance(seconds)` adds the same seconds to both.
    Where a component takes a bare callable, pass `clock.monotonic` or `clock.now`.
    Callbacks given to `call_later` run inside `advance`, in due order, each with the
    clock set to its due time.
    """

    def __init__(self, start: datetime = START, monotonic_start: float = 1000.0) -> None:
        self._start = start
        self._monotonic_start = monotonic_start
        self.elapsed = 0.0
        self._timers: list[ManualTimer] = []

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, running the callbacks that fall due."""
        target = self.elapsed + seconds
        while True:
            self._timers = [t for t in self._timers if not t.cancelled]
            due = [t for t in self._timers if t.due <= target]
            if not due:
                break
            timer = min(due, key=lambda t: t.due)
            self._timers.remove(timer)
            self.elapsed = max(self.elapsed, timer.due)
            timer.callback()
        self.elapsed = target

    def now(self) -> datetime:
        """The current (test) UTC time."""
        return self._start + timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        """The current (test) monotonic reading."""
        return self._monotonic_start + self.elapsed

    def call_later(self, delay: float, callback: Callable[[], None]) -> ManualTimer:
        """Run `callback` when `advance` moves the clock `delay` seconds on."""
        timer = ManualTimer(self.elapsed + delay, callback)
        self._timers.append(timer)
        return timer

    @property
    def pending(self) -> int:
        """Callbacks scheduled and neither run nor cancelled."""
        return sum(1 for t in self._timers if not t.cancelled)
