"""The pure parts of forks and transcripts: merging overrides, checking turns, rendering."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.errors import TurnInFlight, TurnNotFound, UnknownFormat
from engine.fork import copy_history, merge_fork_overrides, resume_point
from engine.history import Message
from engine.spec.models import SessionSpec
from engine.transcript import (
    TranscriptInfo,
    build_transcript,
    render_transcript,
    transcript_format,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
BASE = {
    "name": "Panel",
    "bots": [
        {"name": "Alice", "system_prompt": "A", "temperature": 0.5},
        {"name": "Bob", "system_prompt": "B"},
    ],
    "options": {"participation": "reactive", "max_turns": 10},
    "llm": None,
}


def message(turn: int, kind: str = "bot", status: str = "complete", **extra: object) -> Message:
    speaker = "Dana" if kind == "talker" else "Alice"
    return Message.model_validate(
        {"turn": turn, "kind": kind, "speaker": speaker, "status": status, "ts": NOW, **extra}
    )


def test_overrides_merge_bots_by_name_and_mappings_key_by_key() -> None:
    merged = merge_fork_overrides(
        BASE,
        {
            "bots": [{"name": "bob", "temperature": 1.2}, {"name": "Carol", "system_prompt": "C"}],
            "options": {"max_turns": 3},
            "llm": {"model": "qwen"},
            "name": "Panel, again",
        },
    )
    assert merged["bots"] == [
        {"name": "Alice", "system_prompt": "A", "temperature": 0.5},
        {"name": "Bob", "system_prompt": "B", "temperature": 1.2},
        {"name": "Carol", "system_prompt": "C"},
    ]
    assert merged["options"] == {"participation": "reactive", "max_turns": 3}
    assert merged["llm"] == {"model": "qwen"}
    assert merged["name"] == "Panel, again"
    assert BASE["bots"][1] == {"name": "Bob", "system_prompt": "B"}  # the base is unchanged


def test_overrides_of_the_wrong_shape_replace_the_value_for_the_checks_to_refuse() -> None:
    assert merge_fork_overrides(BASE, {"bots": "none"})["bots"] == "none"
    assert merge_fork_overrides(BASE, {"bots": [7]})["bots"][-1] == 7


def test_a_copy_is_refused_past_the_history_or_over_a_reserved_slot() -> None:
    history = [message(1, "talker"), message(2, status="reserved"), message(3, "talker")]
    assert [m.turn for m in copy_history(history, 1)] == [1]
    for turn in (0, 4, -1):
        with pytest.raises(TurnNotFound):
            copy_history(history, turn)
    for turn in (2, 3):
        with pytest.raises(TurnInFlight):
            copy_history(history, turn)


def test_a_fork_answers_the_talker_messages_its_copy_ends_with() -> None:
    talked = [message(1, "talker"), message(2), message(3, "talker"), message(4, "talker")]
    assert resume_point(talked, "reactive") == (True, 2)
    assert resume_point(talked[:2], "reactive") == (True, 0)
    assert resume_point([message(1)], "collaborative") == (False, 0)
    assert resume_point([message(1)], "autonomous") == (True, 0)


def test_formats_names_and_file_names() -> None:
    assert transcript_format(None) == "markdown"
    assert transcript_format("") == "markdown"
    assert transcript_format("html") == "html"
    with pytest.raises(UnknownFormat):
        transcript_format("HTML")
    spec = SessionSpec.model_validate({**BASE, "name": 'Coffee "debate" / 2 ☕'})
    info = TranscriptInfo(session_id="abc123", state="active", created_at=NOW, exported_at=NOW)
    transcript = build_transcript(spec, [], info)
    rendered = render_transcript(transcript, "markdown")
    assert rendered.filename == "coffee-debate-2-abc123.md"
    assert rendered.content_disposition == 'attachment; filename="coffee-debate-2-abc123.md"'
    unnamed = build_transcript(SessionSpec.model_validate({**BASE, "name": None}), [], info)
    assert render_transcript(unnamed, "html").filename == "session-abc123.html"


def test_markdown_escapes_names_and_quotes_every_message() -> None:
    spec = SessionSpec.model_validate({**BASE, "name": "A *bold* <name>"})
    info = TranscriptInfo(session_id="abc123", state="active", created_at=NOW, exported_at=NOW)
    messages = [
        message(1, "talker", content="line one\n\n# not a heading"),
        message(2, status="failed"),
    ]
    text = render_transcript(build_transcript(spec, messages, info), "markdown").body
    assert text.startswith("# A \\*bold\\* \\<name\\>\n")
    assert "> line one\n>\n> # not a heading\n" in text
    assert "*2026-01-02 03:04:05 UTC*" in text
    assert "### 2 · Alice\n" in text and "tombstone" in text


def test_html_escapes_everything_and_loads_nothing() -> None:
    spec = SessionSpec.model_validate({**BASE, "name": "<script>alert(1)</script>"})
    info = TranscriptInfo(session_id="abc123", state="active", created_at=NOW, exported_at=NOW)
    messages = [message(1, "talker", content='<img src=x onerror="alert(1)">')]
    page = render_transcript(build_transcript(spec, messages, info), "html").body
    assert "<script" not in page and "<img" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    policy = '<meta http-equiv="Content-Security-Policy" content="default-src &#x27;none&#x27;;'
    assert policy in page
