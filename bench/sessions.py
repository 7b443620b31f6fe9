"""Many sessions: S autonomous sessions sharing one backend limited to a few calls at once.

Every session runs round robin against the mock (fixed latency) with no turn limit;
the backend admits `LLM_MAX_CONCURRENCY` calls at a time. Once all S exist, each
session's turn count is read, again after a fixed window, and the difference over the
time between the two reads is that session's rate. Throughput is the sum of the turns
made in the window over its length; fairness is the fastest session's rate over the
slowest one's (1.0 is perfectly even). `run` does the same over several servers (the
nodes of a cluster, `bench/cluster.py`), each running the sessions it created.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import httpx
from pydantic import BaseModel, Field

from bench import api
from bench.procs import (
    Server,
    cpu_seconds_of,
    machine_busy_seconds,
    pids_named,
    running,
    sample_sum,
    start_mock,
    start_server,
)
from bench.profile import profiled
from bench.stats import Distribution

MOCK_LATENCY_MS: Final = 20.0
CONCURRENCY: Final = 8
"""LLM_MAX_CONCURRENCY for this benchmark, as the issue sets it."""
REQUESTS_AT_ONCE: Final = 16
"""API calls in flight while creating sessions and reading their counts."""
MIB: Final = 1024 * 1024
SERVICE_NAMES: Final = ("postgres", "redis-server")
"""Processes whose CPU is reported beside the server's (the cluster's shared services)."""


class SessionsResult(BaseModel):
    """Throughput and fairness of S sessions sharing one backend."""

    sessions: int = Field(description="S: concurrent autonomous sessions.")
    nodes: int = Field(1, description="Server processes the sessions were spread over.")
    llm_max_concurrency: int = Field(description="Backend calls allowed in flight, per node.")
    mock_latency_ms: float = Field(description="Fixed latency of every mock reply.")
    create_seconds: float = Field(description="Time to create all S sessions.")
    window_s: float = Field(description="Length of the measuring window.")
    turns_in_window: int = Field(description="Bot turns made by all sessions in the window.")
    turns_per_second: float = Field(description="turns_in_window / window_s.")
    turns_per_session: Distribution = Field(description="Turns each session made in the window.")
    fairness: float = Field(description="Fastest session's turn rate / slowest one's.")
    server_cpu_percent: float = Field(
        description="Server CPU in the window (100 = a core; every node together)."
    )
    server_rss_mib: float = Field(
        description="Server RSS at the end of the window (every node together)."
    )
    services_cpu_percent: float = Field(
        0.0,
        description="CPU of every PostgreSQL and Redis process on the machine in the window "
        "(100 = a core; about 0 on SQLite).",
    )
    machine_cpu_percent: float = Field(
        0.0, description="The whole machine's busy CPU in the window (100 = a core)."
    )


Placed = tuple[httpx.AsyncClient, str]
"""A session's observer token, with a client of the node that runs it."""


async def _counts(placed: list[Placed]) -> list[tuple[int, float]]:
    """(bot turns, time of reading) for each session, in order."""
    gate = asyncio.Semaphore(REQUESTS_AT_ONCE)

    async def one(http: httpx.AsyncClient, token: str) -> tuple[int, float]:
        async with gate:
            status = await api.status(http, token)
            return status.bot_turns, time.monotonic()

    return list(await asyncio.gather(*(one(http, token) for http, token in placed)))


async def run(
    servers: Sequence[Server],
    *,
    sessions: int,
    window: float,
    concurrency: int,
    profile: Path | None = None,
) -> SessionsResult:
    """Create `sessions` sessions round robin over `servers` (each runs the ones it
    created), read every turn count, wait `window` seconds, read them again.

    Each session's count is read from the node that runs it. `concurrency` is what
    the servers were started with (LLM_MAX_CONCURRENCY), recorded in the result.
    """
    limits = httpx.Limits(max_connections=REQUESTS_AT_ONCE)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=server.base_url, timeout=120, limits=limits)
            )
            for server in servers
        ]
        gate = asyncio.Semaphore(REQUESTS_AT_ONCE)
        spec = api.bench_spec(participation="autonomous")

        async def create(http: httpx.AsyncClient) -> Placed:
            async with gate:
                return http, (await api.create(http, spec)).observer_token

        began = time.monotonic()
        placed = list(
            await asyncio.gather(*(create(clients[i % len(clients)]) for i in range(sessions)))
        )
        created = time.monotonic() - began
        pids = [server.pid for server in servers]
        service_pids = pids_named(*SERVICE_NAMES)
        before = await _counts(placed)
        cpu_before = sample_sum(pids)
        services_before, machine_before = cpu_seconds_of(service_pids), machine_busy_seconds()
        with profiled(pids[0], profile) if profile else contextlib.nullcontext():
            await asyncio.sleep(window)
        cpu_after = sample_sum(pids)
        services_after, machine_after = cpu_seconds_of(service_pids), machine_busy_seconds()
        after = await _counts(placed)
    turns = [b[0] - a[0] for a, b in zip(before, after, strict=True)]
    rates = [t / (b[1] - a[1]) for t, a, b in zip(turns, before, after, strict=True)]
    total_window = after[-1][1] - before[0][1]
    elapsed = cpu_after.at - cpu_before.at
    cpu = (cpu_after.cpu_seconds - cpu_before.cpu_seconds) / elapsed
    return SessionsResult(
        sessions=sessions,
        nodes=len(servers),
        llm_max_concurrency=concurrency,
        mock_latency_ms=MOCK_LATENCY_MS,
        create_seconds=created,
        window_s=total_window,
        turns_in_window=sum(turns),
        turns_per_second=sum(rates),
        turns_per_session=Distribution.of([float(t) for t in turns]),
        fairness=max(rates) / min(rates) if min(rates) > 0 else float("inf"),
        server_cpu_percent=100.0 * cpu,
        server_rss_mib=cpu_after.rss_bytes / MIB,
        services_cpu_percent=100.0 * (services_after - services_before) / elapsed,
        machine_cpu_percent=100.0 * (machine_after - machine_before) / elapsed,
    )


async def measure(*, sessions: int, window: float, profile: Path | None = None) -> SessionsResult:
    """Create `sessions` sessions on one server, measure `window` seconds, stop it."""
    with tempfile.TemporaryDirectory(prefix="fellowship-bench-") as tmp:
        workdir = Path(tmp)
        mock = start_mock(workdir, latency_ms=MOCK_LATENCY_MS)
        server = start_server(
            workdir,
            llm_base_url=mock.base_url,
            **node_settings(sessions=sessions, concurrency=CONCURRENCY),
        )
        with running(server, mock):
            return await run(
                [server], sessions=sessions, window=window, concurrency=CONCURRENCY, profile=profile
            )


def node_settings(*, sessions: int, concurrency: int) -> dict[str, str | int]:
    """Server settings of this benchmark: room for every session, the backend's limit."""
    return {
        "llm_max_concurrency": concurrency,
        "max_sessions": sessions + 1,
        "access_log": "false",  # thousands of status reads would fill the log
    }
