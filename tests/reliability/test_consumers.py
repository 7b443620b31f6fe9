"""Slow, dead and restless consumers cost the session and the other members nothing.

Pace is judged by comparison, never by the clock: two sessions run side by side on
the same server, one disturbed and one left alone, and the disturbed one must keep up
with its twin's turn count. Leaks are judged by what is left once the disturbance is
over: the members the engine still holds, the connections the server still serves,
the subscription objects alive, the objects alive by type, and the memory traced
while a thousand observers came and went (and whether the second half of them added
to what the first half left).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.protocol.ws_stream import WSStream
from websockets.asyncio.client import connect

from engine.hub import Subscription
from engine.llm.mock import MockLLM
from server.ws_deflate import forget_shared
from tests.integration.conftest import (
    RunningServer,
    ServerFactory,
    WsMember,
    check_stream,
    create_session,
    spec_dict,
    ws_join,
)
from tests.reliability.conftest import raw_connect
from tests.support.engine import WAIT_SECONDS

WS_CLOSE = 0x8
TOO_SLOW = 4008
BIG_CONTEXT = 1_000_000  # sessions here end by max_turns or DELETE, never by context
CHURN_CYCLES = 1000  # observers that come and go, per churn
CHURN_AT_ONCE = 12
POLL_SECONDS = 0.01  # how often a condition is checked again, not a timed wait
# Churned before anything is measured, so that pools, caches, free lists and the replay
# buffer have reached their working size and cannot pass for a leak.
WARMUP_CYCLES = 250
# Memory is traced over a churn of CHURN_CYCLES run in two halves. Without a leak the
# second half adds allocator noise only (measured: 4 to 20 KiB) and both together hold
# well under 100 KiB (caches, interned strings, the event loop's free lists). A leak of
# one subscription, member and connection per cycle would add MiBs; even one stray
# string of a hundred characters per cycle adds about 100 KiB per half, over the bound.
MEMORY_GROWTH_BOUND_BYTES = 64 * 1024
MEMORY_BOUND_BYTES = 512 * 1024
# Most objects of one type the churn may leave alive: a leak of a single object per
# cycle would leave CHURN_CYCLES of them; noise (weak references, tuples) stays in the
# low hundreds.
OBJECT_GROWTH_BOUND = CHURN_CYCLES // 2
# What the churning clients themselves allocate is not the server's.
NOT_THE_TEST = [
    tracemalloc.Filter(False, "*/tests/*"),
    tracemalloc.Filter(False, tracemalloc.__file__),
]


def twin_spec(**options: Any) -> dict[str, Any]:
    return spec_dict(participation="autonomous", max_context_tokens=BIG_CONTEXT, **options)


async def bot_turns(client: httpx.AsyncClient, token: str) -> int:
    response = await client.get(f"/v1/session/{token}")
    assert response.status_code == 200, response.text
    turns: int = response.json()["bot_turns"]
    return turns


async def observers(client: httpx.AsyncClient, token: str) -> int:
    response = await client.get(f"/v1/session/{token}")
    count: int = response.json()["members"]["observers"]
    return count


async def wait_until(check: Callable[[], Awaitable[bool]]) -> None:
    # The server offers nothing to wait on for these conditions (connection counts,
    # member counts), so they are polled; the bound only turns a hang into a failure.
    async def loop() -> None:
        while True:
            if await check():
                return
            await asyncio.sleep(POLL_SECONDS)

    await asyncio.wait_for(loop(), WAIT_SECONDS)


# --- a consumer that stops reading ---------------------------------------------------------------


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_a_consumer_that_stops_reading_is_dropped_and_its_session_keeps_pace(
    server_factory: ServerFactory, transport: str
) -> None:
    # Small queues and buffers, so that the stuck consumer falls behind within a few
    # hundred events instead of megabytes.
    server = await server_factory(member_queue_size=16, listen_sndbuf=4096)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
        disturbed = await create_session(client, twin_spec(max_turns=300))
        control = await create_session(client, twin_spec(max_turns=300))
        path = (
            f"/v1/session/{disturbed['observer_token']}/connect?name=stuck"
            if transport == "ws"
            else f"/v1/session/{disturbed['observer_token']}/stream?name=stuck"
        )
        stuck = await raw_connect(server.port, path, websocket=transport == "ws", rcvbuf=4096)
        stuck.stop_reading()
        fast = await ws_join(server, disturbed["observer_token"])
        twin = await ws_join(server, control["observer_token"])
        try:
            await twin.wait_closed()
            # When the undisturbed twin has finished, the disturbed session is no further
            # behind than a wide margin: the stuck consumer did not hold it back.
            assert await bot_turns(client, disturbed["token"]) >= 300 // 2
            await fast.wait_closed()
            if transport == "ws":
                frames = await stuck.frames_until_close()
            else:
                body = await stuck.body_until_end()
        finally:
            stuck.writer.close()
        assert fast.events[-1]["type"] == "session_end"
        assert fast.events[-1]["reason"] == "max_turns"
        check_stream(fast.events)
        if transport == "ws":
            opcode, payload = frames[-1]
            assert opcode == WS_CLOSE
            assert int.from_bytes(payload[:2], "big") == TOO_SLOW
            assert b"since" in payload[2:]
        else:
            assert b": closed: too slow" in body


# --- a consumer that disappears -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "how"),
    [("ws", "vanish"), ("ws", "hang_up"), ("sse", "vanish"), ("sse", "hang_up")],
)
async def test_a_consumer_that_disappears_without_a_goodbye_is_forgotten(
    server: RunningServer, mock: MockLLM, transport: str, how: str
) -> None:
    mock.latency_ms = 5  # the session is still running when the ghost goes
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
        created = await create_session(client, twin_spec(max_turns=80))
        steady = await ws_join(server, created["observer_token"], name="steady")
        token = created["observer_token"]
        path = (
            f"/v1/session/{token}/connect?name=ghost"
            if transport == "ws"
            else f"/v1/session/{token}/stream?name=ghost"
        )
        ghost = await raw_connect(server.port, path, websocket=transport == "ws")

        def observing(n: int) -> Callable[[], Awaitable[bool]]:
            # Observers are counted, not announced: the status says how many (a presence
            # event could come a second late, after this short session is over).
            async def check() -> bool:
                return await observers(client, created["token"]) == n

            return check

        await wait_until(observing(2))
        getattr(ghost, how)()  # no close frame, no end of stream: just gone
        await wait_until(observing(1))
        await steady.wait_closed()
    check_stream(steady.events)
    assert steady.events[-1]["type"] == "session_end"
    assert steady.events[-1]["reason"] == "max_turns"


# --- hundreds that come and go ------------------------------------------------------------------


async def churn(server: RunningServer, token: str, cycles: int) -> None:
    """Observers that connect, get their history, and leave: cleanly or not, WS or SSE."""
    gate = asyncio.Semaphore(CHURN_AT_ONCE)
    timeout = httpx.Timeout(WAIT_SECONDS, read=None)

    async def ws_clean() -> None:
        async with connect(f"{server.ws_url}/v1/session/{token}/connect?name=churn") as ws:
            await asyncio.wait_for(ws.recv(), WAIT_SECONDS)  # history

    async def sse_clean(http: httpx.AsyncClient) -> None:
        async with http.stream("GET", f"/v1/session/{token}/stream?name=churn") as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    break  # history received: leave

    async def raw_gone(websocket: bool) -> None:
        kind = "connect" if websocket else "stream"
        client = await raw_connect(
            server.port, f"/v1/session/{token}/{kind}?name=churn", websocket=websocket
        )
        client.vanish()

    async with httpx.AsyncClient(base_url=server.base_url, timeout=timeout) as http:
        kinds: list[Callable[[], Awaitable[None]]] = [
            ws_clean,
            lambda: sse_clean(http),
            lambda: raw_gone(True),
            lambda: raw_gone(False),
        ]

        async def one(index: int) -> None:
            async with gate:
                await kinds[index % len(kinds)]()

        await asyncio.gather(*(one(i) for i in range(cycles)))


def server_streams() -> int:
    """Hypercorn's live request and WebSocket streams (one per open connection's request)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, WSStream | HTTPStream))


def live_subscriptions() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Subscription) and not o.closed)


def objects_by_type() -> Counter[str]:
    """Live objects tracked by the garbage collector, counted by type."""
    gc.collect()
    return Counter(type(o).__qualname__ for o in gc.get_objects())


async def test_a_thousand_observers_coming_and_going_cost_the_others_nothing(
    server_factory: ServerFactory, mock: MockLLM
) -> None:
    server = await server_factory()
    mock.latency_ms = 2
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
        disturbed = await create_session(client, twin_spec())
        control = await create_session(client, twin_spec())
        steady = await ws_join(server, disturbed["observer_token"], name="steady")
        twin = await ws_join(server, control["observer_token"], name="twin")
        members: list[WsMember] = [steady, twin]
        try:
            await steady.wait_type("history")
            await twin.wait_type("history")
            start = (
                await bot_turns(client, disturbed["token"]),
                await bot_turns(client, control["token"]),
            )
            await churn(server, disturbed["observer_token"], CHURN_CYCLES)
            made = await bot_turns(client, disturbed["token"]) - start[0]
            made_by_twin = await bot_turns(client, control["token"]) - start[1]
            # Both sessions ran side by side; the churned one kept up with its twin.
            assert made >= made_by_twin // 2, (made, made_by_twin)
            assert not steady.closed, (steady.close_code, steady.close_reason)
            for created in (disturbed, control):
                assert (await client.delete(f"/v1/session/{created['token']}")).is_success
            for member in members:
                await member.wait_closed()
        finally:
            for member in members:
                if not member.closed:
                    await member.close()
    # The steady observer received every event of its session, in order, to the end;
    # the churned observers were counted in `presence`, never announced one by one.
    for member in members:
        check_stream(member.events)
        assert member.events[-1]["type"] == "session_end"
    assert steady.of_type("member_joined", "member_left") == []
    assert steady.of_type("presence")


async def test_a_thousand_observers_coming_and_going_leave_nothing_behind(
    server_factory: ServerFactory,
) -> None:
    # A small replay buffer fills during the warm-up, so it cannot pass for a leak. The
    # session is reactive and nobody talks: no turn runs, and nothing else is connected
    # whose own bookkeeping could pass for the server's.
    server = await server_factory(event_buffer_size=64)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
        created = await create_session(
            client, spec_dict(participation="reactive", max_context_tokens=BIG_CONTEXT)
        )
        handle = server.manager.open(created["token"])
        streams_at_rest = server_streams()

        async def all_gone() -> bool:
            # Every churned member has left the engine and every connection the server
            # (Hypercorn notices a closed WebSocket at its next ping tick: a moment).
            return (
                handle.session.hub.member_count == 0
                and not handle.session.members
                and server_streams() <= streams_at_rest
            )

        await churn(server, created["observer_token"], WARMUP_CYCLES)
        await wait_until(all_gone)
        subscriptions_before = live_subscriptions()
        objects_before = objects_by_type()

        tracemalloc.start()
        try:
            held: list[int] = []
            for _ in range(2):
                await churn(server, created["observer_token"], CHURN_CYCLES // 2)
                await wait_until(all_gone)
                forget_shared()  # bounded (SHARED_MESSAGES), and filling it is no leak
                grown = {
                    kind: count - objects_before[kind]
                    for kind, count in objects_by_type().items()
                    if count - objects_before[kind] >= OBJECT_GROWTH_BOUND
                }
                kept = tracemalloc.take_snapshot().filter_traces(NOT_THE_TEST)
                held.append(sum(stat.size for stat in kept.statistics("filename")))
        finally:
            tracemalloc.stop()
        print(f"memory held after each half of {CHURN_CYCLES} observers: {held} bytes")
        assert live_subscriptions() == subscriptions_before
        assert grown == {}, grown
        assert held[1] - held[0] < MEMORY_GROWTH_BOUND_BYTES, kept.statistics("lineno")[:10]
        assert held[1] < MEMORY_BOUND_BYTES, kept.statistics("lineno")[:10]
        status = (await client.get(f"/v1/session/{created['token']}")).json()
        assert status["members"] == {"talkers": [], "observers": 0}
        # The churn touched nothing else: the session is as it was, and still works.
        assert status["messages"] == 0
