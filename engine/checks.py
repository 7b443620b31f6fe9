"""What a member sends is checked here before it reaches a session.

Display names must be one plain line within `MAX_NAME_CHARS`, a talker needs one
that no bot of the session has, and a talker message must be non-empty and within
`MAX_MESSAGE_CHARS`. Each refusal is its own typed error (engine/errors.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.config import Settings
from engine.errors import (
    EmptyMessage,
    InvalidName,
    MessageTooLong,
    NameRequired,
    NameTaken,
    NameTooLong,
    ObserverCannotTalk,
)
from engine.input_text import has_control_chars
from engine.session import Member


class InputChecks:
    """The checks of member input, with the limits of one server's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def display_name(self, name: str | None) -> str | None:
        """A member's display name, trimmed; refused when too long or not one plain line."""
        name = name.strip() if name else None
        if name and len(name) > self.settings.max_name_chars:
            raise NameTooLong(f"display name longer than {self.settings.max_name_chars} characters")
        if name and has_control_chars(name):
            raise InvalidName("a display name is one line, without tabs or control characters")
        return name

    @staticmethod
    def talker_name(name: str | None, bot_names: Sequence[str]) -> None:
        """Refuse a talker without a name, or with the name of one of the session's bots."""
        if not name:
            raise NameRequired("a talker needs a display name (?name=...)")
        if name.casefold() in {bot.casefold() for bot in bot_names}:
            # Bots would read this talker's lines as their own or a fellow bot's.
            raise NameTaken(f"{name!r} is the name of a bot in this session")

    def message(self, member: Member, content: str) -> None:
        """Refuse a message from an observer, an empty one, or one that is too long."""
        if member.role != "talker":
            raise ObserverCannotTalk("observers cannot send messages")
        if not content.strip():
            raise EmptyMessage("empty message")
        if len(content) > self.settings.max_message_chars:
            raise MessageTooLong(
                f"message longer than {self.settings.max_message_chars} characters"
            )
