"""`fellowship run-cluster`: N cluster nodes on this machine, for a user to try cluster mode.

What it starts (docs/scale-out.md, "Try it on one machine"):

- PostgreSQL and Redis: those of `DATABASE_URL` / `REDIS_URL` when set; else the
  machine's own on their usual ports (in a schema and under a key prefix of the
  cluster's own); else throwaway servers from binaries on disk, in `.cluster/`
  (server/cli/services.py), stopped and deleted at the end;
- the LLM backend: `LLM_BASE_URL` when set, else one built-in mock
  (`fellowship mock-llm`, at the pace of `serve --mock`) that every node shares —
  never a model per node;
- N `fellowship serve` processes, `node-1` … `node-N`, on consecutive ports (or free
  ones with `--port 0`), with the same database, Redis, backend and
  `CLUSTER_ADMIN_TOKEN` (generated when not set); `SECRET_KEY` comes from `.env` or the
  environment, as for `make run`, so it is the same on every node.

Their logs come out on stderr, each line headed by its node's name. SIGINT (Ctrl-C) or
SIGTERM stops every node (SIGTERM, then SIGKILL after the grace period), then the mock
and the throwaway servers; a second signal is passed on, and makes the nodes exit at
once. A node that exits on its own is reported and the others go on (they take its
sessions over: try `kill -9` on one); the command then exits with 1 once stopped. A node
that cannot start, the mock's death or the last node's stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

import asyncpg
import httpx

from engine.config import Settings, get_settings
from engine.embedded.supervisor import describe_exit, die_with_parent
from engine.store.postgres import display_url
from server.cli.services import (
    LOOPBACK,
    PROBE_SECONDS,
    Service,
    ServiceUnavailable,
    find_or_start_postgres,
    find_or_start_redis,
    run_sync,
    with_query,
)

DEFAULT_NODES: Final = 2
NODE_PREFIX: Final = "node-"
"""The nodes' NODE_ID is this and their number: node-1, node-2, …"""
CLUSTER_FOLDER: Final = Path(".cluster")
"""Where throwaway PostgreSQL and Redis servers live (under the current folder)."""
CLUSTER_DATABASES: Final = ("fellowship", "test", "postgres")
"""Databases tried, in order, on the machine's PostgreSQL."""
CLUSTER_SCHEMA: Final = "fellowship_cluster"
"""The schema the cluster's tables go in, unless DATABASE_URL is set."""
CLUSTER_REDIS_PREFIX: Final = "fellowship-cluster:"
"""The cluster's Redis key prefix, unless REDIS_URL is set (then REDIS_PREFIX)."""
NODE_START_SECONDS: Final = 120.0
"""How long a node (or the mock) may take to listen and answer /healthz."""
NODE_STOP_MARGIN_SECONDS: Final = 10.0
"""How long past SHUTDOWN_GRACE_SECONDS a node may take to stop before it is killed."""
EXIT_FAILED: Final = 1
"""The exit status once a node could not start, or one died on its own."""

_LISTENING = re.compile(r"Running on https?://\S+:(\d+)")
_MOCK_LISTENING = re.compile(r"listening on (\S+)")
_ANY_ADDRESS: Final = ("", "0.0.0.0", "::")  # every interface: the nodes are reached on loopback


class ClusterFailed(Exception):
    """A node or the mock could not be started."""


def register(sub: Any) -> None:
    """Add the `run-cluster` sub-command."""
    parser = sub.add_parser(
        "run-cluster",
        help="run a cluster of nodes on this machine, to try cluster mode",
        description="Start N `fellowship serve` nodes on consecutive ports, in cluster mode: "
        "on DATABASE_URL and REDIS_URL when set, else on the machine's PostgreSQL "
        "(127.0.0.1:5432) and Redis (127.0.0.1:6379), else on throwaway servers started "
        "from their binaries in .cluster/. LLM_BASE_URL when set, else one built-in mock "
        "backend shared by every node. Ctrl-C or SIGTERM stops everything it started.",
    )
    parser.add_argument(
        "--nodes", type=_positive, default=DEFAULT_NODES, help="how many nodes (default: 2)"
    )
    parser.add_argument("--host", help="address the nodes bind (default: HOST)")
    parser.add_argument(
        "--port",
        type=int,
        help="port of node-1, the others on the next ones (default: PORT); 0: free ports",
    )
    parser.set_defaults(handler=_handle)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# --- the plan ------------------------------------------------------------------------------


@dataclass
class Plan:
    """What the nodes share, and what this command started for them."""

    nodes: int
    host: str
    port: int
    database_url: str
    redis_url: str
    redis_prefix: str
    llm_base_url: str  # empty: start the shared mock
    admin_token: str
    token_generated: bool
    settings: Settings
    described: list[tuple[str, str]] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)

    def node_port(self, index: int) -> int:
        """The port node `index` (from 0) listens on; 0: a free one."""
        return self.port + index if self.port else 0


def _database(settings: Settings, plan: Plan) -> None:
    given = settings.database_url.get_secret_value()
    service = find_or_start_postgres(
        given, databases=CLUSTER_DATABASES, given_from="DATABASE_URL", parent=CLUSTER_FOLDER
    )
    plan.services.append(service)
    if service.origin == "given":
        plan.database_url = service.url
        plan.described.append(("PostgreSQL", f"{display_url(service.url)} (DATABASE_URL)"))
        return

    async def create_schema() -> None:
        conn = await asyncpg.connect(service.url, timeout=PROBE_SECONDS)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{CLUSTER_SCHEMA}"')
        finally:
            await conn.close()

    run_sync(create_schema)
    plan.database_url = with_query(service.url, search_path=CLUSTER_SCHEMA)
    plan.described.append(
        ("PostgreSQL", f"{_origin(service)} {display_url(service.url)}, schema {CLUSTER_SCHEMA}")
    )


def _redis(settings: Settings, plan: Plan) -> None:
    given = settings.redis_url.get_secret_value()
    service = find_or_start_redis(given, given_from="REDIS_URL", parent=CLUSTER_FOLDER)
    plan.services.append(service)
    plan.redis_url = service.url
    if service.origin == "given":
        plan.redis_prefix = settings.redis_prefix
        where = f"{display_url(service.url)} (REDIS_URL)"
    else:
        plan.redis_prefix = CLUSTER_REDIS_PREFIX
        where = f"{_origin(service)} {display_url(service.url)}"
    plan.described.append(("Redis", f"{where}, key prefix {plan.redis_prefix}"))


def _origin(service: Service) -> str:
    if service.origin == "machine":
        return "this machine's,"
    return f"throwaway (in {CLUSTER_FOLDER}/, deleted at the end),"


# --- the command ---------------------------------------------------------------------------


def _handle(args: argparse.Namespace) -> int:
    settings = get_settings()
    token = settings.cluster_admin_token.get_secret_value()
    plan = Plan(
        nodes=args.nodes,
        host=args.host if args.host is not None else settings.host,
        port=args.port if args.port is not None else settings.port,
        database_url="",
        redis_url="",
        redis_prefix="",
        llm_base_url=settings.llm_base_url.strip(),
        admin_token=token or secrets.token_urlsafe(24),
        token_generated=not token,
        settings=settings,
    )
    # Until the event loop takes the signals over, SIGTERM unwinds like Ctrl-C (the
    # command then exits with 130), so that the servers started so far are stopped.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _database(settings, plan)
        _redis(settings, plan)
        return asyncio.run(_run(plan, sys.stdout, sys.stderr))
    except ServiceUnavailable as exc:
        print(f"fellowship run-cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        for service in reversed(plan.services):
            service.stop()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# --- the child processes -------------------------------------------------------------------


@dataclass
class Child:
    """A process this command started, and the task copying its output."""

    name: str
    process: asyncio.subprocess.Process
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    url: str = ""

    @property
    def is_node(self) -> bool:
        """Whether it is a node (not the mock)."""
        return self.name.startswith(NODE_PREFIX)

    def read(self, stream: asyncio.StreamReader, out: TextIO | None) -> None:
        """Copy the rest of `stream` to `out`, each line headed by the child's name
        (None: discard it, so that the child never blocks on a full pipe)."""
        self.readers.append(asyncio.create_task(_copy_lines(stream, self.name, out)))

    async def stop(self, wait: float) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `wait` seconds."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), wait)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self.readers:
            await asyncio.wait(self.readers, timeout=PROBE_SECONDS)


async def _spawn(
    name: str, args: list[str], env: Mapping[str, str], *, stdout: int
) -> asyncio.subprocess.Process:
    """`fellowship ARGS` as a child in a session of its own (Ctrl-C reaches only this
    command, which stops it), told by the kernel to stop should this command die."""
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", *args,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )  # fmt: skip
    except OSError as exc:
        raise ClusterFailed(f"cannot start {name}: {exc.strerror or exc}") from exc


async def _copy_lines(stream: asyncio.StreamReader, name: str, out: TextIO | None) -> None:
    async for raw in stream:
        if out is None:
            continue
        out.write(f"{name} | {raw.decode('utf-8', errors='replace').rstrip()}\n")
        out.flush()


async def _read_until(
    child: Child, stream: asyncio.StreamReader, pattern: re.Pattern[str], out: TextIO | None
) -> re.Match[str]:
    """Read lines (echoing them to `out`) until one matches `pattern`."""
    async with asyncio.timeout(NODE_START_SECONDS):
        while True:
            raw = await stream.readline()
            if not raw:
                code = await child.process.wait()
                raise ClusterFailed(f"{child.name} {describe_exit(code)} while starting")
            line = raw.decode("utf-8", errors="replace").rstrip()
            if out is not None:
                out.write(f"{child.name} | {line}\n")
                out.flush()
            if found := pattern.search(line):
                return found


async def _start_mock(plan: Plan, children: list[Child], log: TextIO) -> None:
    settings = plan.settings
    args = [
        "mock-llm", "--host", LOOPBACK, "--port", "0", "--replies", "chat",
        "--first-token-ms", str(settings.mock_first_token_ms),
        "--token-ms", str(settings.mock_token_ms),
    ]  # fmt: skip
    process = await _spawn("mock-llm", args, {}, stdout=asyncio.subprocess.PIPE)
    child = Child("mock-llm", process)
    children.append(child)
    assert process.stdout is not None and process.stderr is not None
    child.read(process.stderr, log)
    found = await _read_until(child, process.stdout, _MOCK_LISTENING, None)
    plan.llm_base_url = child.url = found.group(1)
    child.read(process.stdout, None)


async def _start_node(plan: Plan, index: int, children: list[Child], log: TextIO) -> None:
    node_id = f"{NODE_PREFIX}{index + 1}"
    env = {
        "NODE_ID": node_id,
        "HOST": plan.host,
        "PORT": str(plan.node_port(index)),
        "DATABASE_URL": plan.database_url,
        "REDIS_URL": plan.redis_url,
        "REDIS_PREFIX": plan.redis_prefix,
        "LLM_BASE_URL": plan.llm_base_url,
        "CLUSTER_ADMIN_TOKEN": plan.admin_token,
        # One log folder per node: one file per process, never two writers.
        "LOG_DIR": str(plan.settings.log_dir / node_id),
    }
    process = await _spawn(node_id, ["serve"], env, stdout=asyncio.subprocess.DEVNULL)
    child = Child(node_id, process)
    children.append(child)
    assert process.stderr is not None
    found = await _read_until(child, process.stderr, _LISTENING, log)
    child.read(process.stderr, log)
    host = LOOPBACK if plan.host in _ANY_ADDRESS else plan.host
    child.url = f"http://{f'[{host}]' if ':' in host else host}:{found.group(1)}"
    await _until_healthy(child)


async def _until_healthy(child: Child) -> None:
    async with (
        asyncio.timeout(NODE_START_SECONDS),
        httpx.AsyncClient(base_url=child.url, timeout=PROBE_SECONDS) as http,
    ):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/healthz")).status_code == httpx.codes.OK:
                    return
            if (code := child.process.returncode) is not None:
                raise ClusterFailed(f"{child.name} {describe_exit(code)} while starting")
            await asyncio.sleep(0.2)


# --- running -------------------------------------------------------------------------------


async def _run(plan: Plan, out: TextIO, log: TextIO) -> int:
    """Start the mock (if needed) and the nodes, wait for a signal or a node's death,
    then stop every child; the exit status."""
    signals = 0
    stop = asyncio.Event()
    children: list[Child] = []

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        stop.set()
        if signals > 1:  # again while stopping: the nodes exit at once on a second one
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    code = 0
    try:
        started = await _unless_stopped(_start_all(plan, children, log), stop)
        if started:
            _announce(plan, children, out)
            code = await _watch(children, stop, log)
    except ClusterFailed as exc:
        print(f"fellowship run-cluster: {exc}; stopping the cluster", file=log, flush=True)
        code = EXIT_FAILED
    finally:
        await _stop_all(plan, children)
    return code


async def _start_all(plan: Plan, children: list[Child], log: TextIO) -> None:
    if not plan.llm_base_url:
        await _start_mock(plan, children, log)
    # The nodes start side by side; the first that fails stops the start of the others.
    starts = [asyncio.create_task(_start_node(plan, i, children, log)) for i in range(plan.nodes)]
    try:
        done, _ = await asyncio.wait(starts, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in starts:
            task.cancel()
        await asyncio.wait(starts)


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `work` unless `stop` is set first (then cancel it); whether it finished."""
    task = asyncio.create_task(work)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    task.result()  # raises what the start-up raised
    return True


async def _watch(children: list[Child], stop: asyncio.Event, log: TextIO) -> int:
    """Report each child that exits on its own, until a signal; the exit status.

    A node that dies leaves the others running: they take its sessions over, which is
    what a user trying a cluster wants to see (`kill -9` one). The death of the mock, or
    of the last node, stops the cluster. Once any child died, the status is 1.
    """
    code = 0
    stopped = asyncio.create_task(stop.wait())
    exits = {asyncio.create_task(child.process.wait()): child for child in children}
    try:
        while True:
            done, _ = await asyncio.wait({*exits, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stopped in done:
                return code
            for task in done:
                child = exits.pop(task)
                code = EXIT_FAILED
                how = describe_exit(child.process.returncode)
                if child.is_node and any(other.is_node for other in exits.values()):
                    after = "the other nodes take its sessions over"
                else:
                    after = "stopping the cluster"
                print(f"fellowship run-cluster: {child.name} {how}; {after}", file=log, flush=True)
                if after == "stopping the cluster":
                    return code
    finally:
        for task in [*exits, stopped]:
            task.cancel()


async def _stop_all(plan: Plan, children: list[Child]) -> None:
    """The nodes first (they hand their sessions over through the database), then the mock."""
    wait = plan.settings.shutdown_grace_seconds + NODE_STOP_MARGIN_SECONDS
    nodes = [child for child in children if child.is_node]
    others = [child for child in children if not child.is_node]
    await asyncio.gather(*(child.stop(wait) for child in nodes))
    await asyncio.gather(*(child.stop(wait) for child in others))


def _announce(plan: Plan, children: list[Child], out: TextIO) -> None:
    nodes = sorted(
        (child for child in children if child.is_node),
        key=lambda child: int(child.name.removeprefix(NODE_PREFIX)),
    )
    mock = next((child for child in children if child.name == "mock-llm"), None)
    if mock is not None:
        backend = (
            f"one built-in mock at {mock.url} (pid {mock.process.pid}), shared by every node; "
            "set LLM_BASE_URL for a real backend"
        )
    else:
        backend = f"{display_url(plan.llm_base_url)} (LLM_BASE_URL), shared by every node"
    rows = [*plan.described, ("LLM backend", backend)]
    rows += [(node.name, f"{node.url}/  (pid {node.process.pid})") for node in nodes]
    width = max(len(name) for name, _ in rows)
    lines = [f"Fellowship cluster: {len(nodes)} nodes, cluster mode (PostgreSQL and Redis)"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in rows]
    first = nodes[0].url
    token = plan.admin_token if plan.token_generated else "$CLUSTER_ADMIN_TOKEN"
    lines += [
        f"Web console: {first}/ — any node serves any session, so open it on another node too.",
        "The cluster (nodes, their sessions, lease ages):",
        f'  curl -H "Authorization: Bearer {token}" {first}/v1/cluster',
    ]
    if plan.token_generated:
        lines.append("  (a CLUSTER_ADMIN_TOKEN made for this run; set your own to keep one)")
    lines.append(
        "Try `kill -9 <pid>` on a node: another takes its sessions over within "
        f"LEASE_SECONDS ({plan.settings.lease_seconds:g} s). Ctrl-C stops everything."
    )
    out.write("\n".join(lines) + "\n")
    out.flush()
