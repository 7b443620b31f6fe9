"""The stream's rules on scripted connections: what a real server never does, on purpose.

A fake opener hands the stream connections that deliver given frames and then drop,
so duplicates, holes, resyncs, unknown types and refusals can be staged exactly. (The
same rules against a real server are in test_client_reconnect.py.)
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from fellowship.client import (
    BadRequest,
    ConnectionFailed,
    ErrorEvent,
    Event,
    EventStream,
    InvalidSpec,
    NotFound,
    ObserverToken,
    RateLimited,
    Reconnect,
    ServerError,
    SessionEnded,
    ShuttingDown,
    TooManyTalkers,
    Unavailable,
)
from fellowship.client._redact import redact
from fellowship.client.errors import error_for
from fellowship.client.streams import _Dropped, _Link, _Over

FAST = Reconnect(initial=0.001, maximum=0.002, give_up_after=1.0)


def frame(kind: str, seq: int, **fields: Any) -> str:
    defaults: dict[str, Any] = {
        "history": {"messages": []},
        "bot_message": {"bot": "Ada", "turn": 1, "content": "hi"},
        "session_end": {"reason": "max_turns"},
        "error": {"message": "no", "code": "empty_message"},
        "state": {"state": "idle"},
    }
    return json.dumps({"type": kind, "seq": seq, **defaults.get(kind, {}), **fields})


class ScriptedLink(_Link):
    """Delivers its frames, then ends the way it was told to."""

    def __init__(self, frames: list[str], ending: BaseException) -> None:
        self.frames = list(frames)
        self.ending = ending
        self.closed = False

    @property
    def open(self) -> bool:
        return not self.closed

    async def receive(self) -> str:
        if self.frames:
            return self.frames.pop(0)
        self.closed = True
        raise self.ending

    async def close(self) -> None:
        self.closed = True


class Script:
    """An opener: each connection attempt takes the next step (a link or an exception)."""

    def __init__(self, *steps: tuple[list[str], BaseException] | BaseException) -> None:
        self.steps = list(steps)
        self.sinces: list[int | None] = []

    async def __call__(self, since: int | None) -> tuple[_Link, list[str]]:
        self.sinces.append(since)
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        frames, ending = step
        return ScriptedLink(frames, ending), []


async def drain(stream: EventStream) -> list[Event]:
    return [event async for event in stream]


def seqs(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.type, e.seq) for e in events]


async def test_duplicates_from_a_replay_are_dropped() -> None:
    script = Script(
        ([frame("history", 3), frame("state", 4), frame("state", 5)], _Dropped("cut")),
        # A replay that starts too early: 4 and 5 again.
        ([frame("state", 4), frame("state", 5), frame("state", 6)], _Dropped("cut")),
        ([frame("session_end", 7)], _Over()),
    )
    events = await drain(EventStream(script, FAST))
    assert seqs(events) == [
        ("history", 3),
        ("state", 4),
        ("state", 5),
        ("state", 6),
        ("session_end", 7),
    ]
    assert script.sinces == [None, 5, 6]


async def test_a_hole_is_never_passed_on_the_stream_asks_again() -> None:
    script = Script(
        ([frame("history", 1), frame("state", 2), frame("state", 5)], _Dropped("never")),
        ([frame("state", 3), frame("state", 4), frame("state", 5)], _Dropped("cut")),
        ([frame("session_end", 6)], _Over()),
    )
    events = await drain(EventStream(script, FAST))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert script.sinces == [None, 2, 5]


async def test_a_hole_the_replay_repeats_is_what_the_server_has_and_is_passed_on() -> None:
    script = Script(
        ([frame("history", 1), frame("state", 2), frame("state", 5)], _Dropped("cut")),
        ([frame("state", 5), frame("session_end", 6)], _Over()),
    )
    events = await drain(EventStream(script, FAST))
    assert [e.seq for e in events] == [1, 2, 5, 6]


async def test_a_fresh_history_is_passed_on_and_the_count_starts_again_from_it() -> None:
    script = Script(
        ([frame("history", 10), frame("state", 11)], _Dropped("cut")),
        ([frame("history", 40), frame("state", 41)], _Dropped("cut")),
        ([frame("state", 41), frame("session_end", 42)], _Over()),
    )
    events = await drain(EventStream(script, FAST))
    assert seqs(events) == [
        ("history", 10), ("state", 11), ("history", 40), ("state", 41), ("session_end", 42)
    ]  # fmt: skip
    assert script.sinces == [None, 11, 41]


async def test_unknown_types_are_skipped_but_counted_and_pong_is_never_shown() -> None:
    script = Script(
        (
            [
                frame("history", 1),
                frame("sparkle", 2, glitter=True),  # a type from a later server
                frame("pong", 2),
                frame("state", 3),
                frame("session_end", 4),
            ],
            _Over(),
        ),
    )
    events = await drain(EventStream(script, FAST))
    assert seqs(events) == [("history", 1), ("state", 3), ("session_end", 4)]


async def test_an_error_repeating_the_last_seq_is_a_reply_to_this_client_and_passed_on() -> None:
    script = Script(
        ([frame("history", 5), frame("error", 0), frame("session_end", 6)], _Over()),
    )
    events = await drain(EventStream(script, FAST))
    assert seqs(events) == [("history", 5), ("error", 5), ("session_end", 6)]
    assert isinstance(events[1], ErrorEvent) and events[1].code == "empty_message"


async def test_nothing_after_session_end_and_iteration_stops() -> None:
    script = Script(([frame("history", 1), frame("session_end", 2), frame("state", 3)], _Over()))
    stream = EventStream(script, FAST)
    assert [e.seq for e in await drain(stream)] == [1, 2]
    assert stream.finished and await drain(stream) == []


async def test_the_server_trouble_is_retried_and_a_refusal_ends_the_stream() -> None:
    script = Script(
        _Dropped("connection refused"),
        ShuttingDown("bye", close_code=1001),
        ServerError("oops", status=500),
        ([frame("history", 1)], NotFound("gone", close_code=4004)),
    )
    stream = EventStream(script, FAST)
    with pytest.raises(NotFound):
        await drain(stream)
    assert [e.seq for e in await drain(stream)] == []  # raised once, then over


async def test_a_stream_gives_up_after_give_up_after_seconds() -> None:
    script = Script(*[_Dropped("connection refused") for _ in range(10_000)])
    stream = EventStream(script, Reconnect(initial=0.001, maximum=0.01, give_up_after=0.1))
    with pytest.raises(ConnectionFailed, match="connection refused"):
        await drain(stream)


async def test_a_taken_seat_is_retried_only_on_a_reconnect() -> None:
    seat_taken = TooManyTalkers("no seat", close_code=4009, code="too_many_talkers")
    first = EventStream(Script(seat_taken), FAST)
    with pytest.raises(TooManyTalkers):
        await drain(first)
    script = Script(
        ([frame("history", 1)], _Dropped("cut")),
        seat_taken,  # our own dead connection still holds it
        ([frame("session_end", 2)], _Over()),
    )
    assert [e.seq for e in await drain(EventStream(script, FAST))] == [1, 2]


def test_backoff_grows_with_jitter_up_to_the_maximum() -> None:
    policy = Reconnect(initial=0.1, maximum=1.0, factor=2.0)
    rng = random.Random(1)
    assert policy.delay(0, rng) == 0.0
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = {policy.delay(attempt, rng) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


# --- error mapping ---------------------------------------------------------------------------


def test_errors_are_typed_by_code_then_by_status_or_close_code() -> None:
    assert type(error_for({"error": "x", "code": "observer_token"}, status=403)) is ObserverToken
    assert type(error_for({"error": "x", "code": "session_ended"}, status=409)) is SessionEnded
    # A code this client does not know lands in its status's or close code's family.
    assert type(error_for({"error": "x", "code": "new_thing"}, status=503)) is Unavailable
    assert type(error_for({"error": "x", "code": "new_thing"}, close_code=4000)) is BadRequest
    assert type(error_for(None, status=502)) is ServerError
    limited = error_for({"error": "x", "code": "rate_limited"}, status=429, retry_after=7)
    assert isinstance(limited, RateLimited) and limited.retry_after == 7
    invalid = error_for(
        {
            "error": "bad",
            "code": "invalid_spec",
            "details": [{"path": "bots[1].name", "message": "taken", "line": 4, "column": 3}],
        },
        status=422,
    )
    assert isinstance(invalid, InvalidSpec) and invalid.issues[0].path == "bots[1].name"
    assert invalid.status == 422 and invalid.code == "invalid_spec"


def test_tokens_are_redacted_from_text() -> None:
    token = "fsk_" + "A1b2-_" * 7
    line = f'HTTP Request: GET http://h/v1/session/{token}/stream "HTTP/1.1 200 OK"'
    assert redact(line) == 'HTTP Request: GET http://h/v1/session/***/stream "HTTP/1.1 200 OK"'
    assert redact(f"token {token} leaked") == "token fsk_*** leaked"
    assert redact("POST /v1/session/create") == "POST /v1/session/create"
