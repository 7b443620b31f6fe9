"""Typed failures of backend calls, as the LLM package names them.

They are defined with every other error in `engine/errors.py`; this module keeps the
names the LLM client and its callers import. `LLMError` is the one exception
`LLMClient.chat` raises for a call that failed for good (after its retries); its
`code`, one of the `LLM_*` constants, says what kind of failure it was, so callers can
branch without parsing messages. `BackendNotAllowed` is the SSRF guard's refusal.
Neither ever carries an API key in its message.
"""

from __future__ import annotations

from engine.errors import LLM_BAD_RESPONSE as LLM_BAD_RESPONSE
from engine.errors import LLM_CONNECTION as LLM_CONNECTION
from engine.errors import LLM_HOST_NOT_ALLOWED as LLM_HOST_NOT_ALLOWED
from engine.errors import LLM_RATE_LIMITED as LLM_RATE_LIMITED
from engine.errors import LLM_REJECTED as LLM_REJECTED
from engine.errors import LLM_SECRET_UNREADABLE as LLM_SECRET_UNREADABLE
from engine.errors import LLM_SERVER_ERROR as LLM_SERVER_ERROR
from engine.errors import LLM_TIMEOUT as LLM_TIMEOUT
from engine.errors import RETRYABLE_CODES as RETRYABLE_CODES
from engine.errors import BackendNotAllowed as BackendNotAllowed
from engine.errors import LLMError as LLMError
