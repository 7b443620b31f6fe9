"""The engine's typed errors.

Each carries a stable machine `code` and a human `message`. The engine never knows
about HTTP: `server/errors.py` maps these classes to statuses in one place.
"""

from __future__ import annotations


class FellowshipError(Exception):
    """Base of every error the engine reports to a caller."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class BadRequest(FellowshipError):
    """The input could not be understood (malformed body, bad frame)."""

    code = "bad_request"


class PayloadTooLarge(FellowshipError):
    """The input is larger than a configured limit."""

    code = "too_large"


class NotFound(FellowshipError):
    """No such session (or a token that does not open one)."""

    code = "not_found"


class Forbidden(FellowshipError):
    """The credential is valid but does not allow this action (e.g. observer token)."""

    code = "forbidden"


class InvalidState(FellowshipError):
    """The action is not allowed in the current state (e.g. resume when not paused)."""

    code = "invalid_state"


class TooMany(FellowshipError):
    """A capacity limit is reached (sessions, talkers)."""

    code = "too_many"


class Unavailable(FellowshipError):
    """A dependency (storage, backend) cannot serve the request right now."""

    code = "unavailable"


class EmptyReply(FellowshipError):
    """A bot's reply was empty once cleaned (the turn becomes a tombstone)."""

    code = "empty_reply"


class BackendTemplateMismatch(FellowshipError):
    """The backend's chat template seems not to fit: prompts counted far too short, or
    replies empty again and again (reported once per session as an `error` event)."""

    code = "backend_template_mismatch"
