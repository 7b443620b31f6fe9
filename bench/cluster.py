"""Cluster: one node against two, on one PostgreSQL and one Redis (issue 17).

A node is a `fellowship serve` process with DATABASE_URL (PostgreSQL, the run's own
schema), REDIS_URL (the run's own key prefix), NODE_ID and LEASE_SECONDS; the nodes of
a run share one mock backend process. Four figures:

- **throughput**: S autonomous sessions on one node, then on two (created round robin,
  each run by the node that created it), with the same backend slots in all
  (`LLM_MAX_CONCURRENCY` is per node: one node gets all of them, each of two nodes
  half), measured as the many-sessions benchmark does (`bench/sessions.py`);
- **fan-out**: N observers of one session, half on each node (each node half WS, half
  SSE), as the fan-out benchmark does (`bench/fanout.py`, `bench/load.py`);
- **failover**: a session run by node A, watched over WS and SSE on node B; A is killed
  with SIGKILL, and the time from the kill to the first turn event (`turn_start` or
  `bot_message`) published after it and seen by every observer on B is taken;
- **overhead on PostgreSQL**: the turn-overhead benchmark (`bench/overhead.py`) on one
  server with DATABASE_URL (no Redis, so not a cluster) against the default SQLite.

docs/performance.md explains the choices.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx
from pydantic import BaseModel, Field

from bench import api, fanout, overhead, services, sessions
from bench.fanout import FanoutResult
from bench.overhead import OverheadResult
from bench.procs import MockBackend, Server, running, start_mock, start_server
from bench.services import Backing
from bench.sessions import SessionsResult
from engine.cluster.view import ClusterView
from fellowship.client import Event, FellowshipClient, HistoryEvent, Reconnect
from fellowship.client.streams import Transport

MOCK_LATENCY_MS: Final = 20.0
ADMIN_TOKEN: Final = secrets.token_urlsafe(24)
"""CLUSTER_ADMIN_TOKEN of the nodes: the failover asks GET /v1/cluster who runs what."""
TURN_EVENTS: Final = frozenset({"turn_start", "bot_message"})
"""Events that show a session's loop running."""
FAILOVER_TURN_DELAY_S: Final = 0.1
"""Pause between bot turns of the failed-over session: a turn event at least every
~0.15 s, so the figure is the take-over, give or take one turn."""
FAILOVER_WARM_TURNS: Final = 3
"""Turn events every observer on B sees before the kill (B follows the session)."""
FAILOVER_GRACE_S: Final = 30.0
"""Seconds past a lease a take-over may take before the try counts as failed."""
OBSERVER_TRANSPORTS: Final[tuple[Transport, ...]] = ("ws", "sse")
FAST_RECONNECT: Final = Reconnect(initial=0.05, maximum=0.5, give_up_after=120.0)
"""The observers on B come back quickly if their stream drops during the take-over."""
HTTP_TIMEOUT: Final = 60.0


class Throughput(BaseModel):
    """The same S sessions on one node and on two, with the same backend slots in all."""

    backend_slots: int = Field(description="LLM calls in flight across the cluster.")
    one_node: SessionsResult = Field(description="One node, LLM_MAX_CONCURRENCY = all slots.")
    two_nodes: SessionsResult = Field(description="Two nodes, each half the slots.")
    speedup: float = Field(description="Two nodes' turns/s over one node's.")


class FailoverRun(BaseModel):
    """One kill of the node running a session."""

    seconds: float | None = Field(
        description="SIGKILL to the first turn event published after it, seen by every "
        "observer on the surviving node (None: none within a lease plus the grace)."
    )
    by_transport_s: dict[str, float] = Field(description="The same, per observer transport.")
    owner_before: str | None = Field(description="NODE_ID running the session before the kill.")
    owner_after: str | None = Field(description="NODE_ID running it after the take-over.")
    events_lost: int = Field(description="Seq numbers missing from the observers' streams.")
    history_resets: int = Field(
        description="`history` events after the first: a stream started over instead of "
        "continuing (no event lost, but not a seamless hand-over)."
    )


class FailoverResult(BaseModel):
    """Kills of a session's node, each with a fresh node A and the same node B."""

    lease_seconds: float = Field(description="LEASE_SECONDS of the nodes.")
    runs: list[FailoverRun] = Field(description="Each kill.")
    median_s: float | None = Field(description="Median of the runs that recovered.")


class OverheadComparison(BaseModel):
    """Turn overhead of one server on SQLite and on PostgreSQL (no Redis: not a cluster)."""

    sqlite: OverheadResult = Field(description="The default store.")
    postgres: OverheadResult = Field(description="DATABASE_URL set.")
    postgres_synchronous_commit: str = Field(
        description="The PostgreSQL server's synchronous_commit (on: a WAL flush per commit)."
    )


class ClusterResult(BaseModel):
    """Every cluster figure (a part that could not run is None; run.py records why)."""

    throughput: Throughput | None = Field(None, description="Many sessions, 1 and 2 nodes.")
    fanout: FanoutResult | None = Field(None, description="Observers spread over 2 nodes.")
    failover: FailoverResult | None = Field(None, description="Kill the owner node.")
    overhead: OverheadComparison | None = Field(None, description="PostgreSQL against SQLite.")


@dataclass(frozen=True, slots=True)
class Setup:
    """What every part shares: where PostgreSQL and Redis are, where node folders go."""

    postgres_url: str = services.POSTGRES_URL
    redis_url: str = services.REDIS_URL
    lease_seconds: float = 5.0
    logs: Path | None = None
    """Keep each node's folder (its logs) here; None: a temporary folder, deleted."""

    @contextlib.contextmanager
    def folder(self, part: str) -> Iterator[Path]:
        """The folder of one part's processes."""
        if self.logs is None:
            with tempfile.TemporaryDirectory(prefix=f"fellowship-bench-{part}-") as tmp:
                yield Path(tmp)
            return
        path = self.logs / part
        path.mkdir(parents=True, exist_ok=True)
        yield path


def start_node(
    root: Path,
    name: str,
    mock: MockBackend,
    backing: Backing,
    setup: Setup,
    **settings: str | int | float,
) -> Server:
    """Start node `name` (its NODE_ID and folder) of the cluster in `backing`."""
    workdir = root / name
    workdir.mkdir(parents=True, exist_ok=True)
    return start_server(
        workdir,
        llm_base_url=mock.base_url,
        node_id=name,
        lease_seconds=setup.lease_seconds,
        cluster_admin_token=ADMIN_TOKEN,
        **backing.settings(),
        **settings,
    )


@contextlib.asynccontextmanager
async def nodes(
    root: Path,
    names: Sequence[str],
    mock: MockBackend,
    backing: Backing,
    setup: Setup,
    **settings: str | int | float,
) -> AsyncIterator[list[Server]]:
    """Nodes started one after the other, stopped (SIGTERM) on the way out."""
    with contextlib.ExitStack() as stack:
        started: list[Server] = []
        for name in names:
            server = await asyncio.to_thread(
                start_node, root, name, mock, backing, setup, **settings
            )
            stack.enter_context(running(server))
            started.append(server)
        yield started


@contextlib.asynccontextmanager
async def backend(root: Path, setup: Setup) -> AsyncIterator[tuple[MockBackend, Backing]]:
    """The mock every node of a run shares, and a fresh schema and key prefix."""
    mock = start_mock(root, latency_ms=MOCK_LATENCY_MS)
    with running(mock):
        async with services.fresh(setup.postgres_url, setup.redis_url) as backing:
            yield mock, backing


# --- throughput ----------------------------------------------------------------------------


async def measure_throughput(
    setup: Setup, *, sessions_count: int, window: float, slots: int
) -> Throughput:
    """S sessions on one node, then on two, the backend slots split evenly between nodes."""
    runs: list[SessionsResult] = []
    for count in (1, 2):
        with setup.folder(f"throughput-{count}") as root:
            async with (
                backend(root, setup) as (mock, backing),
                nodes(
                    root,
                    [f"node-{i + 1}" for i in range(count)],
                    mock,
                    backing,
                    setup,
                    **sessions.node_settings(sessions=sessions_count, concurrency=slots // count),
                ) as servers,
            ):
                runs.append(
                    await sessions.run(
                        servers,
                        sessions=sessions_count,
                        window=window,
                        concurrency=slots // count,
                    )
                )
    one, two = runs
    return Throughput(
        backend_slots=slots,
        one_node=one,
        two_nodes=two,
        speedup=two.turns_per_second / one.turns_per_second,
    )


# --- fan-out -------------------------------------------------------------------------------


async def measure_fanout(
    setup: Setup, *, observers: int, turns: int, turn_delay: float, deadline: float
) -> FanoutResult:
    """One session run by node 1, its observers spread over nodes 1 and 2."""
    with setup.folder("fanout") as root:
        async with (
            backend(root, setup) as (mock, backing),
            nodes(root, ["node-1", "node-2"], mock, backing, setup) as servers,
        ):
            return await fanout.observe_session(servers, observers, turns, turn_delay, deadline)


# --- failover ------------------------------------------------------------------------------


@dataclass
class Watcher:
    """One observer's events, each with the time (monotonic) it arrived."""

    transport: Transport
    seen: list[tuple[float, Event]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self, client: FellowshipClient, token: str) -> None:
        """Note every event of the stream until cancelled."""
        async for event in client.observe(token, transport=self.transport):
            self.seen.append((time.monotonic(), event))
            self.arrived.set()

    async def until(self, done: Callable[[Watcher], bool]) -> None:
        """Wait until `done(self)` holds (checked after each event)."""
        while not done(self):
            self.arrived.clear()
            await self.arrived.wait()

    def turn_events(self) -> int:
        """Turn events seen so far."""
        return sum(1 for _, event in self.seen if event.type in TURN_EVENTS)

    def first_turn_after(self, wall: float) -> float | None:
        """Arrival time of the first turn event published after `wall` (time.time())."""
        for at, event in self.seen:
            if event.type in TURN_EVENTS and event.ts is not None and event.ts.timestamp() > wall:
                return at
        return None

    def losses(self) -> tuple[int, int]:
        """(seq numbers skipped, `history` events after the first)."""
        lost = resets = 0
        last: int | None = None
        for _, event in self.seen:
            if isinstance(event, HistoryEvent):
                resets += last is not None
                last = event.seq
                continue
            if event.type in ("pong", "error") and last is not None and event.seq <= last:
                continue  # replies to this client alone repeat the last seq
            if last is not None and event.seq > last + 1:
                lost += event.seq - last - 1
            last = event.seq if last is None else max(last, event.seq)
        return lost, resets


async def owner_of(server: Server, session_id: str) -> str | None:
    """The NODE_ID holding the session's lease, as `server` sees it (GET /v1/cluster)."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=HTTP_TIMEOUT) as http:
        answer = await http.get("/v1/cluster", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    answer.raise_for_status()
    view = ClusterView.model_validate(answer.json())
    for node in view.nodes:
        if any(lease.session_id == session_id for lease in node.sessions):
            return node.node_id
    return None


async def _failover_once(
    root: Path, name: str, mock: MockBackend, backing: Backing, setup: Setup, survivor: Server
) -> FailoverRun:
    victim = await asyncio.to_thread(start_node, root, name, mock, backing, setup)
    wait = setup.lease_seconds + FAILOVER_GRACE_S
    with running(victim):
        async with (
            FellowshipClient(victim.base_url, timeout=HTTP_TIMEOUT) as on_victim,
            FellowshipClient(
                survivor.base_url, timeout=HTTP_TIMEOUT, reconnect=FAST_RECONNECT
            ) as on_survivor,
        ):
            created = await on_victim.create(
                api.bench_spec(participation="autonomous", turn_delay=FAILOVER_TURN_DELAY_S)
            )
            watchers = [Watcher(transport) for transport in OBSERVER_TRANSPORTS]
            tasks = [
                asyncio.create_task(w.follow(on_survivor, created.observer_token)) for w in watchers
            ]
            try:
                owner_before = await owner_of(survivor, created.id)
                try:
                    async with asyncio.timeout(wait):
                        for w in watchers:
                            await w.until(lambda w: w.turn_events() >= FAILOVER_WARM_TURNS)
                except TimeoutError:
                    raise RuntimeError("no turn seen on the survivor before the kill") from None
                killed_wall, killed_at = time.time(), time.monotonic()
                victim.process.kill()
                by_transport: dict[str, float] = {}
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        for w in watchers:
                            await w.until(lambda w: w.first_turn_after(killed_wall) is not None)
                for w in watchers:
                    arrived = w.first_turn_after(killed_wall)
                    if arrived is not None:
                        by_transport[w.transport] = arrived - killed_at
                owner_after = await owner_of(survivor, created.id)
                with contextlib.suppress(Exception):  # the run's figures are taken
                    await on_survivor.end(created.token)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    lost = sum(w.losses()[0] for w in watchers)
    resets = sum(w.losses()[1] for w in watchers)
    recovered = len(by_transport) == len(watchers)
    return FailoverRun(
        seconds=max(by_transport.values()) if recovered else None,
        by_transport_s=by_transport,
        owner_before=owner_before,
        owner_after=owner_after,
        events_lost=lost,
        history_resets=resets,
    )


async def measure_failover(setup: Setup, *, repeats: int) -> FailoverResult:
    """Kill the node running a session `repeats` times (a fresh node each time)."""
    runs: list[FailoverRun] = []
    with setup.folder("failover") as root:
        async with (
            backend(root, setup) as (mock, backing),
            nodes(root, ["survivor"], mock, backing, setup) as (survivor,),
        ):
            for index in range(repeats):
                runs.append(
                    await _failover_once(
                        root, f"victim-{index + 1}", mock, backing, setup, survivor
                    )
                )
    times = [run.seconds for run in runs if run.seconds is not None]
    return FailoverResult(
        lease_seconds=setup.lease_seconds,
        runs=runs,
        median_s=statistics.median(times) if times else None,
    )


# --- turn overhead on PostgreSQL -----------------------------------------------------------


async def measure_overhead(setup: Setup, *, turns: int, latency_ms: float) -> OverheadComparison:
    """The overhead benchmark on SQLite, then on PostgreSQL (a fresh schema)."""
    sqlite = await overhead.measure(turns=turns, latency_ms=latency_ms)
    async with services.fresh(setup.postgres_url, setup.redis_url) as backing:
        postgres = await overhead.measure(
            turns=turns, latency_ms=latency_ms, settings={"database_url": backing.database_url}
        )
    return OverheadComparison(
        sqlite=sqlite,
        postgres=postgres,
        postgres_synchronous_commit=await services.server_setting(
            setup.postgres_url, "synchronous_commit"
        ),
    )
