"""Presence through the real server: observers are counted in `presence`, not announced."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import httpx

from tests.integration.conftest import RunningServer, WsMember, create_session, sse, ws_join

WS_OBSERVERS = 10
SSE_OBSERVERS = 10


async def test_observers_joining_give_no_member_joined_and_one_presence_with_their_count(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    token = created["observer_token"]
    watcher = await ws_join(server, token, name="watcher")
    members.append(watcher)
    await watcher.wait_for(lambda m: m.presence() == ([], 1))
    async with AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(sse(server, token, query=f"?name=s{i}"))
            for i in range(SSE_OBSERVERS)
        ]
        sockets = await asyncio.gather(
            *(ws_join(server, token, name=f"w{i}") for i in range(WS_OBSERVERS))
        )
        members.extend(sockets)
        everyone = 1 + WS_OBSERVERS + SSE_OBSERVERS
        await watcher.wait_for(lambda m: m.presence() == ([], everyone))
        await asyncio.gather(*(s.wait_for(lambda r: bool(r.events)) for s in streams))
        await asyncio.gather(*(w.wait_type("history") for w in sockets))

        # Every history counted its own member in; nobody's arrival was announced.
        seen = [s.events for s in streams] + [w.events for w in (watcher, *sockets)]
        for events in seen:
            assert events[0]["type"] == "history"
            assert 1 <= events[0]["presence"]["observers"] <= everyone
            assert [e for e in events if e["type"] == "member_joined"] == []
        status = (await client.get(f"/v1/session/{token}")).json()
        assert status["members"] == {"talkers": [], "observers": everyone}

    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    members.append(talker)
    [joined] = await watcher.wait_type("member_joined")
    assert (joined["role"], joined["name"]) == ("talker", "Dana")
    await watcher.wait_for(lambda m: m.presence() == (["Dana"], 1 + WS_OBSERVERS))
