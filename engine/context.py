"""Which history messages a bot sees in its next prompt (`options.context`).

`shared`: every complete message. `scoped`: only messages the bot was directly
involved in; the exact rule is in `select_context` and docs/prompts-and-context.md.
Reserved slots and tombstones never reach a prompt in either mode.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

from engine.history import Message

ContextMode = Literal["shared", "scoped"]

# Distinct names compiled at once; a server sees few names, the bound only stops growth.
_MENTION_CACHE_SIZE = 1024


def select_context(
    history: Sequence[Message], *, bot_name: str, mode: ContextMode
) -> list[Message]:
    """The messages of `history` that bot `bot_name` may see, in history order.

    Only complete messages count, in both modes: a reserved or failed slot is neither
    shown nor used to decide what else is shown. In `scoped` mode a complete message
    is kept when at least one of these holds:

    (a) the bot wrote it;
    (b) it is the message the bot answered: the next *complete* message after it is
        one of the bot's own;
    (c) it is the last complete message of `history`, i.e. what the bot is about to
        answer now (as if its coming reply were already there, rule (b));
    (d) it mentions the bot's name as a whole word, ignoring case (see `mentions`).
    """
    complete = [message for message in history if message.visible_to_bots]
    if mode == "shared":
        return complete

    own = [_is_own(message, bot_name) for message in complete]
    last = len(complete) - 1
    return [
        message
        for index, message in enumerate(complete)
        if own[index] or index == last or own[index + 1] or mentions(message.content, bot_name)
    ]


def mentions(text: str, name: str) -> bool:
    """Whether `text` names `name` as a whole word, ignoring case.

    "Al" is mentioned in "ask Al." or "Al's turn" but not in "Alice" or "also". The
    boundaries are "no word character on either side" rather than `\\b`, so names that
    begin or end with punctuation ("Dr. Who", "C-3PO") work too.
    """
    if not name.strip():
        return False
    return _mention_pattern(name).search(text) is not None


def _is_own(message: Message, bot_name: str) -> bool:
    # A talker may pick a bot's name as display name; only the bot's messages are its own.
    return message.kind == "bot" and message.speaker == bot_name


@lru_cache(maxsize=_MENTION_CACHE_SIZE)
def _mention_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(name.strip())}(?!\w)", re.IGNORECASE)
