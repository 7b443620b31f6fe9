"""The embedded backend as the server runs it: build if needed, then supervise llama-server.

Its loopback port is chosen up front, so the server knows its `LLM_BASE_URL` before the
build finishes, and held (a bound socket) until llama-server starts, so that nothing
else takes it meanwhile. Everything that happens is written to a `BackendBoard`; a
failure to build or to find the model leaves the board `failed` with a message that
says what to do, and the server goes on serving (the console shows the message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Final

from engine.backend_status import BackendBoard, BuildProgress
from engine.config import Settings
from engine.embedded.build import build_llama_server
from engine.embedded.model import find_model, model_name
from engine.embedded.recipe import TARGET, cache_paths
from engine.embedded.supervisor import ChildState, Supervisor, Timings
from engine.errors import BuildError, ModelMissing

log = logging.getLogger("fellowship.backend")

LOOPBACK: Final = "127.0.0.1"

DisplayCallback = Callable[[BuildProgress | None], None]
"""Shown each build step; called with None once the build is over (built or failed)."""


class EmbeddedBackend:
    """llama-server on a free loopback port, built from the cache's recipe and supervised."""

    def __init__(self, settings: Settings, *, display: DisplayCallback | None = None) -> None:
        self._settings = settings
        self._display = display
        self._reserved: socket.socket | None = _reserve_port()
        self.port = int(self._reserved.getsockname()[1])
        self.base_url = f"http://{LOOPBACK}:{self.port}/v1"
        self.board = BackendBoard(
            "embedded",
            self.base_url,
            state="starting",
            probe_timeout=settings.llm_connect_timeout,
        )
        self.supervisor: Supervisor | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Build (if needed) and start llama-server, in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._bring_up(), name="embedded-backend")

    async def stop(self) -> None:
        """Stop a build in progress, or the running llama-server."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.supervisor is not None:
            await self.supervisor.stop()
        self._release_port()

    async def _bring_up(self) -> None:
        settings = self._settings
        paths = cache_paths(settings)
        try:
            try:
                binary = await build_llama_server(
                    paths,
                    jobs=settings.local_build_jobs,
                    on_progress=self._building,
                    allow_download=False,
                )
            finally:
                if self._display is not None:
                    self._display(None)
            model = find_model(settings)
        except (BuildError, ModelMissing) as exc:
            log.error("the embedded LLM backend is not available: %s", exc.message)
            self.board.update("failed", exc.message, answers=False)
            return
        self.board.update("starting", f"starting {TARGET}", model=model_name(model))
        log.info("embedded LLM backend: %s serving %s on %s", binary, model.name, self.base_url)
        self._release_port()
        self.supervisor = Supervisor(
            TARGET,
            llama_server_command(binary, model, self.port, settings),
            f"http://{LOOPBACK}:{self.port}/health",
            Timings.from_settings(settings),
            self._child_state,
        )
        self.supervisor.start()

    def _building(self, progress: BuildProgress) -> None:
        self.board.building(progress)
        if self._display is not None:
            self._display(progress)

    def _child_state(self, state: ChildState, detail: str, answers: bool) -> None:
        self.board.update(state, detail, answers=answers)

    def _release_port(self) -> None:
        reserved, self._reserved = self._reserved, None
        if reserved is not None:
            reserved.close()


def llama_server_command(binary: Path, model: Path, port: int, settings: Settings) -> list[str]:
    """llama-server's command line: one slot per LLM_MAX_CONCURRENCY, the model's own template.

    Fellowship sends at most LLM_MAX_CONCURRENCY calls at once, so that many slots serve
    them all without queueing inside llama-server; `--jinja` applies the chat template
    stored in the GGUF (what `make test-real` checks works cleanly).
    """
    slots = settings.llm_max_concurrency
    return [
        str(binary),
        "--model", str(model),
        "--alias", model_name(model),
        "--host", LOOPBACK,
        "--port", str(port),
        "--parallel", str(slots),
        "--ctx-size", str(slots * settings.local_backend_context),
        "--jinja",
        "--no-webui",
    ]  # fmt: skip


def _reserve_port() -> socket.socket:
    """A socket bound to a free loopback port (not listening: it only keeps the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    return sock
