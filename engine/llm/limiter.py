"""A bound on concurrent calls to one backend: the `Limiter` interface and `FairLimiter`.

The LLM client holds one limiter per backend and knows only `Limiter`; a `LimiterFactory`
given to it decides which kind. `FairLimiter` (the default) bounds the calls of this
process; a cluster can bound a backend across its nodes behind the same interface.

`FairLimiter`: at most N holders, granted strictly first come, first served.

`asyncio.Semaphore` lets a newly arriving task take a freed slot before tasks that were
already waiting (barging), so under load one busy session can starve others. Here a
released slot is handed directly to the oldest waiter, which makes the order of grants
exactly the order of arrival.

Cancellation is safe on both sides: a task cancelled while waiting leaves the queue (and,
if the slot had just been handed to it, passes it on at once); a task cancelled while
holding a slot releases it on the way out of `slot()`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager


class Limiter(ABC):
    """At most a fixed number of concurrent holders of a slot."""

    @property
    @abstractmethod
    def in_use(self) -> int:
        """Slots currently held."""

    @property
    @abstractmethod
    def waiting(self) -> int:
        """Callers queued for a slot."""

    @abstractmethod
    def slot(self, key: str | None = None) -> AbstractAsyncContextManager[None]:
        """Hold one slot for the body of the `async with` block.

        `key` names the caller (the session id): fairness and debug output use it.
        """


LimiterFactory = Callable[[str, int], Limiter]
"""Builds the limiter of one backend from its base URL and `LLM_MAX_CONCURRENCY`."""


def local_limiter(base_url: str, capacity: int) -> Limiter:
    """The default `LimiterFactory`: a `FairLimiter` bounding this process's calls."""
    del base_url  # one limiter per backend already; this process needs no more than that
    return FairLimiter(capacity)


class FairLimiter(Limiter):
    """At most `capacity` concurrent holders; waiters are served in arrival order.

    `on_grant`, when set, is called with the waiter's `key` each time a slot is granted
    (tests and debug tooling use it to observe the order).
    """

    def __init__(
        self, capacity: int, *, on_grant: Callable[[str | None], None] | None = None
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.on_grant = on_grant
        self._holders = 0
        self._waiters: deque[tuple[asyncio.Future[None], str | None]] = deque()

    @property
    def in_use(self) -> int:
        """Slots currently held."""
        return self._holders

    @property
    def waiting(self) -> int:
        """Tasks queued for a slot."""
        return len(self._waiters)

    async def acquire(self, key: str | None = None) -> None:
        """Wait for a slot. Pair with `release()`; prefer `async with slot()`."""
        if self._holders < self.capacity and not self._waiters:
            self._holders += 1
            self._granted(key)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (future, key)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # The slot was handed over just before the cancellation landed: pass it on.
                self.release()
            elif entry in self._waiters:
                # (A release() may already have popped and skipped the cancelled entry.)
                self._waiters.remove(entry)
            raise

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if there is one, else to the pool."""
        while self._waiters:
            future, key = self._waiters.popleft()
            if not future.done():
                # The holder count is unchanged: the slot changes hands directly.
                future.set_result(None)
                self._granted(key)
                return
        if self._holders <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._holders -= 1

    @asynccontextmanager
    async def slot(self, key: str | None = None) -> AsyncIterator[None]:
        """Hold one slot for the body of the `async with` block."""
        await self.acquire(key)
        try:
            yield
        finally:
            self.release()

    def _granted(self, key: str | None) -> None:
        if self.on_grant is not None:
            self.on_grant(key)
