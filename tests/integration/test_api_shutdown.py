"""Graceful shutdown: members are told the server is going down; `fellowship serve` stops
cleanly on SIGTERM and SIGINT and never writes a token to its log."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from engine.llm.mock import MockLLM
from tests.integration.conftest import (
    RunningServer,
    WsMember,
    create_session,
    sse,
    ws_join,
)
from tests.support.engine import WAIT_SECONDS
from tests.support.served import read_port

REPO = Path(__file__).parents[2]


async def test_shutdown_closes_websockets_with_1001_and_ends_sse_streams(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember]
) -> None:
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    observer = await ws_join(server, created["observer_token"])
    members.extend([talker, observer])
    async with sse(server, created["observer_token"]) as stream:
        await stream.wait_type("history")
        await talker.wait_type("history")
        await observer.wait_type("history")
        await server.stop()
        await stream.wait_done()
    for member in (talker, observer):
        await member.wait_closed()
        assert (member.close_code, member.close_reason) == (1001, "server shutting down")
    assert server.task.done() and server.task.exception() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_fellowship_serve_runs_and_stops_gracefully_on_a_signal(
    tmp_path: Path, mock: MockLLM, signum: signal.Signals
) -> None:
    env = {
        **os.environ,
        "LLM_BASE_URL": mock.base_url,
        "HOST": "127.0.0.1",
        "PORT": "0",
        "LOG_DIR": str(tmp_path / "logs"),
        "DATABASE_PATH": str(tmp_path / "fellowship.db"),
        "SPECS_DIR": str(REPO / "specs"),
        "WS_PING_SECONDS": "0.5",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "serve",
        cwd=tmp_path,  # no developer .env here
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        port = await read_port(process, lines)
        server_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=server_url, timeout=WAIT_SECONDS) as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"
            created = await create_session(http, participation="reactive")
            await http.get(f"/v1/session/{created['token']}")
        talker = await ws_join(
            f"ws://127.0.0.1:{port}", created["token"], role="talker", name="Dana"
        )
        await talker.say("hello")
        await talker.wait_type("bot_message")

        process.send_signal(signum)
        await talker.wait_closed()
        assert (talker.close_code, talker.close_reason) == (1001, "server shutting down")
        assert process.stderr is not None
        rest = await asyncio.wait_for(process.stderr.read(), WAIT_SECONDS)
        lines.append(rest.decode())
        assert await asyncio.wait_for(process.wait(), WAIT_SECONDS) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = "".join(lines)
    assert "shutting down" in output
    logged = output + "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "session created" in logged
    assert created["token"] not in logged
    assert created["observer_token"] not in logged
    assert "/v1/session/***" in logged
