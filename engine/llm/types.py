"""Typed requests and results of chat-completion calls (the backend wire, OpenAI shape)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Role = Literal["system", "user", "assistant", "tool"]


class ChatMessage(BaseModel):
    """One message of a chat-completions prompt."""

    role: Role = Field(description="Who speaks: system, user, assistant or tool.")
    content: str = Field(description="The message text.")


class ToolFunction(BaseModel):
    """A function the model may call, with a JSON Schema for its arguments."""

    name: str = Field(description="Function name.")
    description: str = Field("", description="What the function does, for the model.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the arguments.",
    )


class ToolDefinition(BaseModel):
    """A tool in OpenAI function-calling form."""

    type: Literal["function"] = Field("function", description="Always 'function'.")
    function: ToolFunction = Field(description="The callable function.")


class ChatRequest(BaseModel):
    """A chat-completions request, independent of which backend serves it."""

    model: str = Field(description="Model name passed to the backend.")
    messages: list[ChatMessage] = Field(description="The prompt.")
    temperature: float | None = Field(None, description="Sampling temperature, if set.")
    max_tokens: int | None = Field(None, description="Completion token cap, if set.")
    stop: list[str] = Field(default_factory=list, description="Stop sequences.")
    tools: list[ToolDefinition] = Field(default_factory=list, description="Callable tools.")
    tool_choice: str | dict[str, Any] | None = Field(
        None, description="'auto', 'none', 'required' or a named function."
    )
    stream: bool = Field(False, description="Ask for a streamed reply.")
    top_p: float | None = Field(None, description="Nucleus sampling share, if set.")
    frequency_penalty: float | None = Field(None, description="Frequency penalty, if set.")
    presence_penalty: float | None = Field(None, description="Presence penalty, if set.")
    seed: int | None = Field(None, description="Sampling seed, if set.")
    response_format: dict[str, Any] | None = Field(
        None, description="OpenAI `response_format` (a JSON schema or JSON mode), if set."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Backend-specific fields sent as they are (llama.cpp's repeat_penalty, "
        "DRY settings, Ollama's format). Never overrides a field above.",
    )


class ToolCall(BaseModel):
    """A tool call returned by the model; `arguments` is the raw JSON text."""

    id: str = Field("", description="Backend-assigned call id.")
    name: str = Field(description="Function name as the model wrote it.")
    arguments: str = Field("", description="Arguments as raw JSON text (may be malformed).")


class Usage(BaseModel):
    """Token usage as reported by the backend."""

    prompt_tokens: int = Field(0, description="Tokens in the prompt.")
    completion_tokens: int = Field(0, description="Tokens in the completion.")
    total_tokens: int = Field(0, description="Sum of both.")


class Completion(BaseModel):
    """The typed result of one chat-completions call."""

    content: str = Field("", description="Reply text, with reasoning/<think> text removed.")
    reasoning: str = Field("", description="reasoning_content and <think> text, for debug only.")
    tool_calls: list[ToolCall] = Field(default_factory=list, description="Tool calls, if any.")
    finish_reason: str | None = Field(None, description="Why generation stopped.")
    usage: Usage | None = Field(None, description="Backend-reported usage, when given.")
    model: str = Field("", description="Model name the backend reported.")
    latency_ms: float = Field(0.0, description="Wall time of the call, retries included.")
    attempts: int = Field(1, description="How many tries the call took.")
    queue_ms: float = Field(
        0.0, description="Time spent waiting for a backend slot (part of latency_ms)."
    )
