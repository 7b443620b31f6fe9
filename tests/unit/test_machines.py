"""The lifecycle and loop machines: allowed moves, refusals that change nothing, callbacks."""

from __future__ import annotations

import pytest

from engine.errors import InvalidState
from engine.machines import LifecycleMachine, LoopMachine


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def on_state(self, machine: str, source: str, target: str, event: str) -> None:
        self.calls.append(("state", machine, source, target, event))

    def on_dispatch(self, bot: str) -> None:
        self.calls.append(("dispatch", bot))

    def on_wake(self) -> None:
        self.calls.append(("wake",))

    def on_finish(self, reason: str, detail: str | None) -> None:
        self.calls.append(("finish", reason))


def test_a_turn_goes_idle_dispatching_idle_and_reserves_via_callback() -> None:
    rec = Recorder()
    loop = LoopMachine(rec)
    loop.fire("dispatch", bot="Alice")
    loop.fire("turn_done")
    assert rec.calls == [
        ("dispatch", "Alice"),
        ("state", "loop", "idle", "dispatching", "dispatch"),
        ("state", "loop", "dispatching", "idle", "turn_done"),
    ]


def test_refused_event_raises_invalid_state_and_changes_nothing() -> None:
    rec = Recorder()
    loop = LoopMachine(rec)
    loop.fire("dispatch", bot="Alice")
    before = list(rec.calls)
    with pytest.raises(InvalidState):
        loop.fire("pause")  # a reply being generated is finished first
    assert loop.state == "dispatching"
    assert rec.calls == before


def test_orchestrator_can_choose_hold_or_dispatch() -> None:
    loop = LoopMachine(Recorder())
    loop.fire("choose")
    loop.fire("hold")
    assert loop.state == "awaiting_talker"
    loop.fire("wake")
    loop.fire("choose")
    loop.fire("dispatch", bot="Bob")
    assert loop.state == "dispatching"


def test_finish_is_allowed_from_every_state_but_ended() -> None:
    for path in ([], ["choose"], ["wait"], ["summarize"], ["pause"], ["dispatch"]):
        rec = Recorder()
        loop = LoopMachine(rec)
        for event in path:
            loop.fire(event, bot="A") if event == "dispatch" else loop.fire(event)
        loop.fire("finish", reason="client_request", detail=None)
        assert loop.state == "ended"
        assert ("finish", "client_request") in rec.calls
        with pytest.raises(InvalidState):
            loop.fire("finish", reason="client_request", detail=None)


def test_lifecycle_resume_when_not_paused_is_refused() -> None:
    life = LifecycleMachine(Recorder())
    with pytest.raises(InvalidState, match="resume"):
        life.fire("resume")
    life.fire("pause")
    life.fire("resume")
    life.fire("end")
    with pytest.raises(InvalidState):
        life.fire("pause")
    assert life.state == "ended"


def test_allows_reports_the_current_options() -> None:
    loop = LoopMachine(Recorder())
    assert loop.allows("dispatch") and loop.allows("pause")
    assert not loop.allows("turn_done") and not loop.allows("resume")
