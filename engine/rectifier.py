"""Where each message lands in the history (SPEC §5).

With rectification on, a bot's position is reserved when its call is dispatched;
talker messages that arrive during generation go after it, and the reply fills
it. With rectification off, every message takes the next position when it is
recorded (arrival/completion order). Either way a failed turn leaves a visible
tombstone, and the bot's context is the history as it stood at dispatch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from engine.history import History, Message
from engine.llm.types import Usage


@dataclass(slots=True)
class Slot:
    """A dispatched bot turn: who speaks, its reserved position, what it may see."""

    bot: str
    turn: int | None
    context_upto: int


class Rectifier:
    """Assigns history positions; the only writer of `History`."""

    def __init__(self, history: History, *, enabled: bool, now: Callable[[], datetime]) -> None:
        self.history = history
        self.enabled = enabled
        self._now = now

    def dispatch(self, bot: str) -> tuple[Slot, Message | None]:
        """Start a bot turn; returns the slot and, when rectifying, its reserved message."""
        upto = len(self.history)
        if not self.enabled:
            return Slot(bot, None, upto), None
        reserved = Message(
            turn=self.history.next_turn, kind="bot", speaker=bot, status="reserved", ts=self._now()
        )
        self.history.append(reserved)
        return Slot(bot, reserved.turn, upto), reserved

    def talker(self, name: str, talker_id: str, content: str, tokens: int) -> Message:
        """Place a talker message at the next free position."""
        message = Message(
            turn=self.history.next_turn,
            kind="talker",
            speaker=name,
            talker_id=talker_id,
            content=content,
            tokens=tokens,
            ts=self._now(),
        )
        return self.history.append(message)

    def reply(self, slot: Slot, content: str, tokens: int, usage: Usage | None) -> Message:
        """Record a bot's reply in its slot (or at the next position without rectification)."""
        return self._settle(slot, content=content, tokens=tokens, usage=usage, status="complete")

    def fail(self, slot: Slot, usage: Usage | None = None) -> Message:
        """Record a tombstone for a turn whose call failed for good (keeping what it cost)."""
        return self._settle(slot, content="", tokens=0, usage=usage, status="failed")

    def abandon(self, reserved: Message) -> Message:
        """A reserved slot whose reply will never come (the process stopped): a tombstone.

        The slot keeps its position, speaker and time; only its status changes.
        """
        return self.history.fill(reserved.model_copy(update={"status": "failed", "content": ""}))

    def _settle(
        self, slot: Slot, *, content: str, tokens: int, usage: Usage | None, status: str
    ) -> Message:
        turn = slot.turn if slot.turn is not None else self.history.next_turn
        message = Message.model_validate(
            {
                "turn": turn,
                "kind": "bot",
                "speaker": slot.bot,
                "content": content,
                "tokens": tokens,
                "usage": usage,
                "status": status,
                "ts": self._now(),
            }
        )
        if slot.turn is None:
            return self.history.append(message)
        return self.history.fill(message)
