"""How long a stream waits between reconnection attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reconnect:
    """The reconnection policy of `observe` and `talk` streams.

    After a drop the first attempt is immediate; each further one waits a random time
    between half and all of `initial * factor ** (n - 1)`, at most `maximum` seconds
    (the jitter keeps many clients from coming back in one wave after a restart). A
    successful join starts the count again. With `give_up_after` set, a stream that
    could not join for that many seconds raises `ConnectionFailed`; by default it tries
    for as long as the application iterates.
    """

    initial: float = 0.1
    """Ceiling of the first wait, in seconds."""
    maximum: float = 5.0
    """Longest wait between two attempts, in seconds."""
    factor: float = 2.0
    """How much the ceiling grows after each failed attempt."""
    give_up_after: float | None = None
    """Seconds without a connection after which the stream raises; None: never."""
    join_timeout: float = 10.0
    """Seconds a new connection may take to be accepted before it counts as failed."""
    seat_wait: float = 30.0
    """Seconds a reconnecting talker retries when its seat is still taken (close 4009),
    which happens while the server has not yet noticed that the old connection died."""

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt number `attempt` (0: the first after a drop)."""
        if attempt <= 0:
            return 0.0
        ceiling = min(self.maximum, self.initial * self.factor ** (attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)
