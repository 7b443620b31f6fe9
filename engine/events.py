"""Every event a member can receive, as pydantic models (one module, one place).

Each event has `type`, a per-session strictly increasing `seq`, and `ts` (UTC,
ISO-8601). `seq` and `ts` are stamped by the hub when the event is published, so
engine code builds events without them. Message events also carry `turn`, the
history position. New types and fields may be added; clients ignore unknown ones.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from engine.history import Message
from engine.status import MemberCounts

EndReason = Literal[
    "max_turns",
    "max_time",
    "max_context",
    "orchestrator",
    "client_request",
    "idle_timeout",
    "error",
]
MemberRole = Literal["talker", "observer"]
DebugCategory = Literal[
    "llm_call",
    "orchestrator",
    "loop",
    "context_tokens",
    "rectification",
    "summarization",
    "hygiene",
]


class BaseEvent(BaseModel):
    """Fields common to every event."""

    type: str = Field(description="Event type.")
    seq: int = Field(0, description="Per-session sequence number, strictly increasing.")
    ts: datetime | None = Field(None, description="When the event was published (UTC).")


class HistoryEvent(BaseEvent):
    """The conversation so far; always the first event on a connection."""

    type: Literal["history"] = "history"
    messages: list[Message] = Field(description="Every history position, in order.")
    state: str = Field("", description="The loop state when the snapshot was taken.")
    presence: MemberCounts = Field(
        default_factory=lambda: MemberCounts(talkers=[], observers=0),
        description="Who was connected when the snapshot was taken (on this node).",
    )


class TurnStart(BaseEvent):
    """A bot's LLM call was dispatched; `turn` is its position (reserved when rectifying)."""

    type: Literal["turn_start"] = "turn_start"
    bot: str = Field(description="The bot that is generating.")
    turn: int | None = Field(description="Reserved position, or null without rectification.")


class TokenEvent(BaseEvent):
    """A piece of a reply as it streams (only with `stream_tokens`)."""

    type: Literal["token"] = "token"
    bot: str = Field(description="The bot that is generating.")
    turn: int | None = Field(description="The reply's position, if already known.")
    token: str = Field(description="The new text.")


class TokenReset(BaseEvent):
    """The call was retried after tokens were streamed: discard this turn's tokens so far."""

    type: Literal["token_reset"] = "token_reset"
    bot: str = Field(description="The bot that is generating.")
    turn: int | None = Field(description="The reply's position, if already known.")


class BotMessage(BaseEvent):
    """A bot's complete, cleaned reply."""

    type: Literal["bot_message"] = "bot_message"
    bot: str = Field(description="Who spoke.")
    turn: int = Field(description="History position.")
    content: str = Field(description="The reply text.")


class TurnEnd(BaseEvent):
    """A bot turn finished; `status` says whether the slot holds a reply or a tombstone."""

    type: Literal["turn_end"] = "turn_end"
    bot: str = Field(description="Who spoke.")
    turn: int = Field(description="History position.")
    tokens: int = Field(description="Tokens of the reply (tiktoken count).")
    status: Literal["complete", "failed"] = Field("complete", description="Outcome of the turn.")


class TalkerMessage(BaseEvent):
    """A human talker's message, broadcast as soon as it has its position."""

    type: Literal["talker_message"] = "talker_message"
    talker: str = Field(description="The talker's display name.")
    talker_id: str = Field(description="Stable id of the talker's connection.")
    turn: int = Field(description="History position.")
    content: str = Field(description="The message text.")


class MemberJoined(BaseEvent):
    """A talker connected (observers are counted in `presence` instead)."""

    type: Literal["member_joined"] = "member_joined"
    role: MemberRole = Field(
        description="talker (observer only in events stored by older versions)."
    )
    name: str | None = Field(None, description="Display name, if given.")


class MemberLeft(BaseEvent):
    """A talker disconnected (observers are counted in `presence` instead)."""

    type: Literal["member_left"] = "member_left"
    role: MemberRole = Field(
        description="talker (observer only in events stored by older versions)."
    )
    name: str | None = Field(None, description="Display name, if given.")


class PresenceEvent(BaseEvent):
    """Who is connected now: the talkers by name, the observers as a count.

    Coalesced: at most one every `PRESENCE_INTERVAL` seconds (engine/presence.py),
    the last one always telling the current truth.
    """

    type: Literal["presence"] = "presence"
    talkers: list[str] = Field(description="Display names of the connected talkers.")
    observers: int = Field(description="Number of connected observers.")


class SessionPaused(BaseEvent):
    """The session was paused: no new LLM calls until resumed."""

    type: Literal["session_paused"] = "session_paused"
    reason: str = Field("client_request", description="Why: client_request or server_restart.")


class SessionResumed(BaseEvent):
    """The session was resumed."""

    type: Literal["session_resumed"] = "session_resumed"


class StateChanged(BaseEvent):
    """The loop machine moved to another state (for live state displays)."""

    type: Literal["state"] = "state"
    state: str = Field(description="The loop's new state.")


class SessionEnd(BaseEvent):
    """The session ended; live connections close after this event."""

    type: Literal["session_end"] = "session_end"
    reason: EndReason = Field(description="Why the session ended.")
    detail: str | None = Field(None, description="Human detail (e.g. the error), if any.")


class ErrorEvent(BaseEvent):
    """Something went wrong; the session goes on unless a session_end follows."""

    type: Literal["error"] = "error"
    message: str = Field(description="Human-readable message.")
    code: str = Field(description="Machine-readable code.")
    turn: int | None = Field(None, description="The position concerned, if any.")


class DebugEvent(BaseEvent):
    """Internal detail, only when debug is on (never contains secrets)."""

    type: Literal["debug"] = "debug"
    category: DebugCategory = Field(description="What the detail is about.")
    data: dict[str, Any] = Field(default_factory=dict, description="Category-specific detail.")


class Pong(BaseEvent):
    """Answer to a talker's ping (sent to that client only)."""

    type: Literal["pong"] = "pong"


Event = Annotated[
    HistoryEvent
    | TurnStart
    | TokenEvent
    | TokenReset
    | BotMessage
    | TurnEnd
    | TalkerMessage
    | MemberJoined
    | MemberLeft
    | PresenceEvent
    | SessionPaused
    | SessionResumed
    | StateChanged
    | SessionEnd
    | ErrorEvent
    | DebugEvent
    | Pong,
    Field(discriminator="type"),
]

event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(text: str | bytes) -> Event:
    """Parse one serialized event (used by clients, tests and the CLI)."""
    return event_adapter.validate_json(text)
