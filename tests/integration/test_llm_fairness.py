"""Fair sharing of a backend's slots across sessions, through the real client and mock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from engine.llm.client import LLMClient
from engine.llm.mock import Fault, MockLLM, MockReply, RecordedRequest
from engine.llm.types import Completion
from tests.integration.llm_fixtures import RecordingSleep, chat_request, llm_settings


class Gate:
    """A mock handler that holds every request until opened, counting those in flight."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.arrived = asyncio.Event()

    async def __call__(self, request: RecordedRequest) -> MockReply | None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.arrived.set()
        try:
            await self.opened.wait()
        finally:
            self.in_flight -= 1
        return None


async def settle(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (bounded by the test timeout)."""
    while not condition():  # noqa: ASYNC110 - limiter counts have no event to wait on
        await asyncio.sleep(0.001)


def start_calls(llm: LLMClient, keys: list[str]) -> list[asyncio.Task[Completion]]:
    backend = llm.default_backend
    return [
        asyncio.create_task(llm.chat(chat_request(), backend=backend, queue_key=key))
        for key in keys
    ]


async def test_fifty_sessions_share_four_slots_strictly_in_arrival_order(mock: MockLLM) -> None:
    gate = Gate()
    mock.set_handler(gate)
    grants: list[str | None] = []
    async with LLMClient(llm_settings(mock.base_url, llm_max_concurrency=4)) as llm:
        limiter = llm.limiter_for(llm.default_backend)
        limiter.on_grant = grants.append
        keys = [f"session-{n:02d}" for n in range(50)]
        tasks = start_calls(llm, keys)
        await settle(lambda: gate.in_flight == 4)

        assert limiter.in_use == 4
        assert limiter.waiting == 46
        gate.opened.set()
        await asyncio.gather(*tasks)

    assert grants == keys
    assert gate.most_in_flight == 4
    assert limiter.in_use == 0 and limiter.waiting == 0


async def test_cancelled_waiting_call_leaves_the_queue_without_taking_a_slot(
    mock: MockLLM,
) -> None:
    gate = Gate()
    mock.set_handler(gate)
    grants: list[str | None] = []
    async with LLMClient(llm_settings(mock.base_url, llm_max_concurrency=1)) as llm:
        limiter = llm.limiter_for(llm.default_backend)
        limiter.on_grant = grants.append
        first, waiting, last = start_calls(llm, ["a", "b", "c"])
        await settle(lambda: gate.in_flight == 1 and limiter.waiting == 2)

        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert limiter.waiting == 1
        gate.opened.set()
        await asyncio.gather(first, last)

    assert waiting.cancelled()
    assert grants == ["a", "c"]
    assert limiter.in_use == 0 and limiter.waiting == 0
    assert len(mock.requests) == 2


async def test_cancelled_running_call_hands_its_slot_on_at_once(mock: MockLLM) -> None:
    gate = Gate()
    mock.set_handler(gate)
    grants: list[str | None] = []
    async with LLMClient(llm_settings(mock.base_url, llm_max_concurrency=1)) as llm:
        limiter = llm.limiter_for(llm.default_backend)
        limiter.on_grant = grants.append
        running, queued = start_calls(llm, ["a", "b"])
        await settle(lambda: gate.in_flight == 1 and limiter.waiting == 1)

        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        # The gate is still closed: b got the slot because a's was released, not finished.
        assert grants == ["a", "b"]
        assert limiter.in_use == 1 and limiter.waiting == 0
        gate.opened.set()
        completion = await queued

    assert running.cancelled()
    assert completion.attempts == 1
    assert limiter.in_use == 0


async def test_a_call_waiting_to_retry_does_not_hold_its_slot(mock: MockLLM) -> None:
    retry_wait_started = asyncio.Event()
    finish_retry_wait = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        retry_wait_started.set()
        await finish_retry_wait.wait()

    mock.enqueue(MockReply(fault=Fault.HTTP_503))
    settings = llm_settings(mock.base_url, llm_max_concurrency=1)
    async with LLMClient(settings, sleep=slow_sleep) as llm:
        limiter = llm.limiter_for(llm.default_backend)
        (retrying,) = start_calls(llm, ["a"])
        await retry_wait_started.wait()

        assert limiter.in_use == 0
        other = await llm.chat(chat_request(), backend=llm.default_backend, queue_key="b")
        assert other.attempts == 1
        finish_retry_wait.set()
        assert (await retrying).attempts == 2


async def test_backends_have_separate_limits(mock: MockLLM) -> None:
    gate = Gate()
    mock.set_handler(gate)
    async with (
        MockLLM() as second,
        LLMClient(llm_settings(mock.base_url, llm_max_concurrency=1)) as llm,
    ):
        blocked = asyncio.create_task(
            llm.chat(chat_request(), backend=llm.default_backend, queue_key="a")
        )
        await gate.arrived.wait()

        other = llm.resolve_backend(second.base_url, None)
        completion = await llm.chat(chat_request(), backend=other, queue_key="b")

        assert completion.attempts == 1
        gate.opened.set()
        await blocked


async def _run_to_completion(calls: list[Awaitable[Completion]]) -> list[Completion]:
    return list(await asyncio.gather(*calls))


async def test_many_calls_through_the_mock_all_complete_and_count_queue_time(
    mock: MockLLM,
) -> None:
    settings = llm_settings(mock.base_url, llm_max_concurrency=2)
    async with LLMClient(settings, sleep=RecordingSleep()) as llm:
        backend = llm.default_backend
        results = await _run_to_completion(
            [llm.chat(chat_request(stream=n % 2 == 0), backend=backend) for n in range(200)]
        )

    assert len(mock.requests) == 200
    assert all(result.attempts == 1 for result in results)
    assert any(result.queue_ms > 0 for result in results)
    assert all(result.queue_ms <= result.latency_ms for result in results)
