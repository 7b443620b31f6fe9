"""What the running app holds: the settings, the engine's `SessionManager`, the default
backend's status board, the shutdown flag."""

from __future__ import annotations

import asyncio
import logging

from quart import current_app

from engine.backend_status import BackendBoard
from engine.config import Settings
from engine.errors import ShuttingDown
from engine.manager import SessionManager
from server.ratelimit import RateLimiter

log = logging.getLogger("fellowship.server")

EXTENSION_KEY = "fellowship"


class ServerState:
    """The app's link to the engine, started and stopped with the server."""

    def __init__(
        self,
        settings: Settings,
        manager: SessionManager,
        limiter: RateLimiter,
        backend: BackendBoard,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.limiter = limiter
        self.backend = backend
        self.closing = False
        self._started = False
        self._closed = asyncio.Event()

    async def start(self) -> None:
        """Start the engine (store, housekeeping) and the default backend's health checks."""
        if not self._started:
            self._started = True
            await self.manager.start()
            await self.backend.start()

    async def shutdown(self) -> None:
        """Stop every loop and close every member's stream with `server shutting down`.

        Called once the shutdown signal arrives, before Hypercorn waits for open
        connections, so WebSocket and SSE handlers end promptly; and again at the end
        of the app's lifespan, where it does nothing more. Safe to call many times.
        """
        if self.closing:
            await self._closed.wait()
            return
        self.closing = True
        try:
            if self._started:
                log.info("shutting down: stopping sessions and closing connections")
                await self.backend.stop()
                await self.manager.close()
        finally:
            self._closed.set()

    def refuse_if_closing(self) -> None:
        """Refuse new work once shutdown has begun."""
        if self.closing:
            raise ShuttingDown("the server is shutting down")


def current_state() -> ServerState:
    """The `ServerState` of the app handling the current request or WebSocket."""
    state: ServerState = current_app.extensions[EXTENSION_KEY]
    return state
