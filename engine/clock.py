"""Time, injectable: tests that need to control time pass their own `Clock`."""

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
