"""Memory across sessions against the real LLM client and the mock backend over loopback.

Whole sessions run through the manager, which calls `write_memory` when a session
ends; the mock answers memory calls with recognisable, numbered texts that fold in
the memory each call was shown.
"""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import InvalidSpec
from engine.llm.mock import MockLLM, MockReply, RecordedRequest
from engine.manager import SessionManager
from engine.memory import MEMORY_INSTRUCTIONS, write_memory
from tests.support.direct_session import bare_session
from tests.support.engine import WAIT_SECONDS, spec, watch


def is_memory_call(request: RecordedRequest) -> bool:
    return request.system_prompt == MEMORY_INSTRUCTIONS


class MemoryScript:
    """Memory calls get `MEMORY-n`, folding in the latest earlier memory the call was shown."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.written: list[str] = []

    def __call__(self, request: RecordedRequest) -> MockReply | None:
        if not is_memory_call(request):
            return None
        if self.fail:
            return MockReply(status=500, error_message="memory writer down")
        shown = [text for text in self.written if text in request.last_user_message]
        text = f"MEMORY-{len(self.written) + 1}: they met"
        if shown:
            text += f" [after: {shown[-1]}]"
        self.written.append(text)
        return MockReply(content=text)


async def run_to_end(manager: SessionManager, memory: str) -> tuple[str, str]:
    """Create a short session, let it end, wait for its memory; return (token, id)."""
    created = await manager.create(spec(["Alice", "Bob"], max_turns=2, memory=memory))
    handle = manager.open(created.token)
    await watch(manager, handle).until_closed()
    await wait_for_memory(manager, created.id)
    return created.token, created.id


async def wait_for_memory(manager: SessionManager, session_id: str) -> str:
    # The memory is written in the background after `session_end` goes out.
    await asyncio.wait_for(manager.settle(), WAIT_SECONDS)
    text = await manager.deps.store.load_memory(session_id)
    assert text is not None
    return text


async def test_a_chain_of_three_sessions_carries_the_first_memory_into_the_third(
    manager: SessionManager, mock: MockLLM
) -> None:
    script = MemoryScript()
    mock.set_handler(script)

    first_token, first_id = await run_to_end(manager, "new")
    assert await manager.deps.store.load_memory(first_id) == "MEMORY-1: they met"
    [first_call] = [r for r in mock.requests if is_memory_call(r)]
    assert "Alice:" in first_call.last_user_message  # the conversation itself was shown

    second_token, second_id = await run_to_end(manager, f"inherit:{first_token}")
    second_memory = await manager.deps.store.load_memory(second_id)
    assert second_memory == "MEMORY-2: they met [after: MEMORY-1: they met]"

    mock.requests.clear()
    _, third_id = await run_to_end(manager, f"inherit:{second_token}")
    bot_calls = [r for r in mock.requests if not is_memory_call(r)]
    assert len(bot_calls) == 2
    for request in bot_calls:
        assert "MEMORY-1: they met" in request.system_prompt  # the earliest memory
        assert "Memory from earlier conversations" in request.system_prompt
    third_memory = await manager.deps.store.load_memory(third_id)
    assert third_memory is not None and "MEMORY-1" in third_memory


async def test_inheriting_needs_the_full_token_not_the_observer_token(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_handler(MemoryScript())
    created = await manager.create(spec(["Alice", "Bob"], max_turns=2, memory="new"))
    await watch(manager, manager.open(created.token)).until_closed()
    with pytest.raises(InvalidSpec) as refused:
        await manager.create(spec(memory=f"inherit:{created.observer_token}"))
    assert "full token" in str(refused.value.issues)
    with pytest.raises(InvalidSpec):
        await manager.create(spec(memory="inherit:fsk_no-such-session"))


async def test_sessions_without_memory_make_no_memory_call(
    manager: SessionManager, mock: MockLLM
) -> None:
    session = await bare_session(manager, spec(["Alice", "Bob"]), [("Alice", "Espresso.")])
    await write_memory(session.turn_view(), manager.deps.store)
    assert mock.requests == []
    assert await manager.deps.store.load_memory(session.id) is None


async def test_a_failing_memory_call_keeps_the_inherited_memory_and_raises_nothing(
    manager: SessionManager, mock: MockLLM
) -> None:
    mock.set_handler(MemoryScript(fail=True))
    session = await bare_session(
        manager,
        spec(["Alice", "Bob"], memory="inherit:fsk_earlier"),
        [("Alice", "Espresso."), ("Bob", "Tea.")],
        memory="They argued about coffee last week.",
    )
    await write_memory(session.turn_view(), manager.deps.store)
    assert len([r for r in mock.requests if is_memory_call(r)]) == 2  # one retry
    assert await manager.deps.store.load_memory(session.id) == (
        "They argued about coffee last week."
    )


async def test_with_no_new_messages_the_inherited_memory_is_passed_on_without_a_call(
    manager: SessionManager, mock: MockLLM
) -> None:
    session = await bare_session(
        manager, spec(memory="inherit:fsk_earlier"), memory="They argued about coffee."
    )
    await write_memory(session.turn_view(), manager.deps.store)
    assert mock.requests == []
    assert await manager.deps.store.load_memory(session.id) == "They argued about coffee."


async def test_the_memory_call_folds_in_the_summary_and_only_the_messages_after_it(
    manager: SessionManager, mock: MockLLM
) -> None:
    script = MemoryScript()
    mock.set_handler(script)
    session = await bare_session(
        manager,
        spec(["Alice", "Bob"], memory="new"),
        [("Alice", "Espresso first."), ("Bob", "Tea first."), ("Alice", "Fine, both.")],
    )
    session.summary, session.summary_upto = "Alice and Bob disagreed on drinks.", 2
    await write_memory(session.turn_view(), manager.deps.store)
    [request] = mock.requests
    assert "Alice and Bob disagreed on drinks." in request.last_user_message
    assert "Alice: Fine, both." in request.last_user_message
    assert "Tea first." not in request.last_user_message
    assert await manager.deps.store.load_memory(session.id) == "MEMORY-1: they met"
