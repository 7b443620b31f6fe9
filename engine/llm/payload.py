"""The JSON body of a chat-completions request, built from a typed `ChatRequest`.

Only fields that are set are sent (no `tools: []`, no `stop: []`, no null
temperature): several local servers reject empty or unknown fields. Backend-specific
extras (`ChatRequest.extra`) are added as they are, never over a standard field.
"""

from __future__ import annotations

from typing import Any, Final

from engine.config import Settings
from engine.llm.types import ChatRequest

# Request fields sent under their own name, and only when set.
_OPTIONAL_FIELDS: Final = (
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "response_format",
)


def build_payload(request: ChatRequest, settings: Settings) -> dict[str, Any]:
    """The JSON body for a request: only the fields that are set."""
    payload: dict[str, Any] = {
        "model": request.model,
        "messages": [message.model_dump(exclude_none=True) for message in request.messages],
    }
    if request.stream:
        payload["stream"] = True
        if settings.llm_stream_include_usage:
            payload["stream_options"] = {"include_usage": True}
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.max_tokens is not None:
        payload[settings.llm_max_tokens_field] = request.max_tokens
    if request.stop:
        payload["stop"] = list(request.stop)
    if request.tools:
        payload["tools"] = [tool.model_dump(exclude_none=True) for tool in request.tools]
        if request.tool_choice is not None:
            payload["tool_choice"] = request.tool_choice
    for name in _OPTIONAL_FIELDS:
        value = getattr(request, name)
        if value is not None:
            payload[name] = value
    for name, value in request.extra.items():
        payload.setdefault(name, value)
    return payload
