"""The SSE transport: frame format, headers, replay by Last-Event-ID and since, keep-alive."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.integration.conftest import (
    RunningServer,
    ServerFactory,
    WsMember,
    create_session,
    sse,
    ws_join,
)
from tests.support.engine import WAIT_SECONDS


async def test_every_frame_carries_id_event_and_json_data_with_stream_headers(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    async with sse(server, created["observer_token"]) as stream:
        await stream.wait_type("history")
        assert stream.headers is not None
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["x-accel-buffering"] == "no"
        talker = await ws_join(server, created["token"], role="talker", name="Dana")
        members.append(talker)
        await talker.say("hello")
        await stream.wait_type("bot_message")
        assert stream.names == [e["type"] for e in stream.events]
        assert stream.ids == [str(e["seq"]) for e in stream.events]
        seqs = [e["seq"] for e in stream.events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        # The same events as a WebSocket member gets.
        overlap = [e for e in stream.events if e["seq"] > talker.events[0]["seq"]]
        assert overlap == talker.events[1 : 1 + len(overlap)]


async def test_last_event_id_replays_exactly_the_missed_events(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    members.append(talker)
    async with sse(server, created["observer_token"]) as first:
        await talker.say("one")
        await first.wait_type("bot_message")
    last_id = first.ids[-1]
    await talker.say("two")
    await talker.wait_type("bot_message", 2)
    missed = [e for e in talker.events if e["seq"] > int(last_id)]
    async with sse(server, created["observer_token"], headers={"Last-Event-ID": last_id}) as again:
        await again.wait_for(lambda r: len(r.events) >= len(missed))
        assert again.events[: len(missed)] == missed
        assert again.of_type("history") == []
        assert [e["content"] for e in again.of_type("talker_message")] == ["two"]


async def test_since_query_replays_and_last_event_id_wins_over_it(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    members.append(talker)
    await talker.say("one")
    await talker.wait_type("bot_message")
    mark = talker.of_type("bot_message")[0]["seq"]
    async with sse(server, created["observer_token"], query=f"?since={mark}") as by_query:
        await by_query.wait_for(lambda r: bool(r.events))
        assert by_query.events[0]["seq"] == mark + 1
    async with sse(
        server,
        created["observer_token"],
        query="?since=0",
        headers={"Last-Event-ID": str(mark)},
    ) as by_header:
        await by_header.wait_for(lambda r: bool(r.events))
        assert by_header.events[0]["seq"] == mark + 1


async def test_the_stream_ends_after_session_end_and_a_reconnect_then_gets_204(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    created = await create_session(client, participation="reactive")
    async with sse(server, created["observer_token"]) as stream:
        await stream.wait_type("history")
        await client.delete(f"/v1/session/{created['token']}")
        await stream.wait_done()
        assert stream.events[-1]["type"] == "session_end"
    response = await client.get(
        f"/v1/session/{created['observer_token']}/stream",
        headers={"Last-Event-ID": stream.ids[-1]},
    )
    assert response.status_code == 204  # EventSource stops reconnecting


async def test_keep_alive_comments_arrive_while_nothing_happens(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(sse_keepalive_seconds=0.05)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as http:
        created = await create_session(http, participation="reactive")
        url = f"/v1/session/{created['observer_token']}/stream"
        lines: list[str] = []
        async with http.stream("GET", url) as response, asyncio.timeout(WAIT_SECONDS):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                lines.append(line)
                if lines.count(": keep-alive") == 3:
                    break
    assert lines.count(": keep-alive") == 3, lines
    # The stream stays open, and the comments are all it carries once the member's own
    # arrival is counted: nothing else happens in a reactive session without talkers.
    assert not any(line.startswith(": closed") for line in lines), lines
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    types = [json.loads(text)["type"] for text in data]
    assert types == ["history", "presence"], types


async def test_bad_last_event_id_is_400_and_unknown_token_404(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    created = await create_session(client, participation="reactive")
    response = await client.get(
        f"/v1/session/{created['observer_token']}/stream", headers={"Last-Event-ID": "abc"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_parameters"
    response = await client.get("/v1/session/nope/stream")
    assert response.status_code == 404
    assert json.loads(response.text)["code"] == "not_found"


@pytest.mark.parametrize(
    ("query", "headers", "code"),
    [
        ("", {"Last-Event-ID": ""}, "invalid_parameters"),
        ("", {"Last-Event-ID": "-1"}, "invalid_parameters"),
        ("?since=-1", {}, "invalid_parameters"),
        ("?since=soon", {}, "invalid_parameters"),
        ("?name=" + "x" * 65, {}, "name_too_long"),
        ("?name=tab%09here", {}, "invalid_name"),
    ],
)
async def test_bad_parameters_are_a_400_before_the_stream_starts(
    client: httpx.AsyncClient, query: str, headers: dict[str, str], code: str
) -> None:
    # What /openapi.json says of them: a seq number, a name of one line and MAX_NAME_CHARS.
    created = await create_session(client, participation="reactive")
    response = await client.get(
        f"/v1/session/{created['observer_token']}/stream{query}", headers=headers
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["code"] == code


async def test_an_empty_since_reads_as_no_since(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    created = await create_session(client, participation="reactive")
    async with sse(server, created["observer_token"], query="?since=&name=") as stream:
        await stream.wait_type("history")
        assert stream.status == 200
        assert stream.events[0]["type"] == "history"


async def test_a_client_going_away_leaves_the_session(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    watcher = await ws_join(server, created["observer_token"], name="watcher")
    members.append(watcher)
    await watcher.wait_type("history")
    async with sse(server, created["observer_token"], query="?name=reader") as stream:
        await stream.wait_type("history")
        await watcher.wait_for(lambda m: m.presence() == ([], 2))
    await watcher.wait_for(lambda m: m.presence() == ([], 1))
    assert watcher.of_type("member_left") == []  # observers are counted, not announced
    status = (await client.get(f"/v1/session/{created['token']}")).json()
    assert status["members"]["observers"] == 1
