"""Request and response bodies of the HTTP API, as pydantic models (for validation and OpenAPI).

The engine's own models (`CreatedSession`, `SessionStatus`, `Message`, `LibraryEntry`, the
events) are used as they are; this module only adds what exists because of the wire: error
bodies, query strings, headers, list wrappers and the frames a WebSocket client may send.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, TypeAdapter

from engine.backend_status import BackendStatus
from engine.fork import DEFAULT_FORK_START, ForkStart
from engine.history import Message
from engine.input_text import NO_CONTROL_CHARS_PATTERN
from engine.spec.library import NAME_PATTERN, LibraryEntry
from engine.transcript import DEFAULT_FORMAT, TRANSCRIPT_FORMATS


class ErrorDetail(BaseModel):
    """One located problem, e.g. one invalid field of a spec."""

    path: str = Field(
        description="Where the problem is, e.g. `bots[1].name`; empty for the whole document."
    )
    message: str = Field(description="What is wrong, in plain words.")
    line: int | None = Field(None, description="1-based line in the submitted document, if known.")
    column: int | None = Field(
        None, description="1-based column in the submitted document, if known."
    )


class ErrorBody(BaseModel):
    """Every error answer of the API has this shape (never HTML, never a stack trace)."""

    error: str = Field(description="Human-readable message.")
    code: str = Field(description="Stable machine-readable code, e.g. `not_found`.")
    details: list[ErrorDetail] | None = Field(
        None, description="Every problem found, for spec errors (400, 413, 422); else absent."
    )


class HealthResponse(BaseModel):
    """The server is up and able to answer."""

    status: Literal["ok"] = Field(description="Always `ok` when the server answers at all.")
    version: str = Field(description="Fellowship version.")
    live_sessions: int = Field(description="Sessions that have not ended.")
    backend: BackendStatus = Field(
        description="The default LLM backend: which one, its model, whether it answers."
    )


class HistoryResponse(BaseModel):
    """The full history of a session."""

    messages: list[Message] = Field(
        description="Every history position in order, reserved slots and tombstones included."
    )


class SpecLibraryResponse(BaseModel):
    """The named specs a session can be started from."""

    specs: list[LibraryEntry] = Field(description="Library specs, sorted by name.")


class CreateQuery(BaseModel):
    """Query string of `POST /v1/session/create`."""

    library: str | None = Field(
        None,
        description="Start the library spec of this name (see `GET /v1/specs`); the body, if "
        "any, is then a mapping of overrides merged over it. A name of another shape is "
        "answered like an unknown one (404).",
        # Documented, not validated here: the library answers any other name with 404.
        json_schema_extra={"pattern": NAME_PATTERN},
    )


class ConnectQuery(BaseModel):
    """Query string of the WebSocket `connect` endpoint."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["talker", "observer"] = Field(
        "observer", description="`talker` (reads and writes; full token only) or `observer`."
    )
    name: str | None = Field(
        None,
        description="Display name: one line, at most MAX_NAME_CHARS characters; required for "
        "talkers (and not the name of one of the session's bots), optional for observers.",
        # Documented, not validated here: the engine checks names and refuses with 4000.
        json_schema_extra={"pattern": NO_CONTROL_CHARS_PATTERN},
    )
    since: int | None = Field(
        None,
        ge=0,
        description="Last `seq` this client saw: replay exactly the missed events (or a fresh "
        "`history` when they are no longer buffered).",
    )


class StreamQuery(BaseModel):
    """Query string of the SSE `stream` endpoint."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(
        None,
        description="Optional display name of this observer: one line, at most "
        "MAX_NAME_CHARS characters.",
        # Documented here, checked by the route (with the engine's codes).
        json_schema_extra={"pattern": NO_CONTROL_CHARS_PATTERN},
    )
    since: int | None = Field(
        None,
        ge=0,
        description="Last `seq` this client saw. The `Last-Event-ID` header wins when both "
        "are given (browsers send it on reconnect).",
    )


class StreamHeaders(BaseModel):
    """Request headers the SSE `stream` endpoint reads."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    last_event_id: int | None = Field(
        None,
        ge=0,
        alias="Last-Event-ID",
        description="Last `seq` seen (sent by EventSource on reconnect); like `since`, and "
        "wins over it.",
    )


# --- forks and transcripts --------------------------------------------------------------------


def _whole_number(value: object) -> object:
    # JSON Schema counts 4.0 as an integer; a string or a boolean stays refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[StrictInt, BeforeValidator(_whole_number)]


class ForkRequest(BaseModel):
    """Body of `POST /v1/session/{token}/fork`."""

    model_config = ConfigDict(extra="ignore")

    at_turn: WholeNumber = Field(
        description="The last history position to copy: the fork's history is positions 1 "
        "to `at_turn` of this session, and its next message takes `at_turn` + 1. A position "
        "the session does not have answers 404 `turn_not_found`; a copy that would take a "
        "reply still being written answers 409 `turn_in_flight`.",
        # Documented, not validated here: the engine refuses 0 like any missing position.
        json_schema_extra={"minimum": 1},
        examples=[4],
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Spec changes for the fork, merged over this session's spec: mappings "
        "(`options`, `llm`, `sampling`) key by key; `bots` by name (an entry naming an "
        "existing bot changes only what it sets, a new name adds a bot); any other key "
        "replaces the value. The result is checked like a new spec (422 `invalid_spec`, "
        "paths as in the merged spec). The API key stays unless `llm.api_key` or "
        "`llm.base_url` is overridden.",
    )
    start: ForkStart = Field(
        DEFAULT_FORK_START,
        description="`running`: the fork's loop starts at once (as after create); `paused`: "
        "it waits for `POST .../resume`.",
    )


class TranscriptQuery(BaseModel):
    """Query string of `GET /v1/session/{token}/transcript`."""

    model_config = ConfigDict(extra="ignore")

    format: str | None = Field(
        None,
        description=f"`markdown` (the default), `json` or `html`. Any other value answers "
        f"400 `unknown_format`. Default: `{DEFAULT_FORMAT}`.",
        # Documented, not validated here: the engine answers an unknown one.
        json_schema_extra={"enum": list(TRANSCRIPT_FORMATS)},
    )


# --- WebSocket client frames ------------------------------------------------------------------


class UserMessageFrame(BaseModel):
    """A talker's message (talker connections only)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["user_message"] = Field(description="Always `user_message`.")
    content: str = Field(
        description="The message text (non-empty, at most MAX_MESSAGE_CHARS characters)."
    )


class PingFrame(BaseModel):
    """Asks the server for a `pong` event (any connection)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["ping"] = Field(description="Always `ping`.")


ClientFrame = Annotated[UserMessageFrame | PingFrame, Field(discriminator="type")]
client_frame_adapter: TypeAdapter[UserMessageFrame | PingFrame] = TypeAdapter(ClientFrame)
