"""Restart: how long a server with a full database takes from process start to serving.

The database is written beforehand through `SqliteStore`, as a server would have left
it: `sessions` sessions with `messages` history positions in all, the events a replay
buffer keeps, and a share of the sessions still live (they come back paused). Then
`fellowship serve` is started on it a few times, and each time the seconds from the
process's start to the first 200 from `/healthz` are taken — Python's start-up,
imports, opening and checking the database, loading every session, restoring the live
ones. An empty database gives the baseline.
"""

from __future__ import annotations

import statistics
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from pydantic import BaseModel, Field

from bench import api
from bench.procs import running, start_mock, start_server
from engine.auth import mint_token, token_hash
from engine.events import BotMessage, TurnEnd
from engine.history import Message
from engine.spec.models import SessionSpec
from engine.store.base import EventRecord, SessionRecord
from engine.store.sqlite import SqliteStore

LIVE_SHARE: Final = 0.1
"""Share of stored sessions still running when the server stopped (the rest ended)."""
STARTS: Final = 3
"""Starts timed on the full database (the median is reported)."""
EVENTS_PER_MESSAGE: Final = 2
"""bot_message and turn_end for each stored reply, kept for replay."""
_TEXT: Final = "I think we should weigh the evidence before deciding anything at all."


class RestartResult(BaseModel):
    """Start-up time with a full database, and with an empty one."""

    sessions: int = Field(description="Stored sessions.")
    live_sessions: int = Field(description="Of which still running (restored paused).")
    messages: int = Field(description="Stored history positions, all sessions together.")
    events: int = Field(description="Stored replay events, all sessions together.")
    database_mib: float = Field(description="Size of the database file.")
    generate_s: float = Field(description="Time to write the database through SqliteStore.")
    ready_s: list[float] = Field(description="Process start to first /healthz 200, each start.")
    ready_median_s: float = Field(description="Median of ready_s.")
    ready_no_quick_check_s: float = Field(description="Same, with DB_QUICK_CHECK=false.")
    ready_empty_s: float = Field(description="Same, on an empty database (the baseline).")


async def generate(path: Path, *, sessions: int, messages: int) -> tuple[int, int]:
    """Write the database; return (live sessions, events) written."""
    store = SqliteStore(path)
    await store.open()
    spec = SessionSpec.model_validate(api.bench_spec(participation="autonomous"))
    spec_json = spec.model_dump_json()
    per_session = messages // sessions
    live = int(sessions * LIVE_SHARE)
    events = 0
    start = datetime.now(UTC) - timedelta(days=1)
    try:
        for index in range(sessions):
            ended = index >= live
            created = start + timedelta(seconds=index)
            record = SessionRecord(
                id=f"restart-{index:05d}",
                name="restart benchmark",
                spec_json=spec_json,
                full_token_hash=token_hash(mint_token("full")),
                observer_token_hash=token_hash(mint_token("observer")),
                state="ended" if ended else "active",
                created_at=created,
                ended_at=created + timedelta(seconds=per_session) if ended else None,
                end_reason="max_turns" if ended else None,
                bot_turns=per_session,
                last_seq=per_session * EVENTS_PER_MESSAGE,
            )
            await store.save_session(record)
            frames: list[EventRecord] = []
            for turn in range(1, per_session + 1):
                bot = api.BOTS[(turn - 1) % len(api.BOTS)]
                ts = created + timedelta(milliseconds=turn)
                await store.save_message(
                    record.id,
                    Message(turn=turn, kind="bot", speaker=bot, content=_TEXT, ts=ts, tokens=14),
                )
                said = BotMessage(seq=2 * turn - 1, ts=ts, bot=bot, turn=turn, content=_TEXT)
                done = TurnEnd(seq=2 * turn, ts=ts, bot=bot, turn=turn, tokens=14)
                frames += [
                    EventRecord(seq=e.seq, type=e.type, data=e.model_dump_json())
                    for e in (said, done)
                ]
            await store.save_events(record.id, frames)
            events += len(frames)
    finally:
        await store.close()
    return live, events


def _ready(workdir: Path, base_url: str, **settings: str) -> float:
    server = start_server(workdir, llm_base_url=base_url, **settings)
    with running(server):
        return server.ready_seconds


async def measure(*, sessions: int, messages: int) -> RestartResult:
    """Generate the database, then time the starts."""
    with tempfile.TemporaryDirectory(prefix="fellowship-bench-") as tmp:
        workdir = Path(tmp)
        database = workdir / "fellowship.db"
        began = datetime.now(UTC)
        live, events = await generate(database, sessions=sessions, messages=messages)
        generated = (datetime.now(UTC) - began).total_seconds()
        size = database.stat().st_size
        mock = start_mock(workdir, latency_ms=0)
        with running(mock):
            starts = [_ready(workdir, mock.base_url) for _ in range(STARTS)]
            no_check = _ready(workdir, mock.base_url, db_quick_check="false")
            empty_dir = workdir / "empty"
            empty_dir.mkdir()
            empty = _ready(empty_dir, mock.base_url)
    return RestartResult(
        sessions=sessions,
        live_sessions=live,
        messages=sessions * (messages // sessions),
        events=events,
        database_mib=size / (1024 * 1024),
        generate_s=generated,
        ready_s=starts,
        ready_median_s=statistics.median(starts),
        ready_no_quick_check_s=no_check,
        ready_empty_s=empty,
    )
