"""Real PostgreSQL and Redis for tests: the machine's own when they answer, else throwaway ones.

Where they come from, in order:

1. `FELLOWSHIP_TEST_POSTGRES_URL` / `FELLOWSHIP_TEST_REDIS_URL`, when set: that server.
2. The machine's own: PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres or root or
   the current one, database `test`), Redis on 127.0.0.1:6379.
3. A throwaway server started from binaries on disk — Debian's `postgresql` package
   (`initdb` and `postgres` on PATH or in /usr/lib/postgresql/*/bin) and `redis-server` —
   in a temporary folder, on a free loopback port, stopped and deleted at the end.

When none of these works the tests that need the service are skipped, unless
`FELLOWSHIP_SERVICES_REQUIRED=1` (set by .ci/run): then they fail, so CI never skips
them silently.

Isolation: a test run works in PostgreSQL schemas and under a Redis key prefix of its
own (`fellowship_test_<pid>_<random>`), created per test and dropped afterwards; the
schemas of runs that died (their process is gone) are dropped at the next run's start.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest
import redis

T = TypeVar("T")

REQUIRED_VARIABLE: Final = "FELLOWSHIP_SERVICES_REQUIRED"
POSTGRES_URL_VARIABLE: Final = "FELLOWSHIP_TEST_POSTGRES_URL"
REDIS_URL_VARIABLE: Final = "FELLOWSHIP_TEST_REDIS_URL"

LOOPBACK: Final = "127.0.0.1"
MACHINE_POSTGRES_PORT: Final = 5432
MACHINE_REDIS_PORT: Final = 6379
MACHINE_POSTGRES_USERS: Final = ("postgres", "root")
MACHINE_POSTGRES_DATABASES: Final = ("test", "postgres")
PROBE_SECONDS: Final = 3.0
START_SECONDS: Final = 60.0
STOP_SECONDS: Final = 15.0
SCHEMA_PREFIX: Final = "fellowship_test_"

Origin = Literal["given", "machine", "throwaway"]


class ServiceUnavailable(Exception):
    """The service could not be found nor started; the message says what was tried."""


def required() -> bool:
    """Whether a missing service fails the tests (CI) rather than skipping them."""
    return os.environ.get(REQUIRED_VARIABLE, "") not in ("", "0", "false", "no")


def unavailable(what: str, problem: ServiceUnavailable) -> NoReturn:
    """Skip the test that needs `what`, or fail it when the services are required."""
    message = f"{what} is not available: {problem}"
    if required():
        pytest.fail(f"{message} ({REQUIRED_VARIABLE} is set)", pytrace=False)
    pytest.skip(message)


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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Throwaway:
    """A server process this run started, and the folder it lives in."""

    process: subprocess.Popen[bytes]
    folder: Path
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown; Redis exits on it as well.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_SECONDS)
        shutil.rmtree(self.folder, ignore_errors=True)


def _wait_until(ready: Callable[[], bool], server: _Throwaway, what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        if ready():
            return
        time.sleep(0.1)
    tail = server.log.read_text(errors="replace")[-2000:] if server.log.exists() else ""
    server.stop()
    raise ServiceUnavailable(f"the throwaway {what} did not start:\n{tail}")


# --- PostgreSQL ----------------------------------------------------------------------------


@dataclass
class Postgres:
    """A PostgreSQL server the tests may use, and the database they work in."""

    url: str
    origin: Origin
    server: _Throwaway | None = None
    run_id: str = field(default_factory=lambda: f"{os.getpid()}_{secrets.token_hex(4)}")

    def schema_url(self, schema: str) -> str:
        """The URL whose connections work in `schema` (it must exist)."""
        # Tests need no durability from the server, and each commit would wait for a flush.
        return with_query(self.url, search_path=schema, synchronous_commit="off")

    def new_schema_name(self) -> str:
        """A schema name of this run, unused so far."""
        return f"{SCHEMA_PREFIX}{self.run_id}_{secrets.token_hex(4)}"

    async def create_schema(self) -> str:
        """Create a fresh schema of this run; returns its name."""
        name = self.new_schema_name()
        conn = await asyncpg.connect(self.url, timeout=PROBE_SECONDS)
        try:
            await conn.execute(f'CREATE SCHEMA "{name}"')
        finally:
            await conn.close()
        return name

    async def drop_schemas(
        self, *names: str, this_run: bool = False, dead_runs: bool = False
    ) -> None:
        """Drop `names`; with `this_run`, every schema of this run; with `dead_runs`, those
        left by runs whose process is gone."""
        conn = await asyncpg.connect(self.url, timeout=PROBE_SECONDS)
        try:
            doomed = list(names)
            existing = [
                str(row[0])
                for row in await conn.fetch(
                    "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
                    SCHEMA_PREFIX,
                )
            ]
            for name in existing:
                pid = name.removeprefix(SCHEMA_PREFIX).split("_", 1)[0]
                mine = name.startswith(f"{SCHEMA_PREFIX}{self.run_id}_")
                if (this_run and mine) or (
                    dead_runs and pid.isdigit() and not _process_alive(int(pid))
                ):
                    doomed.append(name)
            for name in dict.fromkeys(doomed):
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    def stop(self) -> None:
        """Drop this run's schemas; stop the server if this run started it."""
        if self.server is not None:
            self.server.stop()
            return
        with contextlib.suppress(Exception):
            run_sync(lambda: self.drop_schemas(this_run=True))


async def _answers(url: str) -> bool:
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
        if await _answers(url):
            return url
    return None


def _machine_postgres_urls() -> list[str]:
    users = dict.fromkeys([*MACHINE_POSTGRES_USERS, pwd.getpwuid(os.getuid()).pw_name])
    return [
        f"postgresql://{user}@{LOOPBACK}:{MACHINE_POSTGRES_PORT}/{database}"
        for database in MACHINE_POSTGRES_DATABASES
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


def start_postgres(binaries: Path) -> Postgres:
    """A throwaway PostgreSQL from `binaries`: a new cluster in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="fellowship-pg-"))
    account = _unprivileged_user()
    user: int | None = None
    if account is not None:
        os.chown(folder, account.pw_uid, account.pw_gid)
        user = account.pw_uid
    data, log = folder / "data", folder / "postgres.log"
    init = subprocess.run(
        [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "-E", "UTF8", "--no-sync"],
        capture_output=True, user=user, check=False, timeout=START_SECONDS,
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise ServiceUnavailable(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
    port = free_port()
    with log.open("wb") as out:
        # Durability is of no use to a throwaway server; speed is.
        process = subprocess.Popen(
            [str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-h", LOOPBACK,
             "-k", str(folder), "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off"],
            stdout=out, stderr=subprocess.STDOUT, user=user, start_new_session=True,
        )  # fmt: skip
    server = _Throwaway(process, folder, log)
    base = f"postgresql://postgres@{LOOPBACK}:{port}/postgres"
    _wait_until(lambda: run_sync(lambda: _answers(base)), server, "PostgreSQL")

    async def create_test_database() -> None:
        conn = await asyncpg.connect(base, timeout=PROBE_SECONDS)
        try:
            await conn.execute("CREATE DATABASE test")
        finally:
            await conn.close()

    run_sync(create_test_database)
    return Postgres(f"postgresql://postgres@{LOOPBACK}:{port}/test", "throwaway", server)


def find_or_start_postgres() -> Postgres:
    """The PostgreSQL the tests use (see the module's docstring); `ServiceUnavailable` if none."""
    given = os.environ.get(POSTGRES_URL_VARIABLE, "").strip()
    if given:
        if not run_sync(lambda: _answers(given)):
            raise ServiceUnavailable(f"{POSTGRES_URL_VARIABLE} is set, but nothing answers there")
        return Postgres(given, "given")
    machine = run_sync(lambda: _first_answering(_machine_postgres_urls()))
    if machine is not None:
        found = Postgres(machine, "machine")
        run_sync(lambda: found.drop_schemas(dead_runs=True))
        return found
    binaries = postgres_binaries()
    if binaries is None:
        raise ServiceUnavailable(
            f"no PostgreSQL answers on {LOOPBACK}:{MACHINE_POSTGRES_PORT} and its server is "
            "not installed (Debian: apt-get install postgresql)"
        )
    return start_postgres(binaries)


# --- Redis ---------------------------------------------------------------------------------


@dataclass
class Redis:
    """A Redis server the tests may use, and the key prefix of this run."""

    url: str
    origin: Origin
    server: _Throwaway | None = None
    prefix: str = field(
        default_factory=lambda: f"{SCHEMA_PREFIX}{os.getpid()}_{secrets.token_hex(4)}:"
    )

    def new_prefix(self) -> str:
        """A key prefix of this run, unused so far (ends with a colon)."""
        return f"{self.prefix}{secrets.token_hex(4)}:"

    def delete_keys(self, prefix: str) -> int:
        """Delete every key under `prefix`; returns how many there were."""
        client = redis.Redis.from_url(self.url, socket_timeout=PROBE_SECONDS)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            return len(keys)
        finally:
            client.close()

    def stop(self) -> None:
        """Delete this run's keys; stop the server if this run started it."""
        if self.server is not None:
            self.server.stop()
            return
        with contextlib.suppress(redis.RedisError):
            self.delete_keys(self.prefix)


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(
        url, socket_timeout=PROBE_SECONDS, socket_connect_timeout=PROBE_SECONDS
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def start_redis(binary: Path) -> Redis:
    """A throwaway Redis from `binary`, keeping nothing on disk."""
    folder = Path(tempfile.mkdtemp(prefix="fellowship-redis-"))
    log = folder / "redis.log"
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(binary), "--port", str(port), "--bind", LOOPBACK, "--save", "",
             "--appendonly", "no", "--dir", str(folder)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = _Throwaway(process, folder, log)
    url = f"redis://{LOOPBACK}:{port}/0"
    _wait_until(lambda: _redis_answers(url), server, "Redis")
    return Redis(url, "throwaway", server)


def find_or_start_redis() -> Redis:
    """The Redis the tests use (see the module's docstring); `ServiceUnavailable` if none."""
    given = os.environ.get(REDIS_URL_VARIABLE, "").strip()
    if given:
        if not _redis_answers(given):
            raise ServiceUnavailable(
                f"{REDIS_URL_VARIABLE} is set, but that server does not answer"
            )
        return Redis(given, "given")
    machine = f"redis://{LOOPBACK}:{MACHINE_REDIS_PORT}/0"
    if _redis_answers(machine):
        return Redis(machine, "machine")
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable(
            f"no Redis answers on {LOOPBACK}:{MACHINE_REDIS_PORT} and redis-server is not "
            "installed (Debian: apt-get install redis-server)"
        )
    return start_redis(Path(binary))
