"""Logging: daily files, session ids on every line, secrets never written."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.auth import mint_token
from engine.logs import DailyFileHandler, SecretFilter, session_logger, setup_logging


def test_a_new_file_each_day(tmp_path: Path) -> None:
    now = [datetime(2026, 3, 1, 23, 59, tzinfo=UTC)]
    handler = DailyFileHandler(tmp_path, clock=lambda: now[0])
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("test.daily")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("before midnight")
        now[0] = datetime(2026, 3, 2, 0, 1, tzinfo=UTC)
        log.info("after midnight")
    finally:
        log.removeHandler(handler)
        handler.close()
    assert (tmp_path / "2026-03-01.log").read_text() == "before midnight\n"
    assert (tmp_path / "2026-03-02.log").read_text() == "after midnight\n"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_session_lines_carry_the_session_id_and_secrets_are_masked(tmp_path: Path) -> None:
    setup_logging(tmp_path, "DEBUG", api_keys=["sk-very-secret-key"])
    token = mint_token("full")
    log = session_logger("fellowship.test", "abc123")
    log.info("created with token %s and key sk-very-secret-key", token)
    logging.getLogger("fellowship.other").warning("Authorization: Bearer xyz-secret")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert "session=abc123" in text
    assert "session=-" in text
    assert token not in text
    assert "sk-very-secret-key" not in text
    assert "xyz-secret" not in text


@pytest.mark.parametrize(
    "secret", [mint_token("full"), mint_token("observer"), "Bearer abc.def", "sk-abcdef123456"]
)
def test_redact_masks_every_secret_shape(secret: str) -> None:
    assert "***" in SecretFilter().redact(f"x {secret} y")
