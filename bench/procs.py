"""The processes a benchmark drives: the mock backend, the server, and load clients.

Each runs as its own OS process on 127.0.0.1, started from this Python's virtualenv
(`python -m server ...`), with its working directory in a temporary folder so that no
developer `.env` leaks into a measurement. Figures about a process (CPU time, resident
memory, open descriptors) are read from `/proc`, as any operator would.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

REPO: Final = Path(__file__).resolve().parents[1]
LOOPBACK: Final = "127.0.0.1"
START_TIMEOUT: Final = 60.0
"""Seconds a process may take to come up before the benchmark gives up on it."""
STOP_TIMEOUT: Final = 30.0
"""Seconds a process may take to exit after SIGTERM before it is killed."""
POLL_SECONDS: Final = 0.005
"""How often readiness is polled: fine enough to time a restart to a few milliseconds."""
NOFILE_WANTED: Final = 65536
"""Open files wanted by the server and the load processes (5 000 sockets each and more)."""
_PAGE_KB: Final = 1024


def raise_nofile(wanted: int = NOFILE_WANTED) -> int:
    """Raise this process's open-file limit as far as allowed (up to `wanted`); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One look at a process in /proc."""

    at: float
    """time.monotonic() when taken."""
    cpu_seconds: float
    """User + system CPU time so far."""
    rss_bytes: int
    """Resident memory now."""
    fds: int
    """Open file descriptors now."""


def sample(pid: int) -> ProcSample:
    """CPU time, resident memory and open descriptors of `pid`."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name; utime and stime are the 14th and
    # 15th fields of the whole line (proc(5)), i.e. the 12th and 13th after ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
            break
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcSample(
        at=time.monotonic(),
        cpu_seconds=ticks / os.sysconf("SC_CLK_TCK"),
        rss_bytes=rss_kb * _PAGE_KB,
        fds=fds,
    )


def sample_sum(pids: Sequence[int]) -> ProcSample:
    """`sample` of several processes added together (the nodes of a cluster as one)."""
    samples = [sample(pid) for pid in pids]
    return ProcSample(
        at=max(s.at for s in samples),
        cpu_seconds=sum(s.cpu_seconds for s in samples),
        rss_bytes=sum(s.rss_bytes for s in samples),
        fds=sum(s.fds for s in samples),
    )


def cpu_seconds_of(pids: Sequence[int]) -> float:
    """CPU time so far of the processes in `pids` still running (gone ones count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += sample(pid).cpu_seconds
    return total


def pids_named(*names: str) -> list[int]:
    """Every process whose command name (`/proc/<pid>/comm`) is one of `names`."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
    return found


def machine_busy_seconds() -> float:
    """CPU time every CPU of the machine spent busy since boot (the `cpu` line of /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class Process:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; the exit code (None if it had to be killed)."""
        if not self.alive():
            return self.popen.returncode
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            return None

    def kill(self) -> None:
        """SIGKILL at once, as a crash would stop it, and reap it."""
        if self.alive():
            self.popen.kill()
        self.popen.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the process's output, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _raise_child_nofile() -> None:
    # Runs in the child between fork and exec: the server inherits the raised limit.
    raise_nofile()


def spawn(
    name: str,
    args: list[str],
    *,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    stdout: int | None = None,
) -> Process:
    """Start `python -m server <args>` (or another module) in `workdir`, logging to a file."""
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("ab")
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p
    )
    started = time.monotonic()
    popen = subprocess.Popen(
        [sys.executable, *args],
        cwd=workdir,
        env=full_env,
        stdout=stdout if stdout is not None else log_file,
        stderr=log_file,
        stdin=subprocess.DEVNULL,
        preexec_fn=_raise_child_nofile,
    )
    log_file.close()  # the child has its own copy
    return Process(name=name, popen=popen, log_path=log_path, started_at=started)


@dataclass
class MockBackend:
    """`fellowship mock-llm` in its own process."""

    process: Process
    base_url: str

    def stop(self) -> None:
        """Stop the mock."""
        self.process.stop()


def start_mock(workdir: Path, *, latency_ms: float, extra: list[str] | None = None) -> MockBackend:
    """Start the mock backend on a free port; return once it prints its address."""
    process = spawn(
        "mock-llm",
        [
            "-m",
            "server",
            "mock-llm",
            "--host",
            LOOPBACK,
            "--port",
            "0",
            "--latency-ms",
            str(latency_ms),
            *(extra or []),
        ],
        workdir=workdir,
        stdout=subprocess.PIPE,
    )
    assert process.popen.stdout is not None
    line = process.popen.stdout.readline().decode().strip()
    if not line.startswith("mock LLM listening on "):
        process.stop()
        raise RuntimeError(f"mock-llm did not start: {line!r}\n{process.log_tail()}")
    return MockBackend(process=process, base_url=line.rsplit(" ", 1)[1])


@dataclass
class Server:
    """`fellowship serve` in its own process."""

    process: Process
    port: int
    workdir: Path
    ready_seconds: float = 0.0
    """Seconds from the process start to the first 200 from /healthz."""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ws_url(self) -> str:
        """ws://127.0.0.1:<port>"""
        return f"ws://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def sample(self) -> ProcSample:
        """CPU, memory and descriptors of the server now."""
        return sample(self.pid)

    def stop(self) -> int | None:
        """Graceful shutdown (SIGTERM), killed if it takes too long."""
        return self.process.stop()


def server_env(
    workdir: Path, *, port: int, llm_base_url: str, **settings: str | int | float
) -> dict[str, str]:
    """Environment for `fellowship serve`: loopback, files in `workdir`, no rate limit."""
    env = {
        "HOST": LOOPBACK,
        "PORT": str(port),
        "DATABASE_PATH": str(workdir / "fellowship.db"),
        "LOG_DIR": str(workdir / "logs"),
        "SPECS_DIR": str(REPO / "specs"),
        "LLM_BASE_URL": llm_base_url,
        "RATE_LIMIT_PER_MINUTE": "0",
        # The mock's reply echoes the last message, so a session repeats itself exactly
        # after two rounds: the duplicate guard's retries would measure the mock's echo.
        "DUPLICATE_WINDOW": "0",
    }
    env.update({key.upper(): str(value) for key, value in settings.items()})
    return env


def start_server(workdir: Path, *, llm_base_url: str, **settings: str | int | float) -> Server:
    """Start `fellowship serve` on a free port and wait until /healthz answers 200."""
    port = free_port()
    env = server_env(workdir, port=port, llm_base_url=llm_base_url, **settings)
    process = spawn("server", ["-m", "server", "serve"], workdir=workdir, env=env)
    server = Server(process=process, port=port, workdir=workdir, env=env)
    server.ready_seconds = wait_healthy(server)
    return server


def wait_healthy(server: Server) -> float:
    """Poll /healthz until it answers 200; seconds since the process was started."""
    deadline = server.process.started_at + START_TIMEOUT
    with httpx.Client(base_url=server.base_url, timeout=1.0) as http:
        while time.monotonic() < deadline:
            if not server.process.alive():
                raise RuntimeError(f"the server exited:\n{server.process.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if http.get("/healthz").status_code == 200:
                    return time.monotonic() - server.process.started_at
            time.sleep(POLL_SECONDS)
    server.stop()
    raise RuntimeError(f"the server did not answer /healthz:\n{server.process.log_tail()}")


@contextlib.contextmanager
def running(*things: MockBackend | Server) -> Iterator[None]:
    """Stop every given process on the way out, servers first."""
    try:
        yield
    finally:
        for thing in sorted(things, key=lambda t: isinstance(t, MockBackend)):
            thing.stop()
