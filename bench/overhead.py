"""Turn overhead: what Fellowship adds to each bot turn on top of the LLM call itself.

An autonomous three-bot session runs `turns` bot turns against the mock backend with a
fixed reply latency. Its per-turn time is the gap between consecutive replies' history
timestamps (the whole loop cycle: decide, reserve and commit the slot, build the prompt,
call the backend, clean the reply, commit it, broadcast, save). The baseline is the same
number of calls with the same prompts made straight to the mock with httpx, one after
the other. The overhead is the difference between the two, quantile by quantile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import httpx
from pydantic import BaseModel, Field

from bench import api
from bench.procs import running, start_mock, start_server
from bench.profile import profiled
from bench.stats import Distribution, known
from engine.config import Settings, load_settings
from engine.history import Message
from engine.llm.payload import build_payload
from engine.llm.types import ChatRequest
from engine.prompts import PromptParts, build_prompt, stop_sequences

STATUS_POLL_SECONDS: Final = 0.2
MS: Final = 1000.0


class OverheadResult(BaseModel):
    """Per-turn time of a real session against direct calls to the same backend."""

    turns: int = Field(description="Bot turns in the session (and direct calls).")
    mock_latency_ms: float = Field(description="Fixed latency of every mock reply.")
    session_turn_ms: Distribution = Field(description="Time per turn inside the session.")
    direct_call_ms: Distribution = Field(description="Time per direct httpx call.")
    added_p50_ms: float = Field(description="Median turn time minus median call time.")
    added_p99_ms: float = Field(description="p99 turn time minus p99 call time.")
    session_wall_s: float = Field(description="Session creation to its last reply.")
    direct_wall_s: float = Field(description="All direct calls, one after another.")
    wall_ratio: float = Field(description="session_wall_s / direct_wall_s.")
    server_cpu_ms_per_turn: float = Field(
        description="Server CPU time (every thread) over the session, per turn."
    )


def direct_payloads(messages: list[Message], settings: Settings) -> list[dict[str, object]]:
    """The request bodies the engine sent for each bot turn, rebuilt from the history.

    Round robin over `api.BOTS`, each bot seeing every complete message before its own,
    with the same system prompt, stop sequences and settings as the server uses.
    """
    spec = api.bench_spec()
    prompts = {bot["name"]: bot["system_prompt"] for bot in spec["bots"]}
    payloads: list[dict[str, object]] = []
    for index, message in enumerate(messages):
        context = messages[:index]
        parts = PromptParts(bot_name=message.speaker, bot_system_prompt=prompts[message.speaker])
        request = ChatRequest(
            model=settings.default_bot_model,
            messages=build_prompt(
                parts,
                context,
                opening_line=settings.opening_line,
                continue_line=settings.continue_line,
            ),
            stop=stop_sequences(
                message.speaker,
                list(api.BOTS),
                context=context,
                limit=settings.max_stop_sequences,
            ),
        )
        payloads.append(build_payload(request, settings))
    return payloads


async def _direct(base_url: str, payloads: list[dict[str, object]]) -> tuple[list[float], float]:
    times: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        await http.post("/chat/completions", json=payloads[0])  # warm the connection
        began = time.perf_counter()
        for payload in payloads:
            start = time.perf_counter()
            response = await http.post("/chat/completions", json=payload)
            response.raise_for_status()
            response.json()
            times.append((time.perf_counter() - start) * MS)
        wall = time.perf_counter() - began
    return times, wall


async def measure(
    *,
    turns: int,
    latency_ms: float,
    profile: Path | None = None,
    settings: Mapping[str, str] | None = None,
) -> OverheadResult:
    """Run the session and the direct calls; compare them (py-spy into `profile`).

    `settings` are given to the server on top of the benchmark's own (e.g. a
    DATABASE_URL, to measure on PostgreSQL instead of SQLite).
    """
    with tempfile.TemporaryDirectory(prefix="fellowship-bench-") as tmp:
        workdir = Path(tmp)
        mock = start_mock(workdir, latency_ms=latency_ms)
        server = start_server(workdir, llm_base_url=mock.base_url, **(settings or {}))
        with running(server, mock):
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
                cpu_before = server.sample().cpu_seconds
                with profiled(server.pid, profile) if profile else contextlib.nullcontext():
                    created = await api.create(
                        http, api.bench_spec(participation="autonomous", max_turns=turns)
                    )
                    # Polling is enough: nothing is timed by it (the turns' own stamps are).
                    while (await api.status(http, created.token)).state != "ended":  # noqa: ASYNC110
                        await asyncio.sleep(STATUS_POLL_SECONDS)
                server_cpu = server.sample().cpu_seconds - cpu_before
                status = await api.status(http, created.token)
                messages = await api.history(http, created.token)
            payloads = direct_payloads(messages, load_settings(_env_file=None))
            direct_times, direct_wall = await _direct(mock.base_url, payloads)
    stamps = [m.ts.timestamp() for m in messages]
    session_times = [(b - a) * MS for a, b in itertools.pairwise(stamps)]
    session = Distribution.of(session_times)
    direct = Distribution.of(direct_times)
    session_wall = stamps[-1] - status.created_at.timestamp()
    return OverheadResult(
        turns=len(messages),
        mock_latency_ms=latency_ms,
        session_turn_ms=session,
        direct_call_ms=direct,
        added_p50_ms=known(session.p50) - known(direct.p50),
        added_p99_ms=known(session.p99) - known(direct.p99),
        session_wall_s=session_wall,
        direct_wall_s=direct_wall,
        wall_ratio=session_wall / direct_wall,
        server_cpu_ms_per_turn=server_cpu * MS / max(len(messages), 1),
    )
