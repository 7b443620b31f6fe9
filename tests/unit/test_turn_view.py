"""The narrow view a turn's parts get: which model each purpose asks, and what the
"messages after the summary" are."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine.config import Settings
from engine.history import History, Message
from engine.llm.client import Backend
from engine.logs import session_logger
from engine.prompts import speaker_line
from engine.spec.models import SessionSpec
from engine.tokens import get_counter
from engine.turn_view import TurnView

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SETTINGS = Settings(default_bot_model="server-bot", default_orchestrator_model="server-orch")


SESSION = Backend(base_url="http://127.0.0.1:8080/v1")
OLLAMA = Backend(base_url="http://127.0.0.1:11434/v1", name="ollama")
VLLM = Backend(base_url="http://127.0.0.1:8001/v1", name="vllm", model="vllm-model")


def view(
    spec: dict[str, Any],
    history: History | None = None,
    summary_upto: int = 0,
    backends: dict[str, Backend] | None = None,
) -> TurnView:
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
        backend=SESSION,
        participant_names=list,
        log=session_logger("test", "s1"),
        emit=ignore,
        debug=ignore,
        debug_enabled=False,
        warn=ignore,
        backends=backends or {},
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


def test_each_purpose_goes_to_the_backend_it_names_else_the_sessions() -> None:
    spec = {
        "bots": [{"name": "Alice", "backend": "ollama"}, {"name": "Bob"}],
        "llm": {"orchestrator_backend": "vllm"},
    }
    chosen = view(spec, backends={"ollama": OLLAMA, "vllm": VLLM})
    assert chosen.backend_for("bot", "Alice") is OLLAMA
    assert chosen.backend_for("bot", "Bob") is SESSION
    assert chosen.backend_for("orchestrator") is VLLM
    assert chosen.backend_for("summary") is chosen.backend_for("memory") is SESSION
    spec["llm"] = {"summarizer_backend": "ollama"}
    summarized = view(spec, backends={"ollama": OLLAMA})
    assert summarized.backend_for("summary") is summarized.backend_for("memory") is OLLAMA
    assert summarized.backend_for("orchestrator") is SESSION


def test_a_name_the_server_lost_falls_back_to_the_sessions_backend() -> None:
    restored = view({"bots": [{"name": "Alice", "backend": "gone"}]}, backends={})
    assert restored.backend_for("bot", "Alice") is SESSION
    assert restored.model_for("bot", "Alice") == "server-bot"


def test_models_most_specific_first_across_spec_and_named_backends() -> None:
    backends = {"ollama": OLLAMA, "vllm": VLLM}
    spec: dict[str, Any] = {
        "bots": [
            {"name": "Alice", "backend": "vllm"},
            {"name": "Bob", "backend": "vllm", "model": "bob-model"},
            {"name": "Carol", "backend": "ollama"},
            {"name": "Dan"},
        ],
    }
    bare = view(spec, backends=backends)
    assert bare.model_for("bot", "Alice") == "vllm-model"  # its backend's model
    assert bare.model_for("bot", "Bob") == "bob-model"  # its own wins
    assert bare.model_for("bot", "Carol") == "server-bot"  # ollama names none
    assert bare.model_for("bot", "Dan") == "server-bot"
    assert bare.model_for("orchestrator") == "server-orch"

    spec["llm"] = {"backend": "vllm", "model": "spec-model", "orchestrator_backend": "ollama"}
    session = view(spec, backends=backends)
    assert session.model_for("bot", "Alice") == "vllm-model"  # its own backend's, first
    assert session.model_for("bot", "Carol") == "spec-model"  # then llm.model
    assert session.model_for("bot", "Dan") == "spec-model"
    assert session.model_for("summary") == "spec-model"
    # No orchestrator_model, and ollama names none: llm.backend's model.
    assert session.model_for("orchestrator") == "vllm-model"

    spec["llm"] = {"backend": "vllm", "summarizer_backend": "ollama"}
    named = view(spec, backends=backends)
    assert named.model_for("bot", "Dan") == "vllm-model"  # llm.backend's model
    assert named.model_for("summary") == named.model_for("memory") == "vllm-model"
    assert named.model_for("orchestrator") == "vllm-model"


def test_since_summary_is_the_complete_messages_after_the_summary() -> None:
    history = History([message(1), message(2), message(3, status="failed"), message(4)])
    seen = view({"bots": [{"name": "Alice"}]}, history, summary_upto=1)
    assert [m.turn for m in seen.since_summary()] == [2, 4]
    assert [m.turn for m in seen.since_summary(3)] == [2]


def test_a_transcript_line_is_name_colon_text() -> None:
    assert speaker_line(message(7)) == "Dana: line 7"
