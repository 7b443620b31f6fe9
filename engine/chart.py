"""The session chart: one state chart that says what may happen, and when.

A session is two things at once, drawn as the two regions of one parallel state:

- **lifecycle**, what clients asked for: `active`, `pause_asked`, `end_asked`
  (reported to clients as active, paused, ended);
- **loop**, what the driver is doing: `idle`, `awaiting_talker`, `orchestrating`,
  `dispatching`, `summarizing`, `paused`.

The driver (`engine.loop.SessionLoop`) does the work of the loop state it is in (run
a turn, ask the orchestrator, wait for a talker...), then sends `next`: the chart
takes the first of that state's transitions whose guard holds, so the order of the
alternatives below is the order of the rules. A client's pause only asks: the loop
reaches `paused` at its next step, after a reply being generated is recorded.

An event the chart does not allow now raises `InvalidState` and changes nothing.
The diagrams in `docs/` are drawn from this class (`fellowship diagrams`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from statemachine import State, StateChart
from statemachine.exceptions import TransitionNotAllowed

from engine.errors import InvalidState

if TYPE_CHECKING:
    from engine.speakers import Decision

#: How each lifecycle state is reported to clients (the status `state` field).
LIFECYCLE_NAMES = {"active": "active", "pause_asked": "paused", "end_asked": "ended"}
#: The loop states, as the `state` event reports them.
LOOP_STATES = (
    "idle",
    "awaiting_talker",
    "orchestrating",
    "dispatching",
    "summarizing",
    "paused",
    "ended",
)
_LIFECYCLE_EVENTS = frozenset({"pause", "resume", "end"})


class LoopDriver(Protocol):
    """What the chart asks the session loop (guards) and tells it (actions)."""

    def limit_reached(self) -> str | None:
        """The end reason of a limit reached (`max_turns`, `max_time`, `max_context`), if any."""
        ...

    def needs_summary(self) -> bool:
        """Whether the context is full enough to be summarized now."""
        ...

    def owes_turn(self) -> bool:
        """Whether a bot turn is owed (started, and in reactive mode a reply is owed)."""
        ...

    def turn_delay_due(self) -> bool:
        """Whether the spec's `turn_delay` is owed after the last bot turn."""
        ...

    def orchestrated(self) -> bool:
        """Whether choosing the speaker is a call of its own (the orchestrator)."""
        ...

    def talker_waiting(self) -> bool:
        """Whether a talker message has come that no batch has answered yet."""
        ...

    def choice(self) -> Decision | None:
        """What the orchestrator chose on its last call (None when it has not chosen)."""
        ...

    def summary_failed(self) -> bool:
        """Whether the last summarization failed."""
        ...

    def rest(self) -> None:
        """Take the turn delay before the next decision."""

    def wake(self) -> None:
        """A talker message woke the loop: a new batch of replies is owed."""

    def hold(self) -> None:
        """The orchestrator holds: the messages it saw no longer end the wait."""

    def finished(self, reason: str, detail: str | None) -> None:
        """The session ended: emit `session_end`, close streams."""

    def state_changed(self, region: str, source: str, target: str, event: str) -> None:
        """A region moved (`lifecycle` or `loop`): log it and emit `state`/debug events."""


class SessionChart(StateChart[Any]):
    """One session: its lifecycle beside its loop, and the session's end."""

    # A refused event is an error, not a no-op; an error in a guard or an action
    # reaches the caller instead of becoming an `error.execution` event.
    allow_event_without_transition = False
    catch_errors_as_events = False

    class session(State.Parallel):
        class lifecycle(State.Compound):
            active = State(initial=True)
            pause_asked = State()
            end_asked = State()

            pause = active.to(pause_asked)
            resume = pause_asked.to(active)
            end = active.to(end_asked) | pause_asked.to(end_asked)

        class loop(State.Compound):
            idle = State(initial=True)
            awaiting_talker = State()
            orchestrating = State()
            dispatching = State()
            summarizing = State()
            paused = State()

    ended = State(final=True)

    # The session ends from anywhere: a client's DELETE, the idle timeout, `max_time`
    # while waiting, an unrecoverable error. `finish` carries the reason.
    finish = session.to(ended)

    # The loop's rules. Each state's alternatives are tried in this order; the first
    # whose guard holds is taken.
    next = (
        # idle: decide what comes next.
        session.loop.idle.to(session.loop.paused, cond="In('pause_asked')")
        | session.loop.idle.to(ended, cond="limit_reached", on="finish_at_limit")
        | session.loop.idle.to(session.loop.summarizing, cond="needs_summary")
        | session.loop.idle.to(session.loop.awaiting_talker, unless="owes_turn")
        | session.loop.idle.to(None, cond="turn_delay_due", on="rest")  # stays in idle
        | session.loop.idle.to(session.loop.orchestrating, cond="orchestrated")
        | session.loop.idle.to(session.loop.dispatching, unless="orchestrated")
        # awaiting_talker: a pause, or a talker message, ends the wait.
        | session.loop.awaiting_talker.to(session.loop.paused, cond="In('pause_asked')")
        | session.loop.awaiting_talker.to(session.loop.idle, cond="talker_waiting", on="wake")
        # orchestrating: a pause drops the choice (it is made afresh at resume).
        | session.loop.orchestrating.to(session.loop.paused, cond="In('pause_asked')")
        | session.loop.orchestrating.to(ended, cond="end_chosen", on="finish_by_orchestrator")
        | session.loop.orchestrating.to(session.loop.awaiting_talker, cond="hold_chosen", on="hold")
        | session.loop.orchestrating.to(session.loop.dispatching, cond="speaker_chosen")
        # dispatching: the turn is recorded (a pause waits for it).
        | session.loop.dispatching.to(session.loop.idle)
        # summarizing: a summary that cannot be made ends the session.
        | session.loop.summarizing.to(ended, cond="summary_failed", on="finish_unsummarized")
        | session.loop.summarizing.to(session.loop.idle)
        # paused: until a client resumes.
        | session.loop.paused.to(session.loop.idle, unless="In('pause_asked')")
    )

    def __init__(self, driver: LoopDriver, *, start: str | None = None) -> None:
        """A fresh chart, or one restored `start`ed as "paused" or "ended"."""
        self.driver = driver
        self._moves = _MoveReporter(driver)
        super().__init__(listeners=[self._moves])
        if start is not None:
            # Set directly, as stored: no transition runs and no event goes out.
            # (The library cannot start inside a parallel state from a value.)
            states = {"paused": ["session", "lifecycle", "pause_asked", "loop", "paused"]}
            values = states.get(start, [start])
            self.configuration = type(self.configuration)(self.states_map[v] for v in values)

    # --- reading ----------
    @property
    def lifecycle(self) -> str:
        """The session as clients see it: "active", "paused" or "ended"."""
        for state in self.configuration:
            if state.id in LIFECYCLE_NAMES:
                return LIFECYCLE_NAMES[state.id]
        return "ended"

    @property
    def loop(self) -> str:
        """The loop's state (the `state` event's value)."""
        for state in self.configuration:
            if state.id in LOOP_STATES:
                return str(state.id)
        raise AssertionError("the chart is in no loop state")

    def fire(self, event: str, **kwargs: Any) -> None:
        """Send `event`; raise `InvalidState` (changing nothing) if it is not allowed now."""
        try:
            self.send(event, **kwargs)
        except TransitionNotAllowed:
            if event in _LIFECYCLE_EVENTS:
                where = f"the session is {self.lifecycle}"
            else:
                where = f"the loop is {self.loop}"
            raise InvalidState(f"cannot {event.replace('_', ' ')} while {where}") from None

    def allows(self, event: str) -> bool:
        """Whether `event` has a transition whose guards hold now."""
        return any(e.id == event for e in self.enabled_events())

    # --- guards ----------
    def limit_reached(self) -> bool:
        """A limit is reached: `max_turns`, `max_time`, or `max_context` when not summarizing."""
        return self.driver.limit_reached() is not None

    def needs_summary(self) -> bool:
        """The context has reached the summarization threshold."""
        return self.driver.needs_summary()

    def owes_turn(self) -> bool:
        """A bot turn is owed: the session has started and, in reactive mode, replies are owed."""
        return self.driver.owes_turn()

    def turn_delay_due(self) -> bool:
        """A bot turn just ended and the spec sets a `turn_delay`."""
        return self.driver.turn_delay_due()

    def orchestrated(self) -> bool:
        """The orchestrator chooses who speaks (otherwise round robin: the next bot in turn)."""
        return self.driver.orchestrated()

    def talker_waiting(self) -> bool:
        """A talker message has come that no batch of replies has answered yet."""
        return self.driver.talker_waiting()

    def end_chosen(self) -> bool:
        """The orchestrator chose to end the session."""
        return self._chosen() == "end"

    def hold_chosen(self) -> bool:
        """The orchestrator chose to hold until a newer talker message."""
        return self._chosen() == "hold"

    def speaker_chosen(self) -> bool:
        """The orchestrator chose a bot to speak."""
        return self._chosen() == "speak"

    def summary_failed(self) -> bool:
        """The summary could not be made."""
        return self.driver.summary_failed()

    def _chosen(self) -> str | None:
        choice = self.driver.choice()
        return None if choice is None else choice.action

    # --- actions ----------
    def rest(self) -> None:
        """Wait `turn_delay` seconds, then decide again."""
        self.driver.rest()

    def wake(self) -> None:
        """Owe `replies_per_message` replies to the talkers' batch."""
        self.driver.wake()

    def hold(self) -> None:
        """Only talker messages newer than the orchestrator's choice end the hold."""
        self.driver.hold()

    def on_finish(self, reason: str, detail: str | None = None) -> None:
        """Emit `session_end` with the reason given, close the streams."""
        self._finishing(reason, detail)

    def finish_at_limit(self) -> None:
        """End with the limit's reason (`max_turns`, `max_time`, `max_context`)."""
        reason = self.driver.limit_reached()
        assert reason is not None
        self._finishing(reason, None)

    def finish_by_orchestrator(self) -> None:
        """End with reason `orchestrator`."""
        choice = self.driver.choice()
        self._finishing("orchestrator", None if choice is None else choice.reason)

    def finish_unsummarized(self) -> None:
        """End with reason `max_context` (summarization failed)."""
        self._finishing("max_context", "summarization failed")

    def _finishing(self, reason: str, detail: str | None) -> None:
        # The lifecycle ends with the session, if no client's `end` ended it already.
        left = self._moves.left["lifecycle"]
        if left != "end_asked":
            self.driver.state_changed("lifecycle", LIFECYCLE_NAMES[left], "ended", "end")
        self.driver.finished(reason, detail)


class _MoveReporter:
    """Tells the driver of every move of either region, from where it came.

    A listener rather than chart methods, so that the picture does not show it as
    every state's entry and exit action.
    """

    def __init__(self, driver: LoopDriver) -> None:
        self._driver = driver
        # The state each region left last (a `finish` leaves the loop from its parent).
        self.left = {"lifecycle": "active", "loop": "idle"}

    def on_exit_state(self, state: State) -> None:
        if state.id in LIFECYCLE_NAMES:
            self.left["lifecycle"] = state.id
        elif state.id in LOOP_STATES:
            self.left["loop"] = state.id

    def on_enter_state(self, event: Any, target: State) -> None:
        if str(event) == "__initial__":
            return  # the chart starting: nothing happened yet
        if target.id in LIFECYCLE_NAMES:
            source = LIFECYCLE_NAMES[self.left["lifecycle"]]
            self._driver.state_changed("lifecycle", source, LIFECYCLE_NAMES[target.id], str(event))
        elif target.id in LOOP_STATES:
            self._driver.state_changed("loop", self.left["loop"], target.id, str(event))
