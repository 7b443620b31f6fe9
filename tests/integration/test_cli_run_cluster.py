"""`fellowship run-cluster`: real nodes on the tests' PostgreSQL and Redis, one shared mock.

The launcher is run as a user would run it (`make run-cluster` without make): two
`fellowship serve` nodes on free ports, a session created on one is read on the other,
and SIGTERM stops every process it started. A node that dies on its own leaves the
other running, and the launcher's exit status then says that something went wrong.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from server.cli.services import process_alive
from tests.integration.conftest import create_session
from tests.support.engine import WAIT_SECONDS
from tests.support.services import Redis

REPO = Path(__file__).resolve().parents[2]
ADMIN = "cluster-admin-token-of-the-test"
_NODE_LINE = re.compile(r"^\s+(node-\d+)\s+(http://\S+?)/\s+\(pid (\d+)\)$")
_MOCK_PID = re.compile(r"one built-in mock at \S+ \(pid (\d+)\)")


@dataclass
class Launcher:
    """`fellowship run-cluster` as a child process, and what it printed."""

    process: asyncio.subprocess.Process
    nodes: dict[str, str] = field(default_factory=dict)  # node id -> base URL
    pids: dict[str, int] = field(default_factory=dict)  # every child: name -> pid
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    _new_error_line: asyncio.Event = field(default_factory=asyncio.Event)

    def start_reading_errors(self) -> None:
        assert self.process.stderr is not None
        self.readers.append(asyncio.create_task(self._collect(self.process.stderr)))

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.err.append(raw.decode())
            self._new_error_line.set()

    async def read_announcement(self) -> None:
        """Read stdout until the launcher said that everything runs."""
        assert self.process.stdout is not None
        async with asyncio.timeout(WAIT_SECONDS * 2):
            while not self.out or "Ctrl-C stops everything" not in self.out[-1]:
                raw = await self.process.stdout.readline()
                assert raw, "run-cluster exited early:\n" + "".join(self.err)
                line = raw.decode().rstrip("\n")
                self.out.append(line)
                if node := _NODE_LINE.match(line):
                    self.nodes[node.group(1)] = node.group(2)
                    self.pids[node.group(1)] = int(node.group(3))
                if mock := _MOCK_PID.search(line):
                    self.pids["mock-llm"] = int(mock.group(1))

    async def said(self, text: str) -> None:
        """Wait until the launcher wrote `text` on stderr."""
        async with asyncio.timeout(WAIT_SECONDS):
            while not any(text in line for line in self.err):
                self._new_error_line.clear()
                await self._new_error_line.wait()

    async def stop(self) -> int:
        """SIGTERM, then the exit status."""
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), WAIT_SECONDS * 2)
        await asyncio.wait(self.readers, timeout=WAIT_SECONDS)
        return code


@pytest.fixture
async def launched(
    tmp_path: Path, postgres_url: str, redis_service: Redis, redis_prefix: str
) -> AsyncIterator[Launcher]:
    environment = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "REDIS_URL": redis_service.url,
        "REDIS_PREFIX": redis_prefix,
        "LLM_BASE_URL": "",  # the launcher starts its one shared mock
        "CLUSTER_ADMIN_TOKEN": ADMIN,
        "LOG_DIR": str(tmp_path / "logs"),
        "SPECS_DIR": str(REPO / "specs"),
        "WS_PING_SECONDS": "0.5",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "run-cluster", "--nodes", "2", "--port", "0",
        cwd=tmp_path,  # no developer .env
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    launcher = Launcher(process)
    launcher.start_reading_errors()
    try:
        await launcher.read_announcement()
        yield launcher
    finally:
        if process.returncode is None:
            process.kill()  # its children get SIGTERM from the kernel
            await process.wait()


async def test_two_nodes_serve_one_session_and_sigterm_stops_every_child(
    launched: Launcher,
) -> None:
    assert sorted(launched.nodes) == ["node-1", "node-2"]
    assert set(launched.pids) == {"node-1", "node-2", "mock-llm"}
    first, second = launched.nodes["node-1"], launched.nodes["node-2"]
    async with httpx.AsyncClient(timeout=WAIT_SECONDS) as http:
        for url in (first, second):
            assert (await http.get(f"{url}/healthz")).status_code == 200
        async with httpx.AsyncClient(base_url=first, timeout=WAIT_SECONDS) as on_first:
            created = await create_session(on_first, participation="reactive")
        # node-2 does not run it: it asks node-1, through Redis.
        status = await http.get(f"{second}/v1/session/{created['token']}")
        assert status.status_code == 200, status.text
        assert status.json()["id"] == created["id"]
        assert status.json()["state"] == "active"

        view = await http.get(f"{second}/v1/cluster", headers={"Authorization": f"Bearer {ADMIN}"})
        assert view.status_code == 200, view.text
        assert view.json()["mode"] == "cluster"
        nodes = {node["node_id"]: node for node in view.json()["nodes"]}
        assert sorted(nodes) == ["node-1", "node-2"]
        assert all(node["alive"] for node in nodes.values())
        assert [s["session_id"] for s in nodes["node-1"]["sessions"]] == [created["id"]]
        assert nodes["node-2"]["sessions"] == []

    assert await launched.stop() == 0
    assert [name for name, pid in launched.pids.items() if process_alive(pid)] == []


async def test_a_node_that_dies_leaves_the_other_running_and_the_exit_status_says_so(
    launched: Launcher,
) -> None:
    os.kill(launched.pids["node-2"], signal.SIGKILL)
    await launched.said("node-2 was killed by SIGKILL; the other nodes take its sessions over")
    async with httpx.AsyncClient(timeout=WAIT_SECONDS) as http:
        assert (await http.get(f"{launched.nodes['node-1']}/healthz")).status_code == 200

    assert await launched.stop() == 1
    assert [name for name, pid in launched.pids.items() if process_alive(pid)] == []
