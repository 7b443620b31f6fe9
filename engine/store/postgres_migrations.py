"""The PostgreSQL schema, as an ordered list of migrations, applied under a lock.

Same discipline as the SQLite schema (`engine.store.migrations`): each migration moves
the schema up one version, in one transaction together with its row in
`schema_migrations`; a schema written by a newer Fellowship is refused; never edit a
migration that has shipped, append one.

What PostgreSQL adds: several nodes may start at the same moment against one database.
Every node takes a session-level advisory lock (`pg_advisory_lock`, keyed by the schema
it works in) before it even reads the version, so exactly one node migrates while the
others wait, then find the work done. The lock belongs to the connection: a node that
dies while migrating releases it with its connection, and its unfinished migration is
rolled back with its transaction.

The tables live in the connection's current schema (the first of its `search_path`), so
one database can hold several Fellowship installations, or a test run each, side by side.
"""

from __future__ import annotations

import contextlib
from typing import Final, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from engine.store.base import StorageError
from engine.store.migrations import Migration

Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
"""A connection of its own or one lent by a pool: both run the same statements."""

VERSION_TABLE: Final = "schema_migrations"
LOCK_WAIT_SECONDS: Final = 120.0
"""How long a node waits for another one's migration before it gives up starting."""

# The advisory lock's key: a 64-bit hash of this text and the schema's name, so that two
# schemas of one database migrate independently. hashtextextended is PostgreSQL 11+.
_LOCK_KEY: Final = "SELECT hashtextextended('fellowship schema ' || current_schema(), 0)"

TABLES: Final = ("sessions", "messages", "summaries", "memory", "events", "leases", "nodes")
"""The tables Fellowship creates (besides `schema_migrations`)."""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        summary="sessions, history, summaries, memory and events",
        statements=(
            """CREATE TABLE schema_migrations (
                version INTEGER PRIMARY KEY,
                summary TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
            # `position` keeps the order sessions were first saved in (SQLite's rowid);
            # an upsert leaves it alone. Tokens are never stored, only their hashes.
            """CREATE TABLE sessions (
                position BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
                id TEXT PRIMARY KEY,
                name TEXT,
                spec_json TEXT NOT NULL,
                full_token_hash TEXT NOT NULL,
                observer_token_hash TEXT NOT NULL,
                state TEXT NOT NULL,
                created_at TIMESTAMPTZ NOT NULL,
                ended_at TIMESTAMPTZ,
                end_reason TEXT,
                warnings TEXT[] NOT NULL DEFAULT '{}',
                bot_turns INTEGER NOT NULL DEFAULT 0,
                last_seq BIGINT NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX sessions_by_full_token ON sessions (full_token_hash)",
            "CREATE INDEX sessions_by_observer_token ON sessions (observer_token_hash)",
            "CREATE INDEX sessions_by_state ON sessions (state, ended_at)",
            """CREATE TABLE messages (
                session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                turn INTEGER NOT NULL CHECK (turn >= 1),
                kind TEXT NOT NULL,
                speaker TEXT NOT NULL,
                talker_id TEXT,
                content TEXT NOT NULL,
                status TEXT NOT NULL,
                ts TIMESTAMPTZ NOT NULL,
                tokens INTEGER NOT NULL,
                usage_json TEXT,
                PRIMARY KEY (session_id, turn)
            )""",
            """CREATE TABLE summaries (
                session_id TEXT PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
                upto_turn INTEGER NOT NULL,
                text TEXT NOT NULL
            )""",
            """CREATE TABLE memory (
                session_id TEXT PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
                text TEXT NOT NULL
            )""",
            # `data` is the event exactly as sent, so TEXT rather than JSONB (which
            # would reorder keys).
            """CREATE TABLE events (
                session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                seq BIGINT NOT NULL CHECK (seq >= 1),
                type TEXT NOT NULL,
                data TEXT NOT NULL,
                PRIMARY KEY (session_id, seq)
            )""",
        ),
    ),
    Migration(
        version=2,
        summary="ownership leases of cluster mode, with their fencing epoch",
        # One row per session that some node runs. `epoch` only grows: taking a lease
        # over bumps it, and the owner's writes are conditional on the epoch it holds.
        statements=(
            """CREATE TABLE leases (
                session_id TEXT PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
                node_id TEXT NOT NULL,
                epoch BIGINT NOT NULL CHECK (epoch >= 1),
                expires_at TIMESTAMPTZ NOT NULL
            )""",
            "CREATE INDEX leases_by_expiry ON leases (expires_at)",
            "CREATE INDEX leases_by_node ON leases (node_id)",
        ),
    ),
    Migration(
        version=3,
        summary="the cluster's nodes, and when each lease was taken",
        # A node renews its row with its leases; a scan counts the live ones to take
        # only its share of a dead node's sessions. Times are the database's (now()).
        statements=(
            """CREATE TABLE nodes (
                node_id TEXT PRIMARY KEY,
                started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                expires_at TIMESTAMPTZ NOT NULL
            )""",
            "ALTER TABLE leases ADD COLUMN acquired_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
    ),
)

LATEST_VERSION: Final = MIGRATIONS[-1].version


async def schema_version(conn: Connection) -> int | None:
    """The schema version in the connection's current schema; None when it has none."""
    if await conn.fetchval("SELECT to_regclass($1)", VERSION_TABLE) is None:
        return None
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))


async def check_schema(conn: Connection, *, where: str) -> int:
    """The version this Fellowship can use (0: nothing there yet), reading only.

    Raises `StorageError` for a schema newer than ours, or for tables of Fellowship's
    names that are not Fellowship's (another application's `sessions`, say). Tables of
    other names may share the schema.
    """
    version = await schema_version(conn)
    if version is None:
        clashes = [name for name in TABLES if await conn.fetchval("SELECT to_regclass($1)", name)]
        if clashes:
            schema = await conn.fetchval("SELECT current_schema()")
            raise StorageError(
                f"storage error on {where}: the schema {schema!r} holds tables that are not "
                f"Fellowship's ({', '.join(clashes)}); use another "
                "database, or another schema (search_path in DATABASE_URL)",
                problem="unknown_schema",
            )
        version = 0
    if version > LATEST_VERSION:
        raise StorageError(
            f"storage error on {where}: the database schema is version {version}, newer than "
            f"this Fellowship supports ({LATEST_VERSION}); upgrade Fellowship or use another "
            "database",
            problem="schema_too_new",
        )
    return version


async def migrate(
    conn: Connection,
    *,
    where: str,
    target: int = LATEST_VERSION,
    lock_wait: float = LOCK_WAIT_SECONDS,
) -> int:
    """Bring the schema up to `target` under the migration lock; return the version reached.

    Waits at most `lock_wait` seconds for another node's migration (then `StorageError`,
    problem `locked`). Refuses what `check_schema` refuses.
    """
    if await conn.fetchval("SELECT current_schema()") is None:
        raise StorageError(
            f"storage error on {where}: no schema of the search_path exists; create it "
            "or fix search_path in DATABASE_URL",
            problem="cannot_open",
        )
    key = int(await conn.fetchval(_LOCK_KEY))
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", key, timeout=lock_wait)
    except TimeoutError:
        raise StorageError(
            f"storage error on {where}: another node has been migrating the schema for "
            f"{lock_wait:g} s; start this one again once it is done",
            problem="locked",
        ) from None
    try:
        # Read under the lock: a node that waited finds the work of the one before.
        version = await check_schema(conn, where=where)
        for migration in MIGRATIONS:
            if not version < migration.version <= target:
                continue
            async with conn.transaction():
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, summary) VALUES ($1, $2)",
                    migration.version,
                    migration.summary,
                )
            version = migration.version
        return version
    finally:
        # A connection that broke meanwhile has released the lock with itself.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
