"""Typed errors: each class carries its code, and the server maps it by class alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine import errors
from engine.errors import FellowshipError
from engine.hub import CLOSE_RECONNECT, CLOSE_TOO_SLOW
from server.errors import (
    WS_BAD_REQUEST,
    WS_CONFLICT,
    WS_FORBIDDEN,
    WS_GOING_AWAY,
    WS_INTERNAL,
    WS_NOT_FOUND,
    WS_RATE_LIMITED,
    WS_TRY_AGAIN_LATER,
    RateLimited,
    status_for,
    ws_close_code,
    ws_close_for_reason,
)

ROOT = Path(__file__).resolve().parents[2]

# class, its code, HTTP status, WebSocket close code: what clients see, pinned.
CASES: list[tuple[FellowshipError, str, int, int]] = [
    (errors.NameRequired("x"), "name_required", 400, WS_BAD_REQUEST),
    (errors.NameTaken("x"), "name_taken", 400, WS_BAD_REQUEST),
    (errors.NameTooLong("x"), "name_too_long", 400, WS_BAD_REQUEST),
    (errors.InvalidName("x"), "invalid_name", 400, WS_BAD_REQUEST),
    (errors.EmptyMessage("x"), "empty_message", 400, WS_BAD_REQUEST),
    (errors.MessageTooLong("x"), "message_too_long", 400, WS_BAD_REQUEST),
    (errors.BadFrame("x"), "bad_frame", 400, WS_BAD_REQUEST),
    (errors.InvalidJson("x"), "invalid_json", 400, WS_BAD_REQUEST),
    (errors.UnknownFrameType("x"), "unknown_frame_type", 400, WS_BAD_REQUEST),
    (errors.ClusterTokenInvalid("x"), "cluster_token", 401, WS_INTERNAL),
    (errors.Fenced("x"), "fenced", 503, WS_TRY_AGAIN_LATER),
    (errors.ObserverToken("x"), "observer_token", 403, WS_FORBIDDEN),
    (errors.ObserverCannotTalk("x"), "observer_cannot_talk", 403, WS_FORBIDDEN),
    (errors.TalkersNotAllowed("x"), "talkers_not_allowed", 403, WS_FORBIDDEN),
    (errors.NotFound("x"), "not_found", 404, WS_NOT_FOUND),
    (errors.SpecNotFound("x"), "spec_not_found", 404, WS_NOT_FOUND),
    (errors.SessionEnded("x"), "session_ended", 409, WS_CONFLICT),
    (errors.InvalidState("x"), "invalid_state", 409, WS_CONFLICT),
    (errors.TooManySessions("x"), "too_many_sessions", 429, WS_CONFLICT),
    (errors.TooManyTalkers("x"), "too_many_talkers", 429, WS_CONFLICT),
    (RateLimited(3), "rate_limited", 429, WS_RATE_LIMITED),
    (errors.ShuttingDown("x"), "shutting_down", 503, WS_GOING_AWAY),
    (errors.BackendStarting("x"), "backend_starting", 503, WS_TRY_AGAIN_LATER),
    (errors.BackendUnreachable("x"), "backend_unreachable", 503, WS_TRY_AGAIN_LATER),
    (errors.StorageError("x"), "storage_error", 500, WS_INTERNAL),
    (errors.SecretUnreadable("x"), "secret_unreadable", 500, WS_INTERNAL),
    (errors.InternalError("x"), "internal", 500, WS_INTERNAL),
    (errors.TurnCancelled("x"), "cancelled", 500, WS_INTERNAL),
    (errors.MalformedSpec([]), "malformed_spec", 400, WS_BAD_REQUEST),
    (errors.SpecTooLarge([]), "spec_too_large", 413, WS_INTERNAL),
    (errors.InvalidSpec([]), "invalid_spec", 422, WS_INTERNAL),
    (
        errors.LLMError("x", code=errors.LLM_TIMEOUT),
        errors.LLM_TIMEOUT,
        503,
        WS_TRY_AGAIN_LATER,
    ),
]


@pytest.mark.parametrize(
    ("error", "code", "status", "close"), CASES, ids=[type(c[0]).__name__ for c in CASES]
)
def test_each_error_class_keeps_its_code_status_and_close_code(
    error: FellowshipError, code: str, status: int, close: int
) -> None:
    assert error.code == code
    assert status_for(error) == status
    assert ws_close_code(error) == close


def test_no_error_is_raised_with_an_inline_code_string() -> None:
    # A code belongs to its class; a `code="..."` argument would bring back matching
    # on strings (events built from an error's class code are fine: `code=X.code`).
    offenders = []
    for path in sorted([*(ROOT / "engine").rglob("*.py"), *(ROOT / "server").rglob("*.py")]):
        if "mock" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.keyword)
                and node.arg == "code"
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.value.lineno}")
    assert offenders == []


def test_a_member_told_to_reconnect_is_closed_like_one_that_fell_behind() -> None:
    # 1000 means the session ended: a client must not read a reconnect request as final.
    assert ws_close_for_reason(CLOSE_RECONNECT) == ws_close_for_reason(CLOSE_TOO_SLOW) == 4008
