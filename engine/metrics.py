"""What the engine counts for operators, served as Prometheus metrics (`GET /metrics`).

`Metrics` is what the engine records through: one typed method per thing worth
counting, each O(1), called where it happens (a turn settled, an LLM call done, a
store write timed, events fanned out). The base class records nothing: it is the
default of `EngineDeps` and of every part built without one, so tests and tools pay
nothing. `PrometheusMetrics` keeps prometheus-client counters and histograms in a
registry of its own — never the library's global one, so several servers in one
process each count their own — and reads the gauges (sessions, members, queue
depths) from the live objects when it is scraped, through a `LiveState` sample the
`SessionManager` takes. Each process serves its own; docs/operations.md lists every
metric with its labels.

Labels never carry a secret or anything a client chooses freely: a backend is named
by its display URL (no user info, query or fragment), and the other labels come from
small fixed sets (outcomes, error codes, store operations, orchestrator rungs).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from engine.llm.limiter import Limiter
    from engine.llm.types import Usage
    from engine.loop import SessionLoop

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of the text exposition format every Prometheus version reads."""

PREFIX: Final = "fellowship"

TurnResult = Literal["ok", "failed", "cancelled"]
"""How a bot turn ended: a reply, a tombstone, or a tombstone because the session ended."""
TURN_RESULTS: Final[tuple[TurnResult, ...]] = ("ok", "failed", "cancelled")

SESSION_STATES: Final = ("active", "paused", "ended")
MEMBER_ROLES: Final = ("talker", "observer")

# LLM calls take from well under a second (the mock, a small local model) to minutes
# (a long reply from a busy server, retries included).
LLM_SECONDS_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
# A store write is a fraction of a millisecond in SQLite's WAL, milliseconds on a
# network database, and seconds only when something is wrong.
STORE_SECONDS_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
)  # fmt: skip


@dataclass(slots=True)
class LimiterSample:
    """One backend's concurrency bound, as seen at a scrape."""

    in_use: int
    waiting: int


@dataclass(slots=True)
class LiveState:
    """The gauges: what this process holds right now."""

    sessions: dict[str, int] = field(default_factory=dict)  # by lifecycle state
    loops: dict[str, int] = field(default_factory=dict)  # by loop state (live sessions)
    members: dict[str, int] = field(default_factory=dict)  # by role
    hub_pending_writes: int = 0  # queued behind each hub's write under way, summed
    backlog_max: int = 0  # frames waiting in the fullest member queue
    backlog_sum: int = 0  # frames waiting in every member queue
    limiters: dict[str, LimiterSample] = field(default_factory=dict)  # by backend


def sample_live(loops: Iterable[SessionLoop], limiters: dict[str, Limiter]) -> LiveState:
    """The gauges from the session loops a process holds and its backends' limiters."""
    state = LiveState(
        sessions=dict.fromkeys(SESSION_STATES, 0), members=dict.fromkeys(MEMBER_ROLES, 0)
    )
    for loop in loops:
        state.sessions[loop.state] = state.sessions.get(loop.state, 0) + 1
        if loop.state == "ended":
            continue
        state.loops[loop.loop_state] = state.loops.get(loop.loop_state, 0) + 1
        session = loop.session
        state.hub_pending_writes += session.hub.pending_writes
        for member in session.members.values():
            state.members[member.role] = state.members.get(member.role, 0) + 1
            backlog = member.subscription.pending
            state.backlog_sum += backlog
            state.backlog_max = max(state.backlog_max, backlog)
    state.limiters = {
        backend: LimiterSample(in_use=limiter.in_use, waiting=limiter.waiting)
        for backend, limiter in limiters.items()
    }
    return state


class Metrics:
    """The engine's recording interface; this base records nothing (see `NO_METRICS`)."""

    def turn_finished(self, result: TurnResult) -> None:
        """A bot turn settled its slot."""

    def llm_call(self, backend: str, seconds: float, *, ok: bool) -> None:
        """A call reached `backend` and ended after `seconds` (retries and queueing in)."""

    def llm_error(self, backend: str, code: str) -> None:
        """A call to `backend` failed for good with the LLM error `code`."""

    def llm_retry(self, backend: str, code: str) -> None:
        """An attempt to `backend` failed with `code` and is tried again."""

    def llm_tokens(self, backend: str, usage: Usage | None) -> None:
        """Tokens `backend` reported for one call (none when it reported no usage)."""

    def events_delivered(self, count: int) -> None:
        """`count` event frames were queued to members (one per event and member)."""

    def member_dropped(self) -> None:
        """A member fell too far behind and was disconnected."""

    def store_write(self, operation: str, seconds: float, *, ok: bool) -> None:
        """A store write `operation` took `seconds` (and failed unless `ok`)."""

    @contextlib.contextmanager
    def timed_write(self, operation: str) -> Iterator[None]:
        """Time the body as one store write; an exception counts it as failed (a
        cancellation is not the store's doing and is not counted)."""
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self.store_write(operation, time.perf_counter() - started, ok=False)
            raise
        self.store_write(operation, time.perf_counter() - started, ok=True)

    def orchestrator_decision(self, rung: str, action: str) -> None:
        """The orchestrator decided `action` on the ladder's `rung`."""

    def watch(self, live: Callable[[], LiveState]) -> None:
        """Read the gauges from `live()` at every scrape (one source per metrics object)."""

    def exposition(self) -> bytes:
        """Everything recorded, in the Prometheus text format (`CONTENT_TYPE`)."""
        return b""


NO_METRICS: Final = Metrics()
"""Records nothing: the default wherever no metrics are wanted."""


class PrometheusMetrics(Metrics):
    """Metrics kept in a prometheus-client registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=False)
        reg = self.registry
        self._turns = Counter(
            f"{PREFIX}_turns",
            "Bot turns settled, by result: ok (a reply), failed (a tombstone), cancelled "
            "(a tombstone because the session ended during the turn).",
            ["result"],
            registry=reg,
        )
        self._llm_seconds = Histogram(
            f"{PREFIX}_llm_call_seconds",
            "Duration of LLM calls that reached a backend, retries and queueing included.",
            ["backend", "outcome"],
            buckets=LLM_SECONDS_BUCKETS,
            registry=reg,
        )
        self._llm_errors = Counter(
            f"{PREFIX}_llm_errors",
            "LLM calls that failed for good, by backend and error code.",
            ["backend", "code"],
            registry=reg,
        )
        self._llm_retries = Counter(
            f"{PREFIX}_llm_retries",
            "LLM attempts that failed and were tried again, by backend and error code.",
            ["backend", "code"],
            registry=reg,
        )
        self._llm_tokens = Counter(
            f"{PREFIX}_llm_tokens",
            "Tokens backends reported (prompt or completion), by backend.",
            ["backend", "kind"],
            registry=reg,
        )
        self._delivered = Counter(
            f"{PREFIX}_events_delivered",
            "Event frames queued to members (one per event and member).",
            registry=reg,
        )
        self._dropped = Counter(
            f"{PREFIX}_members_dropped_slow",
            "Members disconnected because they fell too far behind (MEMBER_QUEUE_SIZE).",
            registry=reg,
        )
        self._store_seconds = Histogram(
            f"{PREFIX}_store_write_seconds",
            "Duration of store writes, by operation.",
            ["operation"],
            buckets=STORE_SECONDS_BUCKETS,
            registry=reg,
        )
        self._store_errors = Counter(
            f"{PREFIX}_store_write_errors",
            "Store writes that raised, by operation.",
            ["operation"],
            registry=reg,
        )
        self._decisions = Counter(
            f"{PREFIX}_orchestrator_decisions",
            "Orchestrator decisions, by the rung of the fallback ladder that gave them "
            "and the action decided.",
            ["rung", "action"],
            registry=reg,
        )
        self._turn_counters = {result: self._turns.labels(result) for result in TURN_RESULTS}

    def turn_finished(self, result: TurnResult) -> None:
        self._turn_counters[result].inc()

    def llm_call(self, backend: str, seconds: float, *, ok: bool) -> None:
        self._llm_seconds.labels(backend, "ok" if ok else "error").observe(seconds)

    def llm_error(self, backend: str, code: str) -> None:
        self._llm_errors.labels(backend, code).inc()

    def llm_retry(self, backend: str, code: str) -> None:
        self._llm_retries.labels(backend, code).inc()

    def llm_tokens(self, backend: str, usage: Usage | None) -> None:
        if usage is not None:
            self._llm_tokens.labels(backend, "prompt").inc(usage.prompt_tokens)
            self._llm_tokens.labels(backend, "completion").inc(usage.completion_tokens)

    def events_delivered(self, count: int) -> None:
        if count:
            self._delivered.inc(count)

    def member_dropped(self) -> None:
        self._dropped.inc()

    def store_write(self, operation: str, seconds: float, *, ok: bool) -> None:
        self._store_seconds.labels(operation).observe(seconds)
        if not ok:
            self._store_errors.labels(operation).inc()

    def orchestrator_decision(self, rung: str, action: str) -> None:
        self._decisions.labels(rung, action).inc()

    def watch(self, live: Callable[[], LiveState]) -> None:
        self.registry.register(_LiveCollector(live))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    """The gauges, read from the live objects at each scrape (a prometheus Collector)."""

    def __init__(self, live: Callable[[], LiveState]) -> None:
        self._live = live

    def collect(self) -> Iterable[Metric]:
        state = self._live()
        sessions = GaugeMetricFamily(
            f"{PREFIX}_sessions",
            "Sessions this process holds, by state (ended ones until ENDED_RETENTION_SECONDS).",
            labels=["state"],
        )
        for name, count in state.sessions.items():
            sessions.add_metric([name], count)
        loops = GaugeMetricFamily(
            f"{PREFIX}_session_loops",
            "Sessions not ended, by what their loop is doing.",
            labels=["loop_state"],
        )
        for name, count in state.loops.items():
            loops.add_metric([name], count)
        members = GaugeMetricFamily(
            f"{PREFIX}_members", "Connected members, by role.", labels=["role"]
        )
        for role, count in state.members.items():
            members.add_metric([role], count)
        in_use = GaugeMetricFamily(
            f"{PREFIX}_llm_slots_in_use",
            "LLM calls holding a concurrency slot, by backend (LLM_MAX_CONCURRENCY).",
            labels=["backend"],
        )
        waiting = GaugeMetricFamily(
            f"{PREFIX}_llm_slots_waiting",
            "LLM calls queued for a concurrency slot, by backend.",
            labels=["backend"],
        )
        for backend, sample in state.limiters.items():
            in_use.add_metric([backend], sample.in_use)
            waiting.add_metric([backend], sample.waiting)
        yield sessions
        yield loops
        yield members
        yield in_use
        yield waiting
        yield GaugeMetricFamily(
            f"{PREFIX}_hub_pending_writes",
            "Event writes queued behind the one each session's hub has under way, summed.",
            value=state.hub_pending_writes,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_member_queue_backlog_max",
            "Frames waiting in the fullest member queue.",
            value=state.backlog_max,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_member_queue_backlog_sum",
            "Frames waiting in every member queue together.",
            value=state.backlog_sum,
        )
