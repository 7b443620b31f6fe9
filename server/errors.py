"""The one place where errors become HTTP statuses, JSON bodies and WebSocket close codes.

The engine raises typed `FellowshipError`s (all in `engine/errors.py`) and knows nothing
of HTTP. Here each class gets its status and its WebSocket close code by class alone,
never by its code string: the tables below are walked along the class's MRO, so a
subclass answers like its family unless it is mapped itself. Every answer gets the body
`{"error", "code"}` (plus `details` for spec problems), and Quart's own failures —
unknown route, wrong method, body too large, uncaught exception — get the same JSON
shape instead of an HTML page or a stack trace. WebSocket connections get the same
information as an `error` event and a close code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from quart import Quart, Response, current_app
from werkzeug.exceptions import HTTPException

from engine.errors import (
    BadRequest,
    FellowshipError,
    Forbidden,
    InvalidSpec,
    InvalidState,
    NotFound,
    PayloadTooLarge,
    ShuttingDown,
    SpecRejected,
    TooMany,
    Unauthorized,
    Unavailable,
)
from engine.events import ErrorEvent
from engine.hub import CLOSE_RECONNECT, CLOSE_SESSION_ENDED, CLOSE_SHUTDOWN, CLOSE_TOO_SLOW
from server.api_models import ErrorBody, ErrorDetail

log = logging.getLogger("fellowship.server")

# --- the server's own errors ---------------------------------------------------------------------


class ParameterError(BadRequest):
    """A query string or header that does not fit its model; `details` names each field."""

    code = "invalid_parameters"

    def __init__(self, message: str, details: list[ErrorDetail]) -> None:
        super().__init__(message)
        self.details = details


class RateLimited(TooMany):
    """Too many requests from one client address; retry after `retry_after` seconds."""

    code = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many requests; retry in {retry_after} s")
        self.retry_after = retry_after


# --- HTTP statuses ------------------------------------------------------------------------------

_STATUS_BY_CLASS: Final[dict[type[FellowshipError], int]] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    InvalidState: 409,
    PayloadTooLarge: 413,
    InvalidSpec: 422,
    TooMany: 429,
    Unavailable: 503,
}
_DEFAULT_STATUS: Final = 500

# Quart/werkzeug failures keep their status; these get a code and message of our own.
_HTTP_CODES: Final[dict[int, tuple[str, str]]] = {
    400: ("bad_request", "the request could not be understood"),
    404: ("not_found", "no such route"),
    405: ("method_not_allowed", "this method is not allowed on this route"),
    408: ("request_timeout", "the request body took too long to arrive"),
    413: ("too_large", "the request body is too large"),
    500: ("internal", "internal server error"),
}

# --- WebSocket close codes (documented in docs/api.md) --------------------------------------------

WS_NORMAL: Final = 1000
"""The session ended (reason `session ended`), after every remaining event was sent."""
WS_GOING_AWAY: Final = 1001
"""The server is shutting down; reconnect later with `since`."""
WS_TRY_AGAIN_LATER: Final = 1013
"""A dependency is unavailable right now."""
WS_INTERNAL: Final = 1011
"""An unexpected server error."""
WS_BAD_REQUEST: Final = 4000
"""The connect request is invalid (role, name, since)."""
WS_FORBIDDEN: Final = 4003
"""Not allowed: the observer token used as a talker, or an autonomous session (bots only)."""
WS_NOT_FOUND: Final = 4004
"""No session for this token."""
WS_TOO_SLOW: Final = 4008
"""This client fell too far behind; reconnect with `since=<last seq>`."""
WS_CONFLICT: Final = 4009
"""No seat: the session already has `max_talkers` talkers (or the state forbids it)."""
WS_RATE_LIMITED: Final = 4029
"""Too many requests from this address."""

_WS_CODE_BY_CLASS: Final[dict[type[FellowshipError], int]] = {
    BadRequest: WS_BAD_REQUEST,
    Forbidden: WS_FORBIDDEN,
    NotFound: WS_NOT_FOUND,
    InvalidState: WS_CONFLICT,
    TooMany: WS_CONFLICT,
    Unavailable: WS_TRY_AGAIN_LATER,
    ShuttingDown: WS_GOING_AWAY,
    RateLimited: WS_RATE_LIMITED,
}
_WS_CODE_BY_CLOSE_REASON: Final[dict[str, int]] = {
    CLOSE_SESSION_ENDED: WS_NORMAL,
    CLOSE_SHUTDOWN: WS_GOING_AWAY,
    CLOSE_TOO_SLOW: WS_TOO_SLOW,
    # Missed events trimmed while joining: like a client that fell behind, it reconnects.
    CLOSE_RECONNECT: WS_TOO_SLOW,
}
# RFC 6455: a close frame's reason is at most 123 bytes of UTF-8.
_WS_REASON_MAX_BYTES: Final = 123


@dataclass(frozen=True, slots=True)
class MappedError:
    """An error as the wire sees it."""

    status: int
    body: ErrorBody
    headers: dict[str, str]


def status_for(exc: FellowshipError) -> int:
    """The HTTP status of an engine error (its nearest mapped class wins)."""
    for cls in type(exc).__mro__:
        status = _STATUS_BY_CLASS.get(cls)
        if status is not None:
            return status
    return _DEFAULT_STATUS


def map_error(exc: FellowshipError) -> MappedError:
    """Status, JSON body and extra headers for an engine error."""
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return MappedError(
        status=status_for(exc),
        body=ErrorBody(error=exc.message, code=exc.code, details=_details(exc)),
        headers=headers,
    )


def _details(exc: FellowshipError) -> list[ErrorDetail] | None:
    if isinstance(exc, SpecRejected):
        return [
            ErrorDetail(path=i.path, message=i.message, line=i.line, column=i.column)
            for i in exc.issues
        ]
    if isinstance(exc, ParameterError):
        return exc.details
    return None


def error_response(exc: FellowshipError) -> Response:
    """The JSON response for an engine error."""
    mapped = map_error(exc)
    return _json(mapped.body, mapped.status, mapped.headers)


def http_error_response(exc: HTTPException) -> Response:
    """Quart's own failures (404, 405, 413, 500, ...) as JSON, never HTML."""
    status = exc.code or _DEFAULT_STATUS
    code, message = _HTTP_CODES.get(status, (_slug(exc.name), exc.name.lower()))
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = f"the request body is larger than {limit} bytes (MAX_SPEC_BYTES)"
    # Keep protocol headers such as `Allow` on a 405, drop werkzeug's HTML content type.
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return _json(ErrorBody(error=message, code=code), status, headers)


def _slug(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("'", "")


def _json(body: ErrorBody, status: int, headers: dict[str, str]) -> Response:
    response = Response(
        body.model_dump_json(exclude_none=True), status=status, content_type="application/json"
    )
    response.headers.update(headers)
    return response


# --- WebSocket ------------------------------------------------------------------------------------


def ws_close_code(exc: FellowshipError) -> int:
    """The close code a refused or failed WebSocket connection gets for this error."""
    for cls in type(exc).__mro__:
        code = _WS_CODE_BY_CLASS.get(cls)
        if code is not None:
            return code
    return WS_INTERNAL


def ws_close_for_reason(reason: str | None) -> int:
    """The close code for a stream the engine ended (session ended, too slow, shutdown)."""
    if reason is None:
        return WS_NORMAL
    return _WS_CODE_BY_CLOSE_REASON.get(reason, WS_NORMAL)


def ws_reason(text: str) -> str:
    """`text` cut to fit a WebSocket close frame."""
    data = text.encode("utf-8")
    if len(data) <= _WS_REASON_MAX_BYTES:
        return text
    return data[:_WS_REASON_MAX_BYTES].decode("utf-8", errors="ignore")


def error_event(exc: FellowshipError, *, seq: int) -> ErrorEvent:
    """An `error` event for one client (not part of the session's stream).

    It repeats the `seq` of the last session event that client received, so a client
    that tracks the last seq for `since` keeps a correct value.
    """
    return ErrorEvent(message=exc.message, code=exc.code, seq=seq, ts=datetime.now(UTC))


# --- installation ---------------------------------------------------------------------------------


def install(app: Quart) -> None:
    """Register the JSON error handlers on `app`."""

    async def on_fellowship_error(exc: FellowshipError) -> Response:
        if status_for(exc) >= _DEFAULT_STATUS:
            log.error("request failed: %s (%s)", exc.message, exc.code)
        return error_response(exc)

    async def on_http_exception(exc: HTTPException) -> Response:
        return http_error_response(exc)

    app.register_error_handler(FellowshipError, on_fellowship_error)
    app.register_error_handler(HTTPException, on_http_exception)
