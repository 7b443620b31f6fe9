"""The WebSocket protocol: history first, talker frames, bad frames, refusals, close codes."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Request, TextMessage

from engine.events import parse_event
from server import ws as ws_routes
from tests.integration.conftest import (
    RunningServer,
    ServerFactory,
    WsMember,
    check_stream,
    create_session,
    ws_join,
)
from tests.support.engine import WAIT_SECONDS


async def test_first_frame_is_history_then_live_events_in_seq_order(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    members.append(talker)
    [history] = await talker.wait_type("history")
    assert history["messages"] == []
    await talker.say("Hello, bots")
    await talker.wait_type("bot_message")
    [said] = talker.of_type("talker_message")
    assert said["talker"] == "Dana" and said["turn"] == 1 and said["content"] == "Hello, bots"
    assert said["talker_id"]
    [reply] = talker.of_type("bot_message")
    assert reply["bot"] == "Alice" and reply["turn"] == 2
    check_stream(talker.events)
    for event in talker.events:  # every frame is a well-formed event
        assert parse_event(json.dumps(event)).type == event["type"]


async def test_ping_is_answered_by_pong_to_that_client_only(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    observer = await ws_join(server, created["observer_token"])
    members.extend([talker, observer])
    await observer.wait_type("history")
    await talker.wait_type("history")
    await talker.send({"type": "ping"})
    [pong] = await talker.wait_type("pong")
    assert pong["seq"] == talker.events[-2]["seq"]  # repeats the last session seq
    await observer.send({"type": "ping"})
    await observer.wait_type("pong")
    await talker.say("after the pings")
    await observer.wait_type("talker_message")
    assert len(observer.of_type("pong")) == 1


async def test_a_pong_after_a_reconnect_repeats_the_since_the_client_came_back_with(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    members.append(talker)
    await talker.say("hello")
    await talker.wait_type("turn_end")
    last = talker.events[-1]["seq"]
    observer = await ws_join(server, created["observer_token"], since=last)
    members.append(observer)
    await observer.send({"type": "ping"})
    [pong] = await observer.wait_type("pong")
    before = observer.events[: observer.events.index(pong)]
    # Events may still come meanwhile (the presence counting its own arrival, the loop's
    # state): the pong repeats the last seq sent to it, and with none, its since.
    assert all(event["type"] not in ("bot_message", "talker_message") for event in before)
    assert pong["seq"] == (before[-1]["seq"] if before else last)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "invalid_json"),
        ("[" * 100_000, "invalid_json"),
        (b"\x00\x01binary", "bad_frame"),
        ('["a", "list"]', "bad_frame"),
        ({"type": "shout", "content": "hi"}, "unknown_frame_type"),
        ({"content": "no type"}, "bad_frame"),
        ({"type": "user_message"}, "bad_frame"),
        ({"type": "user_message", "content": 42}, "bad_frame"),
        ({"type": "user_message", "content": "   "}, "empty_message"),
        ({"type": "user_message", "content": "x" * 101}, "message_too_long"),
    ],
)
async def test_a_bad_frame_gets_an_error_for_that_client_and_the_connection_goes_on(
    server_factory: ServerFactory, members: list[WsMember], frame: object, code: str
) -> None:
    server = await server_factory(max_message_chars=100)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        created = await create_session(http, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    observer = await ws_join(server, created["observer_token"])
    members.extend([talker, observer])
    await talker.wait_type("history")
    await observer.wait_type("history")
    await talker.send(frame)  # type: ignore[arg-type]
    [error] = await talker.wait_type("error")
    assert error["code"] == code
    assert error["message"]
    # The connection and the session go on.
    await talker.say("a proper message")
    await talker.wait_type("bot_message")
    await observer.wait_type("bot_message")
    assert observer.of_type("error") == []
    history = server.manager.history(server.manager.open(created["token"]))
    assert [m.content for m in history if m.kind == "talker"] == ["a proper message"]


async def test_an_observer_trying_to_talk_gets_an_error_and_stays_connected(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    observer = await ws_join(server, created["token"], role="observer")
    members.append(observer)
    await observer.say("let me in")
    [error] = await observer.wait_type("error")
    assert error["code"] == "observer_cannot_talk"
    await observer.send({"type": "ping"})
    await observer.wait_type("pong")
    assert server.manager.history(server.manager.open(created["token"])) == []


# --- refusals: accepted, told why, closed with a code a browser can read ----------------------


async def refused(server: RunningServer, token: str, **params: str) -> WsMember:
    member = await ws_join(server, token, **params)  # type: ignore[arg-type]
    await member.wait_closed()
    return member


async def test_unknown_token_is_closed_with_4004(server: RunningServer) -> None:
    member = await refused(server, "fsk_nope")
    assert member.close_code == 4004
    assert [e["code"] for e in member.events] == ["not_found"]


async def test_observer_token_as_talker_is_closed_with_4003(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    created = await create_session(client, participation="reactive")
    member = await refused(server, created["observer_token"], role="talker", name="Eve")
    assert member.close_code == 4003
    assert member.events[0]["code"] == "observer_token"


async def test_a_talker_is_refused_by_an_autonomous_session_with_4003(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    created = await create_session(client, participation="autonomous", max_turns=1)
    member = await refused(server, created["token"], role="talker", name="Dana")
    assert member.close_code == 4003
    assert member.events[0]["code"] == "talkers_not_allowed"
    assert "observer" in (member.close_reason or "")


async def test_a_talker_beyond_max_talkers_is_closed_with_4009(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive", max_talkers=1)
    first = await ws_join(server, created["token"], role="talker", name="Dana")
    members.append(first)
    await first.wait_type("history")
    second = await refused(server, created["token"], role="talker", name="Eve")
    assert second.close_code == 4009
    assert second.events[0]["code"] == "too_many_talkers"
    # The seat frees up when the first talker leaves.
    await first.close()
    third = await ws_join(server, created["token"], role="talker", name="Eve")
    members.append(third)
    await third.wait_type("history")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"role": "talker"}, "name_required"),
        ({"role": "talker", "name": "x" * 65}, "name_too_long"),
        ({"role": "talker", "name": "Dana\nAlice: I agree"}, "invalid_name"),
        ({"role": "observer", "name": "tab\there"}, "invalid_name"),
        ({"role": "talker", "name": " ALICE "}, "name_taken"),
        ({"role": "admin"}, "invalid_parameters"),
        ({"role": "observer", "since": "soon"}, "invalid_parameters"),
    ],
)
async def test_bad_connect_parameters_are_closed_with_4000(
    server: RunningServer, client: httpx.AsyncClient, params: dict[str, str], code: str
) -> None:
    created = await create_session(client, participation="reactive")
    member = await refused(server, created["token"], **params)
    assert member.close_code == 4000
    assert member.events[0]["code"] == code


async def test_session_end_sends_remaining_frames_then_closes_1000(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    created = await create_session(client, participation="reactive")
    observer = await ws_join(server, created["observer_token"])
    await observer.wait_type("history")
    await client.delete(f"/v1/session/{created['token']}")
    await observer.wait_closed()
    assert observer.events[-1]["type"] == "session_end"
    assert observer.events[-1]["reason"] == "client_request"
    assert (observer.close_code, observer.close_reason) == (1000, "session ended")


async def test_connecting_to_an_ended_session_gives_its_history_then_closes(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    created = await create_session(client, participation="autonomous", max_turns=2)
    first = await ws_join(server, created["observer_token"])
    await first.wait_closed()
    late = await ws_join(server, created["observer_token"])
    await late.wait_closed()
    assert late.events[0]["type"] == "history"
    assert [m["turn"] for m in late.events[0]["messages"]] == [1, 2]
    assert late.close_code == 1000


async def test_talkers_joining_and_leaving_are_announced_and_observers_only_counted(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    watcher = await ws_join(server, created["observer_token"], name="Watcher")
    members.append(watcher)
    await watcher.wait_type("history")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    await talker.wait_type("history")
    await talker.close()
    [left] = await watcher.wait_type("member_left")
    assert (left["role"], left["name"]) == ("talker", "Dana")
    joined = [(e["role"], e["name"]) for e in watcher.of_type("member_joined")]
    assert joined == [("talker", "Dana")]
    # The last presence tells the truth: Watcher alone (Dana may have come and gone unseen).
    await watcher.wait_for(lambda m: m.presence() == ([], 1))
    status = (await client.get(f"/v1/session/{created['token']}")).json()
    assert status["members"] == {"talkers": [], "observers": 1}


async def test_an_unexpected_failure_closes_with_1011_and_an_error_event(
    server: RunningServer, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    await talker.wait_type("history")

    async def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(server.manager, "post", broken)
    await talker.say("hello")
    await talker.wait_closed()
    assert talker.close_code == 1011
    assert talker.events[-1]["type"] == "error"
    assert talker.events[-1]["code"] == "internal"
    assert "boom" not in talker.events[-1]["message"]
    status = (await client.get(f"/v1/session/{created['token']}")).json()
    assert status["members"]["talkers"] == []


async def test_connects_over_the_rate_limit_are_closed_with_4029(
    server_factory: ServerFactory, members: list[WsMember]
) -> None:
    server = await server_factory(rate_limit_per_minute=2)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        created = await create_session(http, participation="reactive")  # request 1
    first = await ws_join(server, created["observer_token"])  # request 2
    members.append(first)
    await first.wait_type("history")
    second = await refused(server, created["observer_token"])
    assert second.close_code == 4029
    assert second.events[0]["code"] == "rate_limited"


async def test_the_server_waits_for_the_clients_close_frame_before_dropping_the_connection(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dropping the TCP connection right after our close frame makes some clients (Node's,
    # Chromium's WebSocket) lose the last frames to a reset and report 1006.
    monkeypatch.setattr(ws_routes, "WS_CLOSE_TIMEOUT", WAIT_SECONDS)
    server = await server_factory()
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        created = await create_session(client, participation="reactive")
        host, port = server.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        ws = WSConnection(ConnectionType.CLIENT)
        path = f"/v1/session/{created['token']}/connect"
        writer.write(ws.send(Request(host=host, target=path)))

        async def next_event() -> Event:
            while True:
                for event in ws.events():
                    return event
                data = await asyncio.wait_for(reader.read(65536), WAIT_SECONDS)
                assert data, "the server dropped the connection"
                ws.receive_data(data)

        assert isinstance(await next_event(), AcceptConnection)
        await client.delete(f"/v1/session/{created['token']}")
        received: list[Event] = []
        while not received or not isinstance(received[-1], CloseConnection):
            received.append(await next_event())
        texts = [json.loads(e.data)["type"] for e in received if isinstance(e, TextMessage)]
        assert texts[-1] == "session_end"
        assert received[-1].code == 1000
        # Still open while our close frame has not been sent...
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), timeout=0.3)
        # ...and closed by the server once it has.
        writer.write(ws.send(received[-1].response()))
        assert await asyncio.wait_for(reader.read(), WAIT_SECONDS) == b""
        writer.close()


async def test_the_server_compresses_each_message_on_its_own_for_a_browser_like_client(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    # websockets offers permessage-deflate as browsers do; the server's answer shows that
    # Hypercorn negotiated our extension (server/ws_deflate.py), which a Hypercorn upgrade
    # could silently undo.
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    members.append(talker)
    assert talker.ws.response is not None
    extensions = talker.ws.response.headers["Sec-WebSocket-Extensions"]
    assert extensions.startswith("permessage-deflate")
    assert "server_no_context_takeover" in extensions
    await talker.say("hello")
    [reply] = await talker.wait_type("bot_message")
    assert reply["bot"] == "Alice"
