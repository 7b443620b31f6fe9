"""Typed failures of backend calls.

`LLMError` is the one exception `LLMClient.chat` raises for a call that failed for
good (after its retries); its `code` says what kind of failure it was, so callers can
branch without parsing messages. `BackendNotAllowed` is the SSRF guard's refusal.
Neither ever carries an API key in its message.
"""

from __future__ import annotations

from typing import Final

from engine.errors import FellowshipError, Unavailable

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
    """A chat-completions call failed for good.

    `code` is one of the `LLM_*` constants of this module, `status` the backend's HTTP
    status when it sent one, `attempts` how many tries were made.
    """

    code = "llm_error"

    def __init__(
        self, message: str, *, code: str, status: int | None = None, attempts: int = 1
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.attempts = attempts

    @property
    def retryable(self) -> bool:
        """Whether this kind of failure is one the client retries."""
        return self.code in RETRYABLE_CODES


class BackendNotAllowed(FellowshipError):
    """A per-session backend URL points to a host the server does not allow (SSRF guard)."""

    code = LLM_HOST_NOT_ALLOWED
