"""PostgreSQL and Redis on this machine: a given server, the machine's own, or a throwaway one.

Development tooling, shared by `fellowship run-cluster` and the test suite
(tests/support/services.py adds what only tests need: skipping, fixtures, a schema per
test). `find_or_start_postgres` and `find_or_start_redis` look, in order, for:

1. a server the caller was given (a URL from a setting or a variable), which must answer;
2. the machine's own: PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres or root or
   the current one, the first database that answers among those asked for), Redis on
   127.0.0.1:6379;
3. a throwaway server started from binaries on disk — Debian's `postgresql` package
   (`initdb` and `postgres` on PATH or in /usr/lib/postgresql/*/bin) and `redis-server` —
   in a folder of its own, on a free loopback port, stopped and deleted by `stop`.

Throwaway servers keep nothing durable (no fsync, no Redis persistence) and, on Linux,
get SIGTERM from the kernel should the process that started them die without stopping
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import redis

from engine.embedded.supervisor import die_with_parent

T = TypeVar("T")

LOOPBACK: Final = "127.0.0.1"
MACHINE_POSTGRES_PORT: Final = 5432
MACHINE_REDIS_PORT: Final = 6379
MACHINE_POSTGRES_USERS: Final = ("postgres", "root")
PROBE_SECONDS: Final = 3.0
"""How long a probe of a server (connect and one query) may take."""
START_SECONDS: Final = 60.0
"""How long a throwaway server may take to answer after it was started."""
STOP_SECONDS: Final = 15.0
"""How long a throwaway server may take to stop before it is killed."""

Origin = Literal["given", "machine", "throwaway"]


class ServiceUnavailable(Exception):
    """The service could not be found nor started; the message says what was tried."""


def run_sync(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run async `work` to its end from sync code, even inside a running event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, work()).result()


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def with_query(url: str, **params: str) -> str:
    """`url` with `params` added to its query (replacing ones of the same name)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (even one of another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Throwaway:
    """A server process started here, and the folder it lives in."""

    process: subprocess.Popen[bytes]
    folder: Path
    log: Path

    def stop(self) -> None:
        """Stop the server (killing it if it takes too long) and delete its folder."""
        if self.process.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown; Redis exits on it as well.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_SECONDS)
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Service:
    """A server to use: where it answers, where it came from, and the process if started here."""

    url: str
    origin: Origin
    server: Throwaway | None = None

    def stop(self) -> None:
        """Stop the server if it was started here; leave any other alone."""
        if self.server is not None:
            self.server.stop()


def _spawn(command: list[str], log: Path, *, user: int | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # A session of its own: Ctrl-C in a terminal reaches the starter, which stops it.
        return subprocess.Popen(  # noqa: S603 - a binary found on disk, our own arguments
            command, stdout=out, stderr=subprocess.STDOUT, user=user,
            start_new_session=True, preexec_fn=die_with_parent(),
        )  # fmt: skip


def _abandon(folder: Path, server: Throwaway | None) -> None:
    """Undo a start that failed or was interrupted: stop the server, delete the folder."""
    if server is not None:
        server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _wait_until(ready: Callable[[], bool], server: Throwaway, what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        if ready():
            return
        time.sleep(0.1)
    tail = server.log.read_text(errors="replace")[-2000:] if server.log.exists() else ""
    raise ServiceUnavailable(f"the throwaway {what} did not start:\n{tail}")


# --- PostgreSQL ----------------------------------------------------------------------------


async def postgres_answers(url: str) -> bool:
    """Whether a PostgreSQL server lets us in at `url` and answers a query."""
    try:
        conn = await asyncpg.connect(url, timeout=PROBE_SECONDS)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return bool(await conn.fetchval("SELECT true"))
    finally:
        await conn.close()


async def _first_answering(urls: list[str]) -> str | None:
    for url in urls:
        if await postgres_answers(url):
            return url
    return None


def machine_postgres_urls(databases: Sequence[str]) -> list[str]:
    """The URLs to try on the machine's PostgreSQL, database by database, in order."""
    users = dict.fromkeys([*MACHINE_POSTGRES_USERS, pwd.getpwuid(os.getuid()).pw_name])
    return [
        f"postgresql://{user}@{LOOPBACK}:{MACHINE_POSTGRES_PORT}/{database}"
        for database in databases
        for user in users
    ]


def postgres_binaries() -> Path | None:
    """The folder holding `initdb` and `postgres`, if PostgreSQL's server is installed."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(os.path.realpath(found)).parent
    folders = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0)
    )
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: the account to run it as, when we are root."""
    if os.getuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServiceUnavailable("running as root, and neither a postgres nor a nobody account exists")


def start_postgres(
    binaries: Path, *, database: str = "test", parent: Path | None = None
) -> Service:
    """A throwaway PostgreSQL from `binaries`: a new cluster in a new folder under `parent`
    (default: the system's temporary folder), with an empty `database`."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    # Absolute: PostgreSQL changes into its data folder before it reads the others.
    folder = Path(tempfile.mkdtemp(prefix="fellowship-pg-", dir=parent)).resolve()
    server: Throwaway | None = None
    try:
        account = _unprivileged_user()
        user: int | None = None
        if account is not None:
            os.chown(folder, account.pw_uid, account.pw_gid)
            user = account.pw_uid
        data, log = folder / "data", folder / "postgres.log"
        init = subprocess.run(  # noqa: S603 - PostgreSQL's initdb, our own arguments
            [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            capture_output=True, user=user, check=False, timeout=START_SECONDS,
        )  # fmt: skip
        if init.returncode != 0:
            problem = init.stderr.decode(errors="replace")[-2000:]
            raise ServiceUnavailable(f"initdb failed: {problem}")
        port = free_port()
        # Durability is of no use to a throwaway server; speed is.
        process = _spawn(
            [str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-h", LOOPBACK,
             "-k", str(folder), "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off"],
            log, user=user,
        )  # fmt: skip
        server = Throwaway(process, folder, log)
        base = f"postgresql://postgres@{LOOPBACK}:{port}/postgres"
        _wait_until(lambda: run_sync(lambda: postgres_answers(base)), server, "PostgreSQL")
        run_sync(lambda: _create_database(base, database))
    except BaseException:  # an interrupt too: nothing may stay behind
        _abandon(folder, server)
        raise
    return Service(f"postgresql://postgres@{LOOPBACK}:{port}/{database}", "throwaway", server)


async def _create_database(url: str, database: str) -> None:
    conn = await asyncpg.connect(url, timeout=PROBE_SECONDS)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


def find_or_start_postgres(
    given: str,
    *,
    databases: Sequence[str],
    given_from: str,
    parent: Path | None = None,
) -> Service:
    """The PostgreSQL to use (see the module's docstring); `ServiceUnavailable` if none.

    `given` is a URL (empty: none), named `given_from` in messages; `databases` are
    tried in order on the machine's server, and the first is created in a throwaway one.
    """
    given = given.strip()
    if given:
        if not run_sync(lambda: postgres_answers(given)):
            raise ServiceUnavailable(f"{given_from} is set, but nothing answers there")
        return Service(given, "given")
    machine = run_sync(lambda: _first_answering(machine_postgres_urls(databases)))
    if machine is not None:
        return Service(machine, "machine")
    binaries = postgres_binaries()
    if binaries is None:
        raise ServiceUnavailable(
            f"no PostgreSQL answers on {LOOPBACK}:{MACHINE_POSTGRES_PORT} and its server is "
            "not installed (Debian: apt-get install postgresql)"
        )
    return start_postgres(binaries, database=databases[0], parent=parent)


# --- Redis ---------------------------------------------------------------------------------


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at `url`."""
    client = redis.Redis.from_url(
        url, socket_timeout=PROBE_SECONDS, socket_connect_timeout=PROBE_SECONDS
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def start_redis(binary: Path, *, parent: Path | None = None) -> Service:
    """A throwaway Redis from `binary`, in a new folder under `parent` (default: the system's
    temporary folder), keeping nothing on disk."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="fellowship-redis-", dir=parent)).resolve()
    log = folder / "redis.log"
    port = free_port()
    url = f"redis://{LOOPBACK}:{port}/0"
    server: Throwaway | None = None
    try:
        process = _spawn(
            [str(binary), "--port", str(port), "--bind", LOOPBACK, "--save", "",
             "--appendonly", "no", "--dir", str(folder)],
            log,
        )  # fmt: skip
        server = Throwaway(process, folder, log)
        _wait_until(lambda: redis_answers(url), server, "Redis")
    except BaseException:  # an interrupt too: nothing may stay behind
        _abandon(folder, server)
        raise
    return Service(url, "throwaway", server)


def find_or_start_redis(given: str, *, given_from: str, parent: Path | None = None) -> Service:
    """The Redis to use (see the module's docstring); `ServiceUnavailable` if none.

    `given` is a URL (empty: none), named `given_from` in messages.
    """
    given = given.strip()
    if given:
        if not redis_answers(given):
            raise ServiceUnavailable(f"{given_from} is set, but that server does not answer")
        return Service(given, "given")
    machine = f"redis://{LOOPBACK}:{MACHINE_REDIS_PORT}/0"
    if redis_answers(machine):
        return Service(machine, "machine")
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable(
            f"no Redis answers on {LOOPBACK}:{MACHINE_REDIS_PORT} and redis-server is not "
            "installed (Debian: apt-get install redis-server)"
        )
    return start_redis(Path(binary), parent=parent)
