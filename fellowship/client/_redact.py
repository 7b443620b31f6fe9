"""Keep session tokens out of log lines, the client's own and those of httpx and websockets.

Tokens travel in URL paths (`/v1/session/<token>/...`), and httpx logs every request
URL at INFO, websockets its handshake request line at DEBUG. A filter on those loggers
rewrites such lines before any handler sees them.
"""

from __future__ import annotations

import logging
import re
from typing import Final

_SESSION_PATH: Final = re.compile(r"(/v1/session/)(?!create\b)[^/?#\s\"']+")
_TOKEN: Final = re.compile(r"\b(fs[ko]_)[A-Za-z0-9_-]+")
# The loggers that see request URLs: httpx (INFO), websockets' client (DEBUG handshake).
_LOGGERS: Final = ("httpx", "websockets.client", "fellowship.client")


def redact(text: str) -> str:
    """`text` with every session token replaced by `***`."""
    return _TOKEN.sub(r"\1***", _SESSION_PATH.sub(r"\1***", text))


class RedactTokens(logging.Filter):
    """Rewrites a record's message with its tokens replaced (the record is then final)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_FILTER: Final = RedactTokens()


def install() -> None:
    """Put the filter on the loggers that may see a token (once; later calls do nothing)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
