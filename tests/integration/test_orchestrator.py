"""The orchestrator against the real LLM client and the mock backend over loopback.

The first tests call `Orchestrator.select` on a session built without a loop, one per
rung of the robustness ladder. The last ones run whole orchestrated sessions through
the manager, which picks `Orchestrator` for `turn_order: orchestrated`.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.llm.mock import Fault, MockLLM, MockReply, RecordedRequest
from engine.manager import SessionManager
from engine.orchestrator import Orchestrator
from engine.session import Session
from engine.speakers import Decision
from tests.integration.conftest import ManagerFactory
from tests.support.direct_session import bare_session, decide
from tests.support.engine import spec, watch

CONVERSATION = [("Alice", "Espresso is the only serious coffee."), ("Bob", "Tea, surely.")]


@pytest.fixture
async def manager(manager_factory: ManagerFactory) -> SessionManager:
    # These tests are about the tool-call ladder; structured output has its own tests.
    return await manager_factory(default_orchestrator_model="router-1", llm_structured_output="off")


@pytest.fixture
def make(manager: SessionManager) -> Any:
    async def build(**options: Any) -> Session:
        options.setdefault("turn_order", "orchestrated")
        options.setdefault("debug", True)
        return await bare_session(manager, spec(**options), CONVERSATION)

    return build


def tool_names(request: RecordedRequest) -> list[str]:
    return [tool.function.name for tool in request.tools]


# --- the prompt and the tools ----------------------------------------------------------------


async def test_request_has_the_roster_in_full_the_conversation_and_only_select_speaker(
    make: Any, mock: MockLLM
) -> None:
    session = await make()
    decision, data = await decide(session)
    assert decision == Decision("speak", bot="Alice")  # the mock's first pick of the roster
    assert (data["rung"], data["attempts"], data["tool"]) == ("tool_call", 1, "select_speaker")
    [request] = mock.requests
    assert request.model == "router-1"
    assert request.tool_choice == "auto"
    assert tool_names(request) == ["select_speaker"]
    enum = request.tools[0].function.parameters["properties"]["bot_name"]["enum"]
    assert enum == ["Alice", "Bob", "Carol"]
    system = request.system_prompt
    for name in ("Alice", "Bob", "Carol"):
        assert f"You are {name}, be brief." in system  # every bot's full system prompt
    assert [m.role for m in request.messages] == ["system", "user"]
    assert "Alice: Espresso is the only serious coffee.\nBob: Tea, surely." in (
        request.last_user_message
    )


async def test_hold_is_offered_only_when_talkers_can_take_part(make: Any, mock: MockLLM) -> None:
    await Orchestrator().select((await make(participation="autonomous")).turn_view())
    await Orchestrator().select((await make(participation="reactive")).turn_view())
    await Orchestrator().select((await make(participation="collaborative")).turn_view())
    assert [tool_names(r) for r in mock.requests] == [
        ["select_speaker"],
        ["select_speaker", "hold"],
        ["select_speaker", "hold"],
    ]
    assert "stay silent" in mock.requests[1].system_prompt


async def test_end_session_is_offered_only_with_a_goal(make: Any, mock: MockLLM) -> None:
    await Orchestrator().select((await make()).turn_view())
    await Orchestrator().select((await make(goal="Agree on one drink for the office.")).turn_view())
    assert tool_names(mock.requests[0]) == ["select_speaker"]
    assert tool_names(mock.requests[1]) == ["select_speaker", "end_session"]
    assert "Agree on one drink for the office." in mock.requests[1].system_prompt


async def test_a_long_conversation_is_trimmed_to_the_context_limit_keeping_the_latest(
    manager: SessionManager, mock: MockLLM
) -> None:
    lines = [
        ("Alice" if i % 2 else "Bob", f"Point number {i}: " + "coffee " * 40) for i in range(40)
    ]
    session = await bare_session(
        manager, spec(turn_order="orchestrated", max_context_tokens=600), lines
    )
    await Orchestrator().select(session.turn_view())
    [request] = mock.requests
    assert manager.deps.counter.count_chat(request.messages) <= 600
    assert "(earlier messages left out)" in request.last_user_message
    assert "Point number 39:" in request.last_user_message
    assert "Point number 0:" not in request.last_user_message


async def test_the_summary_replaces_the_messages_it_covers(make: Any, mock: MockLLM) -> None:
    session = await make()
    session.summary = "Alice praised espresso at length."
    session.summary_upto = 1
    await Orchestrator().select(session.turn_view())
    prompt = mock.requests[0].last_user_message
    assert "Alice praised espresso at length." in prompt
    assert "Espresso is the only serious coffee." not in prompt
    assert "Bob: Tea, surely." in prompt


# --- the robustness ladder -------------------------------------------------------------------


async def test_rung_two_reads_a_wrong_case_punctuated_name(make: Any, mock: MockLLM) -> None:
    mock.enqueue(MockReply(fault=Fault.TOOL_WRONG_CASE))  # select_speaker("ALICE!")
    decision, data = await decide(await make())
    assert decision == Decision("speak", bot="Alice")
    assert (data["rung"], data["attempts"]) == ("fuzzy_tool_call", 1)


@pytest.mark.parametrize("fault", [Fault.TOOL_TEXT_NAME, Fault.TOOL_JSON_TEXT])
async def test_rung_three_reads_the_answer_from_the_text(
    make: Any, mock: MockLLM, fault: Fault
) -> None:
    mock.enqueue(MockReply(fault=fault))
    decision, data = await decide(await make())
    assert decision == Decision("speak", bot="Alice")
    assert (data["rung"], data["attempts"]) == ("text", 1)


async def test_rung_four_retries_once_with_a_correction(make: Any, mock: MockLLM) -> None:
    mock.enqueue(
        MockReply(fault=Fault.TOOL_GARBAGE), MockReply.tool("select_speaker", bot_name="Bob")
    )
    decision, data = await decide(await make())
    assert decision == Decision("speak", bot="Bob")
    assert (data["rung"], data["attempts"]) == ("retry", 2)
    first, retry = mock.requests
    assert retry.messages[: len(first.messages)] == first.messages
    added = retry.messages[len(first.messages) :]
    assert [m.role for m in added] == ["assistant", "user"]
    assert "could not be used" in added[1].content and "Alice, Bob, Carol" in added[1].content


async def test_rung_five_falls_back_to_round_robin_after_two_unusable_replies(
    make: Any, mock: MockLLM
) -> None:
    mock.set_faults(["tool_garbage"])
    session = await make()
    session.record.bot_turns = 4  # round robin's next bot is then Bob
    decision, data = await decide(session)
    assert decision == Decision("speak", bot="Bob")
    assert (data["rung"], data["attempts"], data["tool"]) == ("round_robin", 2, None)
    assert len(mock.requests) == 2


async def test_an_llm_error_counts_as_a_failed_attempt_then_the_retry_is_used(
    make: Any, mock: MockLLM
) -> None:
    mock.enqueue(MockReply(status=500), MockReply.tool("select_speaker", bot_name="Carol"))
    decision, data = await decide(await make())
    assert decision == Decision("speak", bot="Carol")
    assert (data["rung"], data["attempts"], data["errors"]) == ("retry", 2, ["llm_server_error"])
    first, retry = mock.requests
    assert retry.messages == first.messages  # nothing to correct: the same question again


async def test_two_llm_errors_fall_back_to_round_robin(make: Any, mock: MockLLM) -> None:
    mock.set_handler(lambda request: MockReply(status=503))
    decision, data = await decide(await make())
    assert decision == Decision("speak", bot="Alice")
    assert data["rung"] == "round_robin"
    assert data["errors"] == ["llm_server_error", "llm_server_error"]


@pytest.mark.parametrize(
    "unusable",
    [
        MockReply.tool("pick_bot", bot_name="Bob"),
        MockReply.tool("hold"),
        MockReply.tool("end_session", reason="bored"),
    ],
    ids=["unknown-tool", "hold-not-offered", "end-not-offered"],
)
async def test_tools_not_offered_are_unusable(
    make: Any, mock: MockLLM, unusable: MockReply
) -> None:
    mock.enqueue(unusable, MockReply.tool("select_speaker", bot_name="Carol"))
    decision, data = await decide(await make())  # autonomous, no goal: only select_speaker offered
    assert decision == Decision("speak", bot="Carol")
    assert data["rung"] == "retry"


async def test_hold_and_end_session_become_decisions(make: Any, mock: MockLLM) -> None:
    mock.enqueue(MockReply.tool("hold"), MockReply.tool("end_session", reason="They agreed."))
    hold, _ = await decide(await make(participation="reactive"))
    end, _ = await decide(await make(goal="Agree."))
    assert hold == Decision("hold")
    assert end == Decision("end", reason="They agreed.")


# --- whole sessions --------------------------------------------------------------------------


def orchestrator_script(*picks: str) -> Any:
    """A mock handler: orchestrator calls get `picks` in order, then the mock's default;
    bots always get default replies."""
    queue = list(picks)

    def handler(request: RecordedRequest) -> MockReply | None:
        if not request.tools or not queue:
            return None
        pick = queue.pop(0)
        if pick.startswith("end:"):
            return MockReply.tool("end_session", reason=pick.removeprefix("end:"))
        if pick == "hold":
            return MockReply.tool("hold")
        return MockReply.tool("select_speaker", bot_name=pick)

    return handler


async def test_orchestrated_session_follows_the_orchestrators_picks(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_handler(orchestrator_script("Carol", "Alice", "Carol"))
    created = await manager.create(spec(turn_order="orchestrated", max_turns=3, debug=True))
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()
    assert [m.bot for m in watcher.of_type("bot_message")] == ["Carol", "Alice", "Carol"]
    assert [m.turn for m in watcher.of_type("bot_message")] == [1, 2, 3]
    assert [m.speaker for m in manager.history(handle)] == ["Carol", "Alice", "Carol"]
    routed = [e.data for e in watcher.of_type("debug") if e.category == "orchestrator"]
    assert [(d["bot"], d["rung"]) for d in routed] == [
        ("Carol", "tool_call"),
        ("Alice", "tool_call"),
        ("Carol", "tool_call"),
    ]
    assert [bool(r.tools) for r in mock.requests] == [True, False] * 3
    states = [e.state for e in watcher.of_type("state")]
    assert states.count("orchestrating") == 3


async def test_goal_session_ends_when_the_orchestrator_says_so(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_handler(orchestrator_script("Alice", "Bob", "end:They agreed on tea."))
    created = await manager.create(
        spec(turn_order="orchestrated", goal="Agree on one drink.", max_turns=10)
    )
    handle = manager.open(created.token)
    watcher = watch(manager, handle)
    await watcher.until_closed()
    assert [m.bot for m in watcher.of_type("bot_message")] == ["Alice", "Bob"]
    [end] = watcher.of_type("session_end")
    assert (end.reason, end.detail) == ("orchestrator", "They agreed on tea.")


async def test_hold_waits_for_the_next_talker_message(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_handler(orchestrator_script("Alice", "hold", "Bob"))
    created = await manager.create(
        spec(turn_order="orchestrated", participation="collaborative", debug=True)
    )
    handle = manager.open(created.token)
    talker = watch(manager, handle, "talker", "Dana")
    await manager.post(handle, talker.member, "Alice, what do you think?")
    await talker.wait_type("bot_message")
    await handle.loop.wait_until(lambda loop: loop.at_rest())
    assert handle.loop.loop_state == "awaiting_talker"
    assert len(mock.requests) == 3  # orchestrator, Alice, orchestrator (hold); nothing since
    assert mock.requests[2].tools and "Dana" in mock.requests[2].system_prompt
    await manager.post(handle, talker.member, "Everyone quiet now... Bob, your turn.")
    await talker.wait_type("bot_message", 2)
    assert [m.bot for m in talker.of_type("bot_message")][:2] == ["Alice", "Bob"]
    assert [m.speaker for m in manager.history(handle)][:4] == ["Dana", "Alice", "Dana", "Bob"]
    await manager.end(handle)
