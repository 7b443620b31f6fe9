"""A reactive session over the real transports: a talker on WebSocket, an observer on SSE.

The whole product runs in-process (Hypercorn on a loopback port) in front of
llama-server, with streamed tokens, so real token timing flows through both transports.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from engine.manager import SessionManager
from engine.store.sqlite import SqliteStore
from tests.integration.conftest import WsMember, check_stream, ws_join
from tests.real.conftest import (
    CAST,
    REPORT,
    ROOT,
    SESSION_SECONDS,
    TEST_TIMEOUT,
    RealBackend,
    RecordingClient,
    check_calls,
    eventually,
    expect_answered,
    real_settings,
    real_spec_data,
    reply_problems,
    token_ratios,
)
from tests.support.server import start_server

pytestmark = [pytest.mark.real, pytest.mark.timeout(TEST_TIMEOUT)]

TALKER = "Dana"
LINES = ("Hello everyone! What are you doing on Saturday?", "Bob, do you ever go fishing at night?")
REPLIES_PER_MESSAGE = 2
SHARED_TYPES = ("talker_message", "turn_start", "token", "bot_message", "turn_end", "session_end")


class SseObserver:
    """Reads an SSE stream in the background, keeping frame ids and parsed data."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.task = asyncio.create_task(self._read(http, url))

    async def _read(self, http: httpx.AsyncClient, url: str) -> None:
        async with aconnect_sse(http, "GET", url) as source:
            source.response.raise_for_status()
            async for frame in source.aiter_sse():
                self.ids.append(frame.id)
                self.events.append(frame.json())

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] in types]


@asynccontextmanager
async def observing(http: httpx.AsyncClient, token: str) -> AsyncIterator[SseObserver]:
    observer = SseObserver(http, f"/v1/session/{token}/stream")
    try:
        yield observer
    finally:
        observer.task.cancel()
        await asyncio.gather(observer.task, return_exceptions=True)


@asynccontextmanager
async def fellowship(
    backend: RealBackend, tmp_path: Path, client: RecordingClient
) -> AsyncIterator[str]:
    """The Fellowship server on a free loopback port, its LLM calls recorded; yields its URL."""
    settings = real_settings(tmp_path, backend, specs_dir=ROOT / "specs", ws_ping_seconds=0.5)
    manager = SessionManager(settings, store=SqliteStore.from_settings(settings), llm=client)
    running = await start_server(settings, manager=manager, wait=SESSION_SECONDS)
    try:
        yield running.base_url
    finally:
        await running.stop(SESSION_SECONDS)


async def until_turns(observer: SseObserver, count: int) -> None:
    """Wait until the observer has seen `count` bot turns end (answered or not)."""
    await eventually(lambda: len(observer.of_type("turn_end")) >= count, f"{count} bot turns")


def shared(events: list[dict[str, Any]], after: int) -> list[tuple[Any, ...]]:
    return [
        (e["seq"], e["type"], e.get("turn"), e.get("content", e.get("token")))
        for e in events
        if e["type"] in SHARED_TYPES and e["seq"] > after
    ]


@dataclass
class Conversation:
    """What the two members saw, and what the API said at the end."""

    observer: SseObserver
    talker: WsMember
    status: dict[str, Any]
    history: Any


async def converse(url: str) -> Conversation:
    """Create a reactive session; a talker says two things over WS; an SSE observer reads."""
    async with httpx.AsyncClient(base_url=url, timeout=SESSION_SECONDS) as http:
        data = real_spec_data(
            participation="reactive", replies_per_message=REPLIES_PER_MESSAGE, stream_tokens=True
        )
        created = await http.post("/v1/session/create", json=data)
        assert created.status_code == 201, created.text
        token = created.json()["token"]
        async with observing(http, created.json()["observer_token"]) as observer:
            await eventually(lambda: bool(observer.of_type("history")), "SSE history")
            talker = await ws_join(url.replace("http", "ws", 1), token, role="talker", name=TALKER)
            try:
                await eventually(lambda: bool(talker.of_type("history")), "WS history")
                for number, line in enumerate(LINES, start=1):
                    await talker.say(line)
                    await until_turns(observer, number * REPLIES_PER_MESSAGE)
                status = (await http.get(f"/v1/session/{token}")).json()
                ended = await http.delete(f"/v1/session/{token}")
                assert ended.status_code < 300, ended.text
                await eventually(lambda: bool(observer.of_type("session_end")), "SSE end")
                await eventually(lambda: bool(talker.of_type("session_end")), "WS end")
                history = (await http.get(f"/v1/session/{token}/history")).json()
            finally:
                if not talker.closed:
                    await talker.ws.close()
    return Conversation(observer, talker, status, history)


async def test_reactive_talker_on_websocket_and_observer_on_sse_see_the_same_real_replies(
    llama_server: RealBackend, tmp_path: Path
) -> None:
    client = RecordingClient(real_settings(tmp_path, llama_server), llama_server.name)
    async with fellowship(llama_server, tmp_path, client) as url:
        seen = await converse(url)
    observer, talker, status, history = seen.observer, seen.talker, seen.status, seen.history
    ends = observer.of_type("turn_end")
    REPORT.add_session(
        test="reactive_ws_sse",
        backend=llama_server.name,
        version=llama_server.version,
        turns=len(ends),
        lost_turns=[e["turn"] for e in ends if e["status"] == "failed"],
        tokens=token_ratios(client.calls),
        tokens_by_bot=status["tokens"]["by_bot"],
        replies=len(observer.of_type("bot_message")),
        retries=sum(c.retry for c in client.calls),
        messages=[f"{e['bot']}: {e['content']}" for e in observer.of_type("bot_message")],
        calls=[c.model_dump() for c in client.calls],
    )
    # Positions: each talker message is followed by exactly two bot turns, round robin.
    said = [(e["turn"], e["talker"]) for e in observer.of_type("talker_message")]
    assert said == [(1, TALKER), (4, TALKER)]
    assert [(e["turn"], e["bot"]) for e in ends] == [
        (2, "Alice"),
        (3, "Bob"),
        (5, "Carol"),
        (6, "Alice"),
    ]
    check_calls(client.calls, len(ends))
    failed = [e["turn"] for e in ends if e["status"] == "failed"]
    assert [(e["turn"], e["code"]) for e in observer.of_type("error")] == [
        (turn, "empty_reply") for turn in failed
    ]
    names = [*(name for name, _ in CAST), TALKER]
    for reply in observer.of_type("bot_message"):
        others = [n for n in names if n != reply["bot"]]
        assert reply_problems(reply["content"], reply["bot"], others) == []
        # The tokens after the turn's last reset (a retry, or a whole-reply rule) add up.
        streamed = [
            e for e in observer.of_type("token", "token_reset") if e["turn"] == reply["turn"]
        ]
        resets = [i for i, e in enumerate(streamed) if e["type"] == "token_reset"]
        tokens = [e["token"] for e in streamed[resets[-1] + 1 if resets else 0 :]]
        assert "".join(tokens) == reply["content"]
    # Both transports carried the same session events with the same seqs.
    check_stream(talker.events)
    assert observer.ids == [str(e["seq"]) for e in observer.events]
    since = talker.events[0]["seq"]
    assert shared(observer.events, since) == shared(talker.events, since)
    assert [e["reason"] for e in observer.of_type("session_end")] == ["client_request"]
    messages = history["messages"] if isinstance(history, dict) else history
    assert [m["turn"] for m in messages] == list(range(1, 7))
    by_bot = status["tokens"]["by_bot"]
    answered = {e["bot"] for e in observer.of_type("bot_message")}
    assert answered <= set(by_bot)  # a lost turn's attempts cost tokens too
    assert all(usage["prompt_tokens"] > 0 for usage in by_bot.values())
    expect_answered(
        [e["turn"] for e in observer.of_type("turn_start")],
        failed,
        client.calls,
        names,
    )
