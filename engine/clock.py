"""Time, injectable: the engine reads the time only through a `Clock`.

`SystemClock` is the real one; tests pass one that moves when told
(tests/support/clock.py). Parts that need only one reading take a bare callable
(`Clock.now` for the hub's event stamps, `Clock.monotonic` for durations). Work
that must happen later on the clock's time scale (a coalesced `presence` event)
is scheduled with `call_later`, so a test clock runs it when it is moved past.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol


class Timer(Protocol):
    """A callback scheduled by `Clock.call_later`."""

    def cancel(self) -> None:
        """Do not run the callback (nothing happens if it already ran)."""


class Clock(Protocol):
    """Wall-clock and monotonic time, and callbacks after a delay."""

    def now(self) -> datetime:
        """Current UTC time (timestamps)."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (durations, deadlines)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once `delay` seconds have passed on the monotonic scale."""


class SystemClock:
    """The real clock; callbacks run on the running asyncio event loop."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        # asyncio's own timer runs on the loop's monotonic clock, which is `time.monotonic`.
        return asyncio.get_running_loop().call_later(delay, callback)
