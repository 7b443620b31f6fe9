"""Request and response bodies of the HTTP API, as pydantic models (for validation and OpenAPI).

The engine's own models (`CreatedSession`, `SessionStatus`, `Message`, `LibraryEntry`, the
events) are used as they are; this module only adds what exists because of the wire: error
bodies, query strings, headers, list wrappers and the frames a WebSocket client may send.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from engine.backend_status import BackendStatus
from engine.history import Message
from engine.input_text import NO_CONTROL_CHARS_PATTERN
from engine.spec.library import NAME_PATTERN, LibraryEntry


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
