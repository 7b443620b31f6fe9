"""Checks on text that arrives from clients before the engine keeps it."""

from __future__ import annotations

import re
from typing import Final

# JSON may escape a lone surrogate (`"\ud800"`): valid syntax, but not text that UTF-8
# (the database, the logs, every client) can hold.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Names become `Name:` prefixes and stop sequences in prompts; a line break would split a
# speaker line in two.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# The same rule as a JSON Schema pattern (ECMA-262): no control character anywhere.
NO_CONTROL_CHARS_PATTERN: Final = r"^[^\x00-\x1f\x7f]*$"


def has_lone_surrogate(text: str) -> bool:
    """Whether `text` holds a code point of U+D800 to U+DFFF, which UTF-8 cannot encode."""
    return _LONE_SURROGATE.search(text) is not None


def has_control_chars(text: str) -> bool:
    """Whether `text` holds a line break, tab or other ASCII control character."""
    return _CONTROL_CHARS.search(text) is not None
