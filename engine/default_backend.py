"""The server's default backend: the server LLM_BASE_URL names, the mock, or the embedded one.

`open_default_backend` decides, starts what Fellowship runs itself, and stops it again:

- `mock=True` (`fellowship serve --mock`): the built-in mock, in this process, with its
  conversational replies and a human reading pace;
- `LLM_BASE_URL` set: that server, probed every `BACKEND_PROBE_SECONDS`;
- `LLM_BASE_URL` empty: the embedded llama.cpp backend (`engine.embedded`), built on first
  use. Sessions then get a context limit that fits one of its slots.

It yields the settings the engine should use (with `llm_base_url` filled in) and the
`BackendBoard` that reports on the backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

from engine.backend_status import BackendBoard, BackendKind
from engine.config import Settings
from engine.embedded.backend import DisplayCallback, EmbeddedBackend
from engine.llm.client import Backend
from engine.llm.mock import MockLLM

CONTEXT_HEADROOM: Final = 0.75
"""Share of an embedded slot's context that sessions may fill by Fellowship's own count: a
server counts the same prompt up to about a third higher (docs/backends.md#tested-against)."""


@dataclass(frozen=True)
class DefaultBackend:
    """The backend the server's sessions use unless their spec names another."""

    settings: Settings
    board: BackendBoard


@asynccontextmanager
async def open_default_backend(
    settings: Settings, *, mock: bool = False, display: DisplayCallback | None = None
) -> AsyncIterator[DefaultBackend]:
    """Start the default backend (see the module docstring); stop it on the way out."""
    if mock:
        async with MockLLM(
            replies="chat",
            first_token_ms=settings.mock_first_token_ms,
            token_ms=settings.mock_token_ms,
            record=False,  # a long demo must not grow memory
        ) as server:
            board = _probed("mock", server.base_url, settings)
            engine_settings = settings.model_copy(update={"llm_base_url": server.base_url})
            yield DefaultBackend(engine_settings, board)
        return
    if settings.llm_base_url.strip():
        yield DefaultBackend(settings, _probed("external", settings.llm_base_url, settings))
        return
    embedded = EmbeddedBackend(settings, display=display)
    embedded.start()
    slot = int(settings.local_backend_context * CONTEXT_HEADROOM)
    limit = min(settings.default_context_limit, slot)
    engine_settings = settings.model_copy(
        update={"llm_base_url": embedded.base_url, "default_context_limit": limit}
    )
    try:
        yield DefaultBackend(engine_settings, embedded.board)
    finally:
        await embedded.stop()


def _probed(kind: BackendKind, base_url: str, settings: Settings) -> BackendBoard:
    return BackendBoard(
        kind,
        Backend(base_url=base_url).display_url,
        probe_seconds=settings.backend_probe_seconds,
        probe_timeout=settings.llm_connect_timeout,
        preferred_model=settings.default_bot_model,
    )


def external_board(settings: Settings) -> BackendBoard:
    """The board of a server whose backend is simply LLM_BASE_URL (apps built in tests)."""
    return _probed("external", settings.llm_base_url, settings)
