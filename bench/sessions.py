"""Many sessions: S autonomous sessions sharing one backend limited to a few calls at once.

Every session runs round robin against the mock (fixed latency) with no turn limit;
the backend admits `LLM_MAX_CONCURRENCY` calls at a time. Once all S exist, each
session's turn count is read, again after a fixed window, and the difference over the
time between the two reads is that session's rate. Throughput is the sum of the turns
made in the window over its length; fairness is the fastest session's rate over the
slowest one's (1.0 is perfectly even).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Final

import httpx
from pydantic import BaseModel, Field

from bench import api
from bench.procs import running, start_mock, start_server
from bench.profile import profiled
from bench.stats import Distribution

MOCK_LATENCY_MS: Final = 20.0
CONCURRENCY: Final = 8
"""LLM_MAX_CONCURRENCY for this benchmark, as the issue sets it."""
REQUESTS_AT_ONCE: Final = 16
"""API calls in flight while creating sessions and reading their counts."""
MIB: Final = 1024 * 1024


class SessionsResult(BaseModel):
    """Throughput and fairness of S sessions sharing one backend."""

    sessions: int = Field(description="S: concurrent autonomous sessions.")
    llm_max_concurrency: int = Field(description="Backend calls allowed in flight.")
    mock_latency_ms: float = Field(description="Fixed latency of every mock reply.")
    create_seconds: float = Field(description="Time to create all S sessions.")
    window_s: float = Field(description="Length of the measuring window.")
    turns_in_window: int = Field(description="Bot turns made by all sessions in the window.")
    turns_per_second: float = Field(description="turns_in_window / window_s.")
    turns_per_session: Distribution = Field(description="Turns each session made in the window.")
    fairness: float = Field(description="Fastest session's turn rate / slowest one's.")
    server_cpu_percent: float = Field(description="Server CPU in the window (100 = a core).")
    server_rss_mib: float = Field(description="Server RSS at the end of the window.")


async def _counts(http: httpx.AsyncClient, tokens: list[str]) -> list[tuple[int, float]]:
    """(bot turns, time of reading) for each session, in order."""
    gate = asyncio.Semaphore(REQUESTS_AT_ONCE)

    async def one(token: str) -> tuple[int, float]:
        async with gate:
            status = await api.status(http, token)
            return status.bot_turns, time.monotonic()

    return list(await asyncio.gather(*(one(token) for token in tokens)))


async def measure(*, sessions: int, window: float, profile: Path | None = None) -> SessionsResult:
    """Create `sessions` sessions, measure `window` seconds, stop the server."""
    with tempfile.TemporaryDirectory(prefix="fellowship-bench-") as tmp:
        workdir = Path(tmp)
        mock = start_mock(workdir, latency_ms=MOCK_LATENCY_MS)
        server = start_server(
            workdir,
            llm_base_url=mock.base_url,
            llm_max_concurrency=CONCURRENCY,
            max_sessions=sessions + 1,
            access_log="false",  # thousands of status reads would fill the log
        )
        with running(server, mock):
            limits = httpx.Limits(max_connections=REQUESTS_AT_ONCE)
            async with httpx.AsyncClient(
                base_url=server.base_url, timeout=120, limits=limits
            ) as http:
                gate = asyncio.Semaphore(REQUESTS_AT_ONCE)
                spec = api.bench_spec(participation="autonomous")

                async def create() -> str:
                    async with gate:
                        return (await api.create(http, spec)).observer_token

                began = time.monotonic()
                tokens = list(await asyncio.gather(*(create() for _ in range(sessions))))
                created = time.monotonic() - began
                before = await _counts(http, tokens)
                cpu_before = server.sample()
                with profiled(server.pid, profile) if profile else contextlib.nullcontext():
                    await asyncio.sleep(window)
                cpu_after = server.sample()
                after = await _counts(http, tokens)
    turns = [b[0] - a[0] for a, b in zip(before, after, strict=True)]
    rates = [t / (b[1] - a[1]) for t, a, b in zip(turns, before, after, strict=True)]
    total_window = after[-1][1] - before[0][1]
    cpu = (cpu_after.cpu_seconds - cpu_before.cpu_seconds) / (cpu_after.at - cpu_before.at)
    return SessionsResult(
        sessions=sessions,
        llm_max_concurrency=CONCURRENCY,
        mock_latency_ms=MOCK_LATENCY_MS,
        create_seconds=created,
        window_s=total_window,
        turns_in_window=sum(turns),
        turns_per_second=sum(rates),
        turns_per_session=Distribution.of([float(t) for t in turns]),
        fairness=max(rates) / min(rates) if min(rates) > 0 else float("inf"),
        server_cpu_percent=100.0 * cpu,
        server_rss_mib=cpu_after.rss_bytes / MIB,
    )
