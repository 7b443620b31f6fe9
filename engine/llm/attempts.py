"""One attempt of a chat call: what it got to, what it returned, and how it failed.

`LLMClient.chat()` makes attempts until one succeeds or the retries run out. Each
failure is an `AttemptFailed` carrying one of the `LLM_*` codes, the backend's HTTP
status and `Retry-After` when it sent them, and whether trying again can help; the
last one becomes the `LLMError` the caller sees. Raw httpx exceptions never leave an
attempt.
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from pydantic import ValidationError

from engine.errors import (
    LLM_BAD_RESPONSE,
    LLM_CONNECTION,
    LLM_RATE_LIMITED,
    LLM_REJECTED,
    LLM_SERVER_ERROR,
    LLM_TIMEOUT,
    RETRYABLE_CODES,
    LLMError,
)
from engine.llm.backend_replies import WireErrorBody
from engine.llm.types import ToolCall, Usage


@dataclass
class Progress:
    """What one attempt got to, for timeout messages and retry notices."""

    started: bool = False
    streamed: bool = False


@dataclass
class Reply:
    """What one successful attempt read from the backend."""

    content: str
    reasoning: str
    tool_calls: list[ToolCall]
    finish_reason: str | None
    usage: Usage | None
    model: str


class AttemptFailed(Exception):
    """One attempt failed; `chat()` decides whether to retry."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.retryable = code in RETRYABLE_CODES if retryable is None else retryable

    def final_error(self, detail: str, *, where: str, attempts: int) -> LLMError:
        """The error for the caller once no attempt is left; `detail` is already redacted."""
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        return LLMError(
            f"LLM call to {where} failed after {tries}: {detail}",
            code=self.code,
            status=self.status,
            attempts=attempts,
        )


async def status_failure(response: httpx.Response) -> AttemptFailed:
    """Turn a non-2xx answer into a failure carrying the backend's own message."""
    status = response.status_code
    body = await response.aread()
    try:
        message = WireErrorBody.model_validate_json(body).text()
    except ValidationError:
        message = body.decode("utf-8", errors="replace").strip() or None
    reason = f"HTTP {status}" + (f": {message}" if message else f" {response.reason_phrase}")
    if status == httpx.codes.TOO_MANY_REQUESTS:
        code = LLM_RATE_LIMITED
    elif status >= httpx.codes.INTERNAL_SERVER_ERROR:
        code = LLM_SERVER_ERROR
    else:
        code = LLM_REJECTED
    return AttemptFailed(
        code,
        reason,
        status=status,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def transport_failure(exc: httpx.HTTPError) -> AttemptFailed:
    """Map an httpx exception to a failure kind; the raw exception never escapes."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return AttemptFailed(LLM_TIMEOUT, "timed out connecting (LLM_CONNECT_TIMEOUT)")
    if isinstance(exc, httpx.TimeoutException):
        return AttemptFailed(LLM_TIMEOUT, f"timed out waiting for the backend ({text})")
    if isinstance(exc, httpx.ConnectError):
        return AttemptFailed(LLM_CONNECTION, f"could not connect ({text})")
    if isinstance(exc, httpx.RemoteProtocolError):
        return AttemptFailed(LLM_CONNECTION, f"the connection broke before a full reply ({text})")
    if isinstance(exc, httpx.DecodingError):
        return AttemptFailed(LLM_BAD_RESPONSE, f"the reply could not be decoded ({text})")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return AttemptFailed(LLM_CONNECTION, f"unusable backend URL ({text})", retryable=False)
    return AttemptFailed(LLM_CONNECTION, f"transport error ({text})")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
