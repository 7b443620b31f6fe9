"""Telling "the backend is down" from "this call failed", and waiting out the first.

A turn whose call could not reach the backend (no connection, a timeout, or 503) is
not worth a tombstone while the backend is simply not there: every following turn
would fail the same way and the history would fill with tombstones. So the session
loop asks `is_outage` after such a failure, which probes the backend (`GET /models`);
if it does not answer either, the loop says so once (an `error` event with code
`backend_unreachable`), keeps the turn's slot, and tries the turn again when a probe
gets an answer, waiting `BACKEND_RETRY_SECONDS`, doubled after each silent probe up to
`BACKEND_RETRY_MAX_SECONDS`. Pause and end still work meanwhile (see
`engine.loop.SessionLoop`). A backend that answers the probe but failed the call is an
ordinary failure: the turn becomes a tombstone as before.
"""

from __future__ import annotations

from collections.abc import Iterator

from engine.config import Settings
from engine.errors import (
    LLM_CONNECTION,
    LLM_SERVER_ERROR,
    LLM_TIMEOUT,
    BackendUnreachable,
    FellowshipError,
    LLMError,
)
from engine.llm.client import Backend
from engine.llm.probe import probe

_UNAVAILABLE = 503


def may_be_outage(error: FellowshipError | None) -> bool:
    """Whether a failed call could mean the backend is not there (worth a probe)."""
    if not isinstance(error, LLMError):
        return False
    return error.code in (LLM_CONNECTION, LLM_TIMEOUT) or (
        error.code == LLM_SERVER_ERROR and error.status == _UNAVAILABLE
    )


async def answers(backend: Backend, settings: Settings) -> bool:
    """Whether the backend gives any HTTP answer to a probe."""
    result = await probe(backend.base_url, timeout=settings.llm_connect_timeout)
    return result.answers


async def is_outage(error: FellowshipError | None, backend: Backend, settings: Settings) -> bool:
    """Whether a turn failed with `error` because `backend` is down (it fails a probe too)."""
    return may_be_outage(error) and not await answers(backend, settings)


def outage_notice(error: FellowshipError, backend: Backend) -> BackendUnreachable:
    """The one error members are shown when a session's backend cannot be reached."""
    return BackendUnreachable(
        f"the LLM backend at {backend.display_url} cannot be reached ({error.message}); "
        "this turn waits and is tried again as soon as the backend answers"
    )


def retry_delays(settings: Settings) -> Iterator[float]:
    """BACKEND_RETRY_SECONDS, doubling, capped at BACKEND_RETRY_MAX_SECONDS, forever."""
    delay = settings.backend_retry_seconds
    while True:
        yield min(delay, settings.backend_retry_max_seconds)
        delay *= 2
