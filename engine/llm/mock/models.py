"""What the mock backend records, what a script can make it answer, and its fault modes."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from engine.llm.types import ChatMessage, ToolCall, ToolDefinition, Usage


class Fault(StrEnum):
    """Ways the mock can misbehave, per reply or at a rate across all replies."""

    HTTP_500 = "http_500"
    """Answer 500 with an OpenAI-style error body."""
    HTTP_503 = "http_503"
    """Answer 503 with an OpenAI-style error body."""
    HTTP_429 = "http_429"
    """Answer 429 with a `Retry-After` header."""
    DROP = "drop"
    """Close the connection without answering."""
    CUT_STREAM = "cut_stream"
    """Stop midway: a stream ends without finish_reason or [DONE]; a whole reply is
    truncated below its Content-Length and the connection closed."""
    MALFORMED_JSON = "malformed_json"
    """Send JSON that does not parse (the whole body, or one stream chunk)."""
    EMPTY_CHOICES = "empty_choices"
    """Send a well-formed reply whose `choices` list is empty."""
    ENDLESS_STREAM = "endless_stream"
    """Keep sending reply text until the client goes away."""
    THINK = "think"
    """Put a `<think>…</think>` block before the reply text."""
    REASONING = "reasoning"
    """Add a `reasoning_content` field beside the reply."""
    NAME_PREFIX = "name_prefix"
    """Start the reply with another participant's `Name: ` (the last speaker)."""
    OWN_NAME_PREFIX = "own_name_prefix"
    """Start the reply with the bot's own `Name: `."""
    IMPERSONATE = "impersonate"
    """Go on speaking as another participant (`…\\nBob: …`), ignoring stop sequences."""
    TOOL_VALID = "tool_valid"
    """A proper `select_speaker` call (the default when the tool is offered)."""
    TOOL_WRONG_CASE = "tool_wrong_case"
    """A `select_speaker` call whose name is upper-cased and punctuated (`ALICE!`)."""
    TOOL_TEXT_NAME = "tool_text_name"
    """No tool call; plain text naming the bot that should speak."""
    TOOL_JSON_TEXT = "tool_json_text"
    """No tool call; the call written as JSON in the reply text."""
    TOOL_GARBAGE = "tool_garbage"
    """A `select_speaker` call with unparseable arguments and text naming nobody."""
    STRUCTURED_IGNORED = "structured_ignored"
    """Ignore `response_format` / `format`: answer as if no JSON schema had been asked for."""

    @property
    def needs_tools(self) -> bool:
        """Whether the fault only makes sense for a request that offers tools."""
        return self.value.startswith("tool_")

    @property
    def needs_schema(self) -> bool:
        """Whether the fault only makes sense for a request that asks for a JSON schema."""
        return self is Fault.STRUCTURED_IGNORED


class FaultRate(BaseModel):
    """A fault applied at random to a share of requests (`MODE:RATE` on the command line)."""

    fault: Fault = Field(description="The fault mode.")
    rate: float = Field(1.0, ge=0.0, le=1.0, description="Probability per request, 0 to 1.")

    @classmethod
    def parse(cls, text: str) -> FaultRate:
        """Read `MODE` or `MODE:RATE`; raise ValueError with a readable message."""
        mode, _, rate = text.strip().partition(":")
        try:
            fault = Fault(mode.strip().lower())
        except ValueError:
            known = ", ".join(item.value for item in Fault)
            raise ValueError(f"unknown fault {mode!r} (known: {known})") from None
        try:
            value = float(rate) if rate else 1.0
        except ValueError:
            raise ValueError(f"fault rate {rate!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"fault rate {value} is not between 0 and 1")
        return cls(fault=fault, rate=value)


class MockReply(BaseModel):
    """One scripted answer. Unset fields fall back to the mock's default behaviour."""

    content: str | None = Field(
        None, description="Reply text; None means the default reply (or a default tool call)."
    )
    tool_calls: list[ToolCall] | None = Field(
        None, description="Tool calls to return; None means the default for the request."
    )
    reasoning_content: str | None = Field(None, description="Reasoning sent beside the reply.")
    finish_reason: str | None = Field(None, description="Override of the finish reason.")
    fault: Fault | None = Field(None, description="Misbehave this way instead.")
    status: int | None = Field(
        None, description="Answer with this HTTP error status and an OpenAI-style error body."
    )
    error_message: str | None = Field(None, description="Message of that error body.")
    retry_after: str | None = Field(None, description="Retry-After header sent with an error.")
    usage: Usage | None = Field(None, description="Usage to report instead of the word count.")
    delay_ms: float = Field(0.0, ge=0, description="Wait before answering at all.")
    first_token_ms: float | None = Field(
        None, ge=0, description="Wait before the first token (overrides the server option)."
    )
    token_ms: float | None = Field(
        None, ge=0, description="Wait between tokens (overrides the server option)."
    )
    chunk_chars: int | None = Field(
        None, ge=1, description="Stream the text in pieces of this many characters, not words."
    )
    whole_tool_calls: bool = Field(
        False, description="Stream each tool call in one delta instead of fragments."
    )
    ignore_stream: bool = Field(
        False, description="Answer with one JSON body even when a stream was asked for."
    )

    @classmethod
    def tool(cls, name: str, **arguments: Any) -> MockReply:
        """A reply that calls one tool, e.g. `MockReply.tool("select_speaker", bot_name="Bob")`."""
        call = ToolCall(id="call_scripted", name=name, arguments=json.dumps(arguments))
        return cls(tool_calls=[call])


class RecordedRequest(BaseModel):
    """One request the mock received, parsed."""

    index: int = Field(description="Arrival number, from 0.")
    method: str = Field(description="HTTP method.")
    path: str = Field(description="Request path without the query.")
    headers: dict[str, str] = Field(description="Headers, names lower-cased.")
    body: dict[str, Any] = Field(description="The JSON body as sent.")
    model: str = Field("", description="Requested model.")
    messages: list[ChatMessage] = Field(default_factory=list, description="The prompt.")
    tools: list[ToolDefinition] = Field(default_factory=list, description="Offered tools.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="Requested tool choice.")
    stream: bool = Field(False, description="Whether a stream was asked for.")
    include_usage: bool = Field(False, description="stream_options.include_usage.")
    stop: list[str] = Field(default_factory=list, description="Stop sequences.")
    temperature: float | None = Field(None, description="Sampling temperature, if sent.")
    max_tokens: int | None = Field(
        None, description="max_tokens or max_completion_tokens, if sent."
    )
    top_p: float | None = Field(None, description="top_p, if sent.")
    frequency_penalty: float | None = Field(None, description="frequency_penalty, if sent.")
    presence_penalty: float | None = Field(None, description="presence_penalty, if sent.")
    seed: int | None = Field(None, description="seed, if sent.")
    response_format: dict[str, Any] | None = Field(
        None, description="response_format, if sent (JSON schema or JSON mode)."
    )
    format: dict[str, Any] | str | None = Field(
        None, description="Ollama's `format` (a JSON schema or 'json'), if sent."
    )

    @property
    def authorization(self) -> str | None:
        """The Authorization header, if any."""
        return self.headers.get("authorization")

    @property
    def system_prompt(self) -> str:
        """The text of all system messages."""
        return "\n".join(m.content for m in self.messages if m.role == "system")

    @property
    def last_user_message(self) -> str:
        """The text of the last user message ('' when there is none)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""
