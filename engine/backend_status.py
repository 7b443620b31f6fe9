"""How the server's default backend is doing: which one it is, its model, whether it answers.

One `BackendBoard` per server holds the current `BackendStatus`. Whoever knows best
writes to it: the embedded backend while it builds, starts and restarts its child
process, or the board's own probe loop (a `GET /models` every `BACKEND_PROBE_SECONDS`)
for a backend Fellowship does not run itself. `/healthz` and the console read it, and
session creation asks it whether to refuse (only while the embedded backend has never
been ready: building, starting, or failed to build).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final, Literal

from pydantic import BaseModel, Field

from engine.errors import BackendFailed, BackendStarting, Unavailable
from engine.llm.probe import probe

BackendKind = Literal["embedded", "mock", "external"]
BackendState = Literal[
    "checking", "building", "starting", "ready", "unreachable", "restarting", "failed", "stopped"
]

_NOT_YET_READY: Final[frozenset[str]] = frozenset({"checking", "building", "starting"})


class BuildProgress(BaseModel):
    """Where a build of the embedded backend is."""

    step: str = Field(description="What is happening, e.g. `compiling llama-server`.")
    number: int = Field(description="Which step this is, from 1.")
    steps: int = Field(description="How many steps the build has.")
    fraction: float | None = Field(
        None, description="How much of this step is done (0 to 1), when that is known."
    )
    elapsed_seconds: float = Field(0.0, description="Seconds since the build started.")


class BackendStatus(BaseModel):
    """The default backend as the server sees it."""

    kind: BackendKind = Field(
        description="`embedded` (llama.cpp run by Fellowship), `mock` (`serve --mock`) or "
        "`external` (the server LLM_BASE_URL names)."
    )
    base_url: str = Field(description="Where calls go (no credentials).")
    model: str | None = Field(None, description="The model it serves, when known.")
    state: BackendState = Field(
        description="`checking` (not asked yet), `building`, `starting`, `ready`, "
        "`unreachable`, `restarting`, `failed` (will not come up) or `stopped`."
    )
    answers: bool | None = Field(
        None, description="Whether it answered the last check (null: not checked yet)."
    )
    detail: str | None = Field(None, description="What is going on, in plain words.")
    build: BuildProgress | None = Field(
        None, description="Progress of the embedded backend's build, while it builds."
    )


class BackendBoard:
    """The current `BackendStatus`, updated by the backend's owner or by probing."""

    def __init__(
        self,
        kind: BackendKind,
        base_url: str,
        *,
        model: str | None = None,
        state: BackendState = "checking",
        probe_seconds: float | None = None,
        probe_timeout: float,
        preferred_model: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._status = BackendStatus(kind=kind, base_url=base_url, model=model, state=state)
        self._probe_seconds = probe_seconds
        self._probe_timeout = probe_timeout
        self._preferred_model = preferred_model
        self._clock = clock
        self._build_started: float | None = None
        self._ever_ready = state == "ready"
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def ever_ready(self) -> bool:
        """Whether the backend has answered at least once since the server started."""
        return self._ever_ready

    def snapshot(self) -> BackendStatus:
        """The status now (a build's elapsed time counted up to this moment)."""
        status = self._status
        if status.build is not None and self._build_started is not None:
            elapsed = round(self._clock() - self._build_started, 1)
            status = status.model_copy(
                update={"build": status.build.model_copy(update={"elapsed_seconds": elapsed})}
            )
        return status

    def update(
        self,
        state: BackendState,
        detail: str | None = None,
        *,
        answers: bool | None = None,
        model: str | None = None,
    ) -> None:
        """Record a new state; `answers` and `model` are kept unless given."""
        changes: dict[str, object] = {"state": state, "detail": detail}
        if state != "building":
            changes["build"] = None
            self._build_started = None
        if answers is not None:
            changes["answers"] = answers
        if model is not None:
            changes["model"] = model
        if state == "ready":
            self._ever_ready = True
        self._status = self._status.model_copy(update=changes)
        self._changed.set()

    async def settled(self) -> BackendStatus:
        """Wait until the backend is `ready` or `failed` (it may be already); its status."""
        while self._status.state not in ("ready", "failed"):
            self._changed.clear()
            await self._changed.wait()
        return self.snapshot()

    def building(self, progress: BuildProgress) -> None:
        """Record the build's progress (state `building`)."""
        if self._build_started is None:
            self._build_started = self._clock() - progress.elapsed_seconds
        detail = f"building llama.cpp's llama-server: {progress.step}"
        self._status = self._status.model_copy(
            update={"state": "building", "detail": detail, "build": progress, "answers": False}
        )

    def refusal(self) -> Unavailable | None:
        """Why a session on the default backend cannot start now, or None if it can.

        Only a backend that has never been ready refuses: once it has answered, an outage
        is ridden out by each session (see `engine.outage`), not refused up front.
        """
        status = self.snapshot()
        if self._ever_ready or status.kind != "embedded":
            return None
        if status.state == "failed":
            return BackendFailed(f"the embedded LLM backend is not available: {status.detail}")
        if status.state in _NOT_YET_READY or status.state == "restarting":
            return BackendStarting(_starting_message(status))
        return None

    # --- probing a backend that someone else runs -------------------------------------------
    async def start(self) -> None:
        """Start probing, if this board probes (external and mock backends)."""
        if self._probe_seconds is not None and self._task is None:
            self._task = asyncio.create_task(self._probe_loop(self._probe_seconds))

    async def stop(self) -> None:
        """Stop probing."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> None:
        """Probe once and record the answer."""
        result = await probe(self._status.base_url, timeout=self._probe_timeout)
        model = self._served_model(result.models)
        if result.answers:
            self.update("ready", None, answers=True, model=model)
        else:
            self.update("unreachable", f"it does not answer: {result.detail}", answers=False)

    def _served_model(self, listed: list[str]) -> str | None:
        """The model bots get by default, if the backend lists it; else the first it lists."""
        if self._preferred_model in listed:
            return self._preferred_model
        return listed[0] if listed else None

    async def _probe_loop(self, every: float) -> None:
        while True:
            await self.check()
            await asyncio.sleep(every)


def _starting_message(status: BackendStatus) -> str:
    build = status.build
    if build is None:
        return (
            f"the embedded LLM backend is starting ({status.detail or status.state}); "
            "create the session again in a moment"
        )
    minutes, seconds = divmod(int(build.elapsed_seconds), 60)
    return (
        f"the embedded LLM backend is still being built ({build.step}, step {build.number} "
        f"of {build.steps}, {minutes}:{seconds:02d} so far); this happens once, on the "
        "first start. Create the session again when the console says the backend is ready"
    )
