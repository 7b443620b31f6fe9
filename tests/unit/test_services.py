"""The test services themselves: real PostgreSQL and Redis, isolated per test, never skipped
silently in CI (tests/support/services.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio

from tests.support.services import (
    POSTGRES_URL_VARIABLE,
    REQUIRED_VARIABLE,
    SCHEMA_PREFIX,
    Postgres,
    Redis,
    ServiceUnavailable,
    find_or_start_postgres,
    free_port,
    postgres_binaries,
    run_sync,
    start_postgres,
    start_redis,
    unavailable,
)


async def test_postgres_gives_each_test_an_empty_schema_of_its_own(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        schema = await conn.fetchval("SELECT current_schema()")
        assert schema.startswith(SCHEMA_PREFIX)
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", schema
            )
            == 0
        )
        await conn.execute("CREATE TABLE round_trip (text TEXT)")
        await conn.execute("INSERT INTO round_trip VALUES ($1)", "héllo ✓")
        assert await conn.fetchval("SELECT text FROM round_trip") == "héllo ✓"
    finally:
        await conn.close()


async def test_a_dropped_schema_is_gone(postgres_service: Postgres) -> None:
    first, second = await postgres_service.create_schema(), await postgres_service.create_schema()
    assert first != second
    await postgres_service.drop_schemas(first, second)
    conn = await asyncpg.connect(postgres_service.url)
    try:
        gone = await conn.fetch(
            "SELECT 1 FROM pg_namespace WHERE nspname = ANY($1::text[])", [first, second]
        )
        assert gone == []
    finally:
        await conn.close()


async def test_redis_round_trips_under_a_prefix_that_is_emptied_afterwards(
    redis_service: Redis, redis_prefix: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_service.url)
    try:
        await client.set(f"{redis_prefix}greeting", "héllo ✓")
        await client.xadd(f"{redis_prefix}stream", {"seq": "1"})
        assert (await client.get(f"{redis_prefix}greeting")).decode() == "héllo ✓"
        assert redis_prefix.startswith(redis_service.prefix)
    finally:
        await client.aclose()
    assert redis_service.delete_keys(redis_prefix) == 2
    assert redis_service.delete_keys(redis_prefix) == 0


def test_a_missing_service_fails_when_required_and_skips_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    problem = ServiceUnavailable("nothing answers")
    monkeypatch.setenv(REQUIRED_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRED_VARIABLE):
        unavailable("PostgreSQL", problem)
    monkeypatch.delenv(REQUIRED_VARIABLE)
    with pytest.raises(pytest.skip.Exception, match="nothing answers"):
        unavailable("PostgreSQL", problem)


def test_a_given_server_that_does_not_answer_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(POSTGRES_URL_VARIABLE, f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(ServiceUnavailable, match=POSTGRES_URL_VARIABLE):
        find_or_start_postgres()


def test_a_throwaway_postgres_starts_from_the_binaries_and_leaves_nothing() -> None:
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's server is not installed here")
    service = start_postgres(binaries)
    assert service.server is not None
    folder = service.server.folder
    try:

        async def round_trip() -> str:
            conn = await asyncpg.connect(service.url)
            try:
                return str(await conn.fetchval("SELECT current_database()"))
            finally:
                await conn.close()

        assert run_sync(round_trip) == "test"
    finally:
        service.stop()
    assert not folder.exists()


def test_a_throwaway_redis_starts_from_the_binary_and_leaves_nothing() -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed here")
    service = start_redis(Path(binary))
    assert service.server is not None
    folder = service.server.folder
    try:
        client = redis.Redis.from_url(service.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
    finally:
        service.stop()
    assert not folder.exists()
