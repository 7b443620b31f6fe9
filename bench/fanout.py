"""Fan-out: one session watched by N observers, half WebSocket and half SSE.

For each N a fresh server is started. The session is created and paused at once, the
load process (`bench/load.py`, its own process) connects every observer, and only when
all of them hold their `history` is the session resumed: from then on the load process
measures each event's delay from publication to receipt and counts the events any
observer missed. The session is paced like a conversation (`turn_delay` between bot
turns) rather than as fast as the mock can answer, so the figure is the delivery
delay at a steady event rate, not the length of a backlog. Server CPU and resident
memory are read from /proc while the session runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import httpx
from pydantic import BaseModel, Field

from bench import api
from bench.load import READY_LINE, RESULT_PREFIX, LoadResult
from bench.procs import Process, Server, running, sample_sum, spawn, start_mock, start_server
from bench.profile import profiled

SAMPLE_SECONDS: Final = 0.5
"""How often the server's CPU and memory are read while the session runs."""
MOCK_LATENCY_MS: Final = 20.0
MIB: Final = 1024 * 1024


class FanoutResult(BaseModel):
    """Delivery to N observers of one session, and what it cost the server."""

    observers: int = Field(description="N: observers connected (half WS, half SSE).")
    nodes: int = Field(1, description="Server processes the observers were spread over.")
    turns: int = Field(description="Bot turns the session ran while observed.")
    turn_delay_s: float = Field(description="Pause between bot turns (the conversation pace).")
    load: LoadResult = Field(description="What the observers measured.")
    server_cpu_percent: float = Field(
        description="Server CPU while the session ran (100 = one core; every node together)."
    )
    server_rss_idle_mib: float = Field(
        description="Server RSS before the observers connected (every node together)."
    )
    server_rss_connected_mib: float = Field(
        description="Server RSS with every observer connected (every node together)."
    )
    server_rss_peak_mib: float = Field(
        description="Highest server RSS sampled while it ran (every node together)."
    )


def _read_line(process: Process, prefix: str, timeout: float) -> str:
    """The next stdout line of `process` that starts with `prefix` (others are skipped)."""
    stdout = process.popen.stdout
    assert stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stdout.readline().decode()
        if not line:
            raise RuntimeError(
                f"the load process exited: {process.log_tail(1)}\n{process.log_tail()}"
            )
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise RuntimeError(f"no {prefix!r} line from the load process in {timeout} s")


async def observe_session(
    servers: Sequence[Server],
    n: int,
    turns: int,
    turn_delay: float,
    deadline: float,
    profile: Path | None = None,
) -> FanoutResult:
    """One session run by the first of `servers`, watched by `n` observers spread evenly
    over all of them (each node half WS, half SSE); CPU and memory of every server added."""
    owner = servers[0]
    pids = [server.pid for server in servers]
    async with httpx.AsyncClient(base_url=owner.base_url, timeout=60) as http:
        created = await api.create(
            http,
            api.bench_spec(participation="autonomous", max_turns=turns, turn_delay=turn_delay),
        )
        await api.control(http, created.token, "pause")
        idle = sample_sum(pids)
        load = spawn(
            f"load-{n}",
            [
                "-m",
                "bench.load",
                *(arg for server in servers for arg in ("--base-url", server.base_url)),
                "--token",
                created.observer_token,
                "--ws",
                str(n // 2),
                "--sse",
                str(n - n // 2),
                "--deadline",
                str(deadline),
            ],
            workdir=owner.workdir,
            stdout=subprocess.PIPE,
        )
        connect_profile = (
            profile.with_name(f"{profile.stem}-connect{profile.suffix}") if profile else None
        )
        try:
            with (
                profiled(owner.pid, connect_profile)
                if connect_profile
                else contextlib.nullcontext()
            ):
                await asyncio.to_thread(_read_line, load, READY_LINE, deadline)
            connected = sample_sum(pids)
            with profiled(owner.pid, profile) if profile else contextlib.nullcontext():
                await api.control(http, created.token, "resume")
                result_line = asyncio.create_task(
                    asyncio.to_thread(_read_line, load, RESULT_PREFIX, 2 * deadline)
                )
                peak = connected.rss_bytes
                last = connected
                while not result_line.done():
                    await asyncio.wait({result_line}, timeout=SAMPLE_SECONDS)
                    with contextlib.suppress(OSError):
                        last = sample_sum(pids)
                        peak = max(peak, last.rss_bytes)
            result = LoadResult.model_validate_json(result_line.result())
        finally:
            load.stop()
        status = await api.status(http, created.token)
    cpu = (last.cpu_seconds - connected.cpu_seconds) / max(last.at - connected.at, 1e-9)
    return FanoutResult(
        observers=n,
        nodes=len(servers),
        turns=status.bot_turns,
        turn_delay_s=turn_delay,
        load=result,
        server_cpu_percent=100.0 * cpu,
        server_rss_idle_mib=idle.rss_bytes / MIB,
        server_rss_connected_mib=connected.rss_bytes / MIB,
        server_rss_peak_mib=peak / MIB,
    )


async def measure(
    *,
    observers: int,
    turns: int,
    turn_delay: float,
    deadline: float,
    profile: Path | None = None,
) -> FanoutResult:
    """One fan-out run against a fresh server (profiled with py-spy into `profile`)."""
    with tempfile.TemporaryDirectory(prefix="fellowship-bench-") as tmp:
        workdir = Path(tmp)
        mock = start_mock(workdir, latency_ms=MOCK_LATENCY_MS)
        server = start_server(workdir, llm_base_url=mock.base_url)
        with running(server, mock):
            return await observe_session([server], observers, turns, turn_delay, deadline, profile)


def main() -> None:
    """`python -m bench.fanout N [PROFILE]`: one run printed as JSON (for trying things out)."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    profile = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    result = asyncio.run(
        measure(observers=n, turns=20, turn_delay=0.25, deadline=300, profile=profile)
    )
    print(result.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
