"""`fellowship serve` as a real child process, for tests that need the whole command.

`start_serve` runs it on a free loopback port with an isolated log folder and database
(and no developer `.env`: it runs in the test's folder), reads the port from Hypercorn's
`Running on` line, and keeps collecting what it prints on stderr.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.engine import WAIT_SECONDS

REPO = Path(__file__).resolve().parents[2]
POLL_SECONDS = 0.05
"""How often another process's state is asked for (there is no event to wait on)."""


class OnLoopback:
    """The addresses of a server listening on 127.0.0.1:`port`."""

    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@dataclass
class Served(OnLoopback):
    """A `fellowship serve` process and what it printed on stderr."""

    process: asyncio.subprocess.Process
    port: int
    lines: list[str]
    reader: asyncio.Task[None] = field(init=False)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=WAIT_SECONDS) as http:
            body: dict[str, Any] = (await http.get("/healthz")).json()
        return body

    async def backend_until(
        self, predicate: Callable[[dict[str, Any]], bool], *, wait: float = WAIT_SECONDS
    ) -> dict[str, Any]:
        """The backend's status (from /healthz) once `predicate` holds, within `wait` s."""
        async with asyncio.timeout(wait):
            while True:
                backend: dict[str, Any] = (await self.health())["backend"]
                if predicate(backend):
                    return backend
                await asyncio.sleep(POLL_SECONDS)

    async def stop(self, wait: float = WAIT_SECONDS) -> int:
        """SIGTERM, then its exit status once it has shut down."""
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), wait)
        await asyncio.wait_for(self.reader, wait)
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_serve(folder: Path, *args: str, wait: float = WAIT_SECONDS, **env: str) -> Served:
    """Start `fellowship serve *args` in `folder` with `env` over the test defaults."""
    environment = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": "0",
        "LOG_DIR": str(folder / "logs"),
        "DATABASE_PATH": str(folder / "fellowship.db"),
        "SPECS_DIR": str(REPO / "specs"),
        "WS_PING_SECONDS": "0.5",
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", *args,
        cwd=folder,
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    lines: list[str] = []
    try:
        port = await read_port(process, lines, wait)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    served = Served(process, port, lines)
    served.reader = asyncio.create_task(_drain(process, lines))
    return served


async def read_port(
    process: asyncio.subprocess.Process, lines: list[str], wait: float = WAIT_SECONDS
) -> int:
    """Read the server's log (kept in `lines`) until Hypercorn says where it listens."""
    assert process.stderr is not None
    async with asyncio.timeout(wait):
        while True:
            raw = await process.stderr.readline()
            if not raw:
                raise AssertionError("server exited early:\n" + "".join(lines))
            lines.append(raw.decode())
            found = re.search(r"Running on http://127\.0\.0\.1:(\d+)", lines[-1])
            if found:
                return int(found.group(1))


async def _drain(process: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert process.stderr is not None
    async for raw in process.stderr:
        lines.append(raw.decode())


def alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class ServeProcess:
    """`fellowship serve` as a child that a test kills and starts again on one database.

    `port` 0 takes a free port at every start; a given port is kept across restarts (a
    client then reconnects to the same address). `env` adds or overrides settings.
    """

    def __init__(
        self, folder: Path, llm_base_url: str, *, port: int = 0, env: dict[str, str] | None = None
    ) -> None:
        self.folder = folder
        self.port = port
        self._fixed_port = port
        self.env = {
            **os.environ,
            "LLM_BASE_URL": llm_base_url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_DIR": str(folder / "logs"),
            "DATABASE_PATH": str(folder / "fellowship.db"),
            "SPECS_DIR": str(REPO / "specs"),
            "LLM_RETRIES": "0",
            **(env or {}),
        }
        self.process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"

    async def start(self) -> str:
        """Start the process; return its `host:port` once it listens."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "serve",
            cwd=self.folder,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.port = await read_port(self.process, [])
        assert self._fixed_port in (0, self.port)
        self._drain = asyncio.create_task(self._discard_output())
        return self.address

    async def _discard_output(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while await self.process.stderr.read(65536):
            pass

    async def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
        if self._drain is not None:
            await self._drain

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within `WAIT_SECONDS`."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), WAIT_SECONDS)
            except TimeoutError:
                await self.kill()
        if self._drain is not None:
            await self._drain
