"""Logging: console plus one file per day (`LOG_DIR/YYYY-MM-DD.log`).

Every line carries a `session` field (the public session id, `-` when none) so that
one session's story can be grepped out of a busy log. Secrets are kept out twice:
the code never passes them to a logger, and a filter masks anything shaped like a
Fellowship token, a Bearer credential or a registered API key, should one slip in.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s session=%(session)s %(message)s"
FILE_ONLY = {"file_only": True}
"""`extra=` for lines that belong in the log file but would flood the console
(the embedded backend's own output, for instance)."""
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
MASK = "***"

# Session tokens are minted with these prefixes (see engine/tokens_auth.py).
_TOKEN_PATTERN = re.compile(r"\bfs[ko]_[A-Za-z0-9_\-]{16,}")
_BEARER_PATTERN = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")
_KEY_PATTERN = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}")


class SecretFilter(logging.Filter):
    """Masks secrets in the final message text and supplies a default `session` field."""

    def __init__(self) -> None:
        super().__init__()
        self._literals: set[str] = set()

    def add_secret(self, secret: str) -> None:
        """Mask this exact string wherever it appears (used for configured API keys)."""
        if len(secret) >= 4:
            self._literals.add(secret)

    def redact(self, text: str) -> str:
        """Return `text` with every known secret shape masked."""
        for literal in self._literals:
            if literal in text:
                text = text.replace(literal, MASK)
        text = _TOKEN_PATTERN.sub(MASK, text)
        text = _BEARER_PATTERN.sub(lambda m: m.group(1) + MASK, text)
        return _KEY_PATTERN.sub(MASK, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session"):
            record.session = "-"
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class ConsoleFilter(logging.Filter):
    """Keeps lines logged with `extra=FILE_ONLY` off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


class DailyFileHandler(logging.Handler):
    """Writes to `<dir>/<UTC date>.log`, opening a new file when the date changes."""

    def __init__(self, directory: Path, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__()
        self.directory = directory
        self._clock = clock or (lambda: datetime.now(UTC))
        self._day: str | None = None
        self._stream: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            day = self._clock().strftime("%Y-%m-%d")
            if day != self._day:
                self._reopen(day)
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        except Exception:
            self.handleError(record)

    def _reopen(self, day: str) -> None:
        if self._stream is not None:
            self._stream.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stream = (self.directory / f"{day}.log").open("a", encoding="utf-8")
        self._day = day

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


secret_filter = SecretFilter()


def setup_logging(log_dir: Path, level: str = "INFO", *, api_keys: list[str] | None = None) -> None:
    """Configure the root logger: console + daily file, both behind the secret filter."""
    for key in api_keys or []:
        secret_filter.add_secret(key)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_fellowship", False):
            root.removeHandler(handler)
            handler.close()
    formatter = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(ConsoleFilter())
    handlers: list[logging.Handler] = [console, DailyFileHandler(log_dir)]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(secret_filter)
        setattr(handler, "_fellowship", True)  # noqa: B010 - marks our own handlers
        root.addHandler(handler)
    root.setLevel(level)
    # The file keeps tracebacks; third-party chatter stays at WARNING.
    for noisy in ("httpx", "httpcore", "hypercorn.access", "aiosqlite", "asyncio", "statemachine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class SessionLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger bound to one session id: every line it writes carries `session=<id>`."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("session", (self.extra or {}).get("session", "-"))
        kwargs["extra"] = extra
        return msg, kwargs


def session_logger(name: str, session_id: str) -> SessionLogger:
    """Return a logger for module `name` that tags every line with `session_id`."""
    return SessionLogger(logging.getLogger(name), {"session": session_id})
