"""The lease keeper's own rules, on a store that can be made to fail and a manual clock.

The database decides when a lease expires; the keeper only decides when to give up on
its own leases: when a renewal is refused, when a write is fenced, or when no renewal
has got through for a whole lease (another node may hold them by then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from engine.cluster.leases import RENEWALS_PER_LEASE, LeaseKeeper
from engine.errors import StorageError
from engine.store.in_memory import MemoryStore
from tests.support.clock import ManualClock

LEASE = 6.0


class FlakyStore(MemoryStore):
    """A one-process store whose renewals can fail, or come back without some leases."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.taken: set[str] = set()

    async def heartbeat(self, seconds: float) -> None:
        if self.down:
            raise StorageError("the database is away", problem="io")

    async def renew_leases(self, held: Mapping[str, int], seconds: float) -> set[str]:
        if self.down:
            raise StorageError("the database is away", problem="io")
        return set(held) - self.taken


async def never(seconds: float) -> None:
    await asyncio.Event().wait()  # the test ticks by hand


async def keeper_on(store: FlakyStore, clock: ManualClock) -> tuple[LeaseKeeper, list[str]]:
    lost: list[str] = []

    async def on_lost(session_id: str) -> None:
        lost.append(session_id)

    keeper = LeaseKeeper(store, lease_seconds=LEASE, on_lost=on_lost, clock=clock, sleep=never)
    await keeper.start()
    for session_id in ("s1", "s2"):
        assert await keeper.acquire(session_id) == 1
    return keeper, lost


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_renewal_that_comes_back_without_a_lease_loses_that_one_only() -> None:
    store, clock = FlakyStore(), ManualClock()
    keeper, lost = await keeper_on(store, clock)
    store.taken = {"s2"}
    await keeper.tick()
    await settle()
    assert lost == ["s2"] and keeper.held() == {"s1": 1}
    assert keeper.epoch_of("s2") is None
    await keeper.stop()


async def test_leases_are_kept_while_the_store_is_away_for_less_than_a_lease() -> None:
    store, clock = FlakyStore(), ManualClock()
    keeper, lost = await keeper_on(store, clock)
    store.down = True
    for _ in range(RENEWALS_PER_LEASE - 1):
        clock.advance(keeper.interval)
        await keeper.tick()
    await settle()
    assert lost == [] and keeper.held() == {"s1": 1, "s2": 1}
    clock.advance(keeper.interval)  # a whole lease since the last renewal that got through
    await keeper.tick()
    await settle()
    assert sorted(lost) == ["s1", "s2"] and keeper.held() == {}
    await keeper.stop()


async def test_a_fenced_write_loses_the_lease_once_and_a_newer_lease_stays() -> None:
    store, clock = FlakyStore(), ManualClock()
    keeper, lost = await keeper_on(store, clock)
    keeper.fenced("s1", 1)
    keeper.fenced("s1", 1)  # a second refusal of the same lease changes nothing
    keeper.fenced("s2", 0)  # not the epoch it holds: an older lease's write
    await settle()
    assert lost == ["s1"] and keeper.held() == {"s2": 1}
    await keeper.stop()


async def test_the_keeper_is_the_stores_fencing_hook_and_stop_releases_everything() -> None:
    store, clock = FlakyStore(), ManualClock()
    keeper, lost = await keeper_on(store, clock)
    assert store.fencing is keeper
    await keeper.release("s1")
    assert keeper.held() == {"s2": 1}
    await keeper.stop()
    assert keeper.held() == {} and lost == []
