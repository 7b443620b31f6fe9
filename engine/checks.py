"""What a member sends is checked here before it reaches a session.

Display names must be one plain line within `MAX_NAME_CHARS`, a talker needs one
that no bot of the session has, and a talker message must be non-empty and within
`MAX_MESSAGE_CHARS`. Each refusal is a `BadRequest` or `Forbidden` with its code.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.config import Settings
from engine.errors import BadRequest, Forbidden
from engine.session import Member
from engine.text import has_control_chars


class InputChecks:
    """The checks of member input, with the limits of one server's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def display_name(self, name: str | None) -> str | None:
        """A member's display name, trimmed; refused when too long or not one plain line."""
        name = name.strip() if name else None
        if name and len(name) > self.settings.max_name_chars:
            raise BadRequest(
                f"display name longer than {self.settings.max_name_chars} characters",
                code="name_too_long",
            )
        if name and has_control_chars(name):
            raise BadRequest(
                "a display name is one line, without tabs or control characters",
                code="invalid_name",
            )
        return name

    @staticmethod
    def talker_name(name: str | None, bot_names: Sequence[str]) -> None:
        """Refuse a talker without a name, or with the name of one of the session's bots."""
        if not name:
            raise BadRequest("a talker needs a display name (?name=...)", code="name_required")
        if name.casefold() in {bot.casefold() for bot in bot_names}:
            # Bots would read this talker's lines as their own or a fellow bot's.
            raise BadRequest(f"{name!r} is the name of a bot in this session", code="name_taken")

    def message(self, member: Member, content: str) -> None:
        """Refuse a message from an observer, an empty one, or one that is too long."""
        if member.role != "talker":
            raise Forbidden("observers cannot send messages", code="observer_cannot_talk")
        if not content.strip():
            raise BadRequest("empty message", code="empty_message")
        if len(content) > self.settings.max_message_chars:
            raise BadRequest(
                f"message longer than {self.settings.max_message_chars} characters",
                code="message_too_long",
            )
