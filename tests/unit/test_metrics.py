"""The engine's metrics: what each recording method adds, the live gauges, the store timing.

End to end against a real server: tests/integration/test_metrics.py.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.hub import LocalHub
from engine.hub.base import CLOSE_TOO_SLOW, Frame
from engine.llm.types import Usage
from engine.metrics import NO_METRICS, LiveState, Metrics, PrometheusMetrics
from engine.store.base import SessionRecord, StorageError, Store
from engine.store.in_memory import MemoryStore
from engine.store.timed import TimedStore

T0 = datetime(2030, 1, 2, tzinfo=UTC)


def values(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by name and sorted labels."""
    text = metrics.exposition().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_default_records_nothing_and_serves_nothing() -> None:
    NO_METRICS.turn_finished("ok")
    NO_METRICS.llm_call("http://x/v1", 1.0, ok=True)
    NO_METRICS.events_delivered(3)
    with NO_METRICS.timed_write("save_session"):
        pass
    assert NO_METRICS.exposition() == b""


def test_each_recording_lands_in_its_family_with_its_labels() -> None:
    metrics = PrometheusMetrics()
    metrics.turn_finished("ok")
    metrics.turn_finished("ok")
    metrics.turn_finished("failed")
    metrics.llm_call("http://llm/v1", 0.3, ok=True)
    metrics.llm_call("http://llm/v1", 7.0, ok=False)
    metrics.llm_error("http://llm/v1", "llm_timeout")
    metrics.llm_retry("http://llm/v1", "llm_server_error")
    metrics.llm_tokens("http://llm/v1", Usage(prompt_tokens=120, completion_tokens=30))
    metrics.llm_tokens("http://llm/v1", None)
    metrics.events_delivered(5)
    metrics.events_delivered(0)
    metrics.member_dropped()
    metrics.orchestrator_decision("tool_call", "speak")
    seen = values(metrics)
    backend = ("backend", "http://llm/v1")
    assert seen[("fellowship_turns_total", (("result", "ok"),))] == 2
    assert seen[("fellowship_turns_total", (("result", "failed"),))] == 1
    assert seen[("fellowship_turns_total", (("result", "cancelled"),))] == 0
    assert seen[("fellowship_llm_call_seconds_count", (backend, ("outcome", "ok")))] == 1
    assert seen[("fellowship_llm_call_seconds_sum", (backend, ("outcome", "error")))] == 7.0
    assert seen[("fellowship_llm_errors_total", (backend, ("code", "llm_timeout")))] == 1
    assert seen[("fellowship_llm_retries_total", (backend, ("code", "llm_server_error")))] == 1
    assert seen[("fellowship_llm_tokens_total", (backend, ("kind", "prompt")))] == 120
    assert seen[("fellowship_llm_tokens_total", (backend, ("kind", "completion")))] == 30
    assert seen[("fellowship_events_delivered_total", ())] == 5
    assert seen[("fellowship_members_dropped_slow_total", ())] == 1
    decision = (("action", "speak"), ("rung", "tool_call"))
    assert seen[("fellowship_orchestrator_decisions_total", decision)] == 1


def test_a_timed_write_that_raises_counts_as_an_error() -> None:
    metrics = PrometheusMetrics()
    with metrics.timed_write("save_events"):
        pass
    with pytest.raises(OSError), metrics.timed_write("save_events"):
        raise OSError("disk full")
    seen = values(metrics)
    operation = (("operation", "save_events"),)
    assert seen[("fellowship_store_write_seconds_count", operation)] == 2
    assert seen[("fellowship_store_write_errors_total", operation)] == 1


def test_gauges_are_read_from_the_live_state_at_each_scrape() -> None:
    metrics = PrometheusMetrics()
    live = LiveState(sessions={"active": 2, "paused": 0, "ended": 1})
    metrics.watch(lambda: live)
    assert values(metrics)[("fellowship_sessions", (("state", "active"),))] == 2
    live = LiveState(sessions={"active": 1}, members={"talker": 1, "observer": 4})
    live.backlog_max, live.backlog_sum = 7, 9
    seen = values(metrics)
    assert seen[("fellowship_sessions", (("state", "active"),))] == 1
    assert seen[("fellowship_members", (("role", "observer"),))] == 4
    assert seen[("fellowship_member_queue_backlog_max", ())] == 7
    assert seen[("fellowship_member_queue_backlog_sum", ())] == 9


def test_two_registries_count_apart() -> None:
    one, two = PrometheusMetrics(), PrometheusMetrics()
    one.member_dropped()
    assert values(one)[("fellowship_members_dropped_slow_total", ())] == 1
    assert values(two)[("fellowship_members_dropped_slow_total", ())] == 0


def test_the_hub_counts_deliveries_and_members_dropped_as_too_slow() -> None:
    metrics = PrometheusMetrics()
    hub = LocalHub(buffer_size=64, member_queue_size=16, metrics=metrics)
    subscriptions = [hub.subscribe(_no_history, since=0) for _ in range(2)]
    for seq in range(1, 11):
        hub._deliver([Frame(seq, "token", "{}")])
    assert values(metrics)[("fellowship_events_delivered_total", ())] == 20
    subscriptions[0].close(CLOSE_TOO_SLOW, drain=False)
    subscriptions[1].close("left", drain=False)
    assert values(metrics)[("fellowship_members_dropped_slow_total", ())] == 1


def _no_history() -> object:
    raise AssertionError("a member joining at seq 0 replays, it gets no history")


async def test_the_timed_store_times_writes_and_passes_reads_through() -> None:
    metrics = PrometheusMetrics()
    store = TimedStore(MemoryStore(), metrics)
    record = SessionRecord(
        id="s1",
        spec_json="{}",
        full_token_hash="f",
        observer_token_hash="o",
        created_at=T0,
    )
    await store.save_session(record)
    assert await store.load_sessions(include_ended=True) == [record]
    with pytest.raises(StorageError):
        await store.save_memory("unknown", "text")
    seen = values(metrics)
    assert seen[("fellowship_store_write_seconds_count", (("operation", "save_session"),))] == 1
    assert seen[("fellowship_store_write_errors_total", (("operation", "save_memory"),))] == 1
    assert not any(
        name.startswith("fellowship_store") and "load" in str(labels) for name, labels in seen
    )


def test_the_timed_store_forwards_every_method_of_the_interface() -> None:
    # A method left to `Store`'s default would bypass the wrapped store's own version.
    methods = {
        name
        for name, member in inspect.getmembers(Store, inspect.isfunction)
        if not name.startswith("_")
    }
    assert methods <= set(vars(TimedStore)), methods - set(vars(TimedStore))
