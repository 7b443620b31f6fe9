"""The two state machines that say what may happen when.

`LifecycleMachine` is the session as clients see it (active, paused, ended);
`LoopMachine` is the per-session driver (who speaks, waiting, summarizing). They
are the single source of truth: the loop only acts by sending their events, each
transition's callbacks run the matching engine action, and an event that is not
allowed in the current state raises `InvalidState` and changes nothing.

The diagrams in `docs/` are drawn from these classes (`fellowship diagrams`).
"""

from __future__ import annotations

from typing import Any, Protocol

from statemachine import State, StateMachine
from statemachine.exceptions import TransitionNotAllowed

from engine.errors import InvalidState


class LoopActions(Protocol):
    """What the loop machine's transitions trigger (implemented by the session loop)."""

    def on_state(self, machine: str, source: str, target: str, event: str) -> None:
        """Every state change: log it and emit `state`/`loop` events."""

    def on_dispatch(self, bot: str) -> None:
        """A bot turn starts: the rectifier reserves its slot and `turn_start` goes out."""

    def on_wake(self) -> None:
        """A talker message woke the loop: a new batch of replies is owed."""

    def on_finish(self, reason: str, detail: str | None) -> None:
        """The loop ended: emit `session_end`, close streams, free resources."""


class _StateListener:
    """Reports every state change of one machine to the loop actions."""

    def __init__(self, actions: LoopActions, machine: str) -> None:
        self._actions = actions
        self._machine = machine

    def on_enter_state(self, event: Any, source: State | None, target: State) -> None:
        if source is not None and source.id:
            self._actions.on_state(self._machine, source.id, target.id, str(event))


class _GuardedMachine(StateMachine):
    """Turns a refused event into the engine's typed `InvalidState` error."""

    label = "machine"

    def fire(self, event: str, **kwargs: Any) -> None:
        """Send `event`; raise `InvalidState` (changing nothing) if it is not allowed now."""
        try:
            self.send(event, **kwargs)
        except TransitionNotAllowed:
            raise InvalidState(
                f"cannot {event.replace('_', ' ')} while the {self.label} is {self.state}"
            ) from None

    def allows(self, event: str) -> bool:
        """Whether `event` is allowed in the current state."""
        return any(e.id == event for e in self.allowed_events)

    @property
    def state(self) -> str:
        """The current state's id."""
        return str(self.current_state_value)


class LifecycleMachine(_GuardedMachine):
    """A session as clients see it."""

    label = "session"

    active = State("active", initial=True)
    paused = State("paused")
    ended = State("ended", final=True)

    pause = active.to(paused)
    resume = paused.to(active)
    end = active.to(ended) | paused.to(ended)

    def __init__(self, actions: LoopActions, *, start: str | None = None) -> None:
        super().__init__(listeners=[_StateListener(actions, "lifecycle")], start_value=start)


class LoopMachine(_GuardedMachine):
    """The loop of one session: pick a speaker, dispatch its turn, repeat."""

    label = "loop"

    idle = State("idle", initial=True)
    awaiting_talker = State("awaiting talker")
    orchestrating = State("orchestrating")
    dispatching = State("dispatching")
    summarizing = State("summarizing")
    paused = State("paused")
    ended = State("ended", final=True)

    # Waiting for humans: reactive mode between batches, or an orchestrator `hold`.
    wait = idle.to(awaiting_talker)
    wake = awaiting_talker.to(idle)
    hold = orchestrating.to(awaiting_talker)
    # Choosing and running a turn.
    choose = idle.to(orchestrating)
    dispatch = idle.to(dispatching) | orchestrating.to(dispatching)
    turn_done = dispatching.to(idle)
    # Compacting the context.
    summarize = idle.to(summarizing)
    summarized = summarizing.to(idle)
    # Pausing happens between actions; a reply being generated is finished first.
    pause = idle.to(paused) | awaiting_talker.to(paused) | orchestrating.to(paused)
    resume = paused.to(idle)
    finish = (
        idle.to(ended)
        | awaiting_talker.to(ended)
        | orchestrating.to(ended)
        | dispatching.to(ended)
        | summarizing.to(ended)
        | paused.to(ended)
    )

    def __init__(self, actions: LoopActions, *, start: str | None = None) -> None:
        self._actions = actions
        super().__init__(listeners=[_StateListener(actions, "loop")], start_value=start)

    def on_dispatch(self, bot: str) -> None:
        self._actions.on_dispatch(bot)

    def on_wake(self) -> None:
        self._actions.on_wake()

    def on_finish(self, reason: str, detail: str | None = None) -> None:
        self._actions.on_finish(reason, detail)
