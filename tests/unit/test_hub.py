"""The fan-out hub: ordering, replay, the connect race, slow members."""

from __future__ import annotations

import asyncio
import json

from engine.events import BotMessage, HistoryEvent, TalkerMessage
from engine.hub import CLOSE_SESSION_ENDED, CLOSE_TOO_SLOW, EventHub, Frame, Subscription


def make_hub(buffer: int = 100, queue: int = 100) -> EventHub:
    return EventHub(buffer_size=buffer, member_queue_size=queue)


def snapshot() -> HistoryEvent:
    return HistoryEvent(messages=[])


def publish_messages(hub: EventHub, count: int) -> None:
    for i in range(count):
        hub.publish(BotMessage(bot="Alice", turn=i + 1, content=f"m{i}"))


def drain(sub: Subscription) -> list[Frame]:
    frames = []
    while sub.pending:
        frames.append(sub._frames.popleft())
    return frames


def test_publish_stamps_strictly_increasing_seq_and_ts() -> None:
    hub = make_hub()
    frames = [hub.publish(BotMessage(bot="A", turn=i + 1, content="x")) for i in range(5)]
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5]
    assert all(json.loads(f.data)["ts"] for f in frames)


def test_new_member_first_gets_history_stamped_with_last_seq() -> None:
    hub = make_hub()
    publish_messages(hub, 3)
    sub = hub.subscribe(snapshot)
    first = drain(sub)
    assert [f.type for f in first] == ["history"]
    assert first[0].seq == 3
    hub.publish(TalkerMessage(talker="Dana", talker_id="t", turn=4, content="hi"))
    assert [f.seq for f in drain(sub)] == [4]


def test_since_replays_exactly_the_missed_events() -> None:
    hub = make_hub()
    publish_messages(hub, 10)
    sub = hub.subscribe(snapshot, since=6)
    assert [f.seq for f in drain(sub)] == [7, 8, 9, 10]


def test_since_equal_to_last_seq_replays_nothing() -> None:
    hub = make_hub()
    publish_messages(hub, 4)
    sub = hub.subscribe(snapshot, since=4)
    assert drain(sub) == []


def test_since_older_than_the_buffer_gets_a_fresh_history() -> None:
    hub = make_hub(buffer=5)
    publish_messages(hub, 20)
    sub = hub.subscribe(snapshot, since=3)
    assert [f.type for f in drain(sub)] == ["history"]


def test_since_from_the_future_gets_a_fresh_history() -> None:
    hub = make_hub()
    publish_messages(hub, 2)
    sub = hub.subscribe(snapshot, since=99)
    assert [f.type for f in drain(sub)] == ["history"]


def test_replay_at_buffer_edge_is_complete() -> None:
    hub = make_hub(buffer=5)
    publish_messages(hub, 10)  # buffer holds 6..10
    assert [f.seq for f in drain(hub.subscribe(snapshot, since=5))] == [6, 7, 8, 9, 10]
    assert [f.type for f in drain(hub.subscribe(snapshot, since=4))] == ["history"]


def test_slow_member_is_dropped_and_others_keep_everything() -> None:
    hub = make_hub(queue=10)
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


async def test_member_connecting_while_events_flow_sees_no_gap_or_duplicate() -> None:
    hub = make_hub(buffer=1000, queue=10000)
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


async def test_close_delivers_queued_frames_then_ends() -> None:
    hub = make_hub()
    sub = hub.subscribe(snapshot)
    publish_messages(hub, 3)
    hub.close()
    frames = [f async for f in sub]
    assert [f.type for f in frames] == ["history", "bot_message", "bot_message", "bot_message"]
    assert sub.close_reason == CLOSE_SESSION_ENDED


def test_subscribing_to_a_closed_hub_gets_history_then_the_end() -> None:
    hub = make_hub()
    publish_messages(hub, 2)
    hub.close()
    sub = hub.subscribe(snapshot)
    assert sub.closed
    assert [f.type for f in drain(sub)] == ["history"]
