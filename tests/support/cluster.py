"""Cluster nodes as real `fellowship serve` processes on one PostgreSQL, one Redis and one mock.

Each `ClusterNode` is a child process with its own folder (logs), a free loopback port
(a new one at each start) and the cluster settings: `DATABASE_URL`, `REDIS_URL`,
`REDIS_PREFIX`, `NODE_ID`, `LEASE_SECONDS`, `CLUSTER_ADMIN_TOKEN`. Everything it prints
on stderr is kept, across restarts, so that a failing test can show each node's log.

`TaggingBackend` is the one LLM backend every node talks to: an in-process `MockLLM`
whose replies say which node asked (each node asks with its own `DEFAULT_BOT_MODEL`,
`node-<id>`) and are unique, so a history position tells who wrote it; it can hold one
node's next reply for as long as a test needs a reply "being generated".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx

from engine.llm.mock import MockLLM, MockReply
from engine.llm.mock.models import RecordedRequest
from tests.support.engine import TEST_SECRET_KEY, WAIT_SECONDS
from tests.support.served import REPO, OnLoopback, read_port

ADMIN_TOKEN: Final = "cluster-admin-token-of-the-tests-0123456789"
POLL_SECONDS: Final = 0.02
"""How often another process's state is asked for (there is no event to wait on)."""
REPLY_DELAY_MS: Final = 150.0
"""Every reply waits this long, so that a session makes a few turns a second, not hundreds."""
LOG_TAIL_LINES: Final = 150


def model_of(node_id: str) -> str:
    """The bot model node `node_id` asks for: how the backend tells the nodes apart."""
    return f"node-{node_id}"


def writer_of(content: str) -> str | None:
    """The node whose backend call produced a bot reply `content` (None if not a reply)."""
    words = content.split()
    if len(words) == 4 and words[0] == "reply" and words[2] == "from":
        return words[3].removeprefix("node-")
    return None


class TaggingBackend:
    """The shared mock backend: replies `reply <n> from node-<id>`, one held on demand."""

    def __init__(self) -> None:
        self.mock = MockLLM()
        self.mock.set_handler(self._answer)
        self._hold_for: str | None = None
        self._asked: Counter[str] = Counter()
        self.held = asyncio.Event()
        self.held_content: str | None = None
        self._release = asyncio.Event()

    async def __aenter__(self) -> TaggingBackend:
        await self.mock.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._release.set()
        await self.mock.stop()

    @property
    def base_url(self) -> str:
        return self.mock.base_url

    def hold_next(self, node_id: str) -> None:
        """Keep the next reply asked by `node_id` unanswered until `release()`."""
        self.held.clear()
        self._release.clear()
        self.held_content = None
        self._hold_for = model_of(node_id)

    def asked(self, node_id: str) -> int:
        """How many replies `node_id` has asked for so far (the held one included)."""
        return self._asked[model_of(node_id)]

    def release(self) -> None:
        """Answer the held reply (if its node is still there to read it)."""
        self._hold_for = None
        self._release.set()

    async def _answer(self, request: RecordedRequest) -> MockReply:
        self._asked[request.model] += 1
        content = f"reply {request.index} from {request.model}"
        if self._hold_for == request.model and not self.held.is_set():
            self.held_content = content
            self.held.set()
            await self._release.wait()
            return MockReply(content=content)  # it has waited long enough
        return MockReply(content=content, delay_ms=REPLY_DELAY_MS)


@dataclass
class ClusterNode(OnLoopback):
    """One `fellowship serve` node of the cluster, which a test may kill, stop or freeze."""

    node_id: str
    folder: Path
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    port: int = 0
    _drain: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def start(self) -> None:
        """Start the process (again) and return once it listens."""
        assert not self.running, f"node {self.node_id} is running already"
        self.lines.append(f"===== node {self.node_id} starting =====\n")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "serve",
            cwd=self.folder,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            self.port = await read_port(self.process, self.lines, WAIT_SECONDS)
        except BaseException:
            await self.kill()
            raise
        self._drain = asyncio.create_task(self._read_output(self.process))

    async def _read_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            self.lines.append(raw.decode(errors="replace"))

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no hand-over of any kind."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)  # a frozen process dies as well
                self.process.kill()
            await self.process.wait()
        await self._finish_output()

    async def stop(self) -> int:
        """SIGTERM (a clean stop, which hands the node's sessions over); its exit status."""
        assert self.process is not None and self.running
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), WAIT_SECONDS)
        await self._finish_output()
        return code

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets but does nothing (a partition, a long GC)."""
        assert self.process is not None and self.running
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen process goes on where it stopped."""
        assert self.process is not None and self.running
        self.process.send_signal(signal.SIGCONT)

    async def _finish_output(self) -> None:
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, WAIT_SECONDS)
            self._drain = None

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "".join(self.lines[-lines:])


@dataclass
class Cluster:
    """Three nodes on one PostgreSQL schema, one Redis prefix and one backend."""

    nodes: dict[str, ClusterNode]
    backend: TaggingBackend
    database_url: str
    lease_seconds: float

    def __getitem__(self, node_id: str) -> ClusterNode:
        return self.nodes[node_id]

    def http(self, node_id: str) -> httpx.AsyncClient:
        """A new client of one node (close it, or use it with `async with`)."""
        return httpx.AsyncClient(base_url=self.nodes[node_id].base_url, timeout=WAIT_SECONDS)

    async def request(self, node_id: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request to one node."""
        async with self.http(node_id) as http:
            return await http.request(method, path, **kwargs)

    async def create(self, node_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Create a session on `node_id` (which owns it); the 201 body."""
        answer = await self.request(node_id, "POST", "/v1/session/create", json=spec)
        assert answer.status_code == 201, answer.text
        body: dict[str, Any] = answer.json()
        return body

    async def view(self, node_id: str) -> dict[str, Any]:
        """GET /v1/cluster as the admin, asked of `node_id`."""
        answer = await self.request(
            node_id, "GET", "/v1/cluster", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    async def lease(self, session_id: str, via: str) -> tuple[str, int] | None:
        """(node, epoch) of the live lease on `session_id` in the cluster view, if any node
        holds one that has not expired."""
        for node in (await self.view(via))["nodes"]:
            for held in node["sessions"]:
                left = held["expires_in_seconds"]  # None: one process, no expiry
                if held["session_id"] == session_id and (left is None or left > 0):
                    return str(node["node_id"]), int(held["epoch"])
        return None

    async def until_lease(
        self, session_id: str, via: str, accept: Callable[[tuple[str, int]], bool]
    ) -> tuple[str, int]:
        """Wait until the live lease on `session_id` satisfies `accept`; return it."""
        async with asyncio.timeout(WAIT_SECONDS):
            while True:
                found = await self.lease(session_id, via)
                if found is not None and accept(found):
                    return found
                await asyncio.sleep(POLL_SECONDS * 5)

    async def stored(self, session_id: str) -> Stored:
        """What PostgreSQL holds for the session, read directly."""
        conn = await asyncpg.connect(self.database_url)
        try:
            messages = [
                dict(row)
                for row in await conn.fetch(
                    "SELECT turn, kind, speaker, content, status FROM messages "
                    "WHERE session_id = $1 ORDER BY turn",
                    session_id,
                )
            ]
            events = {
                int(row["seq"]): json.loads(row["data"])
                for row in await conn.fetch(
                    "SELECT seq, data FROM events WHERE session_id = $1 ORDER BY seq", session_id
                )
            }
        finally:
            await conn.close()
        return Stored(messages, events)

    def logs(self) -> str:
        """The tail of every node's log, for a failing assertion's message."""
        return "\n".join(
            f"----- node {node.node_id} (last {LOG_TAIL_LINES} lines) -----\n{node.tail()}"
            for node in self.nodes.values()
        )


@dataclass
class Stored:
    """A session's rows in PostgreSQL: history positions and events (by seq)."""

    messages: list[dict[str, Any]]
    events: dict[int, dict[str, Any]]


async def start_cluster(
    folder: Path,
    backend: TaggingBackend,
    *,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    lease_seconds: float,
    node_ids: tuple[str, ...] = ("a", "b", "c"),
) -> Cluster:
    """Start one node per id, all at once, and return the cluster once all listen."""
    nodes: dict[str, ClusterNode] = {}
    for node_id in node_ids:
        home = folder / f"node-{node_id}"
        home.mkdir()
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "HOST": "127.0.0.1",
            "PORT": "0",
            "LOG_DIR": str(home / "logs"),
            "DATABASE_PATH": str(home / "unused.db"),
            "SPECS_DIR": str(REPO / "specs"),
            "SECRET_KEY": TEST_SECRET_KEY,
            "LLM_BASE_URL": backend.base_url,
            "LLM_RETRIES": "0",
            "DEFAULT_BOT_MODEL": model_of(node_id),
            "DUPLICATE_WINDOW": "0",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_PREFIX": redis_prefix,
            "NODE_ID": node_id,
            "LEASE_SECONDS": str(lease_seconds),
            "CLUSTER_ADMIN_TOKEN": ADMIN_TOKEN,
            "ACCESS_LOG": "false",
            "WS_PING_SECONDS": "0.5",
        }
        nodes[node_id] = ClusterNode(node_id, home, env)
    cluster = Cluster(nodes, backend, database_url, lease_seconds)
    started = await asyncio.gather(
        *(node.start() for node in nodes.values()), return_exceptions=True
    )
    failed = [error for error in started if isinstance(error, BaseException)]
    if failed:
        await stop_cluster(cluster)
        raise failed[0]
    return cluster


async def stop_cluster(cluster: Cluster) -> None:
    """Kill every node that still runs (tests end by SIGKILL: they checked what they meant to)."""
    await asyncio.gather(*(node.kill() for node in cluster.nodes.values()))


async def until(condition: Callable[[], bool], what: str, wait: float = WAIT_SECONDS) -> None:
    """Wait until `condition()` holds; fail saying `what` after `wait` seconds."""
    deadline = time.monotonic() + wait
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(POLL_SECONDS)
