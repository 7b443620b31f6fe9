"""Scale with history: the engine's own cost per turn at turn 10 and at turn 10 000.

Measured in this process, on the engine alone: a `SessionManager` with the real SQLite
store, and an LLM client that answers at once without any HTTP (`InstantLLM`), so the
time per turn is only what Fellowship itself does — decide, reserve and commit the
slot, build the prompt, clean the reply, commit it, broadcast, save.

A stored session of n messages is written to a database once; for each timed round a
copy of it is opened, the manager brings the session back (paused, as after a restart)
and resumes it, and a member's subscription times `turns` more turns: the process's
CPU time over those turns (every thread, so SQLite's work counts too), and the
wall-clock gaps between consecutive `turn_end` events. Rounds at the short and the
long history alternate, and each point is the median of its rounds, so a burst of
other work on a shared machine lands on one round rather than on one side. CPU time is
the headline: wall time also counts other processes.

Two shapes of session:
- `summarized`: a summary covers all but the last few messages, as in a long session
  with `summarize_context: true`. The prompt has the same size at n = 10 and at
  n = 10 000, so any difference is the engine scaling with the history's length — this
  is the ratio the target (≤ 1.2) is about.
- `full`: no summary; every prompt carries the whole history. Building and sending a
  prompt of n messages is O(n) by nature; shown for reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr

from bench import api
from bench.stats import Distribution, known
from engine.auth import mint_token, token_hash
from engine.config import Settings, load_settings
from engine.events import parse_event
from engine.history import Message
from engine.llm.client import Backend, RetryCallback, TokenCallback
from engine.llm.types import ChatRequest, Completion, Usage
from engine.manager import SessionManager
from engine.spec.models import SessionSpec
from engine.store.base import SessionRecord
from engine.store.sqlite import SqliteStore

Shape = Literal["summarized", "full"]
TAIL: Final = 10
"""Messages after the summary in the `summarized` shape (the prompt's size)."""
WARMUP_TURNS: Final = 50
ROUNDS: Final = 5
"""Timed rounds at each history length (alternating short, long)."""
MS: Final = 1000.0
_State = TypeVar("_State")
_WORDS: Final = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "and")


class InstantLLM:
    """An LLM client (a `ChatClient`) that replies at once, without HTTP: only the
    engine's work is timed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls = 0
        self._states: dict[type[Any], Any] = {}

    @property
    def default_backend(self) -> Backend:
        return self.resolve_backend(None, None)

    def resolve_backend(self, base_url: str | None, api_key: SecretStr | None) -> Backend:
        return Backend(base_url=base_url or self.settings.llm_base_url, api_key=api_key)

    def state_for(self, backend: Backend, kind: type[_State]) -> _State:
        state: _State = self._states.setdefault(kind, kind())
        return state

    async def aclose(self) -> None:
        """Nothing to release: no connections."""

    async def chat(
        self,
        request: ChatRequest,
        *,
        backend: Backend,
        on_token: TokenCallback | None = None,
        on_retry: RetryCallback | None = None,
        queue_key: str | None = None,
    ) -> Completion:
        """A short, different reply each time."""
        self.calls += 1
        words = " ".join(_WORDS[: 4 + self.calls % 8])
        return Completion(
            content=f"Reply {self.calls}: {words}.",
            usage=Usage(prompt_tokens=100, completion_tokens=12, total_tokens=112),
        )


class HistoryPoint(BaseModel):
    """Per-turn engine time with n messages already in the history."""

    messages: int = Field(description="n: history length before the timed turns.")
    turn_ms: Distribution = Field(
        description="Wall time per turn (gaps between turn_end), every round together."
    )
    cpu_ms_per_turn: float = Field(
        description="CPU time of this process (every thread) per turn: median of the rounds."
    )
    cpu_ms_rounds: list[float] = Field(description="CPU ms per turn of each round.")


class HistoryResult(BaseModel):
    """Per-turn engine cost at a short and at a long history, for one shape of session."""

    shape: Shape = Field(description="summarized (bounded prompt) or full (whole history).")
    turns: int = Field(description="Turns timed in each round.")
    rounds: int = Field(description="Rounds at each history length.")
    short: HistoryPoint = Field(description="At the short history.")
    long: HistoryPoint = Field(description="At the long history.")
    ratio: float = Field(description="CPU time per turn at long / at short (the headline).")
    wall_ratio: float = Field(description="Median wall time per turn at long / at short.")


def _lines(n: int, started: datetime) -> list[Message]:
    """n complete messages, round robin over the bench bots, one second apart."""
    messages = []
    for index in range(n):
        text = f"Message {index + 1}: " + " ".join(_WORDS[: 4 + index % 8]) + "."
        messages.append(
            Message(
                turn=index + 1,
                kind="bot",
                speaker=api.BOTS[index % len(api.BOTS)],
                content=text,
                ts=started + timedelta(seconds=index),
                tokens=len(text.split()),
            )
        )
    return messages


async def _stored_session(store: SqliteStore, n: int, shape: Shape, turns: int) -> str:
    """Write a paused session of n messages; return its full token."""
    options: dict[str, object] = {
        "participation": "autonomous",
        "max_turns": n + turns,
        "summarize_context": shape == "summarized",
    }
    spec = SessionSpec.model_validate(api.bench_spec(**options))
    token = mint_token("full")
    started = datetime.now(UTC) - timedelta(seconds=n + 1)
    record = SessionRecord(
        id=f"history-{shape}-{n}",
        name="history benchmark",
        spec_json=spec.model_dump_json(),
        full_token_hash=token_hash(token),
        observer_token_hash=token_hash(mint_token("observer")),
        state="paused",
        created_at=started,
        bot_turns=n,
    )
    await store.save_session(record)
    for message in _lines(n, started):
        await store.save_message(record.id, message)
    if shape == "summarized":
        await store.save_summary(record.id, max(0, n - TAIL), "Earlier, the bots agreed on tea.")
    return token


def _settings(database: Path, workdir: Path) -> Settings:
    return load_settings(
        _env_file=None,
        database_path=database,
        log_dir=workdir / "logs",
        llm_base_url="http://127.0.0.1:9/v1",  # never called: InstantLLM has no HTTP
    )


async def _template(name: str, n: int, shape: Shape, turns: int, workdir: Path) -> tuple[Path, str]:
    """A database holding the paused session of n messages; (its path, the full token)."""
    database = workdir / f"template-{name}.db"
    store = SqliteStore.from_settings(_settings(database, workdir))
    await store.open()
    try:
        token = await _stored_session(store, n, shape, turns)
    finally:
        await store.close()
    return database, token


async def _round(
    template: Path, token: str, workdir: Path, name: str, profile: Path | None = None
) -> tuple[list[float], float]:
    """Resume a fresh copy of `template` until the session ends; (turn_end gaps ms, CPU ms/turn)."""
    database = workdir / f"{name}.db"
    await asyncio.to_thread(shutil.copyfile, template, database)
    settings = _settings(database, workdir)
    manager = SessionManager(
        settings,
        store=SqliteStore.from_settings(settings),
        llm=InstantLLM(settings),
        housekeeping_interval=3600.0,  # no sweep during the measured rounds
    )
    await manager.start()
    try:
        handle = manager.open(token)
        member = manager.connect(handle, "observer", "timer", None)
        await manager.resume(handle)
        ends: list[float] = []
        cpu_start = time.process_time()
        with _pyinstrument(profile):
            async for frame in member.subscription:
                if frame.type == "turn_end":
                    event = parse_event(frame.data)
                    assert event.ts is not None
                    ends.append(event.ts.timestamp())
        cpu = time.process_time() - cpu_start
    finally:
        with contextlib.suppress(Exception):
            await manager.close()
    await asyncio.to_thread(database.unlink)
    gaps = [(b - a) * MS for a, b in itertools.pairwise(ends)]
    return gaps, cpu * MS / max(len(ends), 1)


def _point(n: int, rounds: list[tuple[list[float], float]]) -> HistoryPoint:
    cpu = [per_turn for _, per_turn in rounds]
    return HistoryPoint(
        messages=n,
        turn_ms=Distribution.of([gap for gaps, _ in rounds for gap in gaps]),
        cpu_ms_per_turn=statistics.median(cpu),
        cpu_ms_rounds=cpu,
    )


async def measure(
    *,
    shape: Shape,
    short: int,
    long: int,
    turns: int,
    rounds: int = ROUNDS,
    profile: Path | None = None,
) -> HistoryResult:
    """Time `turns` turns after `short` and after `long` messages of history, `rounds` times.

    A first, discarded round warms up what every process pays once (imports, the
    tokenizer, SQLite's caches), so that it does not land on the short history's figure.
    With `profile`, the last long round is profiled with pyinstrument into that file.
    """
    with tempfile.TemporaryDirectory(prefix="fellowship-bench-") as tmp:
        workdir = Path(tmp)
        warmup = await _template("warmup", short, shape, WARMUP_TURNS, workdir)
        at_short = await _template("short", short, shape, turns, workdir)
        at_long = await _template("long", long, shape, turns, workdir)
        await _round(*warmup, workdir, "warmup")
        short_rounds, long_rounds = [], []
        for index in range(rounds):
            last = index == rounds - 1
            short_rounds.append(await _round(*at_short, workdir, f"short-{index}"))
            long_rounds.append(
                await _round(*at_long, workdir, f"long-{index}", profile if last else None)
            )
    short_point, long_point = _point(short, short_rounds), _point(long, long_rounds)
    return HistoryResult(
        shape=shape,
        turns=turns,
        rounds=rounds,
        short=short_point,
        long=long_point,
        ratio=long_point.cpu_ms_per_turn / short_point.cpu_ms_per_turn,
        wall_ratio=known(long_point.turn_ms.p50) / known(short_point.turn_ms.p50),
    )


@contextlib.contextmanager
def _pyinstrument(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    from pyinstrument import Profiler  # a development tool: imported only when asked for

    profiler = Profiler(async_mode="disabled", use_timing_thread=True)
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        path.write_text(profiler.output_text(unicode=False, show_all=False))


def main() -> None:
    """`python -m bench.history [PROFILE_DIR]`: both shapes at 10 and 10 000 messages."""
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    shapes: tuple[Shape, ...] = ("summarized", "full")
    for shape in shapes:
        profile = folder / f"history-{shape}.txt" if folder else None
        result = asyncio.run(
            measure(shape=shape, short=10, long=10_000, turns=200, profile=profile)
        )
        print(result.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
