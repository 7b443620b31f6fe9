"""The session engine end to end: manager → loop → real LLM client → mock backend over loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.errors import Forbidden, InvalidState, TooMany
from engine.llm.mock import MockLLM, MockReply
from engine.llm.mock.models import Fault
from engine.spec.models import SessionSpec
from tests.support.engine import WAIT_SECONDS, spec, watch


async def test_autonomous_round_robin_gives_nine_messages_in_order_then_max_turns(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    created = await manager.create(spec(max_turns=9))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()
    messages = watcher.of_type("bot_message")
    assert [m.turn for m in messages] == list(range(1, 10))
    assert [m.bot for m in messages] == ["Alice", "Bob", "Carol"] * 3
    ends = watcher.of_type("session_end")
    assert [e.reason for e in ends] == ["max_turns"]
    seqs = [e.seq for e in watcher.events[1:]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # Each bot answered what it saw: the mock's reply names the last speaker.
    assert "Alice" in messages[1].content and "answers" in messages[1].content
    assert len(mock.requests) == 9
    history = manager.history(handle)
    assert [m.status for m in history] == ["complete"] * 9


async def test_talker_message_during_generation_lands_after_the_reserved_slot(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    created = await manager.create(spec(["Tutor"], participation="reactive"))
    handle = manager.open(created.token)
    talker = watch(manager, handle, "talker", "Dana")
    mock.enqueue(MockReply(content="Let me think about that.", delay_ms=300))
    await manager.post(handle, talker.member, "What is 2+2?")
    await talker.wait_type("turn_start")
    await manager.post(handle, talker.member, "Also, what is 3+3?")
    await talker.wait_type("bot_message")
    placed = {e.turn: e.type for e in talker.of_type("talker_message", "bot_message")}
    assert placed == {1: "talker_message", 2: "bot_message", 3: "talker_message"}
    assert talker.of_type("turn_start")[0].turn == 2
    # The bot's context was the history at dispatch: only the first question.
    assert "3+3" not in str(mock.requests[0].messages)


async def test_without_rectification_a_talker_message_lands_before_the_reply(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    created = await manager.create(spec(["Tutor"], participation="reactive", rectify_history=False))
    handle = manager.open(created.token)
    talker = watch(manager, handle, "talker", "Dana")
    mock.enqueue(MockReply(content="Thinking.", delay_ms=300))
    await manager.post(handle, talker.member, "first")
    await talker.wait_type("turn_start")
    await manager.post(handle, talker.member, "second")
    await talker.wait_type("bot_message")
    placed = {e.turn: e.type for e in talker.of_type("talker_message", "bot_message")}
    assert placed == {1: "talker_message", 2: "talker_message", 3: "bot_message"}


async def test_reactive_mode_answers_each_batch_with_replies_per_message_turns(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    created = await manager.create(
        spec(["A", "B"], participation="reactive", replies_per_message=2)
    )
    handle = manager.open(created.token)
    talker = watch(manager, handle, "talker", "Dana")
    await manager.post(handle, talker.member, "hello")
    await talker.wait_type("bot_message", 2)
    await talker.wait_for(
        lambda w: any(e.type == "state" and e.state == "awaiting_talker" for e in w.events[-3:])
    )
    assert len(mock.requests) == 2
    await manager.post(handle, talker.member, "again")
    await talker.wait_type("bot_message", 4)
    assert [e.bot for e in talker.of_type("bot_message")] == ["A", "B", "A", "B"]


async def test_two_talkers_sending_at_once_get_distinct_consecutive_positions(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    created = await manager.create(
        spec(["A", "B"], participation="collaborative", max_talkers=2, turn_delay=0.05)
    )
    handle = manager.open(created.token)
    one = watch(manager, handle, "talker", "Dana")
    two = watch(manager, handle, "talker", "Eli")
    placed = await asyncio.gather(
        manager.post(handle, one.member, "from Dana"), manager.post(handle, two.member, "from Eli")
    )
    assert sorted(m.turn for m in placed) == [1, 2]
    await manager.end(handle)


async def test_pause_during_generation_records_the_reply_and_calls_nothing_until_resume(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    created = await manager.create(spec(max_turns=6))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    mock.enqueue(MockReply(content="A slow first reply.", delay_ms=300))
    await watcher.wait_type("turn_start")
    await manager.pause(handle)
    await watcher.wait_type("bot_message")
    await watcher.wait_for(
        lambda w: any(e.type == "state" and e.state == "paused" for e in w.events)
    )
    calls = len(mock.requests)
    await asyncio.sleep(0.2)
    assert len(mock.requests) == calls == 1
    with pytest.raises(InvalidState):
        await manager.pause(handle)
    await manager.resume(handle)
    await watcher.until_closed()
    assert [e.turn for e in watcher.of_type("bot_message")] == list(range(1, 7))
    assert [e.type for e in watcher.of_type("session_paused", "session_resumed")] == [
        "session_paused",
        "session_resumed",
    ]


async def test_a_backend_failing_every_call_leaves_tombstones_and_still_ends_by_max_turns(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    mock.set_handler(lambda request: MockReply(status=500, error_message="boom"))
    created = await manager.create(spec(max_turns=4))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()
    errors = watcher.of_type("error")
    assert [e.turn for e in errors] == [1, 2, 3, 4]
    assert all(e.code == "llm_server_error" for e in errors)
    assert [e.status for e in watcher.of_type("turn_end")] == ["failed"] * 4
    assert [m.status for m in manager.history(handle)] == ["failed"] * 4
    assert watcher.of_type("session_end")[0].reason == "max_turns"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_reply_spoken_as_someone_else_is_asked_for_again_with_a_nudge(
    manager_factory: Any, mock: MockLLM, stream: bool
) -> None:
    manager = await manager_factory()
    mock.enqueue(MockReply(content="Bob: I speak for Bob."))
    mock.enqueue(MockReply(content="I am Alice, thank you."))
    created = await manager.create(spec(max_turns=1, stream_tokens=stream))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()
    assert [m.content for m in manager.history(handle)] == ["I am Alice, thank you."]
    assert watcher.of_type("error") == []
    first, second = mock.requests
    assert "Answer as Alice only" not in first.messages[-1].content
    assert second.messages[:-1] == first.messages[:-1]
    assert second.messages[-1].role == "user"
    assert second.messages[-1].content.endswith(
        "(Answer as Alice only, in your own words, without a name in front.)"
    )
    if stream:
        tokens = "".join(e.token for e in watcher.of_type("token"))
        assert tokens == "I am Alice, thank you."


async def test_a_reply_still_empty_after_the_retries_is_a_tombstone(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory(empty_reply_retries=2)
    mock.set_handler(lambda request: MockReply(content="Carol: me again."))
    created = await manager.create(spec(max_turns=1))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()
    assert len(mock.requests) == 3
    assert [e.code for e in watcher.of_type("error")] == ["empty_reply"]
    assert [m.status for m in manager.history(handle)] == ["failed"]


async def test_max_time_ends_a_session_that_is_waiting(manager_factory: Any, mock: MockLLM) -> None:
    manager = await manager_factory()
    created = await manager.create(spec(["A"], participation="reactive", max_time=0.3))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()
    assert watcher.of_type("session_end")[0].reason == "max_time"


async def test_the_loop_alone_ends_a_paused_session_at_max_time(
    manager_factory: Any, mock: MockLLM
) -> None:
    # Housekeeping is too slow to be the one ending it.
    manager = await manager_factory(housekeeping_interval=3600)
    created = await manager.create(spec(["A"], participation="reactive", max_time=0.3))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await manager.pause(handle)
    await watcher.until_closed()
    assert watcher.of_type("session_end")[0].reason == "max_time"
    assert [e.state for e in watcher.of_type("state")][-1] == "ended"


async def test_max_time_during_a_turn_tombstones_it_and_ends_the_session(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory(housekeeping_interval=3600)
    mock.enqueue(MockReply(content="never finished", delay_ms=5000))
    created = await manager.create(spec(["A"], max_time=0.3))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()
    assert watcher.of_type("session_end")[0].reason == "max_time"
    assert [e.code for e in watcher.of_type("error")] == ["cancelled"]
    assert [m.status for m in manager.history(handle)] == ["failed"]


async def test_idle_session_with_nobody_connected_ends_by_ttl(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    created = await manager.create(spec(["A"], participation="reactive", ttl=1))
    handle = manager.open(created.token)
    await asyncio.wait_for(handle.loop.ended.wait(), WAIT_SECONDS)
    assert handle.session.record.end_reason == "idle_timeout"


async def test_delete_during_generation_tombstones_the_slot_and_ends_once(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    created = await manager.create(spec())
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    mock.enqueue(MockReply(content="never finished", delay_ms=5000))
    await watcher.wait_type("turn_start")
    await manager.end(handle)
    await watcher.until_closed()
    assert [e.reason for e in watcher.of_type("session_end")] == ["client_request"]
    assert [m.status for m in manager.history(handle)] == ["failed"]
    with pytest.raises(InvalidState):
        await manager.end(handle)


async def test_talkers_are_refused_in_autonomous_sessions_and_beyond_max_talkers(
    manager_factory: Any,
) -> None:
    manager = await manager_factory()
    auto = manager.open((await manager.create(spec(max_turns=1))).token)
    with pytest.raises(Forbidden):
        manager.connect(auto, "talker", "Dana", None)
    reactive = manager.open((await manager.create(spec(participation="reactive"))).token)
    manager.connect(reactive, "talker", "Dana", None)
    with pytest.raises(TooMany):
        manager.connect(reactive, "talker", "Eli", None)


async def test_a_member_that_never_reads_does_not_slow_the_others(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory(member_queue_size=20)
    created = await manager.create(spec(max_turns=250, stream_tokens=True))
    handle = manager.open(created.token)
    stuck = manager.connect(handle, "observer", None, None)  # never read
    reader = watch(manager, handle)
    await reader.until_closed()
    assert stuck.subscription.closed and "too slow" in (stuck.subscription.close_reason or "")
    seqs = [e.seq for e in reader.events[1:]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no duplicate
    assert len(reader.of_type("bot_message")) == 250
    assert len(reader.events) > 1000


async def test_streamed_tokens_add_up_to_the_clean_message(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    mock.enqueue(
        MockReply(content="<think>plan it</think>Espresso wins, clearly.\nBob: no it does not")
    )
    created = await manager.create(spec(max_turns=2, stream_tokens=True))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()
    first = watcher.of_type("bot_message")[0]
    assert first.content == "Espresso wins, clearly."
    streamed = "".join(e.token for e in watcher.of_type("token") if e.turn == first.turn)
    assert streamed == first.content
    # Tokens of a turn come between its turn_start and its bot_message.
    types = [e.type for e in watcher.events if getattr(e, "turn", None) == first.turn]
    assert types[0] == "turn_start" and types[-2:] == ["bot_message", "turn_end"]


async def test_without_stream_tokens_only_whole_messages_are_sent(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    created = await manager.create(spec(max_turns=3))
    watcher = watch(manager, manager.open(created.token))
    await watcher.until_closed()
    assert watcher.of_type("token") == []
    assert not any(r.stream for r in mock.requests)


async def test_prompts_follow_the_spec_layout(manager_factory: Any, mock: MockLLM) -> None:
    manager = await manager_factory()
    created = await manager.create(spec(max_turns=3))
    await watch(manager, manager.open(created.token)).until_closed()
    third = mock.requests[2]  # Carol, after Alice and Bob
    roles = [m.role for m in third.messages]
    assert roles[0] == "system" and roles.count("system") == 1
    assert roles[1] == "user"
    assert "You are Carol." in third.messages[0].content
    assert "You are Alice" not in third.messages[0].content  # no foreign system prompt
    assert third.messages[1].content.startswith("Alice: ")
    assert "\nBob:" not in third.stop or "\nAlice:" in third.stop
    assert "\nCarol:" not in third.stop


async def test_observer_connecting_with_since_gets_exactly_the_missed_events(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    created = await manager.create(spec(max_turns=6))
    handle = manager.open(created.token)
    first = watch(manager, handle)
    await first.wait_type("bot_message", 2)
    seen = first.events[-1].seq
    await first.until_closed()
    later = watch(manager, handle, since=seen)
    await later.until_closed()
    assert [e.seq for e in later.events] == [e.seq for e in first.events if e.seq > seen]


async def test_a_stream_cut_and_retried_resets_the_streamed_tokens(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory(llm_retries=1)
    mock.enqueue(MockReply(fault=Fault.CUT_STREAM), MockReply(content="Second try works."))
    created = await manager.create(spec(["Alice"], max_turns=1, stream_tokens=True))
    watcher = watch(manager, manager.open(created.token))
    await watcher.until_closed()
    types = [e.type for e in watcher.events if e.type in ("token", "token_reset", "bot_message")]
    reset_at = types.index("token_reset")
    assert "token" in types[:reset_at]  # the first attempt had streamed something
    after = [
        e.token
        for e in watcher.events[watcher.events.index(watcher.of_type("token_reset")[0]) :]
        if e.type == "token"
    ]
    assert "".join(after) == "Second try works."
    assert watcher.of_type("bot_message")[0].content == "Second try works."


async def test_debug_events_cover_every_category_and_carry_no_secrets(
    manager_factory: Any, mock: MockLLM
) -> None:
    manager = await manager_factory()
    created = await manager.create(
        SessionSpec.model_validate(
            {
                "bots": [{"name": n} for n in ("Alice", "Bob", "Carol")],
                "options": {
                    "participation": "collaborative",
                    "turn_order": "orchestrated",
                    "max_turns": 4,
                    "debug": True,
                    "summarize_context": True,
                    "max_context_tokens": 300,
                },
                "llm": {"api_key": "sk-secret-session-key"},
            }
        )
    )
    handle = manager.open(created.token)
    talker = watch(manager, handle, "talker", "Dana")
    await manager.post(handle, talker.member, "Please discuss tea. " * 10)
    await talker.wait_type("debug", 1)
    await talker.wait_for(lambda w: len(w.of_type("bot_message")) >= 3)
    await manager.post(handle, talker.member, "More tea talk. " * 10)
    await talker.until_closed()
    categories = {e.category for e in talker.of_type("debug")}
    expected = {"llm_call", "orchestrator", "loop", "context_tokens", "rectification"}
    assert expected <= categories, categories
    text = "".join(e.model_dump_json() for e in talker.events)
    assert "sk-secret-session-key" not in text and created.token not in text


async def test_no_debug_events_unless_asked(manager_factory: Any, mock: MockLLM) -> None:
    manager = await manager_factory()
    created = await manager.create(spec(max_turns=3))
    watcher = watch(manager, manager.open(created.token))
    await watcher.until_closed()
    assert watcher.of_type("debug") == []


async def test_each_message_is_counted_once_whatever_the_history_length(
    manager_factory: Any, mock: MockLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = await manager_factory()
    counter = manager.deps.counter
    counted: list[str] = []
    original = type(counter).count

    def spy(self: Any, text: str) -> int:
        counted.append(text)
        return original(self, text)

    monkeypatch.setattr(type(counter), "count", spy)

    async def counts_per_turn(turns: int) -> int:
        created = await manager.create(spec(["Alice", "Bob"], max_turns=turns))
        handle = manager.open(created.token)
        watcher = watch(manager, handle)
        await watcher.wait_type("bot_message", turns - 1)
        before = len(counted)
        handle.session.context_tokens  # reading the size counts nothing  # noqa: B018
        await watcher.until_closed()
        return len(counted) - before

    assert await counts_per_turn(3) == await counts_per_turn(60) == 1
