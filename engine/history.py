"""The conversation history: numbered messages, reserved slots and tombstones.

Positions (`turn`) start at 1 and are unique, gapless and never reused. A bot's
slot is reserved when its LLM call is dispatched and filled exactly once: with the
reply, or with a tombstone (`status="failed"`) that keeps its number and is never
shown to bots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from engine.llm.types import Usage

MessageKind = Literal["bot", "talker"]
MessageStatus = Literal["reserved", "complete", "failed"]


class Message(BaseModel):
    """One position of the history."""

    turn: int = Field(ge=1, description="History position, 1-based, gapless.")
    kind: MessageKind = Field(description="'bot' or 'talker'.")
    speaker: str = Field(description="Bot name or the talker's display name.")
    talker_id: str | None = Field(None, description="Stable id of the talker connection.")
    content: str = Field("", description="Message text (empty while reserved or failed).")
    status: MessageStatus = Field("complete", description="reserved, complete or failed.")
    ts: datetime = Field(description="When the position was taken (UTC).")
    tokens: int = Field(0, ge=0, description="tiktoken count of the content.")
    usage: Usage | None = Field(
        None,
        description="Backend usage of every call made for this bot turn (retries included), "
        "if reported; a tombstone keeps the usage of its calls too.",
    )

    @property
    def visible_to_bots(self) -> bool:
        """Only complete messages ever reach a prompt."""
        return self.status == "complete"


def add_usage(first: Usage | None, second: Usage | None) -> Usage | None:
    """The sum of two calls' usage (None when neither reported any)."""
    if first is None or second is None:
        return first or second
    return Usage(
        prompt_tokens=first.prompt_tokens + second.prompt_tokens,
        completion_tokens=first.completion_tokens + second.completion_tokens,
        total_tokens=first.total_tokens + second.total_tokens,
    )


@dataclass(slots=True)
class UsageTotals:
    """Backend-reported usage, overall and per bot."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    by_bot: dict[str, Usage] = field(default_factory=dict)

    def add(self, bot: str, usage: Usage) -> None:
        """Count one turn's usage."""
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.by_bot[bot] = add_usage(self.by_bot.get(bot), usage) or usage


class History:
    """The ordered positions of one session, with a running token total.

    Append-only, except that a reserved slot is replaced exactly once. The token
    total covers complete messages and is kept up to date on every change, so the
    context size is O(1) to read whatever the history length. Usage totals are kept
    the same way from each message's `usage`, so they are rebuilt with the history.
    """

    def __init__(self, messages: list[Message] | None = None) -> None:
        self._messages: list[Message] = []
        self.tokens = 0
        self.usage = UsageTotals()
        for message in messages or []:
            self.append(message)

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def messages(self) -> list[Message]:
        """Every position in order (a copy)."""
        return list(self._messages)

    @property
    def next_turn(self) -> int:
        """The position the next appended message takes."""
        return len(self._messages) + 1

    def get(self, turn: int) -> Message:
        """The message at position `turn`."""
        return self._messages[turn - 1]

    def append(self, message: Message) -> Message:
        """Add a message at the next position (its `turn` must be that position)."""
        if message.turn != self.next_turn:
            raise ValueError(f"position {message.turn} is not the next one ({self.next_turn})")
        self._messages.append(message)
        self._count(message)
        return message

    def fill(self, message: Message) -> Message:
        """Fill a reserved slot, exactly once, with a reply or a tombstone."""
        current = self.get(message.turn)
        if current.status != "reserved":
            raise ValueError(f"position {message.turn} is not reserved")
        self._messages[message.turn - 1] = message
        self._count(message)
        return message

    def _count(self, message: Message) -> None:
        if message.visible_to_bots:
            self.tokens += message.tokens
        if message.usage is not None:
            self.usage.add(message.speaker, message.usage)

    def visible(self, upto: int | None = None, *, after: int = 0) -> list[Message]:
        """Complete messages among positions `after`+1 .. `upto` (all when None).

        Positions are list indexes plus one, so the window is a slice: a prompt that
        sees only the tail after a summary costs the tail, not the whole history.
        """
        window = self._messages[after:upto]
        return [m for m in window if m.visible_to_bots]

    def pending_reserved(self) -> list[Message]:
        """Slots still reserved (at most one while a session runs)."""
        return [m for m in self._messages if m.status == "reserved"]
