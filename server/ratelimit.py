"""A simple per-client request limit: at most N requests per address and clock minute.

A fixed window is crude (a burst may straddle two windows) but costs one dict entry
per active address, forgotten wholesale when the minute turns — enough to keep one
client from hammering the API. `RATE_LIMIT_PER_MINUTE=0` turns it off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

from server.errors import RateLimited

WINDOW_SECONDS: Final = 60.0  # the setting is "per minute"


class RateLimiter:
    """Counts requests per client address within the current one-minute window."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._window = -1
        self._counts: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        """False when the limit is 0 (off)."""
        return self.per_minute > 0

    def check(self, client: str) -> None:
        """Count one request from `client`; raise `RateLimited` when over the limit."""
        if not self.enabled:
            return
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        if window != self._window:
            self._window = window
            self._counts.clear()
        count = self._counts.get(client, 0) + 1
        self._counts[client] = count
        if count > self.per_minute:
            retry_after = math.ceil((window + 1) * WINDOW_SECONDS - now)
            raise RateLimited(max(retry_after, 1))
