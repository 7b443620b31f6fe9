"""Summarization against the real LLM client and the mock backend over loopback.

Whole sessions run through the manager, which passes `summarize` to the loop when
`summarize_context` is true; the edge cases call `summarize` on a session built
without a loop.
"""

from __future__ import annotations

from engine.llm.mock import MockLLM, MockReply, RecordedRequest, bot_name
from engine.manager import SessionManager
from engine.spec.models import SessionSpec
from engine.summarizer import SUMMARY_INSTRUCTIONS, summarize
from tests.support.direct_session import bare_session
from tests.support.engine import spec, watch

LIMIT = 600
# About 45 tokens: long enough that 50 turns make well over 2 000 tokens of history.
FILLER = (
    "thinks the office kitchen needs better beans, a cleaner grinder, fresh milk, oat "
    "milk for some, a kettle for the tea drinkers, and a fair rota so that everyone "
    "shares the washing up after the morning rush."
)


def is_summary_call(request: RecordedRequest) -> bool:
    return request.system_prompt == SUMMARY_INSTRUCTIONS


class Script:
    """Mock handler: long bot replies, numbered recognisable summaries (or failures)."""

    def __init__(self, *, fail_summaries: bool = False) -> None:
        self.fail_summaries = fail_summaries
        self.summaries: list[tuple[RecordedRequest, str]] = []
        self.turns = 0

    def __call__(self, request: RecordedRequest) -> MockReply:
        if is_summary_call(request):
            if self.fail_summaries:
                return MockReply(status=500, error_message="summarizer down")
            text = f"SUMMARY-{len(self.summaries) + 1}: the panel debated the kitchen."
            self.summaries.append((request, text))
            return MockReply(content=text)
        self.turns += 1
        return MockReply(content=f"{bot_name(request)} (turn {self.turns}) {FILLER}")


async def test_summaries_keep_every_prompt_within_the_limit_and_the_history_whole(
    manager: SessionManager, mock: MockLLM
) -> None:
    script = Script()
    mock.set_handler(script)
    created = await manager.create(
        spec(
            max_turns=50,
            max_context_tokens=LIMIT,
            summarize_context=True,
            summary_tail=4,
            debug=True,
        )
    )
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()

    assert [e.reason for e in watcher.of_type("session_end")] == ["max_turns"]
    history = manager.history(handle)
    assert [m.turn for m in history] == list(range(1, 51))
    assert all(m.status == "complete" and FILLER in m.content for m in history)
    assert sum(m.tokens for m in history) > 2000

    counter = manager.deps.counter
    sizes = [counter.count_chat(request.messages) for request in mock.requests]
    assert max(sizes) <= LIMIT

    assert len(script.summaries) >= 3
    for (_, earlier), (later, _) in zip(script.summaries, script.summaries[1:], strict=False):
        assert earlier in later.last_user_message  # the previous summary is folded in
    last_summary = script.summaries[-1][1]
    last_bot_call = [r for r in mock.requests if not is_summary_call(r)][-1]
    assert last_summary in last_bot_call.system_prompt
    assert "(turn 1)" not in str(last_bot_call.messages)  # compacted away from the prompt

    events = [e.data for e in watcher.of_type("debug") if e.category == "summarization"]
    assert len(events) == len(script.summaries)
    assert all(e["tokens_after"] < e["tokens_before"] for e in events)
    assert all(e["kept"] == 4 and e["calls"] == 1 for e in events)
    upto = [e["upto"] for e in events]
    assert upto == sorted(upto) and len(set(upto)) == len(upto)
    stored = await manager.deps.store.load_summary(handle.session.id)
    assert stored == (upto[-1], last_summary)


async def test_without_summarization_the_session_ends_at_the_context_limit(
    manager: SessionManager, mock: MockLLM
) -> None:
    script = Script()
    mock.set_handler(script)
    created = await manager.create(spec(max_context_tokens=LIMIT, max_turns=100))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()
    assert [e.reason for e in watcher.of_type("session_end")] == ["max_context"]
    assert script.summaries == []
    assert handle.session.context_tokens >= LIMIT
    assert len(watcher.of_type("bot_message")) < 100


async def test_a_summarizer_failing_twice_ends_the_session_with_max_context(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_handler(Script(fail_summaries=True))
    created = await manager.create(
        spec(max_context_tokens=LIMIT, summarize_context=True, max_turns=100)
    )
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()
    [end] = watcher.of_type("session_end")
    assert (end.reason, end.detail) == ("max_context", "summarization failed")
    assert len([r for r in mock.requests if is_summary_call(r)]) == 2  # one retry
    assert handle.session.summary is None
    assert all(m.status == "complete" for m in manager.history(handle))


# --- edge cases, called directly -------------------------------------------------------------


def lines(count: int, words: int = 30) -> list[tuple[str, str]]:
    return [
        ("Alice" if i % 2 else "Bob", f"Message {i}: " + "tea and coffee " * (words // 3))
        for i in range(count)
    ]


async def test_more_than_one_prompt_can_hold_is_folded_in_chunks_within_the_limit(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_handler(lambda request: MockReply(content=f"S{len(mock.requests)} so far."))
    session = await bare_session(
        manager,
        spec(max_context_tokens=400, summarize_context=True, summary_tail=2),
        lines(30),
    )
    assert await summarize(session)
    calls = mock.requests
    assert len(calls) > 1
    assert all(manager.deps.counter.count_chat(r.messages) <= 400 for r in calls)
    for number, request in enumerate(calls[1:], start=1):
        assert f"S{number} so far." in request.last_user_message
    assert "Message 0:" in calls[0].last_user_message
    assert "Message 27:" in calls[-1].last_user_message
    assert all("Message 28:" not in r.last_user_message for r in calls)  # the tail
    assert session.summary == f"S{len(calls)} so far."
    assert session.summary_upto == 28
    assert session.summarized_tokens == sum(m.tokens for m in session.history.messages[:28])


async def test_a_message_too_long_for_any_prompt_is_cut(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_handler(lambda request: MockReply(content="A very long speech."))
    session = await bare_session(
        manager,
        spec(max_context_tokens=300, summarize_context=True, summary_tail=0),
        [("Dana", "word " * 1000)],
    )
    assert await summarize(session)
    [request] = mock.requests
    assert manager.deps.counter.count_chat(request.messages) <= 300
    assert request.last_user_message.rstrip().endswith("…")
    assert session.summary == "A very long speech."


async def test_a_summary_longer_than_its_share_of_the_limit_is_cut(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_handler(lambda request: MockReply(content="blah " * 2000))
    session = await bare_session(manager, spec(max_context_tokens=400, summary_tail=0), lines(4))
    assert await summarize(session)
    assert session.summary is not None
    cap = int(400 * manager.settings.summary_max_share)
    assert manager.deps.counter.count(session.summary) <= cap
    assert mock.requests[0].max_tokens == cap


async def test_nothing_to_compact_returns_false_without_calling_the_llm(
    manager: SessionManager, mock: MockLLM
) -> None:
    huge_prompt = SessionSpec.model_validate(
        {
            "bots": [{"name": "Alice", "system_prompt": "Always be polite. " * 60}],
            "options": {"max_context_tokens": 200, "summarize_context": True},
        }
    )
    session = await bare_session(manager, huge_prompt)
    assert session.context_tokens >= 200 * 0.8
    assert not await summarize(session)
    assert mock.requests == []
    assert session.summary is None


async def test_the_tail_shrinks_when_it_alone_would_stay_over_the_threshold(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_handler(lambda request: MockReply(content="Short summary."))
    session = await bare_session(
        manager,
        spec(max_context_tokens=300, summarize_context=True, summary_tail=6),
        lines(6, words=60),
    )
    assert await summarize(session)
    assert 0 < session.summary_upto < 6
    threshold = 300 * manager.settings.summarize_threshold
    assert session.context_tokens < threshold


async def test_a_memory_session_keeps_an_interim_memory_after_each_summary(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_handler(lambda request: MockReply(content="They discussed tea."))
    session = await bare_session(
        manager,
        spec(max_context_tokens=400, summary_tail=1, memory="inherit:fsk_earlier"),
        lines(6),
        memory="Last week they discussed coffee.",
    )
    assert await summarize(session)
    stored = await manager.deps.store.load_memory(session.id)
    assert stored == "Last week they discussed coffee.\n\nThey discussed tea."
