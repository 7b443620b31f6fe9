"""Time, injectable: the engine reads the time only through a `Clock`.

`SystemClock` is the real one; tests pass one that moves when told
(tests/support/clock.py). Parts that need only one reading take a bare callable
(`Clock.now` for the hub's event stamps, `Clock.monotonic` for durations).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Wall-clock and monotonic time."""

    def now(self) -> datetime:
        """Current UTC time (timestamps)."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (durations, deadlines)."""


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()
