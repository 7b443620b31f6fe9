"""Every typed error of the engine, in one place.

Each class carries its stable machine `code` as a class attribute and a human
`message`; a raise site names the class, never a code string. The engine never knows
about HTTP: `server/errors.py` maps these classes (walking each one's MRO, so a
subclass answers like its family unless it is mapped itself) to HTTP statuses and
WebSocket close codes, by class alone.

The families come first (`BadRequest`, `Unauthorized`, `Forbidden`, `NotFound`,
`InvalidState`, `TooMany`, `Unavailable`, `PayloadTooLarge`); the errors below them say
which refusal or failure it was. `LLMError` is the one exception whose code is chosen when it is
raised: it is one of the `LLM_*` constants, which say what kind of failure a backend
call had.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Final, Literal

from pydantic import BaseModel, Field


class FellowshipError(Exception):
    """Base of every error the engine reports to a caller."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- families -------------------------------------------------------------------------------------


class BadRequest(FellowshipError):
    """The input could not be understood (malformed body, bad frame)."""

    code = "bad_request"


class PayloadTooLarge(FellowshipError):
    """The input is larger than a configured limit."""

    code = "too_large"


class NotFound(FellowshipError):
    """No such session (or a token that does not open one)."""

    code = "not_found"


class Unauthorized(FellowshipError):
    """A credential is missing or wrong (the metrics token, the cluster admin token)."""

    code = "unauthorized"


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


# --- what members send: names, messages, WebSocket frames -----------------------------------------


class NameRequired(BadRequest):
    """A talker connected without a display name."""

    code = "name_required"


class NameTaken(BadRequest):
    """A talker's display name is the name of a bot of the session."""

    code = "name_taken"


class NameTooLong(BadRequest):
    """A display name is longer than MAX_NAME_CHARS."""

    code = "name_too_long"


class InvalidName(BadRequest):
    """A display name is not one plain line (tabs, control characters)."""

    code = "invalid_name"


class EmptyMessage(BadRequest):
    """A talker message is empty or only whitespace."""

    code = "empty_message"


class MessageTooLong(BadRequest):
    """A talker message is longer than MAX_MESSAGE_CHARS."""

    code = "message_too_long"


class BadFrame(BadRequest):
    """A WebSocket frame is binary, not a typed object, or a message without content."""

    code = "bad_frame"


class InvalidJson(BadRequest):
    """A WebSocket frame is not valid JSON text."""

    code = "invalid_json"


class UnknownFrameType(BadRequest):
    """A WebSocket frame's `type` is neither `user_message` nor `ping`."""

    code = "unknown_frame_type"


# --- who may do what ------------------------------------------------------------------------------


class ObserverToken(Forbidden):
    """The read-only observer token was used for a control action or to talk."""

    code = "observer_token"


class ObserverCannotTalk(Forbidden):
    """An observer sent a message."""

    code = "observer_cannot_talk"


class ClusterTokenInvalid(Unauthorized):
    """`GET /v1/cluster` without the right `CLUSTER_ADMIN_TOKEN` as its Bearer token."""

    code = "cluster_token"


class TalkersNotAllowed(Forbidden):
    """A talker tried to join an autonomous session (bots only)."""

    code = "talkers_not_allowed"


# --- session state and capacity -------------------------------------------------------------------


class SessionEnded(InvalidState):
    """The session has ended; it takes no more messages or commands."""

    code = "session_ended"


class NotOwner(InvalidState):
    """This node does not run the session: what changes it goes to the node that does."""

    code = "not_owner"


class OwnerUnreachable(Unavailable):
    """The node that runs the session did not answer a command in time (cluster mode)."""

    code = "owner_unreachable"


class TooManySessions(TooMany):
    """MAX_SESSIONS sessions are running already."""

    code = "too_many_sessions"


class TooManyTalkers(TooMany):
    """The session already has its `max_talkers` talkers."""

    code = "too_many_talkers"


# --- forks and transcripts ------------------------------------------------------------------------


class TurnNotFound(NotFound):
    """A fork asked for a history position the session does not have (yet)."""

    code = "turn_not_found"


class TurnInFlight(InvalidState):
    """A fork would copy a reserved slot: a reply still being generated."""

    code = "turn_in_flight"


class UnknownFormat(BadRequest):
    """A transcript was asked for in a format that does not exist."""

    code = "unknown_format"


# --- the server and its default backend -----------------------------------------------------------


class ShuttingDown(Unavailable):
    """The server is shutting down and takes no new work."""

    code = "shutting_down"


class InternalError(FellowshipError):
    """Something failed that should not have; the details are in the server's log."""

    code = "internal"


class BackendStarting(Unavailable):
    """Sessions on the default backend are refused until the embedded backend first answers."""

    code = "backend_starting"


class BackendFailed(Unavailable):
    """The embedded backend could not be built or started; sessions on it are refused."""

    code = "backend_failed"


class BuildError(FellowshipError):
    """The embedded backend cannot be built; the message says why and what to do."""

    code = "backend_build_failed"

    def __init__(self, message: str, *, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)


class ModelMissing(FellowshipError):
    """No GGUF file to serve; the message says how to get one."""

    code = "backend_model_missing"


# --- backend calls --------------------------------------------------------------------------------

LLM_TIMEOUT: Final = "llm_timeout"
"""The backend did not answer in time (connect, first byte, idle gap or whole attempt)."""
LLM_CONNECTION: Final = "llm_connection"
"""The connection failed or was closed before a complete reply."""
LLM_RATE_LIMITED: Final = "llm_rate_limited"
"""The backend answered 429 Too Many Requests."""
LLM_SERVER_ERROR: Final = "llm_server_error"
"""The backend answered 5xx, or reported an error inside a reply."""
LLM_BAD_RESPONSE: Final = "llm_bad_response"
"""The reply could not be used: malformed JSON, no choices, a stream cut short."""
LLM_REJECTED: Final = "llm_rejected"
"""The backend refused the request with a 4xx other than 429 (never retried)."""
LLM_HOST_NOT_ALLOWED: Final = "llm_host_not_allowed"
"""A session asked for a backend whose host is not in ALLOWED_LLM_HOSTS."""
LLM_SECRET_UNREADABLE: Final = "secret_unreadable"  # noqa: S105 - a code, not a secret
"""The session's API key is stored encrypted and SECRET_KEY cannot decrypt it: nothing is sent."""

RETRYABLE_CODES: Final = frozenset(
    {LLM_TIMEOUT, LLM_CONNECTION, LLM_RATE_LIMITED, LLM_SERVER_ERROR, LLM_BAD_RESPONSE}
)
"""Codes of failures that are worth another try."""


class LLMError(Unavailable):
    """A chat-completions call failed for good (after its retries).

    `code` is one of the `LLM_*` constants above, `status` the backend's HTTP status
    when it sent one, `attempts` how many tries were made. Never carries an API key.
    """

    code = "llm_error"

    def __init__(
        self, message: str, *, code: str, status: int | None = None, attempts: int = 1
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.attempts = attempts

    @property
    def retryable(self) -> bool:
        """Whether this kind of failure is one the client retries."""
        return self.code in RETRYABLE_CODES


class BackendNotAllowed(FellowshipError):
    """A per-session backend URL points to a host the server does not allow (SSRF guard)."""

    code = LLM_HOST_NOT_ALLOWED


class BackendUnreachable(Unavailable):
    """A session's backend does not answer at all; its turn waits for it (told once)."""

    code = "backend_unreachable"


class TokenizerError(FellowshipError):
    """A shipped tokenizer file is missing, corrupt, or the encoding is unknown."""

    code = "tokenizer_error"


# --- turns (reported to members as `error` events) ------------------------------------------------


class EmptyReply(FellowshipError):
    """A bot's reply was empty once cleaned (the turn becomes a tombstone)."""

    code = "empty_reply"


class TurnCancelled(FellowshipError):
    """The session ended while a reply was being generated (the turn becomes a tombstone)."""

    code = "cancelled"


class ServerRestarted(FellowshipError):
    """The server restarted while a reply was being generated (the turn becomes a tombstone)."""

    code = "server_restart"


class BackendTemplateMismatch(FellowshipError):
    """The backend's chat template seems not to fit: prompts counted far too short, or
    replies empty again and again (reported once per session as an `error` event)."""

    code = "backend_template_mismatch"


# --- storage and secrets --------------------------------------------------------------------------

StorageProblem = Literal[
    "read_only",
    "disk_full",
    "not_a_database",
    "corrupt",
    "cannot_open",
    "locked",
    "io",
    "schema_too_new",
    "unknown_schema",
    "unknown_session",
    "closed",
    "fenced",
    "other",
]


class StorageError(FellowshipError):
    """The store could not read or write: the durability promise cannot be kept.

    `problem` says what kind of failure it was (for tests, logs and the
    operator); the message says what happened and where, in plain words.
    """

    code = "storage_error"

    def __init__(self, message: str, *, problem: StorageProblem = "other") -> None:
        super().__init__(message)
        self.problem: StorageProblem = problem


class StorageFailure(StorageError):
    """A write failed for a reason the store did not classify (still unrecoverable)."""


class Fenced(StorageError, Unavailable):
    """A write for a session whose lease this node no longer holds (cluster mode).

    Another node took the session over (its epoch is higher), or this node never held
    it: nothing was written, and this node must stop running the session. Answered as
    `Unavailable` (503): the session goes on elsewhere.
    """

    code = "fenced"

    def __init__(self, message: str) -> None:
        super().__init__(message, problem="fenced")


class SecretUnreadable(FellowshipError):
    """A sealed secret cannot be opened: no key is set, its key is not among
    `SECRET_KEY`'s, or the stored value was altered. The message says which."""

    code = LLM_SECRET_UNREADABLE


class SecretKeyMissing(FellowshipError):
    """A secret has to be stored, but `SECRET_KEY` is not set, so it cannot be encrypted."""

    code = "secret_key_missing"


# --- specs ----------------------------------------------------------------------------------------

SpecFailure = Literal["malformed", "too_large", "invalid"]


class SpecIssue(BaseModel):
    """One problem found in a spec, located by path and (for YAML) line."""

    path: str = Field(
        description="Where the problem is: keys joined by dots, list items as [index] "
        "(e.g. bots[1].name). Empty when it concerns the whole document."
    )
    message: str = Field(description="What is wrong, in plain words.")
    line: int | None = Field(None, description="1-based line in the submitted document.")
    column: int | None = Field(None, description="1-based column in the submitted document.")

    def __str__(self) -> str:
        if not self.path:
            if self.line is None:
                return self.message
            where = f"line {self.line}"
            if self.column is not None:
                where += f", column {self.column}"
            return f"{where}: {self.message}"
        where = self.path if self.line is None else f"{self.path} (line {self.line})"
        return f"{where}: {self.message}"


class SpecRejected(FellowshipError):
    """A spec was refused; `issues` lists every problem found.

    The subclass says how: `MalformedSpec` (400), `SpecTooLarge` (413) or
    `InvalidSpec` (422).
    """

    failure: ClassVar[SpecFailure]

    def __init__(self, issues: Sequence[SpecIssue]) -> None:
        self.issues = list(issues)
        summary = str(self.issues[0]) if self.issues else "the spec was refused"
        if len(self.issues) > 1:
            summary += f" (and {len(self.issues) - 1} more problems)"
        super().__init__(summary)


class MalformedSpec(SpecRejected, BadRequest):
    """The document cannot be read: encoding, syntax, aliases, several documents."""

    code = "malformed_spec"
    failure = "malformed"


class SpecTooLarge(SpecRejected, PayloadTooLarge):
    """The document is larger than MAX_SPEC_BYTES."""

    code = "spec_too_large"
    failure = "too_large"


class InvalidSpec(SpecRejected):
    """The document was read but is not a valid spec (maps to HTTP 422)."""

    code = "invalid_spec"
    failure = "invalid"


class SpecNotFound(NotFound):
    """No library spec has this name."""

    code = "spec_not_found"
