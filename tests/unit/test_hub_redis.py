"""Cluster mode's hubs on a real Redis: an owner, followers on other "nodes", one store.

Each node is a `RedisEvents` of its own (its own connections), all in this process and
on the test's own key prefix; the store is SQLite in the test's folder, as the owner
and every follower would share PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from engine.errors import NotOwner
from engine.events import BotMessage, HistoryEvent, TalkerMessage, parse_event
from engine.history import Message
from engine.hub import (
    CLOSE_RECONNECT,
    CLOSE_SESSION_ENDED,
    CLOSE_SHUTDOWN,
    Frame,
    HubOptions,
    Subscription,
)
from engine.hub import redis as redis_hub
from engine.hub.redis import RedisEvents, RedisHub
from engine.store.base import EventRecord, SessionRecord
from engine.store.sqlite import SqliteStore
from tests.support.services import Redis as RedisService

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SID = "s1"
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@dataclass
class Cluster:
    """The shared parts: the store, where Redis is, and the test's key prefix."""

    store: SqliteStore
    url: str
    prefix: str
    keep_last: int = 1000  # events the store keeps (EVENT_BUFFER_SIZE)
    buffer: int = 100  # each hub's replay buffer and the stream's length

    async def persist(self, frames: list[Frame], messages: list[Message]) -> None:
        records = [EventRecord(seq=f.seq, type=f.type, data=f.data) for f in frames]
        await self.store.save_events(SID, records, messages=messages, keep_last=self.keep_last)

    async def load(self, after: int) -> list[Frame]:
        stored = await self.store.load_events(SID, after_seq=after)
        return [Frame(e.seq, e.type, e.data) for e in stored]

    def options(self, first_seq: int = 0) -> HubOptions:
        return HubOptions(
            session_id=SID, first_seq=first_seq, persist=self.persist, buffer_size=self.buffer,
            member_queue_size=10_000, now=lambda: T0,
        )  # fmt: skip


@pytest.fixture
async def cluster(
    tmp_path: Path, redis_service: RedisService, redis_prefix: str
) -> AsyncIterator[Cluster]:
    store = SqliteStore(tmp_path / "f.db")
    await store.open()
    record = SessionRecord(
        id=SID, spec_json="{}", full_token_hash="f", observer_token_hash="o", created_at=T0
    )
    await store.save_session(record)
    try:
        yield Cluster(store, redis_service.url, redis_prefix)
    finally:
        await store.close()


Nodes = Callable[..., Awaitable[RedisEvents]]


@pytest.fixture
async def nodes(cluster: Cluster) -> AsyncIterator[Nodes]:
    """Starts a node's link to Redis (`await await nodes()`, or `nodes(url=...)`); closed after."""
    started: list[RedisEvents] = []

    async def node(url: str | None = None) -> RedisEvents:
        events = RedisEvents(url or cluster.url, cluster.prefix)
        await events.open()
        started.append(events)
        return events

    yield node
    for events in started:
        await events.close()


def snapshot() -> HistoryEvent:
    return HistoryEvent(messages=[])


def message(turn: int) -> Message:
    return Message(turn=turn, kind="talker", speaker="Dana", content=f"m{turn}", ts=T0)


async def say(owner: RedisHub, turn: int) -> None:
    event = TalkerMessage(talker="Dana", talker_id="t", turn=turn, content=f"m{turn}")
    await owner.commit(message(turn), [event])


def chatter(owner: RedisHub, count: int) -> None:
    for i in range(count):
        owner.publish(BotMessage(bot="A", turn=i + 1, content=f"x{i}"))


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def collect(frames: list[Frame], sub: Subscription) -> None:
    frames.extend(sub.take())


async def kill_reader(url: str, events: RedisEvents) -> None:
    """Drop the reader's connection from the server's side, as a network blip would."""
    admin = Redis.from_url(url)
    try:
        clients = await admin.client_list()
        ids = [c["id"] for c in clients if c.get("name") == events.reader_name]
        for client_id in ids:
            await admin.client_kill_filter(_id=client_id)
    finally:
        await admin.aclose()


@pytest.fixture
def quick_future_wait(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(redis_hub, "FUTURE_SINCE_WAIT", 0.2)
    yield


# --- delivery across nodes ----------------------------------------------------------------------


async def test_followers_get_every_stored_event_in_order_exactly_once(
    cluster: Cluster, nodes: Nodes
) -> None:
    a, b, c = await nodes(), await nodes(), await nodes()
    owner = a.owner(cluster.options())
    followers = [await node.follow(cluster.options(), cluster.load) for node in (b, c)]
    here = owner.subscribe(snapshot)
    there = [f.subscribe(snapshot) for f in followers]
    for turn in range(1, 41):
        chatter(owner, 3)
        await say(owner, turn)
    await owner.flushed()
    await until(lambda: all(f.durable_seq == owner.durable_seq for f in followers))
    expected = here.take()
    assert [f.seq for f in expected] == list(range(161))  # the history, then 1..160
    for sub in there:
        got = sub.take()
        assert [(f.seq, f.type, f.data) for f in got[1:]] == [
            (f.seq, f.type, f.data) for f in expected[1:]
        ]
        assert got[0].type == "history" and got[0].seq == 0


async def test_a_follower_cannot_publish_nor_commit(cluster: Cluster, nodes: Nodes) -> None:
    follower = await (await nodes()).follow(cluster.options(), cluster.load)
    with pytest.raises(NotOwner):
        follower.publish(BotMessage(bot="A", turn=1, content="x"))
    with pytest.raises(NotOwner):
        await follower.commit(message(1), [])


async def test_a_follower_started_late_replays_since_exactly_from_the_store(
    cluster: Cluster, nodes: Nodes
) -> None:
    a, b = await nodes(), await nodes()
    owner = a.owner(cluster.options())
    for turn in range(1, 21):
        await say(owner, turn)
    follower = await b.follow(cluster.options(), cluster.load)
    assert follower.durable_seq == 20
    assert [f.seq for f in follower.subscribe(snapshot, since=12).take()] == list(range(13, 21))
    assert [f.type for f in follower.subscribe(snapshot).take()] == ["history"]
    await say(owner, 21)
    sub = follower.subscribe(snapshot, since=20)
    await until(lambda: follower.durable_seq == 21)
    assert [f.seq for f in sub.take()] == [21]


async def test_a_since_the_follower_has_not_received_yet_waits_for_it(
    cluster: Cluster, nodes: Nodes, quick_future_wait: None
) -> None:
    a, b = await nodes(), await nodes()
    owner = a.owner(cluster.options())
    follower = await b.follow(cluster.options(), cluster.load)
    # Stored on the owner, not yet read by the follower: what a member that moved from
    # the owner's node to this one a moment ago has seen.
    b.unregister(follower)
    for turn in range(1, 6):
        await say(owner, turn)
    sub = follower.subscribe(snapshot, since=3)
    bogus = follower.subscribe(snapshot, since=999)
    assert sub.pending == 0 and follower.member_count == 2
    b._register(follower)
    await until(lambda: follower.durable_seq == 5)
    assert [f.seq for f in sub.take()] == [4, 5]
    await until(lambda: bogus.pending > 0)
    assert [(f.type, f.seq) for f in bogus.take()] == [("history", 5)]


async def test_the_end_reaches_followers_after_the_last_event(
    cluster: Cluster, nodes: Nodes
) -> None:
    a, b = await nodes(), await nodes()
    owner = a.owner(cluster.options())
    follower = await b.follow(cluster.options(), cluster.load)
    sub = follower.subscribe(snapshot)
    await say(owner, 1)
    owner.publish(BotMessage(bot="A", turn=2, content="bye"))
    owner.close()
    frames = [f async for f in sub]
    assert [f.seq for f in frames] == [0, 1, 2]
    assert sub.close_reason == CLOSE_SESSION_ENDED and follower.closed
    late = await b.follow(cluster.options(), cluster.load)
    joined = late.subscribe(snapshot, since=1)
    await until(lambda: joined.closed)
    assert [f.seq for f in joined.take()] == [2]


async def test_a_node_that_stops_does_not_end_the_session_elsewhere(
    cluster: Cluster, nodes: Nodes
) -> None:
    a, b = await nodes(), await nodes()
    owner = a.owner(cluster.options())
    follower = await b.follow(cluster.options(), cluster.load)
    sub = follower.subscribe(snapshot)
    await say(owner, 1)
    owner.close(CLOSE_SHUTDOWN)
    await owner.flushed()
    await a.published()
    await until(lambda: follower.durable_seq == 1)
    await asyncio.sleep(0.1)
    assert not sub.closed


async def test_a_copy_of_an_ended_session_read_back_announces_nothing(
    cluster: Cluster, nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await nodes(), await nodes()
    owner = a.owner(cluster.options())
    await say(owner, 1)
    owner.close()
    await owner.flushed()
    await a.published()
    before = await a.entries(SID)
    # Another node reads the ended session back to answer a request, then closes it.
    copy = b.owner(cluster.options())
    copy.restore(await cluster.load(0), 1)
    with caplog.at_level(logging.DEBUG, logger="fellowship.hub"):
        copy.close()
        await b.published()
    assert await b.entries(SID) == before
    # Not even an attempt (Redis would refuse it, and the refusal is a warning).
    assert not [r for r in caplog.records if "-1 of" in r.getMessage()]


# --- what goes missing, and how it comes back ---------------------------------------------------


async def test_a_follower_whose_connection_drops_misses_nothing(
    cluster: Cluster, nodes: Nodes
) -> None:
    a, b = await nodes(), await nodes()
    owner = a.owner(cluster.options())
    follower = await b.follow(cluster.options(), cluster.load)
    sub = follower.subscribe(snapshot)
    frames: list[Frame] = []
    for turn in range(1, 31):
        await say(owner, turn)
        if turn % 10 == 0:
            await kill_reader(cluster.url, b)
        collect(frames, sub)
    await until(lambda: follower.durable_seq == 30)
    collect(frames, sub)
    assert [f.seq for f in frames] == list(range(31))
    assert follower.resyncs == 0


async def test_events_redis_never_carried_are_filled_from_the_store(
    cluster: Cluster, nodes: Nodes
) -> None:
    a, b = await nodes(), await nodes()
    owner = a.owner(cluster.options())
    follower = await b.follow(cluster.options(), cluster.load)
    sub = follower.subscribe(snapshot)
    await say(owner, 1)
    await until(lambda: follower.durable_seq == 1)
    working, a.redis = a.redis, Redis.from_url(DEAD_REDIS)  # the owner loses Redis
    for turn in range(2, 6):
        await say(owner, turn)  # still stored and delivered on the owner's node
    await a.published()
    assert a.publish_failing and owner.durable_seq == 5 and follower.durable_seq == 1
    await a.redis.aclose()
    a.redis = working  # back: the next entry's link shows the follower its gap
    await say(owner, 6)
    await until(lambda: follower.durable_seq == 6)
    frames = sub.take()
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4, 5, 6]
    contents = [parse_event(f.data) for f in frames[1:]]
    assert [e.content for e in contents if isinstance(e, TalkerMessage)] == [
        f"m{t}" for t in range(1, 7)
    ]
    assert follower.resyncs == 0


async def test_a_gap_the_store_cannot_fill_sends_members_to_a_fresh_history(
    cluster: Cluster, nodes: Nodes
) -> None:
    cluster.keep_last = 3
    a, b = await nodes(), await nodes()
    owner = a.owner(cluster.options())
    follower = await b.follow(cluster.options(), cluster.load)
    sub = follower.subscribe(snapshot)
    await say(owner, 1)
    await until(lambda: follower.durable_seq == 1)
    working, a.redis = a.redis, Redis.from_url(DEAD_REDIS)
    for turn in range(2, 11):
        await say(owner, turn)  # the store keeps 8..10 only
    await a.published()
    await a.redis.aclose()
    a.redis = working
    await say(owner, 11)
    await until(lambda: sub.closed and follower.durable_seq == 11)
    assert [f.seq for f in sub.take()] == [0, 1]
    assert sub.close_reason == CLOSE_RECONNECT and follower.resyncs == 1
    again = follower.subscribe(snapshot, since=1)  # as the member reconnects
    assert [(f.type, f.seq) for f in again.take()] == [("history", 11)]
    await say(owner, 12)
    await until(lambda: follower.durable_seq == 12)
    assert [f.seq for f in again.take()] == [12]


async def test_without_redis_the_owner_stores_and_delivers_locally(
    cluster: Cluster, nodes: Nodes
) -> None:
    a = await nodes(url=DEAD_REDIS)
    owner = a.owner(cluster.options())
    sub = owner.subscribe(snapshot)
    for turn in range(1, 4):
        await say(owner, turn)
    assert [f.seq for f in sub.take()] == [0, 1, 2, 3]
    assert [f.seq for f in await cluster.load(0)] == [1, 2, 3]
    await a.published()
    assert a.publish_failing


async def test_events_the_store_refused_never_reach_other_nodes(
    cluster: Cluster, nodes: Nodes
) -> None:
    a, b = await nodes(), await nodes()
    store_works = True

    async def persist(frames: list[Frame], messages: list[Message]) -> None:
        if not store_works:
            raise OSError("disk full")
        await cluster.persist(frames, messages)

    owner = a.owner(replace(cluster.options(), persist=persist))
    owner.on_persist_error = lambda exc: None
    follower = await b.follow(cluster.options(), cluster.load)
    here, there = owner.subscribe(snapshot), follower.subscribe(snapshot)
    await say(owner, 1)
    store_works = False
    owner.publish(BotMessage(bot="A", turn=2, content="not stored"))
    await owner.flushed()
    store_works = True
    await say(owner, 2)
    await until(lambda: follower.durable_seq == 3)
    assert [f.seq for f in here.take()] == [0, 1, 2, 3]  # 2 shown here, as on one node
    assert [f.seq for f in there.take()] == [0, 1, 3]  # never elsewhere: no meaning twice


# --- taking a session over ----------------------------------------------------------------------


async def test_a_promoted_follower_keeps_its_members_and_continues_the_numbering(
    cluster: Cluster, nodes: Nodes
) -> None:
    a, b, c = await nodes(), await nodes(), await nodes()
    old = a.owner(cluster.options())
    on_b = await b.follow(cluster.options(), cluster.load)
    on_c = await c.follow(cluster.options(), cluster.load)
    member_b, member_c = on_b.subscribe(snapshot), on_c.subscribe(snapshot)
    for turn in range(1, 4):
        await say(old, turn)
    await until(lambda: on_b.durable_seq == 3)
    working, a.redis = a.redis, Redis.from_url(DEAD_REDIS)
    await say(old, 4)  # stored, and the node dies before publishing them
    await say(old, 5)
    await working.aclose()
    (row,) = await cluster.store.load_sessions(include_ended=True)
    new = await b.promote(on_b, cluster.options(first_seq=row.last_seq))
    assert new.last_seq == 5
    await say(new, 6)
    await until(lambda: on_c.durable_seq == 6)
    assert [f.seq for f in member_b.take()] == [0, 1, 2, 3, 4, 5, 6]
    assert [f.seq for f in member_c.take()] == [0, 1, 2, 3, 4, 5, 6]
    assert not member_b.closed and new.member_count == 1
    member_b.close("left")
    assert new.member_count == 0
    assert json.loads((await cluster.load(5))[0].data)["content"] == "m6"
