"""Lenient models of what OpenAI-compatible backends send back.

Backends differ in small ways (a missing `index`, `arguments` as an object instead of a
string, `reasoning` instead of `reasoning_content`, content as a list of parts, usage
with missing fields). These models accept all of them and ignore unknown fields, so the
client converts one shape into the engine's `Completion` instead of tripping on quirks.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from engine.llm.types import Usage


class WireFunction(BaseModel):
    """The function part of a tool call (whole, or a fragment while streaming)."""

    name: str | None = Field(None, description="Function name (or a fragment of it).")
    arguments: str | dict[str, Any] | None = Field(
        None, description="Arguments as JSON text (or a fragment), or an already parsed object."
    )

    def arguments_text(self) -> str:
        """The arguments as JSON text, whatever form the backend used."""
        if self.arguments is None:
            return ""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False)


class WireToolCall(BaseModel):
    """A tool call, or one streamed fragment of it."""

    index: int | None = Field(None, description="Position of the call (streamed fragments).")
    id: str | None = Field(None, description="Backend-assigned id.")
    type: str | None = Field(None, description="Always 'function' in practice.")
    function: WireFunction | None = Field(None, description="The called function.")


class WireMessage(BaseModel):
    """`choices[].message` of a whole reply, or `choices[].delta` of a streamed chunk."""

    role: str | None = Field(None, description="Usually 'assistant'.")
    content: str | list[Any] | None = Field(
        None, description="Reply text, or a list of content parts."
    )
    reasoning_content: str | None = Field(None, description="Reasoning text (llama.cpp, vLLM).")
    reasoning: str | None = Field(None, description="Reasoning text (newer vLLM, LM Studio).")
    tool_calls: list[WireToolCall] | None = Field(None, description="Tool calls.")
    function_call: WireFunction | None = Field(None, description="Legacy single tool call.")

    def content_text(self) -> str:
        """The content as plain text (text parts joined when the backend sent a list)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)

    def reasoning_text(self) -> str:
        """Reasoning text under whichever field name the backend used."""
        return (self.reasoning_content or "") + (self.reasoning or "")


class WireChoice(BaseModel):
    """One entry of `choices`."""

    index: int = Field(0, description="Choice number (only 0 is used).")
    message: WireMessage | None = Field(None, description="Whole reply (non-streaming).")
    delta: WireMessage | None = Field(None, description="Increment (streaming).")
    finish_reason: str | None = Field(None, description="Why generation stopped.")


class WireUsage(BaseModel):
    """Token usage; any field may be missing."""

    prompt_tokens: int | None = Field(None, description="Tokens in the prompt.")
    completion_tokens: int | None = Field(None, description="Tokens in the completion.")
    total_tokens: int | None = Field(None, description="Sum of both.")

    def to_usage(self) -> Usage:
        """The engine's `Usage`, with the total computed when the backend left it out."""
        prompt = self.prompt_tokens or 0
        completion = self.completion_tokens or 0
        total = self.total_tokens if self.total_tokens is not None else prompt + completion
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


class WireError(BaseModel):
    """An error object as backends report it."""

    message: str | None = Field(None, description="Human-readable explanation.")
    type: str | None = Field(None, description="Error class, backend-specific.")
    code: str | int | None = Field(None, description="Error code, backend-specific.")


class WireResponse(BaseModel):
    """A whole chat completion, or one streamed chunk (same envelope)."""

    id: str | None = Field(None, description="Completion id.")
    model: str | None = Field(None, description="Model that answered.")
    choices: list[WireChoice] | None = Field(None, description="Usually exactly one.")
    usage: WireUsage | None = Field(None, description="Token usage, when reported.")
    error: WireError | str | None = Field(None, description="An error reported in the body.")

    def error_text(self) -> str | None:
        """The reported error's message, if the body carries one."""
        if self.error is None:
            return None
        if isinstance(self.error, str):
            return self.error
        return self.error.message or self.error.type or "unspecified error"


class WireErrorBody(BaseModel):
    """The body of an HTTP error reply, in any of the common shapes."""

    error: WireError | str | None = Field(None, description="OpenAI-style error.")
    detail: str | list[Any] | None = Field(None, description="FastAPI-style error (vLLM).")
    message: str | None = Field(None, description="Bare message (some proxies).")

    def text(self) -> str | None:
        """The most specific message the body offers."""
        if isinstance(self.error, str):
            return self.error
        if self.error is not None and self.error.message:
            return self.error.message
        if isinstance(self.detail, str):
            return self.detail
        if self.detail:
            return json.dumps(self.detail, ensure_ascii=False)
        return self.message
