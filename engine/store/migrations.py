"""The SQLite schema, as an ordered list of migrations.

Each migration moves the schema up one version, in one transaction together with
the row that records it in `schema_migrations`, so a crash mid-migration leaves
the previous version intact. A database written by a newer Fellowship (a version
we do not know) is refused rather than guessed at, and so is a SQLite file that
holds someone else's tables.

Never edit a migration that has shipped: append a new one.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiosqlite

from engine.store.base import StorageError

VERSION_TABLE = "schema_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: its version, what it adds, and the SQL that adds it."""

    version: int
    summary: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        summary="sessions, history, summaries and memory",
        statements=(
            """CREATE TABLE schema_migrations (
                version INTEGER PRIMARY KEY,
                summary TEXT NOT NULL,
                applied_at TEXT NOT NULL
            )""",
            # Tokens are never stored, only their SHA-256 hashes.
            """CREATE TABLE sessions (
                id TEXT PRIMARY KEY,
                name TEXT,
                spec_json TEXT NOT NULL,
                full_token_hash TEXT NOT NULL,
                observer_token_hash TEXT NOT NULL,
                state TEXT NOT NULL,
                created_at TEXT NOT NULL,
                ended_at TEXT,
                end_reason TEXT,
                warnings_json TEXT NOT NULL DEFAULT '[]',
                bot_turns INTEGER NOT NULL DEFAULT 0,
                last_seq INTEGER NOT NULL DEFAULT 0
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
                ts TEXT NOT NULL,
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
        ),
    ),
    Migration(
        version=2,
        summary="published events, for replay after a restart",
        statements=(
            """CREATE TABLE events (
                session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                seq INTEGER NOT NULL CHECK (seq >= 1),
                type TEXT NOT NULL,
                data TEXT NOT NULL,
                PRIMARY KEY (session_id, seq)
            )""",
        ),
    ),
    Migration(
        version=3,
        summary="events stored before delivery: live sessions number past the old restart jump",
        # Versions 1-2 stored events only at turn ends and jumped numbering by 100000 at
        # each restart; a client may have seen numbers the file never got. Moving live
        # sessions past them once keeps seq from repeating; the restore then sees that the
        # stored events do not reach last_seq and answers every reconnect with a history.
        statements=("UPDATE sessions SET last_seq = last_seq + 100000 WHERE state != 'ended'",),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


async def schema_version(conn: aiosqlite.Connection) -> int | None:
    """The schema version of the open database; None when it has no Fellowship schema."""
    rows = list(
        await conn.execute_fetchall(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (VERSION_TABLE,)
        )
    )
    if not rows:
        return None
    version = list(await conn.execute_fetchall("SELECT MAX(version) FROM schema_migrations"))
    return int(version[0][0] or 0)


async def _foreign_tables(conn: aiosqlite.Connection) -> list[str]:
    rows = await conn.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )
    return [str(row[0]) for row in rows]


async def check_schema(conn: aiosqlite.Connection, *, where: str) -> int:
    """The version of a database this Fellowship can use (0: empty), reading only.

    Raises `StorageError` for a schema newer than ours or a file holding other
    tables; `where` names the database in the message.
    """
    version = await schema_version(conn)
    if version is None:
        others = await _foreign_tables(conn)
        if others:
            raise StorageError(
                f"storage error on {where}: the file holds tables that are not "
                f"Fellowship's ({', '.join(sorted(others)[:5])}); use another DATABASE_PATH",
                problem="unknown_schema",
            )
        version = 0
    if version > LATEST_VERSION:
        raise StorageError(
            f"storage error on {where}: the database schema is version {version}, newer than "
            f"this Fellowship supports ({LATEST_VERSION}); upgrade Fellowship or use "
            "another DATABASE_PATH",
            problem="schema_too_new",
        )
    return version


@contextlib.asynccontextmanager
async def transaction(conn: aiosqlite.Connection) -> AsyncIterator[None]:
    """One write transaction on an autocommit connection: committed, or rolled back whole."""
    await conn.execute_fetchall("BEGIN IMMEDIATE")
    try:
        yield
        await conn.execute_fetchall("COMMIT")
    except BaseException:
        # SQLite may already have rolled back (a full disk does).
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute_fetchall("ROLLBACK")
        raise


async def migrate(conn: aiosqlite.Connection, *, where: str, target: int = LATEST_VERSION) -> int:
    """Bring the schema up to `target` and return the version reached.

    `conn` must be in autocommit mode (isolation_level=None); each migration runs
    in its own transaction. Refuses what `check_schema` refuses; SQLite's own
    errors are left to the caller to translate.
    """
    version = await check_schema(conn, where=where)
    for migration in MIGRATIONS:
        if not version < migration.version <= target:
            continue
        async with transaction(conn):
            # Another process may have migrated while we waited for the write lock.
            if (await schema_version(conn) or 0) < migration.version:
                for statement in migration.statements:
                    await conn.execute_fetchall(statement)
                await conn.execute_fetchall(
                    "INSERT INTO schema_migrations (version, summary, applied_at) "
                    "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                    (migration.version, migration.summary),
                )
        version = migration.version
    return version
