"""Structured output: the decision schema, the request fields per way, reading, the probe."""

from __future__ import annotations

import pytest

from engine.orchestrator.reading import read_structured
from engine.orchestrator.tools import Menu
from engine.structured import StructuredOutputProbe, ask_for

ROSTER = ["Alice", "Bob", "Dr. Who"]
ONLY_SPEAKERS = Menu(roster=ROSTER, hold=False, end=False)
EVERYTHING = Menu(roster=ROSTER, hold=True, end=True)


def test_the_plain_schema_is_a_required_bot_name_from_the_roster() -> None:
    schema = ONLY_SPEAKERS.decision_schema()
    assert schema["properties"]["bot_name"]["enum"] == ROSTER
    assert schema["required"] == ["bot_name"]
    assert schema["additionalProperties"] is False


def test_hold_and_end_add_an_action_enum_and_a_reason() -> None:
    schema = EVERYTHING.decision_schema()
    assert list(schema["properties"]) == ["action", "bot_name", "reason"]
    assert schema["properties"]["action"]["enum"] == ["select_speaker", "hold", "end_session"]
    assert schema["required"] == ["action", "bot_name", "reason"]


@pytest.mark.parametrize(
    ("mode", "fields"),
    [
        ("json_schema", {"type": "json_schema"}),
        ("json_object", {"type": "json_object"}),
    ],
)
def test_response_format_ways_carry_the_schema(mode: str, fields: dict[str, str]) -> None:
    schema = ONLY_SPEAKERS.decision_schema()
    ask = ask_for(mode, schema)  # type: ignore[arg-type]
    assert ask.response_format is not None
    assert ask.response_format["type"] == fields["type"]
    carried = ask.response_format.get("schema") or ask.response_format["json_schema"]["schema"]
    assert carried == schema
    assert ask.extra == {}


def test_the_ollama_way_sends_the_schema_as_format() -> None:
    schema = ONLY_SPEAKERS.decision_schema()
    ask = ask_for("format", schema)
    assert ask.response_format is None
    assert ask.extra == {"format": schema}


@pytest.mark.parametrize(
    ("content", "action", "bot", "reason"),
    [
        ('{"bot_name": "Bob"}', "speak", "Bob", None),
        ('{"bot_name": "dr. who"}', "speak", "Dr. Who", None),
        ('```json\n{"bot_name": "Alice"}\n```', "speak", "Alice", None),
        ('{"action": "select_speaker", "bot_name": "Bob", "reason": ""}', "speak", "Bob", None),
        ('{"action": "hold", "bot_name": "Alice", "reason": ""}', "hold", None, None),
        ('{"action": "end_session", "bot_name": "Bob", "reason": "Done."}', "end", None, "Done."),
    ],
)
def test_usable_json_answers_are_read_at_the_structured_rung(
    content: str, action: str, bot: str | None, reason: str | None
) -> None:
    reading = read_structured(content, EVERYTHING)
    assert reading is not None
    assert (reading.action, reading.bot, reading.reason, reading.rung) == (
        action,
        bot,
        reason,
        "structured_output",
    )


@pytest.mark.parametrize(
    "content",
    [
        "",
        "Bob should speak next.",
        '{"bot_name": "Dave"}',
        '{"action": "dance", "bot_name": "Bob"}',
        '{"action": 3, "bot_name": "Bob"}',
        '["Bob"]',
    ],
)
def test_unusable_json_answers_are_refused(content: str) -> None:
    assert read_structured(content, EVERYTHING) is None


def test_hold_is_unusable_when_not_offered() -> None:
    assert read_structured('{"action": "hold", "bot_name": "Bob"}', ONLY_SPEAKERS) is None


def test_the_probe_moves_on_after_the_limit_then_gives_up() -> None:
    probe = StructuredOutputProbe()
    seen = []
    for _ in range(5):
        seen.append(probe.mode())
        probe.note(usable=False, refused=False, limit=2, backend="b")
    assert seen == ["json_schema", "json_schema", "json_object", "json_object", None]


def test_a_refusal_moves_on_at_once_and_a_success_is_kept_for_good() -> None:
    probe = StructuredOutputProbe()
    probe.note(usable=False, refused=True, limit=5, backend="b")
    assert probe.mode() == "json_object"
    probe.note(usable=True, refused=False, limit=5, backend="b")
    for _ in range(10):
        probe.note(usable=False, refused=True, limit=5, backend="b")
    assert probe.mode() == "json_object"
