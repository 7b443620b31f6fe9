"""Reading orchestrator replies: tool calls exact or fuzzy, and answers written as text."""

from __future__ import annotations

import json

import pytest

from engine.llm.types import ToolCall
from engine.orchestrator.reading import match_bot, read_reply, read_text
from engine.orchestrator.tools import Menu

ROSTER = ["Alice", "Bob", "Carol", "Dr. Who"]
ALL = Menu(roster=ROSTER, hold=True, end=True)
SPEAK_ONLY = Menu(roster=ROSTER, hold=False, end=False)


def call(name: str, arguments: object) -> ToolCall:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(id="c1", name=name, arguments=raw)


def test_exact_select_speaker_call_is_rung_one() -> None:
    reading = read_reply("", [call("select_speaker", {"bot_name": "Bob"})], SPEAK_ONLY)
    assert reading is not None
    assert (reading.action, reading.bot, reading.rung) == ("speak", "Bob", "tool_call")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("ALICE!", "Alice"), (" bob.", "Bob"), ('"Carol"', "Carol"), ("dr. who?", "Dr. Who")],
)
def test_names_match_ignoring_case_and_surrounding_punctuation(value: str, expected: str) -> None:
    reading = read_reply("", [call("select_speaker", {"bot_name": value})], SPEAK_ONLY)
    assert reading is not None
    assert (reading.bot, reading.rung) == (expected, "fuzzy_tool_call")


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("Select_Speaker", {"bot_name": "Bob"}),
        ("select-speaker", {"bot_name": "Bob"}),
        ("select_speaker", {"name": "Bob"}),
        ("select_speaker", {"speaker": "Bob"}),
        ("select_speaker", {"who": "Bob"}),
        ("select_speaker", json.dumps(json.dumps({"bot_name": "Bob"}))),
        ("select_speaker", "Bob"),
        ("select_speaker", '{"bot_name": "Bob"}{"bot_name": "Bob"}'),
    ],
)
def test_oddly_shaped_calls_are_read_at_rung_two(name: str, arguments: object) -> None:
    reading = read_reply("", [call(name, arguments)], SPEAK_ONLY)
    assert reading is not None
    assert (reading.bot, reading.rung) == ("Bob", "fuzzy_tool_call")


def test_a_name_outside_the_roster_is_not_usable() -> None:
    assert read_reply("", [call("select_speaker", {"bot_name": "Mallory"})], SPEAK_ONLY) is None
    assert match_bot("Ali", ROSTER) is None


def test_unknown_tools_are_unusable_but_a_later_good_call_wins() -> None:
    calls = [call("pick_bot", {"bot_name": "Bob"}), call("select_speaker", {"bot_name": "Carol"})]
    reading = read_reply("", calls, SPEAK_ONLY)
    assert reading is not None and reading.bot == "Carol"
    assert read_reply("", calls[:1], SPEAK_ONLY) is None


def test_hold_and_end_session_are_unusable_when_not_offered() -> None:
    assert read_reply("", [call("hold", {})], SPEAK_ONLY) is None
    assert read_reply("", [call("end_session", {"reason": "done"})], SPEAK_ONLY) is None
    assert read_text('{"name": "hold", "arguments": {}}', SPEAK_ONLY) is None
    assert read_text("hold", SPEAK_ONLY) is None


def test_hold_and_end_session_when_offered() -> None:
    hold = read_reply("", [call("hold", {})], ALL)
    assert hold is not None and (hold.action, hold.rung) == ("hold", "tool_call")
    end = read_reply("", [call("end_session", {"reason": "They agreed on tea."})], ALL)
    assert end is not None
    assert (end.action, end.reason, end.rung) == ("end", "They agreed on tea.", "tool_call")


def test_end_session_without_a_reason_gets_a_default_one() -> None:
    end = read_reply("", [call("end_session", {})], ALL)
    assert end is not None and end.action == "end" and end.reason
    assert end.rung == "fuzzy_tool_call"


def test_garbage_arguments_fall_through_to_the_text() -> None:
    garbage = [call("select_speaker", "{{{ ???")]
    assert read_reply("~ static on the line ~", garbage, SPEAK_ONLY) is None
    reading = read_reply("Carol should answer that.", garbage, SPEAK_ONLY)
    assert reading is not None and (reading.bot, reading.rung) == ("Carol", "text")


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "select_speaker", "arguments": {"bot_name": "Bob"}}',
        '{"name": "select_speaker", "arguments": "{\\"bot_name\\": \\"Bob\\"}"}',
        '{"name": "select_speaker", "parameters": {"bot_name": "Bob"}}',
        '{"function": {"name": "select_speaker", "arguments": {"bot_name": "bob"}}}',
        '{"tool_calls": [{"type": "function", "function": {"name": "select_speaker", '
        '"arguments": {"bot_name": "Bob"}}}]}',
        '{"tool": "select_speaker", "bot_name": "Bob"}',
        '{"bot_name": "Bob"}',
        '{"name": "Bob"}',
        '```json\n{"name": "select_speaker", "arguments": {"bot_name": "Bob"}}\n```',
        '<tool_call>\n{"name": "select_speaker", "arguments": {"bot_name": "Bob"}}\n</tool_call>',
        'Thinking... {"name": "select_speaker", "arguments": {"bot_name": "Bob"}}',
        'select_speaker(bot_name="Bob")',
        "select_speaker('Bob')",
        "I think Bob should speak next.",
        "Bob",
        "**BOB**",
    ],
)
def test_answers_written_as_text_are_read_at_rung_three(text: str) -> None:
    reading = read_text(text, SPEAK_ONLY)
    assert reading is not None
    assert (reading.action, reading.bot, reading.rung) == ("speak", "Bob", "text")


def test_text_hold_and_end_session_when_offered() -> None:
    hold = read_text("HOLD.", ALL)
    assert hold is not None and hold.action == "hold"
    end = read_text('end_session(reason="They agreed.")', ALL)
    assert end is not None and (end.action, end.reason) == ("end", "They agreed.")
    json_end = read_text('{"name": "end_session", "arguments": {"reason": "Done."}}', ALL)
    assert json_end is not None and json_end.reason == "Done."


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "Alice spoke last, so Bob or Carol should go.",
        "Nobody in particular.",
        '{"name": "select_speaker", "arguments": {"bot_name": "Mallory"}}',
        "{not json at all",
        "Alfred",
    ],
)
def test_text_without_one_clear_answer_is_unusable(text: str) -> None:
    assert read_text(text, SPEAK_ONLY) is None


def test_a_tool_call_wins_over_names_in_the_text() -> None:
    reading = read_reply("Alice could go.", [call("select_speaker", {"bot_name": "Bob"})], ALL)
    assert reading is not None and reading.bot == "Bob"


def test_offered_tools_follow_the_menu() -> None:
    names = [tool.function.name for tool in ALL.tools()]
    assert names == ["select_speaker", "hold", "end_session"]
    assert [tool.function.name for tool in SPEAK_ONLY.tools()] == ["select_speaker"]
    schema = SPEAK_ONLY.tools()[0].function.parameters
    assert schema["properties"]["bot_name"]["enum"] == ROSTER
    assert schema["required"] == ["bot_name"]
