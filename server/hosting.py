"""Serving the app with Hypercorn, and shutting down gracefully.

Shutdown order matters. Hypercorn, once its shutdown trigger returns, stops listening
and waits (up to a grace period) for open connections to finish, and only then runs
the app's shutdown hooks. Live WebSocket and SSE connections never finish by
themselves, so the trigger first closes the engine (`ServerState.shutdown`): loops stop
and every member's stream ends with `server shutting down` — WebSockets close with
1001, SSE streams end — and then Hypercorn's wait is short.

WebSocket pings are capped at half the grace period (see `ping_interval`).

Hypercorn's access log is routed to the `fellowship.access` logger with a filter that
masks session tokens in paths, because a token in a log file is a leaked token.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from typing import Final

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from quart import Quart

from engine.backend_status import BackendStatus
from engine.config import Settings, planned_settings
from engine.default_backend import open_default_backend
from engine.embedded.backend import DisplayCallback
from engine.logs import setup_logging
from server import ws_deflate
from server.app import create_app, mask_path
from server.state import EXTENSION_KEY, ServerState

log = logging.getLogger("fellowship.server")

EXIT_FORCED: Final = 130  # as for a shell interrupted by Ctrl-C
ACCESS_LOGGER: Final = "fellowship.access"
# Client address, request line (path masked), status, body bytes, duration in microseconds.
ACCESS_LOG_FORMAT: Final = '%(h)s "%(r)s" %(s)s %(b)s %(D)sus'
GC_THRESHOLDS: Final = (7000, 10, 10)
"""The cyclic collector's thresholds once serving (CPython's default is 700, 10, 10).

A turn allocates thousands of short-lived objects: with ten times the room between
young collections, full collections come ten times less often.
"""


class TokenPathFilter(logging.Filter):
    """Masks the token in `/v1/session/<token>` paths of a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_path(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def access_logger() -> logging.Logger:
    """The access logger, with the token filter installed once."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, TokenPathFilter) for f in logger.filters):
        logger.addFilter(TokenPathFilter())
    return logger


def hypercorn_config(settings: Settings, *, sock: socket.socket | None = None) -> Config:
    """Hypercorn settings from ours; `sock` serves an already bound socket (tests)."""
    config = Config()
    if sock is not None:
        # Hypercorn takes over the descriptor (and closes it when done).
        config.bind = [f"fd://{sock.detach()}"]
    else:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        config.bind = [f"{host}:{settings.port}"]
    config.accesslog = access_logger() if settings.access_log else None
    config.access_log_format = ACCESS_LOG_FORMAT
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.shutdown_grace_seconds
    config.websocket_ping_interval = ping_interval(settings)
    return config


def ping_interval(settings: Settings) -> float:
    """WS_PING_SECONDS, capped at half the shutdown grace period.

    Hypercorn's ping loop for a WebSocket notices that the socket closed only after
    its next sleep, and shutdown waits for it. Were it to outlast the grace period,
    Hypercorn would cancel the connection, and Python 3.11's asyncio logs every
    cancelled connection as an error; with the cap, shutdown ends cleanly in time.
    """
    cap = settings.shutdown_grace_seconds / 2
    return min(settings.ws_ping_seconds, cap) if cap > 0 else settings.ws_ping_seconds


async def serve(
    app: Quart, settings: Settings, *, shutdown: asyncio.Event, sock: socket.socket | None = None
) -> None:
    """Serve `app` until `shutdown` is set, then shut down gracefully."""
    state: ServerState = app.extensions[EXTENSION_KEY]
    ws_deflate.install()  # one compression per event for every WebSocket observer

    async def trigger() -> None:
        await shutdown.wait()
        await state.shutdown()

    await hypercorn_serve(app, hypercorn_config(settings, sock=sock), shutdown_trigger=trigger)


def run(settings: Settings, *, mock: bool = False, display: DisplayCallback | None = None) -> int:
    """`fellowship serve`: log setup, the default backend, then serve until SIGINT or SIGTERM.

    The default backend (`engine.default_backend`: the mock with `mock`, LLM_BASE_URL's
    server, or the embedded one, whose build `display` shows) starts first and stops
    last, after the sessions.
    """
    # Masked in every log line should one slip in: the backends' keys, the metrics and
    # cluster admin tokens, and the keys that encrypt the stored ones.
    named = [entry.api_key for entry in settings.llm_backends.values() if entry.api_key]
    tokens = [settings.metrics_token, settings.cluster_admin_token]
    secrets = [settings.llm_api_key, *named, *tokens, *settings.secret_key]
    keys = [key.get_secret_value() for key in secrets if key.get_secret_value()]
    setup_logging(settings.log_dir, settings.log_level, api_keys=keys)
    for warning in planned_settings(settings):
        log.warning("%s", warning)

    async def main() -> None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, _on_signal, signum, shutdown)
        # The app (and the engine's clients) are made inside the running loop.
        async with open_default_backend(settings, mock=mock, display=display) as backend:
            _announce(backend.board.snapshot())
            app = create_app(backend.settings, backend=backend.board)
            app.before_serving(settle_collector)  # after the engine's start-up, as added later
            await serve(app, backend.settings, shutdown=shutdown)

    try:
        asyncio.run(main())
    except Exception:
        log.exception("the server stopped on an error")
        return 1
    log.info("server stopped")
    return 0


async def settle_collector() -> None:
    """Tune the cyclic garbage collector for serving, once start-up is done.

    What exists by then (modules, the engine, every restored session with its history
    and events) lives as long as the process. Frozen, it is no longer walked by every
    full collection, whose pauses grow with it (up to 100 ms with a hundred sessions).
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _announce(status: BackendStatus) -> None:
    if status.kind == "mock":
        log.info("LLM backend: the built-in mock at %s (serve --mock)", status.base_url)
    elif status.kind == "external":
        log.info("LLM backend: %s (LLM_BASE_URL)", status.base_url)
    else:
        log.info(
            "LLM backend: embedded llama.cpp on %s (LLM_BASE_URL is empty); the console "
            "shows when it is ready",
            status.base_url,
        )


def _on_signal(signum: int, shutdown: asyncio.Event) -> None:
    name = signal.Signals(signum).name
    if shutdown.is_set():
        # A second signal while shutting down: the user wants out now.
        log.warning("received %s again: exiting at once", name)
        os._exit(EXIT_FORCED)
    log.info("received %s: shutting down (send it again to exit at once)", name)
    shutdown.set()
