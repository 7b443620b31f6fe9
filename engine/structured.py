"""Structured output: asking a backend for JSON that fits a schema, and learning how.

Backends take a JSON schema in different fields:

- `json_schema`: `response_format: {"type": "json_schema", "json_schema": {...}}`, the
  OpenAI form, honoured by OpenAI, vLLM, llama.cpp's `llama-server` and Ollama 0.5+;
- `json_object`: `response_format: {"type": "json_object", "schema": {...}}`, the form
  llama-cpp-python's server turns into a grammar (it ignores `json_schema`), also read
  by `llama-server`;
- `format`: Ollama's own `format` field holding the schema.

`LLM_STRUCTURED_OUTPUT` (or a spec's `llm.structured_output`) picks one, turns the
feature off, or leaves it to `auto`: a `StructuredOutputProbe` per backend tries
`json_schema`, then `json_object`, then gives up, moving on at once when a backend
refuses the request (HTTP 4xx, or an error naming the field: llama-cpp-python answers
`json_schema` with a 500), and after `STRUCTURED_OUTPUT_PROBE_FAILURES` unusable answers
or failed calls in a row otherwise. A way that has worked once is kept for good.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

StructuredMode = Literal["json_schema", "json_object", "format"]
StructuredSetting = Literal["auto", "json_schema", "json_object", "format", "off"]

# The ways `auto` tries, in order (Ollama 0.5+ honours the first, so `format` is only
# used when configured).
AUTO_ORDER: Final[tuple[StructuredMode, ...]] = ("json_schema", "json_object")
SCHEMA_NAME: Final = "decision"
# Unusable answers in a row after which `auto` tries the next way on a backend: one bad
# answer may be the model's, two in a row are the way's.
STRUCTURED_OUTPUT_PROBE_FAILURES: Final = 2

logger = logging.getLogger(__name__)


class StructuredAsk(BaseModel):
    """The request fields that ask for JSON fitting a schema, for one way of asking."""

    model_config = ConfigDict(frozen=True)

    response_format: dict[str, Any] | None = Field(
        None, description="OpenAI-style response_format, when the way uses it."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Other fields (Ollama's format), sent as they are."
    )


def ask_for(mode: StructuredMode, schema: dict[str, Any]) -> StructuredAsk:
    """The request fields for `schema` in the form `mode` names."""
    if mode == "json_schema":
        return StructuredAsk(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": schema},
            }
        )
    if mode == "json_object":
        return StructuredAsk(response_format={"type": "json_object", "schema": schema})
    return StructuredAsk(extra={"format": schema})


@dataclass
class StructuredOutputProbe:
    """What `auto` has learnt about one backend (kept per backend by the LLM client)."""

    tried: int = 0  # index in AUTO_ORDER of the way being tried
    failures: int = 0  # unusable answers in a row with that way
    confirmed: bool = False  # the way has given a usable answer at least once

    def mode(self) -> StructuredMode | None:
        """The way to ask now, or None once every way has failed."""
        return AUTO_ORDER[self.tried] if self.tried < len(AUTO_ORDER) else None

    def note(
        self,
        *,
        usable: bool,
        refused: bool,
        backend: str,
        limit: int = STRUCTURED_OUTPUT_PROBE_FAILURES,
    ) -> None:
        """Record how the backend answered a structured request made with `mode()`.

        `refused`: it rejected the request as not understood; that moves on at once,
        unless the way was already confirmed. Other unusable answers and failed calls move
        on after `limit` in a row.
        """
        if usable:
            self.confirmed = True
            self.failures = 0
            return
        if self.confirmed:
            return  # a way that works is kept; a bad answer just falls down the ladder
        self.failures += 1
        if not refused and self.failures < limit:
            return
        given_up = self.mode()
        self.tried += 1
        self.failures = 0
        following = self.mode()
        logger.warning(
            "backend %s %s structured output as %s; %s",
            backend,
            "refused" if refused else "gave no usable answer to",
            given_up,
            f"trying {following} next" if following else "not asking for it any more",
        )
