"""The fan-out hub: ordering, replay, the connect race, slow members."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Protocol

import pytest

from engine.events import BotMessage, HistoryEvent, TalkerMessage
from engine.history import Message
from engine.hub import (
    CLOSE_SESSION_ENDED,
    CLOSE_TOO_SLOW,
    Frame,
    HubOptions,
    LocalHub,
    Persist,
    Subscription,
)
from engine.hub.redis import RedisEvents, RedisHub

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class HubMaker(Protocol):
    def __call__(
        self, buffer: int = 100, queue: int = 100, persist: Persist | None = None
    ) -> LocalHub: ...


@pytest.fixture(params=["local", "redis"])
async def hubs(request: pytest.FixtureRequest) -> AsyncIterator[HubMaker]:
    """Builds the hub under test: `LocalHub`, or the owner's hub of cluster mode.

    Every scenario holds for both: the owner's hub is a `LocalHub` that also publishes
    what it stored. With Redis, the stream is checked at the end: its entries are
    linked one to the next, and every one is a frame a member could be shown.
    """
    if request.param == "local":

        def local(buffer: int = 100, queue: int = 100, persist: Persist | None = None) -> LocalHub:
            return LocalHub(buffer_size=buffer, member_queue_size=queue, persist=persist)

        yield local
        return
    redis_url = request.getfixturevalue("redis_service").url
    events = RedisEvents(redis_url, request.getfixturevalue("redis_prefix"))
    await events.open()
    built: list[RedisHub] = []

    def owner(buffer: int = 100, queue: int = 100, persist: Persist | None = None) -> LocalHub:
        options = HubOptions(
            session_id=f"s{len(built)}", first_seq=0, persist=persist, buffer_size=buffer,
            member_queue_size=queue, now=lambda: datetime.now(UTC),
        )  # fmt: skip
        built.append(events.owner(options))
        return built[-1]

    try:
        yield owner
        await asyncio.gather(*(hub.flushed() for hub in built))
        await events.published()
        for hub in built:
            events_only = [e for e in await events.entries(hub.session_id) if e.frame is not None]
            assert all(e.prev == before.seq for before, e in itertools.pairwise(events_only))
            assert all(e.seq <= hub.durable_seq for e in events_only)
    finally:
        await events.close()


def snapshot() -> HistoryEvent:
    return HistoryEvent(messages=[])


def publish_messages(hub: LocalHub, count: int) -> None:
    for i in range(count):
        hub.publish(BotMessage(bot="Alice", turn=i + 1, content=f"m{i}"))


def drain(sub: Subscription) -> list[Frame]:
    frames = []
    while sub.pending:
        frames.append(sub._frames.popleft())
    return frames


def test_publish_stamps_strictly_increasing_seq_and_ts(hubs: HubMaker) -> None:
    hub = hubs()
    sub = hub.subscribe(snapshot)
    publish_messages(hub, 5)
    frames = drain(sub)[1:]
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5]
    assert all(json.loads(f.data)["ts"] for f in frames)


def test_new_member_first_gets_history_stamped_with_last_seq(hubs: HubMaker) -> None:
    hub = hubs()
    publish_messages(hub, 3)
    sub = hub.subscribe(snapshot)
    first = drain(sub)
    assert [f.type for f in first] == ["history"]
    assert first[0].seq == 3
    hub.publish(TalkerMessage(talker="Dana", talker_id="t", turn=4, content="hi"))
    assert [f.seq for f in drain(sub)] == [4]


def test_since_replays_exactly_the_missed_events(hubs: HubMaker) -> None:
    hub = hubs()
    publish_messages(hub, 10)
    sub = hub.subscribe(snapshot, since=6)
    assert [f.seq for f in drain(sub)] == [7, 8, 9, 10]


def test_since_equal_to_last_seq_replays_nothing(hubs: HubMaker) -> None:
    hub = hubs()
    publish_messages(hub, 4)
    sub = hub.subscribe(snapshot, since=4)
    assert drain(sub) == []


def test_since_older_than_the_buffer_gets_a_fresh_history(hubs: HubMaker) -> None:
    hub = hubs(buffer=5)
    publish_messages(hub, 20)
    sub = hub.subscribe(snapshot, since=3)
    assert [f.type for f in drain(sub)] == ["history"]


def test_since_from_the_future_gets_a_fresh_history(hubs: HubMaker) -> None:
    hub = hubs()
    publish_messages(hub, 2)
    sub = hub.subscribe(snapshot, since=99)
    assert [f.type for f in drain(sub)] == ["history"]


def test_replay_at_buffer_edge_is_complete(hubs: HubMaker) -> None:
    hub = hubs(buffer=5)
    publish_messages(hub, 10)  # buffer holds 6..10
    assert [f.seq for f in drain(hub.subscribe(snapshot, since=5))] == [6, 7, 8, 9, 10]
    assert [f.type for f in drain(hub.subscribe(snapshot, since=4))] == ["history"]


def test_slow_member_is_dropped_and_others_keep_everything(hubs: HubMaker) -> None:
    hub = hubs(queue=10)
    slow = hub.subscribe(snapshot)
    fast = hub.subscribe(snapshot)
    assert [f.type for f in drain(fast)] == ["history"]
    received: list[int] = []
    for i in range(100):
        hub.publish(BotMessage(bot="A", turn=i + 1, content="x"))
        received.extend(f.seq for f in drain(fast))
    assert slow.closed and slow.close_reason == CLOSE_TOO_SLOW
    assert slow.pending == 0
    assert received == list(range(1, 101))
    assert hub.member_count == 1


async def test_member_connecting_while_events_flow_sees_no_gap_or_duplicate(hubs: HubMaker) -> None:
    hub = hubs(buffer=1000, queue=10000)
    seen: list[int] = []

    async def producer() -> None:
        for i in range(300):
            hub.publish(BotMessage(bot="A", turn=i + 1, content="x"))
            if i % 7 == 0:
                await asyncio.sleep(0)

    async def consumer() -> None:
        await asyncio.sleep(0)
        sub = hub.subscribe(snapshot)
        start = None
        async for frame in sub:
            if frame.type == "history":
                start = frame.seq
                continue
            seen.append(frame.seq)
            if frame.seq == 300:
                break
        assert start is not None
        assert seen == list(range(start + 1, 301))

    await asyncio.gather(producer(), consumer())


async def test_close_delivers_queued_frames_then_ends(hubs: HubMaker) -> None:
    hub = hubs()
    sub = hub.subscribe(snapshot)
    publish_messages(hub, 3)
    hub.close()
    frames = [f async for f in sub]
    assert [f.type for f in frames] == ["history", "bot_message", "bot_message", "bot_message"]
    assert sub.close_reason == CLOSE_SESSION_ENDED


def test_subscribing_to_a_closed_hub_gets_history_then_the_end(hubs: HubMaker) -> None:
    hub = hubs()
    publish_messages(hub, 2)
    hub.close()
    sub = hub.subscribe(snapshot)
    assert sub.closed
    assert [f.type for f in drain(sub)] == ["history"]


# --- events stored before they are delivered ---------------------------------------------------


class GatedStore:
    """A `persist` function that records every write and lets the test decide when it ends."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.messages: list[Message] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.reached = asyncio.Event()  # a write got to the store (and waits if gated)
        self.fail: Exception | None = None

    async def __call__(self, frames: list[Frame], messages: list[Message]) -> None:
        self.reached.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.frames.extend(frames)
        self.messages.extend(messages)


def message(turn: int) -> Message:
    return Message(turn=turn, kind="talker", speaker="Dana", content=f"m{turn}", ts=T0)


async def test_an_event_reaches_members_only_once_it_is_stored(hubs: HubMaker) -> None:
    store = GatedStore()
    hub = hubs(persist=store)
    sub = hub.subscribe(snapshot)
    drain(sub)
    store.gate.clear()
    hub.publish(BotMessage(bot="A", turn=1, content="x"))
    await store.reached.wait()
    assert sub.pending == 0 and store.frames == [] and hub.durable_seq == 0
    store.gate.set()
    await hub.flushed()
    assert [f.seq for f in store.frames] == [f.seq for f in drain(sub)] == [1]
    assert hub.durable_seq == 1


async def test_a_history_taken_while_events_are_written_waits_for_them(hubs: HubMaker) -> None:
    store = GatedStore()
    hub = hubs(persist=store)
    store.gate.clear()
    publish_messages(hub, 2)
    sub = hub.subscribe(snapshot)  # covers seq 1..2, which are not stored yet
    hub.publish(BotMessage(bot="A", turn=3, content="x"))
    await store.reached.wait()
    assert sub.pending == 0
    store.gate.set()
    await hub.flushed()
    assert [(f.type, f.seq) for f in drain(sub)] == [("history", 2), ("bot_message", 3)]


async def test_a_commit_stores_its_message_with_its_events_in_one_write(hubs: HubMaker) -> None:
    store = GatedStore()
    hub = hubs(persist=store)
    sub = hub.subscribe(snapshot)
    drain(sub)
    hub.publish(BotMessage(bot="A", turn=1, content="state"))
    event = TalkerMessage(talker="Dana", talker_id="t", turn=1, content="m1")
    await hub.commit(message(1), [event])
    assert store.messages == [message(1)]
    assert [f.seq for f in store.frames] == [1, 2]
    assert [f.seq for f in drain(sub)] == [1, 2]


async def test_a_failed_commit_raises_and_its_events_are_never_delivered_nor_numbered(
    hubs: HubMaker,
) -> None:
    store = GatedStore()
    hub = hubs(persist=store)
    told: list[Exception] = []
    hub.on_persist_error = told.append
    sub = hub.subscribe(snapshot)
    drain(sub)
    store.fail = OSError("disk full")
    event = TalkerMessage(talker="Dana", talker_id="t", turn=1, content="m1")
    with pytest.raises(OSError):
        await hub.commit(message(1), [event])
    assert drain(sub) == [] and told == []  # the committer was told, and ends the session
    store.fail = None
    hub.publish(BotMessage(bot="A", turn=1, content="next"))
    await hub.flushed()
    assert [(f.type, f.seq) for f in drain(sub)] == [("bot_message", 1)]  # no hole
    store.fail = OSError("disk full")
    hub.publish(BotMessage(bot="A", turn=2, content="the end"))
    await hub.flushed()
    assert [(f.type, f.seq) for f in drain(sub)] == [("bot_message", 2)]  # out regardless
    assert len(told) == 1


async def test_a_cancelled_committer_does_not_take_its_write_back(hubs: HubMaker) -> None:
    store = GatedStore()
    hub = hubs(persist=store)
    store.gate.clear()
    event = TalkerMessage(talker="Dana", talker_id="t", turn=1, content="m1")
    committer = asyncio.create_task(hub.commit(message(1), [event]))
    await store.reached.wait()  # cancelled while its write is in the store's hands
    committer.cancel()
    store.gate.set()
    await hub.flushed()
    assert store.messages == [message(1)] and hub.durable_seq == 1


async def test_close_while_events_are_written_delivers_them_first(hubs: HubMaker) -> None:
    store = GatedStore()
    hub = hubs(persist=store)
    sub = hub.subscribe(snapshot)
    store.gate.clear()
    publish_messages(hub, 3)
    hub.close()
    assert not sub.closed
    store.gate.set()
    frames = [f async for f in sub]
    assert [f.seq for f in frames] == [0, 1, 2, 3]
    assert sub.close_reason == CLOSE_SESSION_ENDED


def test_a_restored_hub_replays_exactly_across_a_hole_in_the_numbering(hubs: HubMaker) -> None:
    hub = hubs(buffer=10)
    stored = [Frame(seq, "bot_message", "{}") for seq in (1, 2, 3, 100004, 100005)]
    hub.restore(stored, recorded_last_seq=100005)
    assert hub.last_seq == hub.durable_seq == 100005
    assert [f.seq for f in drain(hub.subscribe(snapshot, since=2))] == [3, 100004, 100005]
    # A seq inside the hole: exactly what followed it.
    assert [f.seq for f in drain(hub.subscribe(snapshot, since=50))] == [100004, 100005]
    assert drain(hub.subscribe(snapshot, since=100005)) == []
    hub.publish(BotMessage(bot="A", turn=1, content="x"))
    assert hub.last_seq == 100006


def test_a_restored_hub_whose_events_stop_short_answers_with_a_history(hubs: HubMaker) -> None:
    hub = hubs(buffer=10)
    stored = [Frame(seq, "bot_message", "{}") for seq in (1, 2, 3)]
    hub.restore(stored, recorded_last_seq=100003)  # numbers 4..100003 were never stored
    assert hub.last_seq == 100003
    for since in (2, 3, 50):
        assert [f.type for f in drain(hub.subscribe(snapshot, since=since))] == ["history"]
    assert drain(hub.subscribe(snapshot, since=100003)) == []


def test_a_restored_hub_with_trimmed_events_replays_only_from_the_oldest_kept(
    hubs: HubMaker,
) -> None:
    hub = hubs(buffer=3)
    stored = [Frame(seq, "bot_message", "{}") for seq in range(1, 11)]
    hub.restore(stored, recorded_last_seq=10)
    assert [f.seq for f in drain(hub.subscribe(snapshot, since=7))] == [8, 9, 10]
    assert [f.type for f in drain(hub.subscribe(snapshot, since=6))] == ["history"]
