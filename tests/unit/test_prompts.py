"""Prompt assembly: golden message lists for tricky histories, and stop sequences."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from engine.history import Message, MessageKind, MessageStatus
from engine.llm.types import ChatMessage
from engine.prompts import PromptParts, build_prompt, stop_sequences, system_prompt

T0 = datetime(2025, 1, 1, tzinfo=UTC)
OPENING = "Let's begin."
CONTINUE = "Please continue."
ALICE = PromptParts(bot_name="Alice", bot_system_prompt="You love espresso.")
ALICE_SYSTEM = (
    "You are Alice. Reply as Alice only, in your own voice, without a name prefix.\n\n"
    "You love espresso."
)


def msg(
    turn: int,
    speaker: str,
    content: str = "",
    *,
    kind: MessageKind = "bot",
    status: MessageStatus = "complete",
) -> Message:
    return Message(turn=turn, kind=kind, speaker=speaker, content=content, status=status, ts=T0)


def sys(content: str) -> ChatMessage:
    return ChatMessage(role="system", content=content)


def user(content: str) -> ChatMessage:
    return ChatMessage(role="user", content=content)


def bot(content: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=content)


def prompt_for_alice(context: list[Message], parts: PromptParts = ALICE) -> list[ChatMessage]:
    return build_prompt(parts, context, opening_line=OPENING, continue_line=CONTINUE)


def test_empty_history_gets_the_opening_line() -> None:
    assert prompt_for_alice([]) == [sys(ALICE_SYSTEM), user(OPENING)]


def test_history_starting_with_the_bots_own_message_gets_the_opening_line_first() -> None:
    history = [msg(1, "Alice", "Espresso is best."), msg(2, "Bob", "Tea is.")]

    assert prompt_for_alice(history) == [
        sys(ALICE_SYSTEM),
        user(OPENING),
        bot("Espresso is best."),
        user("Bob: Tea is."),
    ]


def test_own_messages_around_a_failed_slot_merge_into_one_assistant_turn() -> None:
    history = [
        msg(1, "Bob", "Coffee or tea?"),
        msg(2, "Alice", "Coffee."),
        msg(3, "Bob", status="failed"),
        msg(4, "Alice", "Espresso, really."),
        msg(5, "Carol", "Noted."),
    ]

    assert prompt_for_alice(history) == [
        sys(ALICE_SYSTEM),
        user("Bob: Coffee or tea?"),
        bot("Coffee.\n\nEspresso, really."),
        user("Carol: Noted."),
    ]


def test_context_ending_with_the_bots_own_message_gets_the_continue_line() -> None:
    history = [msg(1, "Bob", "Go."), msg(2, "Alice", "Espresso."), msg(3, "Bob", status="failed")]

    assert prompt_for_alice(history) == [
        sys(ALICE_SYSTEM),
        user("Bob: Go."),
        bot("Espresso."),
        user(CONTINUE),
    ]


def test_empty_continue_line_leaves_the_prompt_ending_with_assistant() -> None:
    history = [msg(1, "Bob", "Go."), msg(2, "Alice", "Espresso.")]

    assert build_prompt(ALICE, history, opening_line=OPENING, continue_line="")[-1] == bot(
        "Espresso."
    )


def test_talkers_and_bots_interleaved_merge_into_named_user_lines() -> None:
    history = [
        msg(1, "Dana", "Hi all!", kind="talker"),
        msg(2, "Bob", "Hello Dana."),
        msg(3, "Carol", "Welcome."),
        msg(4, "Alice", "Hi Dana, coffee?"),
        msg(5, "Dana", "Sure.", kind="talker"),
        msg(6, "Eve", "Me too.", kind="talker"),
        msg(7, "Bob", "Tea for me."),
    ]

    assert prompt_for_alice(history) == [
        sys(ALICE_SYSTEM),
        user("Dana: Hi all!\nBob: Hello Dana.\nCarol: Welcome."),
        bot("Hi Dana, coffee?"),
        user("Dana: Sure.\nEve: Me too.\nBob: Tea for me."),
    ]


def test_talker_named_like_the_bot_is_shown_as_a_user_line() -> None:
    history = [msg(1, "Alice", "I'm the human Alice.", kind="talker")]

    assert prompt_for_alice(history) == [sys(ALICE_SYSTEM), user("Alice: I'm the human Alice.")]


def test_reserved_failed_and_blank_slots_are_never_shown() -> None:
    history = [
        msg(1, "Bob", "First."),
        msg(2, "Carol", status="failed"),
        msg(3, "Dana", "   ", kind="talker"),
        msg(4, "Bob", "Second."),
        msg(5, "Alice", status="reserved"),
    ]

    assert prompt_for_alice(history) == [sys(ALICE_SYSTEM), user("Bob: First.\nBob: Second.")]


def test_system_message_orders_global_identity_role_own_memory_and_summary() -> None:
    parts = PromptParts(
        bot_name="Alice",
        bot_role="advocate",
        bot_system_prompt="  You love espresso.\n\n\n\nYou argue for it.  ",
        global_system_prompt="A friendly panel.\n",
        memory="Bob prefers green tea.",
        summary="They discussed milk.",
    )

    assert prompt_for_alice([], parts) == [
        sys(
            "A friendly panel.\n\n"
            "You are Alice. Your role: advocate. "
            "Reply as Alice only, in your own voice, without a name prefix.\n\n"
            "You love espresso.\n\nYou argue for it.\n\n"
            "Memory from earlier conversations:\nBob prefers green tea.\n\n"
            "Summary of the conversation so far:\nThey discussed milk."
        ),
        user(OPENING),
    ]


def test_blank_parts_are_left_out_of_the_system_message() -> None:
    parts = PromptParts(
        bot_name="Bob", bot_role="  ", global_system_prompt=" \n ", memory="", summary="\n"
    )

    assert system_prompt(parts) == (
        "You are Bob. Reply as Bob only, in your own voice, without a name prefix."
    )


def test_role_ending_in_punctuation_gets_no_second_full_stop() -> None:
    assert "Your role: the devil's advocate!" in system_prompt(
        PromptParts(bot_name="Bob", bot_role="the devil's advocate!")
    )


SPEAKERS = ["Alice", "Bob", "Carol", "Dana"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(SPEAKERS),
            st.sampled_from(["bot", "talker"]),
            st.sampled_from(["complete", "complete", "failed", "reserved"]),
            st.sampled_from(["", "hi", "Alice: fake", "two\nlines"]),
        ),
        max_size=12,
    )
)
def test_prompt_always_alternates_after_one_system_message(
    rows: list[tuple[str, MessageKind, MessageStatus, str]],
) -> None:
    history = [
        msg(turn, speaker, content, kind=kind, status=status)
        for turn, (speaker, kind, status, content) in enumerate(rows, start=1)
    ]
    prompt = prompt_for_alice(history)

    roles = [message.role for message in prompt]
    assert roles[0] == "system"
    assert roles[1:] == ["user", "assistant"] * (len(roles[1:]) // 2) + ["user"] * (
        len(roles[1:]) % 2
    )
    assert roles[-1] == "user"


def test_stop_sequences_name_others_most_recent_speaker_first() -> None:
    context = [
        msg(1, "Dana", "hi", kind="talker"),
        msg(2, "Carol", "hello"),
        msg(3, "Alice", "hey"),
        msg(4, "Bob", "", status="failed"),
    ]

    assert stop_sequences(
        "Alice", ["Alice", "Bob", "Carol", "Dana", "Eve"], context=context, limit=4
    ) == ["\nCarol:", "\nDana:", "\nBob:", "\nEve:"]


def test_stop_sequences_are_capped_and_exclude_the_bot_in_any_case() -> None:
    names = ["alice", "Bob", "Carol", "Dana", "Eve", "Frank"]

    assert stop_sequences("Alice", names, limit=2) == ["\nBob:", "\nCarol:"]
    assert stop_sequences("Alice", names, limit=0) == []
    assert stop_sequences("Alice", ["Alice"], limit=4) == []


def test_stop_sequences_are_deterministic_and_unique() -> None:
    context = [msg(1, "Bob", "a"), msg(2, "Bob", "b"), msg(3, "Carol", "c")]
    names = ["Bob", "Carol", "Bob"]

    first = stop_sequences("Alice", names, context=context, limit=4)
    assert first == ["\nCarol:", "\nBob:"]
    assert stop_sequences("Alice", names, context=context, limit=4) == first
