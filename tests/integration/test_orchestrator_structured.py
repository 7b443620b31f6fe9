"""The structured-output rung: the decision asked for as JSON first, against the mock.

The first tests call `Orchestrator.select` on sessions built without a loop; the last
one runs a whole orchestrated session through the HTTP API and a WebSocket observer.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from engine.llm.mock import Fault, MockLLM, MockReply
from engine.manager import SessionManager
from engine.orchestrator.prompt import ORCHESTRATOR_STRUCTURED_MAX_TOKENS
from engine.session import Session
from engine.speakers import Decision
from engine.spec.models import SessionSpec
from engine.structured import STRUCTURED_OUTPUT_PROBE_FAILURES
from tests.integration.conftest import (
    ManagerFactory,
    ServerFactory,
    create_session,
    spec_dict,
    ws_join,
)
from tests.support.direct_session import bare_session, decide
from tests.support.engine import WAIT_SECONDS, spec

CONVERSATION = [("Alice", "Espresso is the only serious coffee."), ("Bob", "Tea, surely.")]
ROSTER = ["Alice", "Bob", "Carol"]


@pytest.fixture
async def manager(manager_factory: ManagerFactory) -> SessionManager:
    return await manager_factory()


async def make(manager: SessionManager, **options: Any) -> Session:
    options.setdefault("turn_order", "orchestrated")
    options.setdefault("debug", True)
    return await bare_session(manager, spec(**options), CONVERSATION)


def json_reply(**answer: Any) -> MockReply:
    return MockReply(content=json.dumps(answer))


async def test_the_first_call_asks_for_json_whose_bot_name_is_the_roster(
    manager: SessionManager, mock: MockLLM
) -> None:
    decision, data = await decide(await make(manager))

    assert decision == Decision("speak", bot="Alice")  # the mock's first pick of the roster
    assert (data["rung"], data["attempts"], data["structured_output"]) == (
        "structured_output",
        1,
        "json_schema",
    )
    [request] = mock.requests
    assert request.tools == []
    assert request.max_tokens == ORCHESTRATOR_STRUCTURED_MAX_TOKENS
    assert request.response_format is not None
    assert request.response_format["type"] == "json_schema"
    schema = request.response_format["json_schema"]["schema"]
    assert schema["properties"] == {
        "bot_name": {
            "type": "string",
            "enum": ROSTER,
            "description": "Exact name of the bot that speaks next.",
        }
    }
    assert schema["required"] == ["bot_name"]
    assert schema["additionalProperties"] is False
    assert "JSON object" in request.system_prompt and "select_speaker" not in request.system_prompt
    assert "Bob: Tea, surely." in request.last_user_message


async def test_with_talkers_and_a_goal_the_schema_has_an_action_and_a_reason(
    manager: SessionManager, mock: MockLLM
) -> None:
    session = await make(manager, participation="reactive", goal="Agree on one drink.")
    mock.enqueue(json_reply(action="hold", bot_name="Alice", reason=""))
    mock.enqueue(json_reply(action="end_session", bot_name="Bob", reason="They agreed on tea."))

    hold, first = await decide(session)
    end, second = await decide(session)

    assert hold == Decision("hold")
    assert end == Decision("end", reason="They agreed on tea.")
    assert first["rung"] == second["rung"] == "structured_output"
    assert first["tool"] == "hold"
    schema = mock.requests[0].response_format["json_schema"]["schema"]  # type: ignore[index]
    assert list(schema["properties"]) == ["action", "bot_name", "reason"]
    assert schema["properties"]["action"]["enum"] == ["select_speaker", "hold", "end_session"]


async def test_an_unusable_json_answer_falls_back_to_the_tool_call(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.enqueue(json_reply(bot_name="Dave"))  # not in the roster

    decision, data = await decide(await make(manager))

    assert decision == Decision("speak", bot="Alice")
    assert (data["rung"], data["attempts"]) == ("tool_call", 2)
    structured, tools = mock.requests
    assert structured.response_format is not None and not structured.tools
    assert tools.response_format is None and tools.tools


async def test_auto_moves_to_json_object_when_json_schema_is_ignored_and_keeps_it(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_structured_output(["json_object"])  # like llama-cpp-python's server
    limit = STRUCTURED_OUTPUT_PROBE_FAILURES

    rungs = []
    for _ in range(limit + 2):
        _, data = await decide(await make(manager))
        rungs.append((data["rung"], data["structured_output"]))

    assert (
        rungs == [("tool_call", "json_schema")] * limit + [("structured_output", "json_object")] * 2
    )
    asked = [r.response_format["type"] for r in mock.requests if r.response_format]
    assert asked == ["json_schema"] * limit + ["json_object"] * 2
    assert mock.requests[-1].response_format == {
        "type": "json_object",
        "schema": mock.requests[0].response_format["json_schema"]["schema"],  # type: ignore[index]
    }


# llama-cpp-python 0.3.36 answers `"type": "json_schema"` with this 500 (verbatim, less its
# traceback line); an OpenAI-style server with a 400.
LLAMA_CPP_PYTHON_REFUSAL = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
    "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
    "'ctx': {'expected': \"'text' or 'json_object'\"}}"
)


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (400, "response_format is not supported", "llm_rejected"),
        (500, LLAMA_CPP_PYTHON_REFUSAL, "llm_server_error"),
    ],
    ids=["http-400", "llama-cpp-python-500"],
)
async def test_a_backend_that_refuses_json_schema_is_asked_another_way_at_once(
    manager: SessionManager, mock: MockLLM, status: int, message: str, code: str
) -> None:
    mock.enqueue(MockReply(status=status, error_message=message))

    first, data = await decide(await make(manager))
    _, again = await decide(await make(manager))

    assert first == Decision("speak", bot="Alice")
    assert (data["rung"], data["errors"]) == ("tool_call", [code])
    assert (again["rung"], again["structured_output"]) == ("structured_output", "json_object")


async def test_a_passing_server_error_counts_as_one_unusable_answer(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.enqueue(MockReply(status=503, error_message="model is loading"))

    _, data = await decide(await make(manager))
    _, again = await decide(await make(manager))

    assert data["rung"] == "tool_call"
    assert (again["rung"], again["structured_output"]) == ("structured_output", "json_schema")


async def test_when_every_way_fails_auto_stops_asking_for_structured_output(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_structured_output([])
    limit = STRUCTURED_OUTPUT_PROBE_FAILURES
    for _ in range(2 * limit):
        await decide(await make(manager))
    mock.requests.clear()

    decision, data = await decide(await make(manager))

    assert (data["rung"], data["attempts"], data["structured_output"]) == ("tool_call", 1, None)
    [request] = mock.requests
    assert request.response_format is None and request.tools
    assert decision.action == "speak"


async def test_a_confirmed_way_is_kept_after_a_bad_answer(
    manager: SessionManager, mock: MockLLM
) -> None:
    await decide(await make(manager))  # json_schema works: confirmed
    limit = STRUCTURED_OUTPUT_PROBE_FAILURES
    mock.enqueue(*[MockReply(fault=Fault.STRUCTURED_IGNORED)] * limit)
    for _ in range(limit):
        await decide(await make(manager))

    _, data = await decide(await make(manager))

    assert (data["rung"], data["structured_output"]) == ("structured_output", "json_schema")


async def test_ollama_format_sends_the_schema_in_format(
    manager_factory: ManagerFactory, mock: MockLLM
) -> None:
    manager = await manager_factory(llm_structured_output="format")

    decision, data = await decide(await make(manager))

    assert (decision.bot, data["rung"], data["structured_output"]) == (
        "Alice",
        "structured_output",
        "format",
    )
    [request] = mock.requests
    assert request.response_format is None
    assert isinstance(request.format, dict)
    assert request.format["properties"]["bot_name"]["enum"] == ROSTER


async def test_a_spec_can_turn_structured_output_off_for_its_backend(
    manager: SessionManager, mock: MockLLM
) -> None:
    session = await bare_session(
        manager,
        spec_from({**spec_dict(turn_order="orchestrated"), "llm": {"structured_output": "off"}}),
        CONVERSATION,
    )

    decision, _ = await decide(session)

    [request] = mock.requests
    assert request.response_format is None and request.tools
    assert decision == Decision("speak", bot="Alice")


def spec_from(data: dict[str, Any]) -> SessionSpec:
    data["options"]["debug"] = True
    return SessionSpec.model_validate(data)


async def test_an_orchestrated_session_over_the_api_is_routed_by_structured_output(
    server_factory: ServerFactory, mock: MockLLM
) -> None:
    server = await server_factory()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
        created = await create_session(
            client, spec_dict(turn_order="orchestrated", max_turns=4, debug=True)
        )
        observer = await ws_join(server, created["observer_token"], since=0)
        await observer.wait_closed()

    decisions = [e["data"] for e in observer.of_type("debug") if e["category"] == "orchestrator"]
    assert [(d["bot"], d["rung"], d["attempts"]) for d in decisions] == [
        (name, "structured_output", 1) for name in [*ROSTER, "Alice"]
    ]
    assert [e["bot"] for e in observer.of_type("bot_message")] == [*ROSTER, "Alice"]
    orchestrator_calls = [r for r in mock.requests if r.response_format is not None]
    assert len(orchestrator_calls) == 4 and not any(r.tools for r in mock.requests)
