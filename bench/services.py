"""PostgreSQL and Redis for the cluster benchmark: a fresh schema and key prefix per run.

The benchmark uses the machine's own servers (by default PostgreSQL on 127.0.0.1:5432
with trust authentication and a database `test`, Redis on 127.0.0.1:6379). Each run
works in a schema and under a Redis key prefix of its own, named after the process
(`fellowship_bench_<pid>_<random>`), so that it never meets another run's rows or keys;
both are dropped when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import asyncpg
import redis.asyncio as aioredis

from server.cli.services import with_query

POSTGRES_URL: Final = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL: Final = "redis://127.0.0.1:6379/0"
SCHEMA_PREFIX: Final = "fellowship_bench_"
CONNECT_SECONDS: Final = 5.0
DELETE_BATCH: Final = 1000
"""Keys looked up and deleted per round trip when a run's keys are removed."""


@dataclass(frozen=True, slots=True)
class Backing:
    """Where the nodes of one run keep their state: the settings they are given."""

    database_url: str
    """DATABASE_URL: the PostgreSQL database, with the run's schema as `search_path`."""
    redis_url: str
    """REDIS_URL."""
    redis_prefix: str
    """REDIS_PREFIX: the run's key prefix (ends with a colon)."""
    schema: str
    """The schema's name."""

    def settings(self) -> dict[str, str]:
        """DATABASE_URL, REDIS_URL and REDIS_PREFIX, as server settings."""
        return {
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "redis_prefix": self.redis_prefix,
        }


async def server_setting(postgres_url: str, name: str) -> str:
    """A PostgreSQL setting as the server reports it (`SHOW name`)."""
    conn = await asyncpg.connect(postgres_url, timeout=CONNECT_SECONDS)
    try:
        return str(await conn.fetchval(f"SHOW {name}"))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh(
    postgres_url: str = POSTGRES_URL, redis_url: str = REDIS_URL
) -> AsyncIterator[Backing]:
    """A new schema in `postgres_url` and a new key prefix in `redis_url`; both are
    dropped on the way out (stop the nodes using them first)."""
    name = f"{SCHEMA_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(postgres_url, timeout=CONNECT_SECONDS)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    try:
        yield Backing(
            database_url=with_query(postgres_url, search_path=name),
            redis_url=redis_url,
            redis_prefix=f"{name}:",
            schema=name,
        )
    finally:
        conn = await asyncpg.connect(postgres_url, timeout=CONNECT_SECONDS)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()
        client = aioredis.Redis.from_url(redis_url, socket_timeout=CONNECT_SECONDS)
        try:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=f"{name}:*", count=DELETE_BATCH):
                batch.append(key)
                if len(batch) >= DELETE_BATCH:
                    await client.delete(*batch)
                    batch.clear()
            if batch:
                await client.delete(*batch)
        finally:
            await client.aclose()
