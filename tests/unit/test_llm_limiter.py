"""FairLimiter: a bound on concurrent holders, granted strictly in arrival order; the LLM
client takes its limiters from a factory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.llm.client import LLMClient
from engine.llm.limiter import FairLimiter, Limiter
from tests.support.engine import make_settings


async def test_holders_never_exceed_capacity_and_grants_follow_arrival() -> None:
    limiter = FairLimiter(3)
    grants: list[str | None] = []
    limiter.on_grant = grants.append
    release = asyncio.Event()
    holding = 0
    most = 0

    async def call(key: str) -> None:
        nonlocal holding, most
        async with limiter.slot(key):
            holding += 1
            most = max(most, holding)
            await release.wait()
            holding -= 1

    keys = [str(n) for n in range(20)]
    tasks = [asyncio.create_task(call(key)) for key in keys]
    await asyncio.sleep(0)
    assert (limiter.in_use, limiter.waiting) == (3, 17)
    release.set()
    await asyncio.gather(*tasks)

    assert grants == keys
    assert most == 3
    assert (limiter.in_use, limiter.waiting) == (0, 0)


async def test_a_newcomer_cannot_barge_past_waiters_when_a_slot_frees() -> None:
    limiter = FairLimiter(1)
    order: list[str] = []
    await limiter.acquire("holder")
    waiter = asyncio.create_task(limiter.acquire("waiter"))
    await asyncio.sleep(0)

    limiter.release()  # handed straight to the waiter, not back to the pool
    newcomer = asyncio.create_task(limiter.acquire("newcomer"))
    waiter.add_done_callback(lambda _: order.append("waiter"))
    newcomer.add_done_callback(lambda _: order.append("newcomer"))
    await waiter
    await asyncio.sleep(0)

    assert order == ["waiter"]
    assert not newcomer.done()
    limiter.release()
    await newcomer
    assert order == ["waiter", "newcomer"]
    limiter.release()
    assert limiter.in_use == 0


async def test_cancelled_waiter_leaves_the_queue() -> None:
    limiter = FairLimiter(1)
    grants: list[str | None] = []
    limiter.on_grant = grants.append
    await limiter.acquire("a")
    b = asyncio.create_task(limiter.acquire("b"))
    c = asyncio.create_task(limiter.acquire("c"))
    await asyncio.sleep(0)

    b.cancel()
    await asyncio.gather(b, return_exceptions=True)
    assert limiter.waiting == 1
    limiter.release()
    await c

    assert grants == ["a", "c"]
    limiter.release()
    assert (limiter.in_use, limiter.waiting) == (0, 0)


async def test_slot_handed_to_a_task_cancelled_before_it_ran_is_passed_on() -> None:
    limiter = FairLimiter(1)
    await limiter.acquire("a")
    b = asyncio.create_task(limiter.acquire("b"))
    c = asyncio.create_task(limiter.acquire("c"))
    await asyncio.sleep(0)

    limiter.release()  # b's future now holds the slot ...
    b.cancel()  # ... but b is cancelled before it can run
    await asyncio.gather(b, return_exceptions=True)
    await c

    assert b.cancelled()
    assert limiter.in_use == 1  # c holds the single slot; nothing leaked or doubled
    limiter.release()
    assert limiter.in_use == 0


async def test_cancelling_a_holder_releases_its_slot_once() -> None:
    limiter = FairLimiter(1)
    entered = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot("holder"):
            entered.set()
            await asyncio.Event().wait()

    holder = asyncio.create_task(hold())
    await entered.wait()
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)

    assert limiter.in_use == 0
    async with limiter.slot("next"):
        assert limiter.in_use == 1
    assert limiter.in_use == 0


async def test_waiter_cancelled_after_a_release_skipped_it_is_not_removed_twice() -> None:
    limiter = FairLimiter(1)
    await limiter.acquire("a")
    b = asyncio.create_task(limiter.acquire("b"))
    await asyncio.sleep(0)

    b.cancel()  # b's future is cancelled; its task has not run its handler yet
    limiter.release()  # skips b's cancelled entry and returns the slot to the pool
    await asyncio.gather(b, return_exceptions=True)

    assert (limiter.in_use, limiter.waiting) == (0, 0)


def test_release_without_acquire_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        FairLimiter(2).release()


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairLimiter(0)


def test_the_client_builds_one_limiter_per_backend_through_its_factory(tmp_path: Path) -> None:
    built: list[tuple[str, int]] = []

    def limiters(base_url: str, capacity: int) -> Limiter:
        built.append((base_url, capacity))
        return FairLimiter(capacity)

    settings = make_settings(tmp_path, "http://127.0.0.1:9/v1", llm_max_concurrency=3)
    client = LLMClient(settings, limiters=limiters)
    first = client.limiter_for(client.default_backend)
    assert client.limiter_for(client.default_backend) is first
    assert built == [("http://127.0.0.1:9/v1", 3)]
