"""Typed errors of the client, one class per thing an application may want to catch.

The server answers a refusal with `{"error", "code"}` (HTTP) or an `error` event and a
close code (WebSocket). `error_for` turns either into one of the classes below: by
`code` first (`observer_token` → `ObserverToken`), else by the HTTP status or close
code's family (any 404 → `NotFound`), so a code added to the server later still lands
in the right family. Messages come from the server and never contain a token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from engine.errors import SpecIssue

__all__ = [
    "BadRequest",
    "ConnectionFailed",
    "FellowshipClientError",
    "Forbidden",
    "InvalidSpec",
    "InvalidState",
    "MalformedSpec",
    "NotFound",
    "ObserverToken",
    "PayloadTooLarge",
    "RateLimited",
    "SendUncertain",
    "ServerError",
    "SessionEnded",
    "ShuttingDown",
    "SpecIssue",
    "SpecNotFound",
    "SpecRejected",
    "SpecTooLarge",
    "StreamClosed",
    "TalkersNotAllowed",
    "TooMany",
    "TooManySessions",
    "TooManyTalkers",
    "Unavailable",
    "error_for",
]


class FellowshipClientError(Exception):
    """Base of every error the client raises.

    `code` is the server's machine code (or the client's own for transport failures),
    `message` the human text; `status` is the HTTP status and `close_code` the
    WebSocket close code when the error came that way.
    """

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        self.close_code = close_code

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


# --- what the server refused ----------------------------------------------------------------------


class BadRequest(FellowshipClientError):
    """The request could not be understood (400, close code 4000)."""

    default_code = "bad_request"


class Forbidden(FellowshipClientError):
    """The token is valid but does not allow this (403, close code 4003)."""

    default_code = "forbidden"


class ObserverToken(Forbidden):
    """The read-only observer token was used for a control call or to talk."""

    default_code = "observer_token"


class TalkersNotAllowed(Forbidden):
    """A talker tried to join an autonomous session (bots only)."""

    default_code = "talkers_not_allowed"


class NotFound(FellowshipClientError):
    """No session for this token, or no such route (404, close code 4004)."""

    default_code = "not_found"


class SpecNotFound(NotFound):
    """No library spec has this name."""

    default_code = "spec_not_found"


class InvalidState(FellowshipClientError):
    """Not allowed in the session's current state, e.g. resume when not paused (409)."""

    default_code = "invalid_state"


class SessionEnded(InvalidState):
    """The session has ended: it takes no more commands or messages."""

    default_code = "session_ended"


class PayloadTooLarge(FellowshipClientError):
    """The body is larger than the server accepts (413)."""

    default_code = "too_large"


class SpecRejected(FellowshipClientError):
    """A spec was refused; `issues` lists every problem, located by path and line."""

    def __init__(
        self,
        message: str,
        *,
        issues: Sequence[SpecIssue] = (),
        code: str | None = None,
        status: int | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, close_code=close_code)
        self.issues = list(issues)


class InvalidSpec(SpecRejected):
    """The spec was read but is not valid, or cannot run on this server (422)."""

    default_code = "invalid_spec"


class MalformedSpec(SpecRejected, BadRequest):
    """The spec document cannot be read at all: syntax, encoding (400)."""

    default_code = "malformed_spec"


class SpecTooLarge(SpecRejected, PayloadTooLarge):
    """The spec document is larger than the server's MAX_SPEC_BYTES (413)."""

    default_code = "spec_too_large"


class TooMany(FellowshipClientError):
    """A capacity limit is reached (429, close codes 4009 and 4029)."""

    default_code = "too_many"


class TooManySessions(TooMany):
    """The server already runs MAX_SESSIONS sessions."""

    default_code = "too_many_sessions"


class TooManyTalkers(TooMany):
    """The session already has its `max_talkers` talkers."""

    default_code = "too_many_talkers"


class RateLimited(TooMany):
    """Too many requests from this address; `retry_after` says when to try again (seconds)."""

    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Unavailable(FellowshipClientError):
    """The server cannot serve this right now (503, close codes 1001 and 1013)."""

    default_code = "unavailable"


class ShuttingDown(Unavailable):
    """The server is shutting down."""

    default_code = "shutting_down"


class ServerError(FellowshipClientError):
    """The server failed (500, close code 1011); its log has the details."""

    default_code = "internal"


# --- the client's own -----------------------------------------------------------------------------


class ConnectionFailed(FellowshipClientError):
    """The server could not be reached, or a stream gave up reconnecting."""

    default_code = "connection_failed"


class StreamClosed(FellowshipClientError):
    """The stream was closed by the application; it delivers and sends nothing more."""

    default_code = "stream_closed"


class SendUncertain(FellowshipClientError):
    """The connection dropped while a message was being written.

    It may or may not have reached the server, and it is not sent again (a message is
    never sent twice): the `talker_message` event, or the history, tells whether it
    arrived.
    """

    default_code = "send_uncertain"


# --- mapping --------------------------------------------------------------------------------------

_BY_CODE: Final[dict[str, type[FellowshipClientError]]] = {
    cls.default_code: cls
    for cls in (
        BadRequest,
        Forbidden,
        ObserverToken,
        TalkersNotAllowed,
        NotFound,
        SpecNotFound,
        InvalidState,
        SessionEnded,
        PayloadTooLarge,
        InvalidSpec,
        MalformedSpec,
        SpecTooLarge,
        TooMany,
        TooManySessions,
        TooManyTalkers,
        RateLimited,
        Unavailable,
        ShuttingDown,
        ServerError,
    )
}
_BY_CODE["observer_cannot_talk"] = Forbidden

_BY_STATUS: Final[dict[int, type[FellowshipClientError]]] = {
    400: BadRequest,
    401: Forbidden,
    403: Forbidden,
    404: NotFound,
    405: BadRequest,
    409: InvalidState,
    413: PayloadTooLarge,
    422: InvalidSpec,
    429: TooMany,
    503: Unavailable,
}

_BY_CLOSE_CODE: Final[dict[int, type[FellowshipClientError]]] = {
    1001: ShuttingDown,
    1011: ServerError,
    1013: Unavailable,
    4000: BadRequest,
    4003: Forbidden,
    4004: NotFound,
    4009: TooMany,
    4029: RateLimited,
}


def error_for(
    body: Mapping[str, Any] | None,
    *,
    status: int | None = None,
    close_code: int | None = None,
    retry_after: float | None = None,
) -> FellowshipClientError:
    """The typed error for a server's `{"error", "code", "details"?}` answer or `error` event.

    `body` may be None (no JSON came back); the status or close code then decide.
    """
    body = body or {}
    code = body.get("code") if isinstance(body.get("code"), str) else None
    message = body.get("error", body.get("message"))
    if not isinstance(message, str) or not message:
        message = f"the server refused the request (HTTP {status})" if status else "refused"
    cls = _BY_CODE.get(code or "")
    if cls is None and status is not None:
        cls = _BY_STATUS.get(status, ServerError if status >= 500 else BadRequest)
    if cls is None and close_code is not None:
        cls = _BY_CLOSE_CODE.get(close_code, ServerError)
    cls = cls or ServerError
    kw: dict[str, Any] = {"code": code, "status": status, "close_code": close_code}
    if issubclass(cls, SpecRejected):
        return cls(message, issues=_issues(body.get("details")), **kw)
    if issubclass(cls, RateLimited):
        return cls(message, retry_after=retry_after, **kw)
    return cls(message, **kw)


def _issues(details: object) -> list[SpecIssue]:
    if not isinstance(details, list):
        return []
    return [SpecIssue.model_validate(d) for d in details if isinstance(d, dict)]
