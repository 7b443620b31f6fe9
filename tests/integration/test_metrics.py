"""`GET /metrics` against what happened: a real server, the mock backend, real members.

The scrape is read with prometheus-client's own parser, so what is checked is what a
Prometheus server would store: turns by result, LLM errors by code, tokens, member
gauges, a member dropped as too slow, orchestrator decisions by rung, and the
optional `METRICS_TOKEN`.
"""

from __future__ import annotations

import asyncio
from typing import Any, get_args

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from engine.errors import LLM_REJECTED
from engine.llm.mock import MockLLM, MockReply
from engine.metrics import CONTENT_TYPE
from engine.orchestrator.reading import Rung
from tests.integration.conftest import (
    RunningServer,
    ServerFactory,
    WsMember,
    create_session,
    spec_dict,
    ws_join,
)
from tests.reliability.conftest import raw_connect
from tests.support.engine import WAIT_SECONDS

METRICS_TOKEN = "metrics-secret-for-the-test"
POLL_SECONDS = 0.05  # how often a condition is checked again, not a timed wait
BIG_CONTEXT = 1_000_000  # the slow consumer's session ends by DELETE, never by context


class Scrape:
    """One parsed scrape: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: list[Sample] = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sample `name` whose labels include `labels` (0 when there is none)."""
        found = [s.value for s in self.samples if s.name == name and _has(s, labels)]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else 0.0

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample `name` whose labels include `labels`."""
        return sum(s.value for s in self.samples if s.name == name and _has(s, labels))

    def labels(self, name: str, label: str) -> set[str]:
        """The values `label` takes among the samples `name`."""
        return {s.labels[label] for s in self.samples if s.name == name}


def _has(sample: Sample, labels: dict[str, str]) -> bool:
    return all(sample.labels.get(k) == v for k, v in labels.items())


async def scrape(client: httpx.AsyncClient, **headers: str) -> Scrape:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    return Scrape(response.text)


async def settled(member: WsMember, turns: int) -> list[dict[str, Any]]:
    """The first `turns` turn_end events this member saw (waiting for them)."""
    return (await member.wait_type("turn_end", turns))[:turns]


async def test_metrics_count_the_turns_errors_tokens_and_members_of_a_session(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM, members: list[WsMember]
) -> None:
    created = await create_session(client, spec_dict(["Alice", "Bob"], participation="reactive"))
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    watchers = [await ws_join(server, created["observer_token"]) for _ in range(2)]
    members.extend([talker, *watchers])
    await talker.say("Hello, both of you.")
    await settled(talker, 1)
    mock.enqueue(MockReply(status=400, error_message="this request is refused"))
    await talker.say("Say that again?")
    await settled(talker, 2)
    await talker.say("Once more, then.")
    ends = await settled(talker, 3)
    assert [end["status"] for end in ends] == ["complete", "failed", "complete"]
    for watcher in watchers:
        await watcher.wait_type("turn_end", 3)

    received = sum(len(member.session_events()) for member in [talker, *watchers])
    metrics = await scrape(client)
    assert metrics.value("fellowship_turns_total", result="ok") == 2
    assert metrics.value("fellowship_turns_total", result="failed") == 1
    assert metrics.value("fellowship_turns_total", result="cancelled") == 0
    [backend] = metrics.labels("fellowship_llm_call_seconds_count", "backend")
    assert backend == server.manager.deps.llm.default_backend.display_url
    assert metrics.value("fellowship_llm_errors_total", backend=backend, code=LLM_REJECTED) == 1
    assert metrics.total("fellowship_llm_errors_total") == 1
    calls = metrics.total("fellowship_llm_call_seconds_count")
    assert calls == len(mock.requests) == 3
    assert metrics.value("fellowship_llm_call_seconds_count", outcome="error") == 1
    assert metrics.value("fellowship_llm_tokens_total", kind="prompt") > 0
    assert metrics.value("fellowship_llm_tokens_total", kind="completion") > 0
    assert metrics.value("fellowship_sessions", state="active") == 1
    assert metrics.value("fellowship_sessions", state="paused") == 0
    assert metrics.total("fellowship_session_loops") == 1  # in whichever loop state
    assert metrics.value("fellowship_members", role="talker") == 1
    assert metrics.value("fellowship_members", role="observer") == 2
    # Every event the members received was counted (their history snapshots are not).
    assert metrics.value("fellowship_events_delivered_total") >= received > 0
    assert metrics.value("fellowship_llm_slots_in_use", backend=backend) == 0
    assert metrics.value("fellowship_llm_slots_waiting", backend=backend) == 0
    assert metrics.value("fellowship_hub_pending_writes") == 0
    assert metrics.value("fellowship_member_queue_backlog_max") >= 0
    assert metrics.value("fellowship_store_write_seconds_count", operation="save_events") > 0
    assert metrics.value("fellowship_store_write_seconds_count", operation="save_session") > 0
    assert metrics.total("fellowship_store_write_errors_total") == 0
    assert metrics.total("fellowship_members_dropped_slow_total") == 0

    # Members leave and the session ends: the gauges follow at the next scrape.
    for member in [talker, *watchers]:
        await member.close()
    assert (await client.delete(f"/v1/session/{created['token']}")).status_code == 200
    after = await scrape(client)
    assert after.value("fellowship_sessions", state="active") == 0
    assert after.value("fellowship_sessions", state="ended") == 1
    assert after.total("fellowship_members") == 0


async def test_a_member_dropped_as_too_slow_is_counted(server_factory: ServerFactory) -> None:
    # As in tests/reliability/test_consumers.py: small queues and buffers, so that a
    # consumer that stops reading falls behind within a few hundred events.
    server = await server_factory(member_queue_size=16, listen_sndbuf=4096)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
        spec = spec_dict(participation="autonomous", max_context_tokens=BIG_CONTEXT)
        created = await create_session(client, spec)
        path = f"/v1/session/{created['observer_token']}/connect?name=stuck"
        stuck = await raw_connect(server.port, path, websocket=True, rcvbuf=4096)
        stuck.stop_reading()
        try:
            async with asyncio.timeout(WAIT_SECONDS):
                while True:
                    metrics = await scrape(client)
                    if metrics.value("fellowship_members_dropped_slow_total") >= 1:
                        break
                    await asyncio.sleep(POLL_SECONDS)
        finally:
            stuck.writer.close()
        assert (await client.delete(f"/v1/session/{created['token']}")).status_code == 200
        metrics = await scrape(client)
        assert metrics.value("fellowship_members_dropped_slow_total") == 1
        assert metrics.value("fellowship_members", role="observer") == 0


async def test_orchestrator_decisions_are_counted_by_rung(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    spec = spec_dict(turn_order="orchestrated", participation="autonomous", max_turns=3)
    created = await create_session(client, spec)
    watcher = await ws_join(server, created["observer_token"])
    await watcher.wait_type("session_end")
    await watcher.close()
    metrics = await scrape(client)
    decisions = metrics.total("fellowship_orchestrator_decisions_total")
    assert decisions >= 3  # one before each turn (a last one may have ended the session)
    assert metrics.labels("fellowship_orchestrator_decisions_total", "rung") <= set(get_args(Rung))
    assert metrics.total("fellowship_orchestrator_decisions_total", action="speak") == 3
    assert metrics.value("fellowship_turns_total", result="ok") == 3


async def test_the_metrics_token_is_required_when_set(server_factory: ServerFactory) -> None:
    server = await server_factory(metrics_token=METRICS_TOKEN)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {METRICS_TOKEN}"},
            {"Authorization": METRICS_TOKEN},
            {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        ):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["code"] == "unauthorized"
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert METRICS_TOKEN not in refused.text
        metrics = await scrape(client, Authorization=f"Bearer {METRICS_TOKEN}")
        assert metrics.value("fellowship_sessions", state="active") == 0
        await scrape(client, Authorization=f"bearer {METRICS_TOKEN}")
    logs = "".join(p.read_text() for p in server.settings.log_dir.glob("*") if p.is_file())
    assert METRICS_TOKEN not in logs


async def test_several_servers_in_one_process_count_apart(
    server_factory: ServerFactory,
) -> None:
    first, second = await server_factory(), await server_factory()
    async with (
        httpx.AsyncClient(base_url=first.base_url, timeout=WAIT_SECONDS) as one,
        httpx.AsyncClient(base_url=second.base_url, timeout=WAIT_SECONDS) as two,
    ):
        await create_session(one, participation="reactive")
        assert (await scrape(one)).value("fellowship_sessions", state="active") == 1
        assert (await scrape(two)).value("fellowship_sessions", state="active") == 0
