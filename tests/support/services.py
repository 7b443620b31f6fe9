"""Real PostgreSQL and Redis for tests: the machine's own when they answer, else throwaway ones.

Where they come from, in order (server/cli/services.py finds or starts them; this module
adds what only tests need):

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

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

import asyncpg
import pytest
import redis

from server.cli import services as shared
from server.cli.services import (
    PROBE_SECONDS,
    Service,
    ServiceUnavailable,
    free_port,
    postgres_binaries,
    process_alive,
    run_sync,
    with_query,
)

__all__ = [
    "POSTGRES_URL_VARIABLE",
    "REDIS_URL_VARIABLE",
    "REQUIRED_VARIABLE",
    "SCHEMA_PREFIX",
    "Postgres",
    "Redis",
    "ServiceUnavailable",
    "find_or_start_postgres",
    "find_or_start_redis",
    "free_port",
    "postgres_binaries",
    "required",
    "run_sync",
    "start_postgres",
    "start_redis",
    "unavailable",
    "with_query",
]

REQUIRED_VARIABLE: Final = "FELLOWSHIP_SERVICES_REQUIRED"
POSTGRES_URL_VARIABLE: Final = "FELLOWSHIP_TEST_POSTGRES_URL"
REDIS_URL_VARIABLE: Final = "FELLOWSHIP_TEST_REDIS_URL"

MACHINE_POSTGRES_DATABASES: Final = ("test", "postgres")
SCHEMA_PREFIX: Final = "fellowship_test_"


def required() -> bool:
    """Whether a missing service fails the tests (CI) rather than skipping them."""
    return os.environ.get(REQUIRED_VARIABLE, "") not in ("", "0", "false", "no")


def unavailable(what: str, problem: ServiceUnavailable) -> NoReturn:
    """Skip the test that needs `what`, or fail it when the services are required."""
    message = f"{what} is not available: {problem}"
    if required():
        pytest.fail(f"{message} ({REQUIRED_VARIABLE} is set)", pytrace=False)
    pytest.skip(message)


# --- PostgreSQL ----------------------------------------------------------------------------


@dataclass
class Postgres(Service):
    """A PostgreSQL server the tests may use, and the database they work in."""

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
                    dead_runs and pid.isdigit() and not process_alive(int(pid))
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


def start_postgres(binaries: Path) -> Postgres:
    """A throwaway PostgreSQL from `binaries`, with an empty database `test`."""
    started = shared.start_postgres(binaries, database=MACHINE_POSTGRES_DATABASES[0])
    return Postgres(started.url, started.origin, started.server)


def find_or_start_postgres() -> Postgres:
    """The PostgreSQL the tests use (see the module's docstring); `ServiceUnavailable` if none."""
    found = shared.find_or_start_postgres(
        os.environ.get(POSTGRES_URL_VARIABLE, ""),
        databases=MACHINE_POSTGRES_DATABASES,
        given_from=POSTGRES_URL_VARIABLE,
    )
    service = Postgres(found.url, found.origin, found.server)
    if service.origin == "machine":
        run_sync(lambda: service.drop_schemas(dead_runs=True))
    return service


# --- Redis ---------------------------------------------------------------------------------


@dataclass
class Redis(Service):
    """A Redis server the tests may use, and the key prefix of this run."""

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


def start_redis(binary: Path) -> Redis:
    """A throwaway Redis from `binary`, keeping nothing on disk."""
    started = shared.start_redis(binary)
    return Redis(started.url, started.origin, started.server)


def find_or_start_redis() -> Redis:
    """The Redis the tests use (see the module's docstring); `ServiceUnavailable` if none."""
    found = shared.find_or_start_redis(
        os.environ.get(REDIS_URL_VARIABLE, ""), given_from=REDIS_URL_VARIABLE
    )
    return Redis(found.url, found.origin, found.server)
