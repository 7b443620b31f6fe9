"""Presence: talkers announced one by one, observers counted in coalesced `presence` events."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.events import (
    BaseEvent,
    HistoryEvent,
    MemberJoined,
    MemberLeft,
    PresenceEvent,
    parse_event,
)
from engine.manager import Handle, SessionManager
from engine.presence import PRESENCE_INTERVAL, PresenceAnnouncer
from engine.session import Member
from engine.status import MemberCounts
from engine.store.in_memory import MemoryStore
from tests.support.clock import ManualClock
from tests.support.engine import make_settings, spec

# Reactive sessions that nobody talks to: the LLM is never called.
UNUSED_BACKEND = "http://127.0.0.1:9/v1"


# --- the announcer alone ----------


class Room:
    """The counts an announcer reads, and what it emitted."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.observers = 0
        self.sent: list[PresenceEvent] = []
        self.sent_at: list[float] = []  # the clock's elapsed seconds at each event
        self.announcer = PresenceAnnouncer(count=self.count, emit=self.emit, clock=clock)

    def count(self) -> MemberCounts:
        return MemberCounts(talkers=[], observers=self.observers)

    def emit(self, event: BaseEvent) -> None:
        assert isinstance(event, PresenceEvent)
        self.sent.append(event)
        self.sent_at.append(self.clock.elapsed)

    def arrive(self, n: int = 1) -> None:
        for _ in range(n):
            self.observers += 1
            self.announcer.changed()

    def depart(self) -> None:
        self.observers -= 1
        self.announcer.changed()


def test_the_first_change_goes_out_at_once_and_the_rest_of_the_second_as_one_event() -> None:
    clock = ManualClock()
    room = Room(clock)
    room.arrive()
    assert [e.observers for e in room.sent] == [1]
    clock.advance(0.25)
    room.arrive(99)
    clock.advance(0.5)
    assert [e.observers for e in room.sent] == [1]  # the second is not over yet
    clock.advance(0.25)
    assert [e.observers for e in room.sent] == [1, 100]


def test_a_steady_stream_of_arrivals_is_announced_at_most_once_per_interval() -> None:
    clock = ManualClock()
    room = Room(clock)
    for _ in range(35):  # one arrival every 0.1 s for 3.5 s
        room.arrive()
        clock.advance(0.1)
    clock.advance(PRESENCE_INTERVAL)
    gaps = [later - earlier for earlier, later in itertools.pairwise(room.sent_at)]
    assert all(gap >= PRESENCE_INTERVAL - 1e-9 for gap in gaps), room.sent_at
    assert len(room.sent) == 5  # at 0, 1, 2, 3, and 4 s for the last arrivals
    assert room.sent[-1].observers == 35


def test_changes_that_cancel_out_send_nothing_and_the_last_event_tells_the_truth() -> None:
    clock = ManualClock()
    room = Room(clock)
    room.arrive()
    room.arrive()
    room.depart()  # back to 1, what was announced
    clock.advance(PRESENCE_INTERVAL)
    assert [e.observers for e in room.sent] == [1]
    room.depart()
    assert [e.observers for e in room.sent] == [1, 0]  # a quiet second passed: at once


def test_stop_cancels_the_pending_announcement_and_ignores_later_changes() -> None:
    clock = ManualClock()
    room = Room(clock)
    room.arrive()
    room.arrive()
    assert room.announcer.scheduled
    room.announcer.stop()
    assert clock.pending == 0
    room.arrive()
    clock.advance(10 * PRESENCE_INTERVAL)
    assert [e.observers for e in room.sent] == [1]


# --- through a session ----------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def manager(tmp_path: Path, clock: ManualClock) -> AsyncIterator[SessionManager]:
    settings = make_settings(tmp_path, UNUSED_BACKEND)
    manager = SessionManager(settings, store=MemoryStore(), clock=clock, housekeeping_interval=3600)
    await manager.start()
    yield manager
    await manager.close()


async def reactive(manager: SessionManager) -> Handle:
    return manager.open((await manager.create(spec(["Ada"], participation="reactive"))).token)


async def received(handle: Handle, member: Member) -> list[BaseEvent]:
    """Every event that reached `member` so far (after the writes under way are stored)."""
    await handle.session.hub.flushed()
    return [parse_event(frame.data) for frame in member.subscription.take()]


def presences(events: list[BaseEvent]) -> list[tuple[list[str], int]]:
    """The talkers and observer count of every `presence` event, in order."""
    return [(e.talkers, e.observers) for e in events if isinstance(e, PresenceEvent)]


def arrivals(
    events: list[BaseEvent], kind: type[MemberJoined | MemberLeft]
) -> list[tuple[str, str | None]]:
    """Role and name of every `member_joined` (or `member_left`) event, in order."""
    return [(e.role, e.name) for e in events if isinstance(e, kind)]


async def test_fifty_observers_joining_within_a_second_give_one_presence_with_the_final_count(
    manager: SessionManager, clock: ManualClock
) -> None:
    handle = await reactive(manager)
    first = manager.connect(handle, "observer", "first", None)
    others = [manager.connect(handle, "observer", f"o{i}", None) for i in range(49)]
    clock.advance(PRESENCE_INTERVAL)

    seen = await received(handle, first)
    assert arrivals(seen, MemberJoined) == []
    assert presences(seen) == [([], 1), ([], 50)]
    last = await received(handle, others[-1])
    assert isinstance(last[0], HistoryEvent)
    assert last[0].presence.observers == 50  # it counts itself already
    assert presences(last) == [([], 50)]


async def test_an_observer_leaving_is_counted_not_announced(
    manager: SessionManager, clock: ManualClock
) -> None:
    handle = await reactive(manager)
    stays = manager.connect(handle, "observer", None, None)
    leaves = manager.connect(handle, "observer", None, None)
    clock.advance(PRESENCE_INTERVAL)
    manager.disconnect(handle, leaves)
    clock.advance(PRESENCE_INTERVAL)

    seen = await received(handle, stays)
    assert arrivals(seen, MemberLeft) == []
    assert presences(seen) == [([], 1), ([], 2), ([], 1)]


async def test_a_talker_joining_and_leaving_is_still_announced_by_name(
    manager: SessionManager, clock: ManualClock
) -> None:
    handle = await reactive(manager)
    watcher = manager.connect(handle, "observer", None, None)
    clock.advance(PRESENCE_INTERVAL)
    talker = manager.connect(handle, "talker", "Dana", None)
    clock.advance(PRESENCE_INTERVAL)
    manager.disconnect(handle, talker)
    clock.advance(PRESENCE_INTERVAL)

    seen = await received(handle, watcher)
    assert arrivals(seen, MemberJoined) == [("talker", "Dana")]
    assert arrivals(seen, MemberLeft) == [("talker", "Dana")]
    assert presences(seen) == [([], 1), (["Dana"], 1), ([], 1)]


async def test_history_carries_the_presence_with_the_new_member_counted(
    manager: SessionManager, clock: ManualClock
) -> None:
    handle = await reactive(manager)
    manager.connect(handle, "talker", "Dana", None)
    manager.connect(handle, "observer", None, None)
    newcomer = manager.connect(handle, "observer", None, None)

    history = (await received(handle, newcomer))[0]
    assert isinstance(history, HistoryEvent)
    assert history.presence == MemberCounts(talkers=["Dana"], observers=2)


async def test_a_pending_presence_never_follows_the_end_of_the_session(
    manager: SessionManager, clock: ManualClock
) -> None:
    handle = await reactive(manager)
    watcher = manager.connect(handle, "observer", None, None)
    manager.connect(handle, "observer", None, None)  # within the second: scheduled
    assert clock.pending == 1
    await manager.end(handle)
    assert clock.pending == 0
    clock.advance(10 * PRESENCE_INTERVAL)

    seen = await received(handle, watcher)
    assert seen[-1].type == "session_end"
    assert presences(seen) == [([], 1)]
