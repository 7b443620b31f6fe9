"""Many members, one stream: no gap, no duplicate, replay on reconnect, several talkers."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import Any

import httpx

from engine.llm.mock import MockLLM
from tests.integration.conftest import (
    RunningServer,
    ServerFactory,
    WsMember,
    check_stream,
    create_session,
    ws_join,
)
from tests.support.engine import WAIT_SECONDS


def after(events: list[dict[str, Any]], seq: int) -> list[dict[str, Any]]:
    """Session events with a seq above `seq` (client-only replies left out)."""
    return [e for e in events if e["seq"] > seq and e["type"] not in ("history", "pong")]


async def test_an_observer_joining_mid_session_gets_history_then_every_later_event_once(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM
) -> None:
    mock.latency_ms = 5  # the session is still running when the second observer joins
    created = await create_session(client, participation="autonomous", max_turns=30)
    early = await ws_join(server, created["observer_token"])
    await early.wait_type("bot_message", 5)
    late = await ws_join(server, created["observer_token"])
    await late.wait_closed()
    await early.wait_closed()

    check_stream(early.events)
    check_stream(late.events)
    history = late.events[0]
    assert history["messages"], "joined before anything happened: not mid-session"
    assert late.events[1:] == after(early.events, history["seq"])
    # Every turn is seen exactly once: complete in the snapshot, or arriving live.
    seen = [m["turn"] for m in history["messages"] if m["status"] == "complete"]
    seen += [e["turn"] for e in late.of_type("bot_message")]
    assert sorted(seen) == list(range(1, 31))
    assert len(seen) == len(set(seen))


async def test_reconnecting_with_since_replays_exactly_the_missed_events(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    steady = await ws_join(server, created["observer_token"], name="steady")
    leaver = await ws_join(server, created["observer_token"], name="leaver")
    members.extend([talker, steady])
    await leaver.wait_type("history")
    await talker.say("one")
    await leaver.wait_type("bot_message")
    await leaver.close()
    last_seen = leaver.events[-1]["seq"]

    await talker.say("two")
    await steady.wait_type("bot_message", 2)
    back = await ws_join(server, created["observer_token"], name="leaver", since=last_seen)
    members.append(back)
    await back.wait_for(lambda m: bool(m.events))  # joined: it will hear the end
    await client.delete(f"/v1/session/{created['token']}")
    await asyncio.gather(steady.wait_closed(), back.wait_closed())

    assert back.of_type("history") == []
    assert back.events == after(steady.events, last_seen)
    assert back.events[0]["seq"] == last_seen + 1
    assert [e["content"] for e in back.of_type("talker_message")] == ["two"]


async def test_reconnecting_after_the_buffer_moved_on_gets_a_fresh_history(
    server_factory: ServerFactory, members: list[WsMember]
) -> None:
    server = await server_factory(event_buffer_size=16)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        created = await create_session(http, participation="autonomous", max_turns=10)
    watcher = await ws_join(server, created["observer_token"])
    await watcher.wait_closed()
    assert watcher.events[-1]["seq"] > 16 + 1
    back = await ws_join(server, created["observer_token"], since=1)
    await back.wait_closed()
    assert back.events[0]["type"] == "history"
    assert len(back.events[0]["messages"]) == 10


async def test_two_talkers_share_a_collaborative_session(
    server: RunningServer,
    client: httpx.AsyncClient,
    mock: MockLLM,
    members: list[WsMember],
) -> None:
    mock.latency_ms = 5
    created = await create_session(
        client, participation="collaborative", max_talkers=2, max_turns=8
    )
    dana = await ws_join(server, created["token"], role="talker", name="Dana")
    eve = await ws_join(server, created["token"], role="talker", name="Eve")
    members.extend([dana, eve])
    await dana.wait_type("history")
    await eve.wait_type("history")
    await dana.say("Dana here: coffee or tea?")
    await eve.say("Eve here: I say tea.")
    for talker in (dana, eve):
        await talker.wait_type("session_end")
        said = {(e["talker"], e["content"]) for e in talker.of_type("talker_message")}
        assert said == {("Dana", "Dana here: coffee or tea?"), ("Eve", "Eve here: I say tea.")}
        check_stream(talker.events)
    history = (await client.get(f"/v1/session/{created['token']}/history")).json()["messages"]
    assert [m["turn"] for m in history] == list(range(1, len(history) + 1))
    talkers = [(m["speaker"], m["talker_id"]) for m in history if m["kind"] == "talker"]
    assert [name for name, _ in talkers] == ["Dana", "Eve"]
    assert talkers[0][1] != talkers[1][1]
    assert sum(1 for m in history if m["kind"] == "bot") == 8
    # Bots saw each talker under their own name.
    prompts = "\n".join(r.last_user_message for r in mock.requests)
    assert "Eve: Eve here: I say tea." in prompts


async def test_a_hundred_observers_each_receive_every_event_in_order(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    observers = await asyncio.gather(
        *(ws_join(server, created["observer_token"], name=f"o{i}") for i in range(100))
    )
    members.extend(observers)
    await asyncio.gather(*(o.wait_type("history") for o in observers))
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    members.append(talker)
    await talker.wait_type("history")
    for n in range(3):
        await talker.say(f"message {n}")
        await talker.wait_type("bot_message", n + 1)
    await client.delete(f"/v1/session/{created['token']}")
    await asyncio.gather(*(o.wait_closed() for o in observers))

    reference = after(talker.events, talker.events[0]["seq"])
    assert reference[-1]["type"] == "session_end"
    for observer in observers:
        check_stream(observer.events)
        assert observer.close_code == 1000
        assert after(observer.events, talker.events[0]["seq"]) == reference
        assert len(observer.of_type("bot_message")) == 3


async def test_a_client_that_stops_reading_is_dropped_with_4008_and_the_session_goes_on(
    server_factory: ServerFactory,
) -> None:
    # Small buffers, so that a client that stops reading falls behind within a few hundred
    # events; the client is a raw socket, so nothing reads on its behalf.
    server = await server_factory(member_queue_size=16, listen_sndbuf=4096)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        created = await create_session(http, participation="autonomous", max_turns=400)
    reader, writer = await raw_websocket(server, created["observer_token"], rcvbuf=4096)
    try:
        fast = await ws_join(server, created["observer_token"])
        await fast.wait_closed()  # the session ran to its end meanwhile, undisturbed
        assert fast.events[-1]["type"] == "session_end"
        assert fast.events[-1]["reason"] == "max_turns"
        frames = await read_frames(reader)  # reading again: what was in flight, then close
    finally:
        writer.close()
    *texts, (opcode, payload) = frames
    assert opcode == 0x8
    assert int.from_bytes(payload[:2], "big") == 4008
    assert "since" in payload[2:].decode()
    assert 0 < len(texts) < len(fast.events)


async def raw_websocket(
    server: RunningServer, token: str, *, rcvbuf: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake by hand over a socket with a small receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /v1/session/{token}/connect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_SECONDS)
    assert head.startswith(b"HTTP/1.1 101"), head
    reader._transport.pause_reading()  # type: ignore[attr-defined]  # stop reading: fall behind
    return reader, writer


async def read_frames(reader: asyncio.StreamReader) -> list[tuple[int, bytes]]:
    """Resume reading; every server frame (opcode, payload) up to and including close."""
    reader._transport.resume_reading()  # type: ignore[attr-defined]
    frames: list[tuple[int, bytes]] = []
    async with asyncio.timeout(WAIT_SECONDS):
        while not frames or frames[-1][0] != 0x8:
            first, second = await reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await reader.readexactly(8), "big")
            frames.append((first & 0x0F, await reader.readexactly(length)))
    return [f for f in frames if f[0] in (0x1, 0x8)]  # text and close (pings left out)
