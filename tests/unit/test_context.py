"""Shared and scoped context selection, and whole-word name mentions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.context import mentions, select_context
from engine.history import Message, MessageKind, MessageStatus

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def msg(
    turn: int,
    speaker: str,
    content: str = "",
    *,
    kind: MessageKind = "bot",
    status: MessageStatus = "complete",
) -> Message:
    return Message(turn=turn, kind=kind, speaker=speaker, content=content, status=status, ts=T0)


def turns(messages: list[Message]) -> list[int]:
    return [message.turn for message in messages]


# A history built to trip naive rules: "Al" is a bot, "Alice" another; "al" appears
# inside words; failed and reserved slots sit between a message and its answer.
TRICKY = [
    msg(1, "Al", "Hello all, I am Al."),  # Al's own, first message
    msg(2, "Dana", "Alice, what do you think?", kind="talker"),  # mentions Alice only
    msg(3, "Bob", "Totally normal and also formal."),  # "al" only inside words
    msg(4, "Carol", "", status="failed"),  # tombstone between 3 and Al's answer
    msg(5, "Al", "Agreed with Bob."),  # Al answers 3 (4 failed)
    msg(6, "Bob", "Let's ask al."),  # mention at sentence end, lower case
    msg(7, "Carol", "I think Al's point stands, but AL should expand."),  # possessive
    msg(8, "Alice", "Noted."),
    msg(9, "Dana", "Anyone?", kind="talker"),
    msg(10, "Al", "", status="reserved"),  # Al's slot being generated now
]


def test_shared_context_is_every_complete_message_in_order() -> None:
    assert turns(select_context(TRICKY, bot_name="Al", mode="shared")) == [1, 2, 3, 5, 6, 7, 8, 9]


def test_scoped_context_follows_the_documented_rule_for_a_short_name() -> None:
    # 1 own; 2 mentions Alice, not Al; 3 answered by 5 across the failed slot 4;
    # 5 own; 6 and 7 mention Al; 8 neither; 9 is what Al answers now.
    assert turns(select_context(TRICKY, bot_name="Al", mode="scoped")) == [1, 3, 5, 6, 7, 9]


def test_scoped_context_of_the_longer_name_ignores_the_short_ones_messages() -> None:
    # 2 mentions Alice; 7 is the message Alice answered with 8; 8 own; 9 last.
    assert turns(select_context(TRICKY, bot_name="Alice", mode="scoped")) == [2, 7, 8, 9]


def test_scoped_context_of_a_bot_never_involved_is_only_the_last_message() -> None:
    assert turns(select_context(TRICKY, bot_name="Zed", mode="scoped")) == [9]


def test_failed_own_slot_does_not_reveal_the_message_before_it() -> None:
    history = [
        msg(1, "Bob", "Coffee?"),
        msg(2, "Al", "", status="failed"),
        msg(3, "Bob", "Still there?"),
        msg(4, "Carol", "Yes."),
    ]

    assert turns(select_context(history, bot_name="Al", mode="scoped")) == [4]


def test_talker_with_a_bots_name_is_not_that_bots_own_message() -> None:
    history = [
        msg(1, "Al", "I am a human called Al.", kind="talker"),
        msg(2, "Bob", "Nice to meet you."),
        msg(3, "Carol", "Indeed."),
    ]

    # 1 is kept only because it mentions "Al"; 2 is not kept (1 is not Al's own).
    assert turns(select_context(history, bot_name="Al", mode="scoped")) == [1, 3]


def test_empty_history_gives_empty_context_in_both_modes() -> None:
    assert select_context([], bot_name="Al", mode="shared") == []
    assert select_context([], bot_name="Al", mode="scoped") == []


def test_history_of_only_unfinished_slots_gives_empty_context() -> None:
    history = [msg(1, "Al", status="failed"), msg(2, "Bob", status="reserved")]

    assert select_context(history, bot_name="Bob", mode="scoped") == []


@pytest.mark.parametrize(
    ("text", "name", "expected"),
    [
        ("Ask Al.", "Al", True),
        ("ask al.", "Al", True),
        ("AL, your turn", "Al", True),
        ("Al's point", "Al", True),
        ("(Al)", "Al", True),
        ("Alice said so", "Al", False),
        ("also, finally", "Al", False),
        ("Hal knows", "Al", False),
        ("Al_2 is a bot", "Al", False),
        ("Al2 is a bot", "Al", False),
        ("Thanks, Dr. Who!", "Dr. Who", True),
        ("Thanks, Dr. Whoever", "Dr. Who", False),
        ("Dr Who is not the same", "Dr. Who", False),
        ("Ask C-3PO.", "C-3PO", True),
        ("Zoë? Yes, zoë.", "Zoë", True),
        ("Zoëlle", "Zoë", False),
        ("a+b is not a regex", "a+b", True),
        ("aab", "a+b", False),
        ("anything", "", False),
        ("anything", "   ", False),
    ],
)
def test_mentions_matches_whole_names_only(text: str, name: str, expected: bool) -> None:
    assert mentions(text, name) is expected
