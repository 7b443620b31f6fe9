"""History positions under random interleavings (SPEC §5 invariants)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.history import History, Message
from engine.rectifier import Rectifier, Slot


def now() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


def make(enabled: bool = True) -> Rectifier:
    return Rectifier(History(), enabled=enabled, now=now)


def test_talker_message_during_generation_lands_after_reserved_slot() -> None:
    r = make()
    r.talker("Dana", "t1", "hello", 1)
    slot, reserved = r.dispatch("Alice")
    assert reserved is not None and reserved.turn == 2
    late = r.talker("Dana", "t1", "are you there?", 4)
    reply = r.reply(slot, "yes", 1, None)
    assert (late.turn, reply.turn) == (3, 2)
    assert [m.speaker for m in r.history.messages] == ["Dana", "Alice", "Dana"]


def test_without_rectification_reply_takes_completion_order() -> None:
    r = make(enabled=False)
    slot, reserved = r.dispatch("Alice")
    assert reserved is None and slot.turn is None
    late = r.talker("Dana", "t1", "hi", 1)
    reply = r.reply(slot, "yes", 1, None)
    assert (late.turn, reply.turn) == (1, 2)


def test_failed_slot_becomes_a_tombstone_hidden_from_bots() -> None:
    r = make()
    slot, _ = r.dispatch("Alice")
    tomb = r.fail(slot)
    assert tomb.status == "failed" and tomb.turn == 1
    assert r.history.visible() == []
    assert r.history.tokens == 0


def test_a_reserved_slot_is_filled_exactly_once() -> None:
    r = make()
    slot, _ = r.dispatch("Alice")
    r.reply(slot, "first", 1, None)
    with pytest.raises(ValueError):
        r.reply(slot, "second", 1, None)


def test_context_is_the_history_as_it_stood_at_dispatch() -> None:
    r = make()
    r.talker("Dana", "t1", "before", 1)
    slot, _ = r.dispatch("Alice")
    r.talker("Dana", "t1", "during", 1)
    assert [m.content for m in r.history.visible(slot.context_upto)] == ["before"]


def test_token_total_counts_complete_messages_only() -> None:
    r = make()
    r.talker("Dana", "t1", "a", 3)
    slot, _ = r.dispatch("Alice")
    assert r.history.tokens == 3
    r.reply(slot, "b", 5, None)
    assert r.history.tokens == 8


# An operation is one of: a talker message, a dispatch, a reply or failure of the
# slot in flight. Pauses and ends only stop dispatching, which the generator covers
# by simply not dispatching.
operations = st.lists(
    st.sampled_from(["talk", "dispatch", "reply", "fail"]), min_size=1, max_size=60
)


@settings(max_examples=300, deadline=None)
@given(ops=operations, enabled=st.booleans())
def test_positions_stay_unique_gapless_and_each_slot_is_settled_once(
    ops: list[str], enabled: bool
) -> None:
    r = make(enabled)
    in_flight: Slot | None = None
    settled: dict[int, str] = {}
    seen_at_dispatch: dict[int, list[int]] = {}
    for op in ops:
        if op == "talk":
            r.talker("Dana", "t1", "x", 1)
        elif op == "dispatch" and in_flight is None:
            in_flight, _ = r.dispatch("Alice")
            seen_at_dispatch[id(in_flight)] = [m.turn for m in r.history.visible()]
        elif op in ("reply", "fail") and in_flight is not None:
            context = [m.turn for m in r.history.visible(in_flight.context_upto)]
            assert context == seen_at_dispatch[id(in_flight)]
            message = r.reply(in_flight, "y", 1, None) if op == "reply" else r.fail(in_flight)
            assert message.turn not in settled
            settled[message.turn] = message.status
            in_flight = None
    turns = [m.turn for m in r.history.messages]
    assert turns == list(range(1, len(turns) + 1))
    reserved = [m for m in r.history.messages if m.status == "reserved"]
    assert len(reserved) == (1 if in_flight is not None and enabled else 0)
    assert r.history.tokens == sum(m.tokens for m in r.history.messages if m.status == "complete")
    assert all(
        m.status == "failed"
        for m in r.history.messages
        if m.turn in settled and settled[m.turn] == "failed"
    )


def test_history_refuses_a_position_out_of_order() -> None:
    history = History()
    with pytest.raises(ValueError):
        history.append(Message(turn=2, kind="talker", speaker="D", ts=now()))


def test_a_slot_abandoned_at_restart_becomes_a_tombstone_in_its_place() -> None:
    r = make()
    _, reserved = r.dispatch("Alice")
    assert reserved is not None
    late = r.talker("Dana", "t1", "hello?", 2)
    tomb = r.abandon(reserved)
    assert (tomb.turn, tomb.speaker, tomb.status, tomb.content) == (1, "Alice", "failed", "")
    assert tomb.ts == reserved.ts
    assert [m.status for m in r.history.messages] == ["failed", "complete"]
    assert r.history.pending_reserved() == [] and late.turn == 2
