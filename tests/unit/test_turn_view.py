"""The narrow view a turn's parts get: which model each purpose asks, and what the
"messages after the summary" are."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine.config import Settings
from engine.history import History, Message
from engine.logs import session_logger
from engine.prompts import speaker_line
from engine.spec.models import SessionSpec
from engine.tokens import get_counter
from engine.turn_view import TurnView

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SETTINGS = Settings(default_bot_model="server-bot", default_orchestrator_model="server-orch")


def view(spec: dict[str, Any], history: History | None = None, summary_upto: int = 0) -> TurnView:
    def ignore(*_: Any, **__: Any) -> None:
        return None

    return TurnView(
        session_id="s1",
        spec=SessionSpec.model_validate(spec),
        settings=SETTINGS,
        history=history or History(),
        summary="earlier" if summary_upto else None,
        summary_upto=summary_upto,
        memory=None,
        bot_turns=0,
        context_tokens=0,
        context_limit=1000,
        counter=get_counter("cl100k_base"),
        llm=None,  # type: ignore[arg-type]  # no call is made here
        backend=None,  # type: ignore[arg-type]
        participant_names=list,
        log=session_logger("test", "s1"),
        emit=ignore,
        debug=ignore,
        debug_enabled=False,
        warn=ignore,
    )


def message(turn: int, status: str = "complete") -> Message:
    return Message.model_validate(
        {
            "turn": turn,
            "kind": "talker",
            "speaker": "Dana",
            "content": f"line {turn}",
            "status": status,
            "ts": T0,
        }
    )


def test_each_purpose_asks_its_model_with_the_server_defaults_last() -> None:
    bare = view({"bots": [{"name": "Alice"}, {"name": "Bob", "model": "bob-model"}]})
    assert bare.model_for("bot", "Alice") == "server-bot"
    assert bare.model_for("bot", "Bob") == "bob-model"
    assert bare.model_for("summary") == bare.model_for("memory") == "server-bot"
    assert bare.model_for("orchestrator") == "server-orch"
    spec = {
        "bots": [{"name": "Alice"}, {"name": "Bob", "model": "bob-model"}],
        "llm": {"model": "spec-model", "orchestrator_model": "spec-orch"},
    }
    chosen = view(spec)
    assert chosen.model_for("bot", "Alice") == "spec-model"
    assert chosen.model_for("bot", "Bob") == "bob-model"
    assert chosen.model_for("summary") == chosen.model_for("memory") == "spec-model"
    assert chosen.model_for("orchestrator") == "spec-orch"


def test_since_summary_is_the_complete_messages_after_the_summary() -> None:
    history = History([message(1), message(2), message(3, status="failed"), message(4)])
    seen = view({"bots": [{"name": "Alice"}]}, history, summary_upto=1)
    assert [m.turn for m in seen.since_summary()] == [2, 4]
    assert [m.turn for m in seen.since_summary(3)] == [2]


def test_a_transcript_line_is_name_colon_text() -> None:
    assert speaker_line(message(7)) == "Dana: line 7"
