"""`python bench/run.py` (`make bench`): every benchmark, a table, and a JSON record.

Starts the real server and the mock backend as separate processes on 127.0.0.1 and
measures turn overhead, fan-out, many sessions, scale with history, restart, and one
cluster node against two (on PostgreSQL and Redis, `bench/cluster.py`). It
prints a table and writes everything (with the machine's description) to
`bench/results/latest.json`. It is not a test: it never fails because something is
slow, only when a benchmark cannot run at all. `--quick` runs smaller sizes for trying
things out; `--only` picks sections; `--profile DIR` also records where the server
spent its time (py-spy, pyinstrument; development tools, see docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel, Field

from bench import cluster, fanout, history, overhead, restart, services, sessions
from bench.cluster import ClusterResult
from bench.fanout import FanoutResult
from bench.history import HistoryResult
from bench.load import LoadResult
from bench.overhead import OverheadResult
from bench.procs import REPO, raise_nofile
from bench.restart import RestartResult
from bench.sessions import SessionsResult

RESULTS: Final = REPO / "bench" / "results" / "latest.json"
SECTIONS: Final = ("overhead", "fanout", "sessions", "history", "restart", "cluster")


class FanoutStep(BaseModel):
    """One fan-out size and how long its session runs."""

    observers: int = Field(description="N observers, half WS, half SSE.")
    turns: int = Field(description="Bot turns of the observed session.")


class SessionsStep(BaseModel):
    """One many-sessions size and its measuring window."""

    sessions: int = Field(description="S concurrent sessions.")
    window_s: float = Field(description="Seconds measured.")


class ClusterPlan(BaseModel):
    """The sizes of the cluster section (one node against two)."""

    sessions: int = Field(description="S sessions for the throughput figure.")
    window_s: float = Field(description="Seconds the throughput is measured.")
    backend_slots: int = Field(
        description="LLM calls in flight across the cluster (one node: all; two: half each)."
    )
    observers: int = Field(description="N observers of one session, half on each node.")
    fanout_turns: int = Field(description="Bot turns of the observed session.")
    failovers: int = Field(description="Kills of the node running a session.")
    overhead_turns: int = Field(description="Bot turns of the SQLite / PostgreSQL overhead.")
    lease_seconds: float = Field(description="LEASE_SECONDS of the nodes.")


class Plan(BaseModel):
    """The sizes of one run (`FULL` by default, `QUICK` with --quick)."""

    overhead_turns: int = Field(description="Bot turns of the overhead session.")
    overhead_latency_ms: float = Field(description="Mock latency for the overhead session.")
    fanout: list[FanoutStep] = Field(description="Fan-out sizes.")
    fanout_turn_delay_s: float = Field(description="Pause between bot turns while observed.")
    fanout_deadline_s: float = Field(
        description="Longest a fan-out phase (connecting, or the session) may take."
    )
    sessions: list[SessionsStep] = Field(description="Many-sessions sizes.")
    history_short: int = Field(description="Short history length.")
    history_long: int = Field(description="Long history length.")
    history_turns: int = Field(description="Turns timed at each history length.")
    restart_sessions: int = Field(description="Sessions in the restart database.")
    restart_messages: int = Field(description="Messages in the restart database.")
    cluster: ClusterPlan = Field(description="Cluster sizes.")


FULL: Final = Plan(
    overhead_turns=200,
    overhead_latency_ms=20.0,
    fanout=[
        FanoutStep(observers=100, turns=40),
        FanoutStep(observers=1000, turns=20),
        FanoutStep(observers=5000, turns=10),
    ],
    fanout_turn_delay_s=0.25,
    fanout_deadline_s=900.0,
    sessions=[
        SessionsStep(sessions=100, window_s=20.0),
        SessionsStep(sessions=1000, window_s=60.0),
    ],
    history_short=10,
    history_long=10_000,
    history_turns=200,
    restart_sessions=1000,
    restart_messages=100_000,
    cluster=ClusterPlan(
        sessions=1000,
        window_s=60.0,
        backend_slots=16,
        observers=5000,
        fanout_turns=10,
        failovers=3,
        overhead_turns=200,
        lease_seconds=5.0,
    ),
)
QUICK: Final = Plan(
    overhead_turns=60,
    overhead_latency_ms=20.0,
    fanout=[FanoutStep(observers=50, turns=10), FanoutStep(observers=200, turns=10)],
    fanout_turn_delay_s=0.25,
    fanout_deadline_s=300.0,
    sessions=[SessionsStep(sessions=20, window_s=5.0), SessionsStep(sessions=100, window_s=10.0)],
    history_short=10,
    history_long=2000,
    history_turns=60,
    restart_sessions=100,
    restart_messages=10_000,
    cluster=ClusterPlan(
        sessions=100,
        window_s=10.0,
        backend_slots=16,
        observers=500,
        fanout_turns=10,
        failovers=1,
        overhead_turns=60,
        lease_seconds=5.0,
    ),
)


class Machine(BaseModel):
    """Where the figures were taken."""

    cpus: int = Field(description="os.cpu_count() (what `nproc` says).")
    cpu_model: str = Field(description="From /proc/cpuinfo.")
    memory_gib: float = Field(description="MemTotal from /proc/meminfo.")
    python: str = Field(description="Python version.")
    platform: str = Field(description="OS and kernel.")
    load_before: tuple[float, float, float] = Field(description="Load average at the start.")
    load_after: tuple[float, float, float] = Field(description="Load average at the end.")


class Results(BaseModel):
    """Everything one run measured."""

    started_at: datetime = Field(description="When the run began (UTC).")
    seconds: float = Field(description="How long the run took.")
    quick: bool = Field(description="Whether the --quick sizes were used.")
    plan: Plan = Field(description="The sizes used.")
    machine: Machine = Field(description="The machine.")
    overhead: OverheadResult | None = Field(None, description="Turn overhead.")
    fanout: list[FanoutResult] = Field(default_factory=list, description="Fan-out, per N.")
    sessions: list[SessionsResult] = Field(
        default_factory=list, description="Many sessions, per S."
    )
    history: list[HistoryResult] = Field(
        default_factory=list, description="Scale with history, per shape."
    )
    restart: RestartResult | None = Field(None, description="Restart with a full database.")
    cluster: ClusterResult | None = Field(None, description="One node against two.")
    errors: dict[str, str] = Field(default_factory=dict, description="Sections that crashed.")
    load_by_section: dict[str, float] = Field(
        default_factory=dict, description="1-minute load average as each section started."
    )


def _machine(load_before: tuple[float, float, float]) -> Machine:
    model = "unknown"
    memory_kb = 0
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
                break
    return Machine(
        cpus=os.cpu_count() or 0,
        cpu_model=model,
        memory_gib=round(memory_kb / 1024 / 1024, 1),
        python=platform.python_version(),
        platform=platform.platform(),
        load_before=load_before,
        load_after=os.getloadavg(),
    )


async def _run(
    plan: Plan,
    only: set[str],
    profile: Path | None,
    results: Results,
    setup: cluster.Setup,
) -> None:
    def prof(name: str) -> Path | None:
        return profile / name if profile else None

    steps: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []

    async def do_overhead() -> None:
        results.overhead = await overhead.measure(
            turns=plan.overhead_turns,
            latency_ms=plan.overhead_latency_ms,
            profile=prof("overhead.txt"),
        )

    async def do_fanout() -> None:
        for step in plan.fanout:
            # One size that cannot finish in time must not hide the others' figures.
            try:
                results.fanout.append(
                    await fanout.measure(
                        observers=step.observers,
                        turns=step.turns,
                        turn_delay=plan.fanout_turn_delay_s,
                        deadline=plan.fanout_deadline_s,
                        profile=prof(f"fanout-{step.observers}.txt"),
                    )
                )
            except RuntimeError as exc:
                results.errors[f"fanout N={step.observers}"] = str(exc).splitlines()[0]
            _say(f"  fan-out N={step.observers} done")

    async def do_sessions() -> None:
        for step in plan.sessions:
            results.sessions.append(
                await sessions.measure(
                    sessions=step.sessions,
                    window=step.window_s,
                    profile=prof(f"sessions-{step.sessions}.txt"),
                )
            )
            _say(f"  sessions S={step.sessions} done")

    async def do_history() -> None:
        shapes: tuple[history.Shape, ...] = ("summarized", "full")
        for shape in shapes:
            results.history.append(
                await history.measure(
                    shape=shape,
                    short=plan.history_short,
                    long=plan.history_long,
                    turns=plan.history_turns,
                    profile=prof(f"history-{shape}.txt"),
                )
            )

    async def do_restart() -> None:
        results.restart = await restart.measure(
            sessions=plan.restart_sessions, messages=plan.restart_messages
        )

    async def do_cluster() -> None:
        c = plan.cluster
        found = results.cluster = ClusterResult()

        async def throughput() -> None:
            found.throughput = await cluster.measure_throughput(
                setup, sessions_count=c.sessions, window=c.window_s, slots=c.backend_slots
            )

        async def fan_out() -> None:
            found.fanout = await cluster.measure_fanout(
                setup,
                observers=c.observers,
                turns=c.fanout_turns,
                turn_delay=plan.fanout_turn_delay_s,
                deadline=plan.fanout_deadline_s,
            )

        async def failover() -> None:
            found.failover = await cluster.measure_failover(setup, repeats=c.failovers)

        async def postgres() -> None:
            found.overhead = await cluster.measure_overhead(
                setup, turns=c.overhead_turns, latency_ms=plan.overhead_latency_ms
            )

        parts: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("throughput", throughput),
            ("fan-out", fan_out),
            ("failover", failover),
            ("overhead on PostgreSQL", postgres),
        ]
        for name, part in parts:
            # One part that cannot run must not hide the others' figures.
            try:
                await part()
            except Exception as exc:
                results.errors[f"cluster {name}"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                traceback.print_exc()
            _say(f"  cluster {name} done")

    steps = [
        ("overhead", do_overhead),
        ("fanout", do_fanout),
        ("sessions", do_sessions),
        ("history", do_history),
        ("restart", do_restart),
        ("cluster", do_cluster),
    ]
    for name, step in steps:
        if name not in only:
            continue
        results.load_by_section[name] = os.getloadavg()[0]
        _say(f"{name}: running (load average {results.load_by_section[name]:.2f})")
        began = time.monotonic()
        try:
            await step()
        except Exception as exc:
            results.errors[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        _say(f"{name}: {time.monotonic() - began:.0f} s")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _loss_rows(load: LoadResult) -> list[tuple[str, str, str, str]]:
    """The rows of a fan-out's losses: events lost, and streams that closed early."""
    rows = [
        (
            "",
            "events lost (observers that saw session_end)",
            f"{load.events_lost} ({load.completed}/{load.observers})",
            "0",
        )
    ]
    if load.close_reasons:
        rows.append(("", "streams closed early", _reasons(load.close_reasons), ""))
    return rows


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _cluster_rows(c: ClusterResult) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    if c.throughput is not None:
        t = c.throughput
        one, two = t.one_node, t.two_nodes
        rows += [
            (
                f"cluster S={one.sessions}",
                f"turns/s 1 node / 2 nodes ({t.backend_slots} backend slots in all)",
                f"{_f(one.turns_per_second)} / {_f(two.turns_per_second)}",
                "",
            ),
            ("", "2 nodes / 1 node", _f(t.speedup, 2), ">= 1.7"),
            (
                "",
                "fairness max/min turn rate, 1 node / 2 nodes",
                f"{_f(one.fairness, 2)} / {_f(two.fairness, 2)}",
                "<= 1.2",
            ),
            (
                "",
                "CPU % nodes / PostgreSQL+Redis / machine: 1 node; 2 nodes",
                "; ".join(
                    f"{_f(r.server_cpu_percent, 0)} / {_f(r.services_cpu_percent, 0)} / "
                    f"{_f(r.machine_cpu_percent, 0)}"
                    for r in (one, two)
                ),
                "",
            ),
        ]
    if c.fanout is not None:
        f = c.fanout
        d = f.load.delay_ms
        by_server = " / ".join(
            f"{_f(dist.p50)}, {_f(dist.p99)}" for dist in f.load.delay_by_server_ms.values()
        )
        rows += [
            (
                f"cluster fan-out N={f.observers}",
                "delay ms p50 / p99 / max (2 nodes)",
                f"{_f(d.p50)} / {_f(d.p99)} / {_f(d.max)}",
                "",
            ),
            ("", "delay ms p50, p99: owner node / other node", by_server, ""),
            *_loss_rows(f.load),
            (
                "",
                "connect all + told the count, s / server CPU % (all nodes)",
                f"{_f(f.load.connect_seconds)} / {_f(f.server_cpu_percent, 0)}",
                "",
            ),
        ]
    if c.failover is not None:
        fo = c.failover
        each = ", ".join(_f(run.seconds, 2) for run in fo.runs)
        lost = sum(run.events_lost for run in fo.runs)
        resets = sum(run.history_resets for run in fo.runs)
        rows += [
            (
                "cluster failover",
                f"kill to next turn on other node, s (each; median), lease {fo.lease_seconds:g}",
                f"{each}; {_f(fo.median_s, 2)}",
                f"<= {fo.lease_seconds + 1:g} s",
            ),
            ("", "events lost / history resets on the other node", f"{lost} / {resets}", "0"),
        ]
    if c.overhead is not None:
        sq, pg = c.overhead.sqlite, c.overhead.postgres
        rows += [
            (
                "overhead on PostgreSQL",
                f"added ms/turn p50, SQLite / PostgreSQL ({pg.turns} turns)",
                f"{_f(sq.added_p50_ms, 2)} / {_f(pg.added_p50_ms, 2)}",
                "",
            ),
            (
                "",
                "added ms/turn p99, SQLite / PostgreSQL",
                f"{_f(sq.added_p99_ms, 2)} / {_f(pg.added_p99_ms, 2)}",
                "",
            ),
            (
                "",
                "server CPU ms per turn, SQLite / PostgreSQL",
                f"{_f(sq.server_cpu_ms_per_turn, 2)} / {_f(pg.server_cpu_ms_per_turn, 2)}",
                f"synchronous_commit={c.overhead.postgres_synchronous_commit}",
            ),
        ]
    return rows


def table(results: Results) -> str:
    """The figures as a plain-text table, with the issue's targets beside them."""
    rows: list[tuple[str, str, str, str]] = []
    if results.overhead is not None:
        o = results.overhead
        rows += [
            (
                "turn overhead",
                f"added ms/turn p50 ({o.turns} turns, mock {_f(o.mock_latency_ms, 0)} ms)",
                _f(o.added_p50_ms, 2),
                "<= 2 ms",
            ),
            ("", "added ms/turn p99", _f(o.added_p99_ms, 2), ""),
            (
                "",
                "turn ms p50 / direct call ms p50",
                f"{_f(o.session_turn_ms.p50, 2)} / {_f(o.direct_call_ms.p50, 2)}",
                "",
            ),
            ("", "wall ratio session / direct", _f(o.wall_ratio, 3), ""),
            ("", "server CPU ms per turn", _f(o.server_cpu_ms_per_turn, 2), ""),
        ]
    for f in results.fanout:
        d = f.load.delay_ms
        target = "p99 <= 100 ms, 0 lost" if f.observers == 1000 else ""
        rows += [
            (
                f"fan-out N={f.observers}",
                "delay ms p50 / p99 / max",
                f"{_f(d.p50)} / {_f(d.p99)} / {_f(d.max)}",
                target,
            ),
            *_loss_rows(f.load),
            (
                "",
                "server CPU % / RSS MiB (idle, connected, peak)",
                f"{_f(f.server_cpu_percent, 0)} / {_f(f.server_rss_idle_mib, 0)}, "
                f"{_f(f.server_rss_connected_mib, 0)}, {_f(f.server_rss_peak_mib, 0)}",
                "",
            ),
            (
                "",
                "connect all + told the count, s / load CPU s",
                f"{_f(f.load.connect_seconds)} / {_f(f.load.load_cpu_seconds)}",
                "",
            ),
        ]
    for s in results.sessions:
        rows += [
            (
                f"sessions S={s.sessions}",
                "turns/s (LLM_MAX_CONCURRENCY=8)",
                _f(s.turns_per_second),
                "",
            ),
            (
                "",
                "fairness max/min turn rate",
                _f(s.fairness, 2),
                "<= 1.2" if s.sessions == 1000 else "",
            ),
            (
                "",
                "turns per session in window min / p50 / max",
                f"{_f(s.turns_per_session.min, 0)} / {_f(s.turns_per_session.p50, 0)} / "
                f"{_f(s.turns_per_session.max, 0)}",
                "",
            ),
            (
                "",
                "server CPU % / RSS MiB",
                f"{_f(s.server_cpu_percent, 0)} / {_f(s.server_rss_mib, 0)}",
                "",
            ),
        ]
    for h in results.history:
        rows += [
            (
                f"history ({h.shape})",
                f"CPU ms/turn at {h.short.messages} / {h.long.messages} messages",
                f"{_f(h.short.cpu_ms_per_turn, 2)} / {_f(h.long.cpu_ms_per_turn, 2)}",
                "",
            ),
            (
                "",
                "ratio (CPU; wall p50)",
                f"{_f(h.ratio, 2)}; {_f(h.wall_ratio, 2)}",
                "<= 1.2" if h.shape == "summarized" else "O(n) prompt",
            ),
        ]
    if results.restart is not None:
        r = results.restart
        rows += [
            (
                "restart",
                f"start to /healthz, s ({r.sessions} sessions, {r.messages} messages)",
                _f(r.ready_median_s, 2),
                "",
            ),
            (
                "",
                "same without quick_check / empty database, s",
                f"{_f(r.ready_no_quick_check_s, 2)} / {_f(r.ready_empty_s, 2)}",
                "",
            ),
        ]
    if results.cluster is not None:
        rows += _cluster_rows(results.cluster)
    widths = [max(len(row[i]) for row in rows) for i in range(4)] if rows else [0] * 4
    header = ("section", "measure", "value", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    m = results.machine
    lines += [
        "",
        f"machine: {m.cpus} CPUs ({m.cpu_model}), {m.memory_gib} GiB, Python {m.python}; "
        f"load average {m.load_before[0]:.2f} before, {m.load_after[0]:.2f} after",
        "load average as each section started: "
        + ", ".join(f"{name} {load:.2f}" for name, load in results.load_by_section.items()),
    ]
    for name, error in results.errors.items():
        lines.append(f"ERROR in {name}: {error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; 0 unless a section could not run at all."""
    parser = argparse.ArgumentParser(description="Fellowship benchmarks (see docs/performance.md).")
    parser.add_argument("--quick", action="store_true", help="small sizes, for trying things out")
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only this section (repeatable)"
    )
    parser.add_argument("--profile", type=Path, help="write profiles of the server to this folder")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument(
        "--postgres-url",
        default=services.POSTGRES_URL,
        help="PostgreSQL of the cluster section (a schema is made and dropped per run)",
    )
    parser.add_argument(
        "--redis-url",
        default=services.REDIS_URL,
        help="Redis of the cluster section (a key prefix is used and cleared per run)",
    )
    parser.add_argument(
        "--cluster-logs", type=Path, help="keep the cluster nodes' folders (logs) in this folder"
    )
    args = parser.parse_args(argv)
    raise_nofile()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    plan = QUICK if args.quick else FULL
    load_before = os.getloadavg()
    began = time.monotonic()
    results = Results(
        started_at=datetime.now(UTC),
        seconds=0.0,
        quick=args.quick,
        plan=plan,
        machine=_machine(load_before),
    )
    setup = cluster.Setup(
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        lease_seconds=plan.cluster.lease_seconds,
        logs=args.cluster_logs,
    )
    asyncio.run(_run(plan, set(args.only or SECTIONS), args.profile, results, setup))
    results.seconds = time.monotonic() - began
    results.machine = _machine(load_before)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(results.model_dump_json(indent=2) + "\n")
    print(table(results))
    print(f"\nwritten to {args.output}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
