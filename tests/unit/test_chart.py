"""The session chart: guarded moves in order, refusals that change nothing, reported moves."""

from __future__ import annotations

import pytest

from engine.chart import SessionChart
from engine.errors import InvalidState
from engine.speakers import Decision


class Driver:
    """A loop whose rules are plain attributes, recording what the chart tells it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.limit: str | None = None
        self.summary_due = False
        self.owed = True
        self.delay_due = False
        self.deliberates = False
        self.waiting = False
        self.decision: Decision | None = None
        self.failed = False

    def limit_reached(self) -> str | None:
        return self.limit

    def needs_summary(self) -> bool:
        return self.summary_due

    def owes_turn(self) -> bool:
        return self.owed

    def turn_delay_due(self) -> bool:
        return self.delay_due

    def orchestrated(self) -> bool:
        return self.deliberates

    def talker_waiting(self) -> bool:
        return self.waiting

    def choice(self) -> Decision | None:
        return self.decision

    def summary_failed(self) -> bool:
        return self.failed

    def rest(self) -> None:
        self.calls.append(("rest",))
        self.delay_due = False

    def wake(self) -> None:
        self.calls.append(("wake",))

    def hold(self) -> None:
        self.calls.append(("hold",))

    def finished(self, reason: str, detail: str | None) -> None:
        self.calls.append(("finish", reason, str(detail)))

    def state_changed(self, region: str, source: str, target: str, event: str) -> None:
        self.calls.append((region, source, target, event))


def chart(driver: Driver | None = None, start: str | None = None) -> SessionChart:
    return SessionChart(driver or Driver(), start=start)


def test_a_round_robin_turn_goes_idle_dispatching_idle() -> None:
    driver = Driver()
    session = chart(driver)
    assert (session.lifecycle, session.loop) == ("active", "idle")
    session.fire("next")
    session.fire("next")
    assert driver.calls == [
        ("loop", "idle", "dispatching", "next"),
        ("loop", "dispatching", "idle", "next"),
    ]


def test_idle_rules_are_tried_in_order() -> None:
    driver = Driver()
    session = chart(driver)
    # Everything holds at once: a pause asked comes first.
    driver.limit, driver.summary_due, driver.owed = "max_turns", True, False
    session.fire("pause")
    session.fire("next")
    assert session.loop == "paused"
    session.fire("resume")
    session.fire("next")
    # Then a limit, before a summary.
    session.fire("next")
    assert session.loop == "ended" and session.lifecycle == "ended"
    assert ("finish", "max_turns", "None") in driver.calls
    # The lifecycle ends with the session, before session_end is announced.
    ended = driver.calls.index(("lifecycle", "active", "ended", "end"))
    assert ended < driver.calls.index(("finish", "max_turns", "None"))


@pytest.mark.parametrize(
    ("summary", "owed", "deliberates", "target"),
    [
        (True, False, False, "summarizing"),
        (False, False, True, "awaiting_talker"),
        (False, True, True, "orchestrating"),
        (False, True, False, "dispatching"),
    ],
)
def test_idle_goes_where_the_first_holding_guard_says(
    summary: bool, owed: bool, deliberates: bool, target: str
) -> None:
    driver = Driver()
    driver.summary_due, driver.owed, driver.deliberates = summary, owed, deliberates
    session = chart(driver)
    session.fire("next")
    assert session.loop == target


def test_a_turn_delay_rests_in_idle_without_a_state_event() -> None:
    driver = Driver()
    driver.delay_due = True
    session = chart(driver)
    session.fire("next")
    assert session.loop == "idle"
    assert driver.calls == [("rest",)]
    session.fire("next")
    assert session.loop == "dispatching"


def test_awaiting_talker_moves_only_on_a_message_or_a_pause() -> None:
    driver = Driver()
    driver.owed = False
    session = chart(driver)
    session.fire("next")
    assert session.loop == "awaiting_talker"
    assert not session.allows("next")
    with pytest.raises(InvalidState, match="loop is awaiting_talker"):
        session.fire("next")
    driver.waiting = True
    assert session.allows("next")
    session.fire("next")
    assert session.loop == "idle"
    assert ("wake",) in driver.calls


def test_the_orchestrator_choice_decides_the_move() -> None:
    for decision, target, call in [
        (Decision("speak", bot="Bob"), "dispatching", None),
        (Decision("hold"), "awaiting_talker", ("hold",)),
        (Decision("end", reason="done"), "ended", ("finish", "orchestrator", "done")),
    ]:
        driver = Driver()
        driver.deliberates = True
        session = chart(driver)
        session.fire("next")
        assert session.loop == "orchestrating"
        driver.decision = decision
        session.fire("next")
        assert session.loop == target
        assert call is None or call in driver.calls


def test_a_pause_during_orchestrating_drops_the_choice() -> None:
    driver = Driver()
    driver.deliberates = True
    session = chart(driver)
    session.fire("next")
    session.fire("pause")
    driver.decision = Decision("speak", bot="Bob")
    session.fire("next")
    assert session.loop == "paused"


def test_a_pause_waits_for_the_turn_being_generated() -> None:
    driver = Driver()
    session = chart(driver)
    session.fire("next")
    session.fire("pause")
    assert (session.lifecycle, session.loop) == ("paused", "dispatching")
    session.fire("next")
    assert session.loop == "idle"
    session.fire("next")
    assert session.loop == "paused"
    assert not session.allows("next")  # until a client resumes
    session.fire("resume")
    session.fire("next")
    assert session.loop == "idle"


def test_a_failed_summary_ends_the_session() -> None:
    driver = Driver()
    driver.summary_due = True
    session = chart(driver)
    session.fire("next")
    driver.failed = True
    session.fire("next")
    assert session.loop == "ended"
    assert ("finish", "max_context", "summarization failed") in driver.calls


def test_refused_lifecycle_events_raise_invalid_state_and_change_nothing() -> None:
    driver = Driver()
    session = chart(driver)
    with pytest.raises(InvalidState, match="cannot resume while the session is active"):
        session.fire("resume")
    session.fire("pause")
    with pytest.raises(InvalidState, match="cannot pause while the session is paused"):
        session.fire("pause")
    before = list(driver.calls)
    session.fire("end")
    assert session.lifecycle == "ended" and session.loop == "idle"
    with pytest.raises(InvalidState, match="cannot pause while the session is ended"):
        session.fire("pause")
    assert driver.calls == [*before, ("lifecycle", "paused", "ended", "end")]


def test_finish_is_allowed_from_every_loop_state_but_ended() -> None:
    for steps in ([], ["next"]):
        for owed, deliberates in [(True, False), (False, False), (True, True)]:
            driver = Driver()
            driver.owed, driver.deliberates = owed, deliberates
            session = chart(driver)
            for event in steps:
                session.fire(event)
            left = session.loop
            session.fire("finish", reason="client_request", detail=None)
            assert session.loop == "ended"
            assert driver.calls[-2:] == [
                ("finish", "client_request", "None"),
                ("loop", left, "ended", "finish"),
            ]
            with pytest.raises(InvalidState):
                session.fire("finish", reason="client_request", detail=None)


def test_a_restored_session_starts_paused_or_ended_without_reporting_a_move() -> None:
    driver = Driver()
    paused = chart(driver, start="paused")
    assert (paused.lifecycle, paused.loop) == ("paused", "paused")
    assert driver.calls == []
    assert paused.allows("resume") and not paused.allows("next")
    paused.fire("resume")
    paused.fire("next")
    assert paused.loop == "idle"
    ended = chart(start="ended")
    assert (ended.lifecycle, ended.loop) == ("ended", "ended")
    with pytest.raises(InvalidState):
        ended.fire("resume")
