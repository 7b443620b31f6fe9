"""Keeping one child server process alive: start, wait until healthy, restart, stop.

`Supervisor.run` loops until stopped: it starts the command, polls its health URL until
it answers 200 (or the process dies, or `LOCAL_BACKEND_START_TIMEOUT` passes), then
watches it. A child that exits, or stops answering for as long as it was allowed to
take to start, is killed and started again after a wait that doubles with each failure
in a row (`LOCAL_BACKEND_RESTART_DELAY` up to `LOCAL_BACKEND_RESTART_MAX_DELAY`); a
child that stayed up that long starts the count afresh. Each change is reported through
`on_state`. The child's output goes to the log file, line by line (not the console).

The child runs in its own session, so Ctrl-C in the terminal reaches Fellowship only,
which then stops the child itself; on Linux the kernel also sends the child SIGTERM
should Fellowship die without doing so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from engine.config import Settings
from engine.logs import FILE_ONLY

ChildState = Literal["starting", "ready", "unreachable", "restarting", "failed", "stopped"]
StateCallback = Callable[[ChildState, str, bool], None]
"""Told `(state, detail, answers)` on every change."""

_HTTP_OK: Final = 200
_PR_SET_PDEATHSIG: Final = 1  # from <linux/prctl.h>


class Timings(BaseModel):
    """How patient the supervisor is (all in seconds)."""

    model_config = ConfigDict(frozen=True)

    start_timeout: float = Field(gt=0)
    health_interval: float = Field(gt=0)
    restart_delay: float = Field(gt=0)
    restart_max_delay: float = Field(gt=0)
    stop_timeout: float = Field(ge=0)

    @classmethod
    def from_settings(cls, settings: Settings) -> Timings:
        """The LOCAL_BACKEND_* settings."""
        return cls(
            start_timeout=settings.local_backend_start_timeout,
            health_interval=settings.local_backend_health_interval,
            restart_delay=settings.local_backend_restart_delay,
            restart_max_delay=settings.local_backend_restart_max_delay,
            stop_timeout=settings.local_backend_stop_timeout,
        )


class Supervisor:
    """Runs `command` as a child process and keeps it answering at `health_url`."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        health_url: str,
        timings: Timings,
        on_state: StateCallback,
        *,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.health_url = health_url
        self.timings = timings
        self._on_state = on_state
        self._log = log or logging.getLogger(f"fellowship.backend.{name}")
        self._clock = clock
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.starts = 0
        """How many times the child was started (1 + restarts)."""

    @property
    def pid(self) -> int | None:
        """The running child's process id, if one runs."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def start(self) -> None:
        """Start supervising in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"supervise-{self.name}")

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after `stop_timeout`) and stop supervising."""
        self._stopping = True
        await self._terminate()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._report("stopped", f"{self.name} stopped", False)

    async def run(self) -> None:
        """Start, watch and restart the child until `stop()`."""
        failures = 0
        async with httpx.AsyncClient(timeout=self.timings.health_interval) as http:
            while not self._stopping:
                process = await self._spawn()
                if process is None:
                    return  # the command cannot be started at all: restarting cannot help
                up_since = self._clock()
                why = await self._until_down(process, http)
                await self._terminate()
                if self._stopping:
                    return
                if self._clock() - up_since >= self.timings.restart_max_delay:
                    failures = 0
                delay = min(
                    self.timings.restart_delay * 2**failures, self.timings.restart_max_delay
                )
                failures += 1
                self._log.warning("%s %s; restarting in %.1f s", self.name, why, delay)
                self._report("restarting", f"{self.name} {why}; restarting in {delay:g} s", False)
                await asyncio.sleep(delay)

    # --- one life of the child --------------------------------------------------------------
    async def _spawn(self) -> asyncio.subprocess.Process | None:
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        except OSError as exc:
            detail = f"cannot start {self.name} ({self.command[0]}): {exc.strerror or exc}"
            self._log.error("%s", detail)
            self._report("failed", detail, False)
            return None
        self._process = process
        self.starts += 1
        self._log.info("started %s (pid %d): %s", self.name, process.pid, " ".join(self.command))
        self._report("starting", f"{self.name} is starting (pid {process.pid})", False)
        reader = asyncio.create_task(self._copy_output(process), name=f"{self.name}-output")
        self._readers.add(reader)  # held until done: a task nobody holds may be collected
        reader.add_done_callback(self._readers.discard)
        return process

    async def _until_down(
        self, process: asyncio.subprocess.Process, http: httpx.AsyncClient
    ) -> str:
        """Wait through start-up and service; say why the child is no longer usable."""
        timings = self.timings
        exited = asyncio.create_task(process.wait())
        try:
            deadline = self._clock() + timings.start_timeout
            while not await self._healthy(http):
                if await _exited_within(exited, timings.health_interval):
                    return f"{describe_exit(process.returncode)} while starting"
                if self._clock() >= deadline:
                    return f"did not answer within {timings.start_timeout:g} s of starting"
            self._log.info("%s answers at %s", self.name, self.health_url)
            self._report("ready", f"{self.name} answers", True)
            silent_since: float | None = None
            while not await _exited_within(exited, timings.health_interval):
                if await self._healthy(http):
                    if silent_since is not None:
                        self._report("ready", f"{self.name} answers again", True)
                    silent_since = None
                    continue
                now = self._clock()
                if silent_since is None:
                    silent_since = now
                    self._report("unreachable", f"{self.name} does not answer", False)
                elif now - silent_since >= timings.start_timeout:
                    return f"stopped answering for {timings.start_timeout:g} s"
            return describe_exit(process.returncode)
        finally:
            exited.cancel()

    async def _healthy(self, http: httpx.AsyncClient) -> bool:
        try:
            return (await http.get(self.health_url)).status_code == _HTTP_OK
        except httpx.HTTPError:
            return False

    async def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), self.timings.stop_timeout)
        except TimeoutError:
            self._log.warning("%s did not stop on SIGTERM: killing it", self.name)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _copy_output(self, process: asyncio.subprocess.Process) -> None:
        """The child's output, to the log file (it would flood the console)."""
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self._log.info("%s", line, extra=FILE_ONLY)

    def _report(self, state: ChildState, detail: str, answers: bool) -> None:
        self._on_state(state, detail, answers)


def describe_exit(returncode: int | None) -> str:
    """How a child ended, in words: its exit status, or the signal that killed it."""
    if returncode is not None and returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            pass
    return f"exited with status {returncode}"


async def _exited_within(exited: asyncio.Task[int], seconds: float) -> bool:
    done, _ = await asyncio.wait({exited}, timeout=seconds)
    return bool(done)


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, a function for the child to ask the kernel for SIGTERM when its parent dies.

    Pass it as `preexec_fn`. libc's `prctl` is looked up here, in the parent, so that the
    forked child only makes one plain call (no loading, no imports) before it runs the
    server. The kernel watches the thread that started the child: start it from one that
    lives as long as the process (the main thread, or the event loop's).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def ask() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return ask
