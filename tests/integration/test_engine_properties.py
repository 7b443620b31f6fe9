"""Loop-level invariants under random interleavings of talkers, faults, pauses and ends."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import InvalidState
from engine.llm.mock import MockLLM, MockReply
from engine.llm.mock.models import Fault
from engine.manager import SessionManager
from tests.support.engine import make_settings, spec, watch

ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("talk"), st.integers(0, 1)),
        st.tuples(st.just("pause"), st.just(0)),
        st.tuples(st.just("resume"), st.just(0)),
        st.tuples(st.just("wait"), st.integers(1, 30)),
    ),
    min_size=1,
    max_size=14,
)
REPLIES = st.lists(
    st.sampled_from(["ok", "slow", "http_500", "drop", "cut_stream", "think", "impersonate"]),
    min_size=1,
    max_size=12,
)


def scripted(kind: str) -> MockReply:
    if kind == "ok":
        return MockReply()
    if kind == "slow":
        return MockReply(delay_ms=40)
    return MockReply(fault=Fault(kind))


async def scenario(
    actions: list[tuple[str, int]], replies: list[str], rectify: bool, stream: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with MockLLM() as mock:
            mock.enqueue(*[scripted(kind) for kind in replies])
            manager = SessionManager(make_settings(Path(tmp), mock.base_url))
            await manager.start()
            try:
                await run_scenario(manager, actions, rectify, stream)
            finally:
                await manager.close()


async def run_scenario(
    manager: SessionManager, actions: list[tuple[str, int]], rectify: bool, stream: bool
) -> None:
    created = await manager.create(
        spec(
            ["Alice", "Bob"],
            participation="collaborative",
            max_talkers=2,
            rectify_history=rectify,
            stream_tokens=stream,
            max_turns=8,
        )
    )
    handle = manager.open(created.token)
    observer = watch(manager, handle)
    talkers = [watch(manager, handle, "talker", n) for n in ("Dana", "Eli")]
    sent: list[str] = []
    for index, (action, arg) in enumerate(actions):
        if handle.loop.state == "ended":
            break
        with contextlib.suppress(InvalidState):
            if action == "talk":
                text = f"message {index}"
                await manager.post(handle, talkers[arg].member, text)
                sent.append(text)
            elif action == "pause":
                await manager.pause(handle)
            elif action == "resume":
                await manager.resume(handle)
            else:
                await asyncio.sleep(arg / 1000)
    with contextlib.suppress(InvalidState):
        await manager.end(handle)
    await observer.until_closed()
    check_invariants(manager, handle, observer, sent)


def check_invariants(manager: SessionManager, handle: Any, observer: Any, sent: list[str]) -> None:
    history = manager.history(handle)
    # Positions unique, gapless; no slot left reserved after the end.
    assert [m.turn for m in history] == list(range(1, len(history) + 1))
    assert all(m.status in ("complete", "failed") for m in history)
    # Every talker message is in history, in the order it was sent.
    assert [m.content for m in history if m.kind == "talker"] == sent
    # Events: strictly increasing seq with no gap after the first history snapshot.
    seqs = [e.seq for e in observer.events[1:]]
    assert seqs == list(range(observer.events[0].seq + 1, observer.events[0].seq + 1 + len(seqs)))
    # Every broadcast message matches history at its position; each position at most once.
    placed = observer.of_type("bot_message", "talker_message")
    assert len({e.turn for e in placed}) == len(placed)
    for event in placed:
        assert history[event.turn - 1].content == event.content
    failed = {e.turn for e in observer.of_type("turn_end") if e.status == "failed"}
    assert failed == {m.turn for m in history if m.status == "failed"}
    # Exactly one end.
    assert len(observer.of_type("session_end")) == 1


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(actions=ACTIONS, replies=REPLIES, rectify=st.booleans(), stream=st.booleans())
def test_history_and_events_stay_coherent_under_random_interleavings(
    actions: list[tuple[str, int]], replies: list[str], rectify: bool, stream: bool
) -> None:
    asyncio.run(scenario(actions, replies, rectify, stream))
