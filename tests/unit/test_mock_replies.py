"""The mock backend's reply rules, without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.llm.mock import Fault, FaultRate, MockReply, RecordedRequest
from engine.llm.mock.replies import ReplyBook, bot_name, default_text, last_speaker, tokenize
from engine.llm.types import ChatMessage, ToolDefinition, ToolFunction

SELECT = ToolDefinition(
    function=ToolFunction(
        name="select_speaker",
        parameters={
            "type": "object",
            "properties": {"bot_name": {"type": "string", "enum": ["Ann", "Ben"]}},
            "required": ["bot_name"],
        },
    )
)
END = ToolDefinition(
    function=ToolFunction(
        name="end_session",
        parameters={
            "type": "object",
            "properties": {"reason": {"type": "string"}},
            "required": ["reason"],
        },
    )
)


def recorded(system: str = "", user: str = "", **fields: Any) -> RecordedRequest:
    messages = []
    if system:
        messages.append(ChatMessage(role="system", content=system))
    if user:
        messages.append(ChatMessage(role="user", content=user))
    return RecordedRequest(
        index=0,
        method="POST",
        path="/v1/chat/completions",
        headers={},
        body={},
        messages=messages,
        **fields,
    )


@pytest.mark.parametrize(
    ("system", "name"),
    [
        ("You are Alice.", "Alice"),
        ("Panel rules.\n\nYou are Bob. Your role: critic. Reply as Bob only.", "Bob"),
        ("You are taking part in a panel. Be brief.\nYou are Dr Jekyll.", "Dr Jekyll"),
        ("You are taking part in a panel.", "taking part in a panel"),
        ("Speak like a pirate at all times", "Speak like a"),
        ("", "Assistant"),
    ],
)
def test_bot_name_comes_from_the_identity_line(system: str, name: str) -> None:
    assert bot_name(recorded(system)) == name


@pytest.mark.parametrize(
    ("user", "speaker", "text"),
    [
        ("Bob: hello there", "Bob", "hello there"),
        ("Bob: first\n\nCarol: second thought\nmore", "Carol", "second thought\nmore"),
        ("Let's begin.", "nobody", "Let's begin."),
        ("", "nobody", ""),
    ],
)
def test_last_speaker_is_the_last_prefixed_line(user: str, speaker: str, text: str) -> None:
    assert last_speaker(recorded("You are A.", user)) == (speaker, text)


def test_default_text_matches_the_documented_example() -> None:
    request = recorded(
        "You are Alice. Reply as Alice only.",
        "Bob: Tea is far better than coffee, and here is why",
    )

    assert default_text(request) == "Alice answers Bob: Tea is far better than coffee, and here"


@pytest.mark.parametrize("size", [None, 1, 4])
def test_tokenize_pieces_join_back_into_the_text(size: int | None) -> None:
    text = "  Hello,  world\nagain "

    assert "".join(tokenize(text, size)) == text


def test_select_speaker_cycles_per_roster_and_resets_with_a_new_book() -> None:
    book = ReplyBook(seed=0, faults=[], retry_after="1")
    request = recorded("You are Ann.", "Ben: hi", tools=[SELECT])

    picks = [
        json.loads(book.plan(request, None).tool_calls[0].arguments)["bot_name"] for _ in range(3)
    ]
    fresh = ReplyBook(seed=0, faults=[], retry_after="1").plan(request, None)

    assert picks == ["Ann", "Ben", "Ann"]
    assert json.loads(fresh.tool_calls[0].arguments) == {"bot_name": "Ann"}


def test_named_tool_choice_calls_that_tool_with_schema_arguments() -> None:
    book = ReplyBook(seed=0, faults=[], retry_after="1")
    choice = {"type": "function", "function": {"name": "end_session"}}
    request = recorded("You are Ann.", "hi", tools=[SELECT, END], tool_choice=choice)

    plan = book.plan(request, None)

    assert [(c.name, json.loads(c.arguments)) for c in plan.tool_calls] == [
        ("end_session", {"reason": "mock"})
    ]


def test_tool_choice_none_gives_a_text_reply() -> None:
    book = ReplyBook(seed=0, faults=[], retry_after="1")
    request = recorded("You are Ann.", "Ben: hi", tools=[SELECT], tool_choice="none")

    plan = book.plan(request, None)

    assert plan.tool_calls == [] and plan.content == "Ann answers Ben: hi"


def test_scripted_content_is_sent_verbatim_and_ignores_stop() -> None:
    book = ReplyBook(seed=0, faults=[], retry_after="1")
    request = recorded("You are Ann.", "Ben: hi", stop=["\nBen:"])

    plan = book.plan(request, MockReply(content="fine\nBen: me too"))

    assert plan.content == "fine\nBen: me too"


def test_http_429_fault_carries_the_default_retry_after() -> None:
    book = ReplyBook(seed=0, faults=[], retry_after="3")

    plan = book.plan(recorded("You are Ann.", "hi"), MockReply(fault=Fault.HTTP_429))

    assert (plan.status, plan.retry_after) == (429, "3")


def test_tool_faults_never_strike_requests_without_tools() -> None:
    book = ReplyBook(seed=0, faults=[FaultRate(fault=Fault.TOOL_GARBAGE)], retry_after="1")

    plan = book.plan(recorded("You are Ann.", "Ben: hi"), None)

    assert plan.fault is None
    assert plan.content == "Ann answers Ben: hi"


def test_same_seed_gives_the_same_fault_sequence() -> None:
    faults = [FaultRate.parse("http_500:0.3"), FaultRate.parse("think:0.3")]
    request = recorded("You are Ann.", "Ben: hi")
    book_a = ReplyBook(seed=5, faults=faults, retry_after="1")
    book_b = ReplyBook(seed=5, faults=faults, retry_after="1")

    sequence = [book_a.plan(request, None).fault for _ in range(50)]

    assert sequence == [book_b.plan(request, None).fault for _ in range(50)]
    assert {Fault.HTTP_500, Fault.THINK, None} <= set(sequence)


@pytest.mark.parametrize(
    ("text", "fault", "rate"),
    [
        ("drop", Fault.DROP, 1.0),
        ("HTTP_500:0.25", Fault.HTTP_500, 0.25),
        ("think:0", Fault.THINK, 0.0),
    ],
)
def test_fault_specs_parse(text: str, fault: Fault, rate: float) -> None:
    assert FaultRate.parse(text) == FaultRate(fault=fault, rate=rate)


@pytest.mark.parametrize(
    ("text", "message"),
    [("bogus", "unknown fault"), ("drop:x", "not a number"), ("drop:1.5", "between 0 and 1")],
)
def test_bad_fault_specs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultRate.parse(text)


SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": ["select_speaker", "hold"]},
        "bot_name": {"type": "string", "enum": ["Ann", "Ben"]},
        "reason": {"type": "string"},
    },
    "required": ["action", "bot_name", "reason"],
}
WAYS = {
    "json_schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": SCHEMA}}
    },
    "json_object": {"response_format": {"type": "json_object", "schema": SCHEMA}},
    "format": {"format": SCHEMA},
}


@pytest.mark.parametrize("way", sorted(WAYS))
def test_structured_output_answers_json_fitting_the_schema_in_every_way(way: str) -> None:
    book = ReplyBook(seed=0, faults=[], retry_after="1")
    request = recorded("You are Ann.", "Ben: hi", **WAYS[way])

    answers = [json.loads(book.plan(request, None).content) for _ in range(3)]

    assert answers == [
        {"action": "select_speaker", "bot_name": name, "reason": "mock"}
        for name in ("Ann", "Ben", "Ann")
    ]


def test_a_way_the_mock_does_not_honour_is_ignored() -> None:
    book = ReplyBook(seed=0, faults=[], retry_after="1", structured_output=frozenset({"format"}))
    request = recorded("You are Ann.", "Ben: hi", **WAYS["json_schema"])

    assert book.plan(request, None).content == "Ann answers Ben: hi"


def test_structured_ignored_strikes_only_requests_asking_for_a_schema() -> None:
    faults = [FaultRate(fault=Fault.STRUCTURED_IGNORED)]
    book = ReplyBook(seed=0, faults=faults, retry_after="1")

    asked = book.plan(recorded("You are Ann.", "Ben: hi", **WAYS["json_object"]), None)
    plain = book.plan(recorded("You are Ann.", "Ben: hi"), None)

    assert (asked.fault, asked.content) == (Fault.STRUCTURED_IGNORED, "Ann answers Ben: hi")
    assert plain.fault is None
