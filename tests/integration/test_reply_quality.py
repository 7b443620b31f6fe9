"""What a turn does about poor replies, end to end against the mock backend.

Repeats of a recent message are asked for again with a nudge and repetition penalties;
a reply cut by max_tokens ends at its last sentence; whole-reply rules that change a
streamed reply make members replace what they were shown; and a backend whose chat
template does not fit is reported once, as an `error` event, in the log and in status.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from engine.llm.mock import MockLLM, MockReply, RecordedRequest
from engine.llm.types import Usage
from engine.manager import SessionManager
from engine.spec.models import SessionSpec
from engine.template_watch import TEMPLATE_CHECK_EMPTY_REPLIES
from tests.integration.conftest import (
    ManagerFactory,
    ServerFactory,
    create_session,
    spec_dict,
    ws_join,
)
from tests.support.engine import Watcher, spec, watch

TEMPLATE_MISMATCH = "backend_template_mismatch"


# A global prompt long enough for its token count to be judged (TEMPLATE_CHECK_MIN_...).
SCENE = (
    "Two neighbours chat about their plans for the weekend over the garden fence. "
    "They talk about the weather, the market on Saturday morning, the football match, "
    "a barbecue they might hold, and the state of the vegetable patch. Keep every reply "
    "short, friendly and in your own words, one or two sentences at most."
)


async def run(manager: SessionManager, *, sampling: Any = None, **options: Any) -> Watcher:
    data = spec(["Alice", "Bob"], debug=True, **options).model_dump()
    data.update(system_prompt=SCENE, sampling=sampling)
    created = await manager.create(SessionSpec.model_validate(data))
    watcher = watch(manager, manager.open(created.token))
    await watcher.until_closed()
    return watcher


def hygiene(watcher: Watcher) -> list[dict[str, Any]]:
    return [e.data for e in watcher.of_type("debug") if e.category == "hygiene"]


# --- repeats ------------------------------------------------------------------------------------


@pytest.fixture
async def guarded(manager_factory: ManagerFactory) -> SessionManager:
    return await manager_factory(duplicate_window=6)


async def test_a_reply_repeating_a_recent_message_is_asked_for_again_with_penalties(
    guarded: SessionManager, mock: MockLLM
) -> None:
    mock.enqueue(
        MockReply(content="You've done it all, truly."),
        MockReply(content="you've done it all truly!"),  # Bob repeats Alice
        MockReply(content="Then let us go fishing on Sunday."),
    )

    watcher = await run(guarded, max_turns=2)

    assert [e.content for e in watcher.of_type("bot_message")] == [
        "You've done it all, truly.",
        "Then let us go fishing on Sunday.",
    ]
    _, repeat, retry = mock.requests
    settings = guarded.deps.settings
    assert (repeat.frequency_penalty, repeat.presence_penalty) == (None, None)
    assert (retry.frequency_penalty, retry.presence_penalty) == (
        settings.duplicate_retry_frequency_penalty,
        settings.duplicate_retry_presence_penalty,
    )
    nudge = settings.duplicate_reply_nudge.replace("{name}", "Bob")
    assert retry.last_user_message.endswith(nudge)
    assert retry.messages[:-1] == repeat.messages[:-1]
    assert [(d["bot"], d["repeats"]) for d in hygiene(watcher)] == [("Bob", 1)]


async def test_the_retry_is_kept_even_if_it_repeats_again_and_only_one_retry_is_made(
    guarded: SessionManager, mock: MockLLM
) -> None:
    mock.enqueue(*[MockReply(content="Same words every time.")] * 3)

    watcher = await run(guarded, max_turns=2)

    assert [e.content for e in watcher.of_type("bot_message")] == ["Same words every time."] * 2
    assert len(mock.requests) == 3


async def test_a_bots_own_higher_penalty_is_kept_on_the_retry(
    guarded: SessionManager, mock: MockLLM
) -> None:
    mock.enqueue(*[MockReply(content="Same words every time.")] * 3)

    await run(guarded, max_turns=2, sampling={"frequency_penalty": 1.5})

    assert [r.frequency_penalty for r in mock.requests] == [1.5, 1.5, 1.5]
    assert mock.requests[2].presence_penalty == (
        guarded.deps.settings.duplicate_retry_presence_penalty
    )


async def test_without_the_guard_a_repeat_is_recorded_as_it_is(
    manager_factory: ManagerFactory, mock: MockLLM
) -> None:
    manager = await manager_factory(duplicate_window=0)
    mock.enqueue(*[MockReply(content="Same words every time.")] * 2)

    watcher = await run(manager, max_turns=2)

    assert len(mock.requests) == 2
    assert len(watcher.of_type("bot_message")) == 2


# --- cut short ----------------------------------------------------------------------------------


async def test_a_reply_cut_by_max_tokens_ends_at_its_last_whole_sentence(
    manager_factory: ManagerFactory, mock: MockLLM
) -> None:
    manager = await manager_factory()
    mock.enqueue(MockReply(content="The sea is calm. We could sail to the", finish_reason="length"))

    watcher = await run(manager, max_turns=1)

    [message] = watcher.of_type("bot_message")
    assert message.content == "The sea is calm."
    [data] = hygiene(watcher)
    assert (data["rules"], data["trimmed"], data["finish_reason"]) == (
        ["sentence_end"],
        "We could sail to the",
        "length",
    )


async def test_end_at_sentence_can_be_turned_off(
    manager_factory: ManagerFactory, mock: MockLLM
) -> None:
    manager = await manager_factory()
    mock.enqueue(MockReply(content="The sea is calm. We could sail to the", finish_reason="length"))

    watcher = await run(manager, max_turns=1, end_at_sentence=False)

    assert [e.content for e in watcher.of_type("bot_message")] == [
        "The sea is calm. We could sail to the"
    ]


async def test_a_streamed_reply_changed_by_a_whole_reply_rule_is_replaced_for_members(
    manager_factory: ManagerFactory, mock: MockLLM
) -> None:
    manager = await manager_factory()
    mock.enqueue(
        MockReply(content="Fish! Fish! Fish! The sea is calm. We could", finish_reason="length")
    )

    watcher = await run(manager, max_turns=1, stream_tokens=True)

    [message] = watcher.of_type("bot_message")
    assert message.content == "Fish! The sea is calm."
    streamed = [e for e in watcher.events if e.type in ("token", "token_reset")]
    last_reset = max(i for i, e in enumerate(streamed) if e.type == "token_reset")
    assert "".join(e.token for e in streamed[last_reset + 1 :]) == message.content
    assert "".join(e.token for e in streamed[:last_reset]).startswith("Fish! Fish!")


async def test_a_recital_of_a_system_prompt_is_dropped(
    manager_factory: ManagerFactory, mock: MockLLM
) -> None:
    manager = await manager_factory()
    mock.enqueue(MockReply(content="You are Bob, be brief.\nTea, then."))

    watcher = await run(manager, max_turns=1)

    assert [e.content for e in watcher.of_type("bot_message")] == ["Tea, then."]
    # Counted, never quoted: a recital may be another bot's system prompt.
    [data] = hygiene(watcher)
    assert (data["rules"], data["recited"]) == (["recital"], 1)
    assert "be brief" not in str(data)


# --- template trouble ---------------------------------------------------------------------------


def broken_template(request: RecordedRequest) -> MockReply:
    """A server whose template drops the conversation: 3 prompt tokens, unrelated text."""
    return MockReply(
        content="def main(): pass",
        usage=Usage(prompt_tokens=3, completion_tokens=5, total_tokens=8),
    )


async def test_prompts_counted_far_too_short_are_reported_once(
    manager_factory: ManagerFactory, mock: MockLLM, caplog: pytest.LogCaptureFixture
) -> None:
    manager = await manager_factory()
    mock.set_handler(broken_template)
    caplog.set_level(logging.WARNING)

    watcher = await run(manager, max_turns=4)

    [error] = watcher.of_type("error")
    assert error.code == TEMPLATE_MISMATCH and error.turn is None
    assert "3 prompt tokens" in error.message and "--jinja" in error.message
    assert sum(TEMPLATE_MISMATCH in r.getMessage() for r in caplog.records) == 1
    turns = [e.turn for e in watcher.of_type("turn_end")]
    assert turns == [1, 2, 3, 4]
    # Reported after the second short prompt in a row: during turn 2.
    position = watcher.events.index(error)
    assert [e.turn for e in watcher.events[:position] if e.type == "turn_end"] == [1]


async def test_replies_empty_again_and_again_are_reported_once(
    manager_factory: ManagerFactory, mock: MockLLM
) -> None:
    manager = await manager_factory()
    mock.set_handler(lambda request: MockReply(content="<|im_end|>"))
    limit = TEMPLATE_CHECK_EMPTY_REPLIES

    watcher = await run(manager, max_turns=4)

    errors = watcher.of_type("error")
    assert [e.code for e in errors].count(TEMPLATE_MISMATCH) == 1
    assert [e.code for e in errors].count("empty_reply") == 4
    [mismatch] = [e for e in errors if e.code == TEMPLATE_MISMATCH]
    assert f"{limit} replies in a row were empty" in mismatch.message


async def test_a_healthy_backend_is_not_reported(
    manager_factory: ManagerFactory, mock: MockLLM
) -> None:
    manager = await manager_factory()

    watcher = await run(manager, max_turns=6)

    assert watcher.of_type("error") == []


async def test_the_mismatch_shows_in_status_over_the_api(
    server_factory: ServerFactory, mock: MockLLM
) -> None:
    server = await server_factory()
    mock.set_handler(broken_template)
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        created = await create_session(client, {**spec_dict(max_turns=3), "system_prompt": SCENE})
        observer = await ws_join(server, created["observer_token"], since=0)
        await observer.wait_closed()
        status = (await client.get(f"/v1/session/{created['observer_token']}")).json()

    assert [e["code"] for e in observer.of_type("error")] == [TEMPLATE_MISMATCH]
    assert [w for w in status["warnings"] if w.startswith(f"{TEMPLATE_MISMATCH}: ")]
