"""Fixtures every test folder may use: the real PostgreSQL and Redis (tests/support/services.py).

A test that asks for `postgres_url` gets a schema of its own, dropped after it; one that
asks for `redis_prefix` gets a key prefix of its own, emptied after it. The servers are
found (or started) once per run, and only when a test needs them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support.services import (
    Postgres,
    Redis,
    ServiceUnavailable,
    find_or_start_postgres,
    find_or_start_redis,
    run_sync,
    unavailable,
)

# No wall-clock deadline per example: machines are shared and noisy, and a slow example
# is not a wrong one.
settings.register_profile("fellowship", deadline=None)
settings.load_profile("fellowship")


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[Postgres]:
    """The PostgreSQL server of this run (the machine's, or a throwaway one)."""
    try:
        service = find_or_start_postgres()
    except ServiceUnavailable as problem:
        unavailable("PostgreSQL", problem)
    yield service
    service.stop()


@pytest.fixture
def postgres_url(postgres_service: Postgres) -> Iterator[str]:
    """A `DATABASE_URL` whose connections work in a new, empty schema of their own."""
    schema = run_sync(postgres_service.create_schema)
    yield postgres_service.schema_url(schema)
    run_sync(lambda: postgres_service.drop_schemas(schema))


@pytest.fixture(scope="session")
def redis_service() -> Iterator[Redis]:
    """The Redis server of this run (the machine's, or a throwaway one)."""
    try:
        service = find_or_start_redis()
    except ServiceUnavailable as problem:
        unavailable("Redis", problem)
    yield service
    service.stop()


@pytest.fixture
def redis_prefix(redis_service: Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted after the test."""
    prefix = redis_service.new_prefix()
    yield prefix
    redis_service.delete_keys(prefix)
