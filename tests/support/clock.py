"""The test clock: time that moves only when a test says so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2030, 1, 1, tzinfo=UTC)


class ManualClock:
    """An `engine.clock.Clock` that stands still until `advance` moves it.

    Both scales move together: `now()` starts at `start`, `monotonic()` at
    `monotonic_start`, and each `advance(seconds)` adds the same seconds to both.
    Where a component takes a bare callable, pass `clock.monotonic` or `clock.now`.
    """

    def __init__(self, start: datetime = START, monotonic_start: float = 1000.0) -> None:
        self._start = start
        self._monotonic_start = monotonic_start
        self.elapsed = 0.0

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`."""
        self.elapsed += seconds

    def now(self) -> datetime:
        """The current (test) UTC time."""
        return self._start + timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        """The current (test) monotonic reading."""
        return self._monotonic_start + self.elapsed
