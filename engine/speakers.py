"""Who speaks next: one replaceable strategy per `turn_order`.

`RoundRobin` cycles through the bots in spec order. The orchestrated strategy
(engine/orchestrator/) asks a hidden LLM call. Both return a `Decision`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from engine.turn_view import TurnView


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a selection: a bot speaks, everyone holds, or the session ends."""

    action: Literal["speak", "hold", "end"]
    bot: str | None = None
    reason: str | None = None


class SpeakerSelector(Protocol):
    """Chooses the next speaker of a session."""

    #: Whether choosing needs a call of its own (the loop shows `orchestrating` meanwhile).
    deliberates: bool

    async def select(self, view: TurnView) -> Decision:
        """Decide what happens next."""


def round_robin_next(view: TurnView) -> str:
    """The bot after the last one dispatched, in spec order (derived, so it survives restarts)."""
    names = view.bot_names
    return names[view.bot_turns % len(names)]


class RoundRobin:
    """Bots in spec order, no skipping."""

    deliberates = False

    async def select(self, view: TurnView) -> Decision:
        return Decision("speak", bot=round_robin_next(view))
