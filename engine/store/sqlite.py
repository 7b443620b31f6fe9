"""The server's store: one SQLite file in WAL mode, through `aiosqlite`.

One connection serves every call, behind one lock, so writes land in the order
they were made and a transaction never interleaves with another. Each write is
one transaction, committed before the call returns. A write is shielded from
cancellation: once started it commits or rolls back as a whole, even if the
task that asked for it is cancelled meanwhile.

Every statement is a round trip to aiosqlite's thread, which costs more than the
statement itself. A write of a single statement (a message, the session row, the
hot path of every turn) therefore runs without BEGIN/COMMIT: SQLite makes a lone
statement its own transaction, all or nothing, committed when it returns.

Every SQLite failure comes out as a `StorageError` that says what happened
(read-only, disk full, not a database, damaged, locked) and which file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from engine.config import Settings
from engine.history import Message
from engine.llm.types import Usage
from engine.store.base import (
    EventRecord,
    SessionRecord,
    SpecRewrite,
    StorageError,
    StorageProblem,
    Store,
    StoredSession,
    unknown_session,
)
from engine.store.migrations import LATEST_VERSION, check_schema, migrate, transaction

log = logging.getLogger("fellowship.store")

T = TypeVar("T")
Synchronous = Literal["OFF", "NORMAL", "FULL"]

_DEFAULTS = Settings.model_fields
# The file holds every conversation, and specs with their API keys (encrypted): only its
# owner may read it.
FILE_MODE = 0o600
MILLISECONDS = 1000
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width, so text order is time order
_PRIMARY_CODE_MASK = 0xFF  # an extended result code keeps its primary code in the low byte

_PROBLEMS: dict[int, tuple[StorageProblem, str]] = {
    sqlite3.SQLITE_READONLY: ("read_only", "the database is read-only"),
    sqlite3.SQLITE_PERM: ("read_only", "permission denied"),
    sqlite3.SQLITE_FULL: ("disk_full", "the disk is full (or the database reached its size cap)"),
    sqlite3.SQLITE_NOTADB: ("not_a_database", "the file is not a SQLite database"),
    sqlite3.SQLITE_CORRUPT: ("corrupt", "the database file is damaged"),
    sqlite3.SQLITE_CANTOPEN: (
        "cannot_open",
        "the database file cannot be opened (is its folder writable?)",
    ),
    sqlite3.SQLITE_BUSY: ("locked", "the database is locked by another process"),
    sqlite3.SQLITE_LOCKED: ("locked", "the database is locked"),
    sqlite3.SQLITE_IOERR: ("io", "a disk I/O error occurred"),
}
_OS_PROBLEMS: dict[int, tuple[StorageProblem, str]] = {
    errno.EACCES: ("read_only", "permission denied"),
    errno.EPERM: ("read_only", "permission denied"),
    errno.EROFS: ("read_only", "the file system is read-only"),
    errno.ENOSPC: ("disk_full", "the disk is full"),
}

# Plain SQL text, never built from input; every value goes through a placeholder.
_UPSERT_SESSION = """
    INSERT INTO sessions (id, name, spec_json, full_token_hash, observer_token_hash, state,
                          created_at, ended_at, end_reason, warnings_json, bot_turns, last_seq)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET
        name = excluded.name, spec_json = excluded.spec_json,
        full_token_hash = excluded.full_token_hash,
        observer_token_hash = excluded.observer_token_hash, state = excluded.state,
        created_at = excluded.created_at, ended_at = excluded.ended_at,
        end_reason = excluded.end_reason, warnings_json = excluded.warnings_json,
        bot_turns = excluded.bot_turns, last_seq = excluded.last_seq
"""
_ALL_SESSIONS = """
    SELECT id, name, spec_json, full_token_hash, observer_token_hash, state, created_at,
           ended_at, end_reason, warnings_json, bot_turns, last_seq
    FROM sessions ORDER BY rowid
"""
_LIVE_SESSIONS = """
    SELECT id, name, spec_json, full_token_hash, observer_token_hash, state, created_at,
           ended_at, end_reason, warnings_json, bot_turns, last_seq
    FROM sessions WHERE state != 'ended' ORDER BY rowid
"""
_ALL_SPECS = "SELECT id, spec_json FROM sessions ORDER BY rowid"
_UPDATE_SPEC = "UPDATE sessions SET spec_json = ? WHERE id = ?"
# Two indexed lookups rather than one OR, which could scan the whole table.
_SESSION_BY_DIGEST = """
    SELECT rowid, 1, id, name, spec_json, full_token_hash, observer_token_hash, state,
           created_at, ended_at, end_reason, warnings_json, bot_turns, last_seq
    FROM sessions WHERE full_token_hash = ?
    UNION ALL
    SELECT rowid, 0, id, name, spec_json, full_token_hash, observer_token_hash, state,
           created_at, ended_at, end_reason, warnings_json, bot_turns, last_seq
    FROM sessions WHERE observer_token_hash = ?
"""
_EXPIRED = """
    SELECT id FROM sessions
    WHERE state = 'ended' AND ended_at IS NOT NULL AND ended_at < ? ORDER BY rowid
"""
_DELETE_EXPIRED = """
    DELETE FROM sessions WHERE state = 'ended' AND ended_at IS NOT NULL AND ended_at < ?
"""
_UPSERT_MESSAGE = """
    INSERT INTO messages (session_id, turn, kind, speaker, talker_id, content, status, ts,
                          tokens, usage_json)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (session_id, turn) DO UPDATE SET
        kind = excluded.kind, speaker = excluded.speaker, talker_id = excluded.talker_id,
        content = excluded.content, status = excluded.status, ts = excluded.ts,
        tokens = excluded.tokens, usage_json = excluded.usage_json
"""
_MESSAGES = """
    SELECT turn, kind, speaker, talker_id, content, status, ts, tokens, usage_json
    FROM messages WHERE session_id = ? ORDER BY turn
"""
_ALL_MESSAGES = """
    SELECT session_id, turn, kind, speaker, talker_id, content, status, ts, tokens, usage_json
    FROM messages ORDER BY session_id, turn
"""
_LIVE_MESSAGES = """
    SELECT session_id, turn, kind, speaker, talker_id, content, status, ts, tokens, usage_json
    FROM messages WHERE session_id IN (SELECT id FROM sessions WHERE state != 'ended')
    ORDER BY session_id, turn
"""
_ALL_SUMMARIES = "SELECT session_id, upto_turn, text FROM summaries"
_LIVE_SUMMARIES = """
    SELECT session_id, upto_turn, text FROM summaries
    WHERE session_id IN (SELECT id FROM sessions WHERE state != 'ended')
"""
_ALL_MEMORY = "SELECT session_id, text FROM memory"
_ALL_EVENTS = "SELECT session_id, seq, type, data FROM events ORDER BY session_id, seq"
_LIVE_EVENTS = """
    SELECT session_id, seq, type, data FROM events
    WHERE session_id IN (SELECT id FROM sessions WHERE state != 'ended')
    ORDER BY session_id, seq
"""
_LIVE_MEMORY = """
    SELECT session_id, text FROM memory
    WHERE session_id IN (SELECT id FROM sessions WHERE state != 'ended')
"""
# Several rows per statement (one round trip), at most this many: 4 placeholders each
# stays under SQLite's oldest bound of 999 per statement.
EVENT_ROWS_PER_STATEMENT = 200
_EVENT_ROW = "(?, ?, ?, ?)"
_UPSERT_EVENTS = """
    INSERT INTO events (session_id, seq, type, data) VALUES {rows}
    ON CONFLICT (session_id, seq) DO UPDATE SET type = excluded.type, data = excluded.data
"""
# Everything up to the (keep_last + 1)-th newest event goes.
_PRUNE_EVENTS = """
    DELETE FROM events WHERE session_id = ? AND seq <= (
        SELECT seq FROM events WHERE session_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)
"""


class _BadRow(Exception):
    """A stored row that no longer parses into its model."""


def _ts(value: datetime) -> str:
    # The engine's times are UTC; a naive time is taken as UTC too.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(_TS_FORMAT)


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)  # C-fast, unlike strptime; reads the trailing Z


def _session_row(record: SessionRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.name,
        record.spec_json,
        record.full_token_hash,
        record.observer_token_hash,
        record.state,
        _ts(record.created_at),
        _ts(record.ended_at) if record.ended_at is not None else None,
        record.end_reason,
        json.dumps(record.warnings),
        record.bot_turns,
        record.last_seq,
    )


def _record(row: Sequence[Any]) -> SessionRecord:
    try:
        return _parse_record(row)
    except (ValueError, TypeError) as exc:  # pydantic and json errors are ValueErrors
        raise _BadRow(f"sessions row {row[0]!r}") from exc


def _parse_record(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(
        id=row[0],
        name=row[1],
        spec_json=row[2],
        full_token_hash=row[3],
        observer_token_hash=row[4],
        state=row[5],
        created_at=_dt(row[6]),
        ended_at=_dt(row[7]) if row[7] is not None else None,
        end_reason=row[8],
        warnings=json.loads(row[9]),
        bot_turns=row[10],
        last_seq=row[11],
    )


def _message_row(session_id: str, message: Message) -> tuple[Any, ...]:
    return (
        session_id,
        message.turn,
        message.kind,
        message.speaker,
        message.talker_id,
        message.content,
        message.status,
        _ts(message.ts),
        message.tokens,
        message.usage.model_dump_json() if message.usage is not None else None,
    )


def _message(row: Sequence[Any]) -> Message:
    try:
        return _parse_message(row)
    except (ValueError, TypeError) as exc:
        raise _BadRow(f"messages row at position {row[0]!r}") from exc


def _parse_message(row: Sequence[Any]) -> Message:
    return Message(
        turn=row[0],
        kind=row[1],
        speaker=row[2],
        talker_id=row[3],
        content=row[4],
        status=row[5],
        ts=_dt(row[6]),
        tokens=row[7],
        usage=Usage.model_validate_json(row[8]) if row[8] is not None else None,
    )


def _event(row: Sequence[Any]) -> EventRecord:
    try:
        return EventRecord(seq=row[0], type=row[1], data=row[2])
    except (ValueError, TypeError) as exc:
        raise _BadRow(f"events row at seq {row[0]!r}") from exc


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (a no-op if it exists)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))


class SqliteStore(Store):
    """Sessions, history, summaries, memory and events in one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous = _DEFAULTS["db_synchronous"].default,
        busy_timeout: float = _DEFAULTS["db_busy_timeout"].default,
        quick_check: bool = _DEFAULTS["db_quick_check"].default,
    ) -> None:
        if synchronous not in ("OFF", "NORMAL", "FULL"):  # it is pasted into a PRAGMA
            raise ValueError(f"synchronous must be OFF, NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.quick_check = quick_check
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteStore:
        """The store the settings describe (`DATABASE_PATH`, `DB_*`), as node `NODE_ID`."""
        store = cls(
            settings.database_path,
            synchronous=settings.db_synchronous,
            busy_timeout=settings.db_busy_timeout,
            quick_check=settings.db_quick_check,
        )
        # One process, one node: it owns every session (the base's leases).
        store.node_id = settings.node_id
        return store

    # --- errors ----------
    def _error(self, problem: StorageProblem, what: str) -> StorageError:
        return StorageError(f"storage error on {self.path}: {what}", problem=problem)

    def _translate(self, exc: BaseException, session_id: str | None = None) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", None)
            name = getattr(exc, "sqlite_errorname", None)
            if name == "SQLITE_CONSTRAINT_FOREIGNKEY" and session_id is not None:
                return unknown_session(session_id, str(self.path))
            if code is None and "closed" in str(exc):
                return self._error("closed", "the database connection is closed")
            primary = (code or 0) & _PRIMARY_CODE_MASK
            problem, what = _PROBLEMS.get(primary, ("other", "the database failed"))
            return self._error(problem, f"{what} ({name or exc})")
        if isinstance(exc, OSError):
            problem, what = _OS_PROBLEMS.get(
                exc.errno or 0, ("cannot_open", "the database file cannot be created")
            )
            return self._error(problem, f"{what} ({exc.strerror or exc})")
        if isinstance(exc, _BadRow):
            return self._error("corrupt", f"a stored row is invalid ({exc})")
        return self._error("other", f"unexpected failure ({exc.__class__.__name__})")

    # --- lifecycle ----------
    async def open(self) -> None:
        """Create the file if needed, check it, switch to WAL and migrate the schema.

        Raises `StorageError` when the file cannot be written, is not a SQLite
        database, is damaged, or was written by a newer Fellowship.
        """
        async with self._lock:
            if self._conn is not None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _create_private(self.path)
            except OSError as exc:
                raise self._translate(exc) from exc
            try:
                conn = await aiosqlite.connect(self.path, isolation_level=None)
            except (sqlite3.Error, OSError) as exc:
                raise self._translate(exc) from exc
            try:
                version = await self._prepare(conn)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await conn.close()
                if isinstance(exc, Exception):
                    raise self._translate(exc) from exc
                raise
            self._conn = conn
            log.info("database %s open (schema version %d)", self.path, version)

    async def _prepare(self, conn: aiosqlite.Connection) -> int:
        await conn.execute_fetchall(
            f"PRAGMA busy_timeout = {int(self.busy_timeout * MILLISECONDS)}"
        )
        # Read-only checks first, so a file we refuse is left exactly as it was. The
        # first read also fails a file that is not a database at all.
        await check_schema(conn, where=str(self.path))
        mode = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
        if not mode or str(mode[0][0]).lower() != "wal":
            raise self._error("cannot_open", "the database cannot be switched to WAL mode")
        await conn.execute_fetchall(f"PRAGMA synchronous = {self.synchronous}")
        await conn.execute_fetchall("PRAGMA foreign_keys = ON")
        if self.quick_check:
            problems = [str(row[0]) for row in await conn.execute_fetchall("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise self._error("corrupt", f"the database file is damaged ({problems[0]})")
        version = await migrate(conn, where=str(self.path), target=LATEST_VERSION)
        # A write that changes nothing: a read-only file is refused now, not at the
        # first message.
        await conn.execute_fetchall("BEGIN IMMEDIATE")
        try:
            await conn.execute_fetchall("DELETE FROM schema_migrations WHERE 0")
        finally:
            if conn.in_transaction:
                await conn.execute_fetchall("ROLLBACK")
        return version

    async def close(self) -> None:
        """Finish pending writes and close the file (the WAL is checkpointed)."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                await conn.close()
            except (sqlite3.Error, OSError) as exc:
                raise self._translate(exc) from exc

    # --- the one way in ----------
    async def _run(
        self,
        work: Callable[[aiosqlite.Connection], Awaitable[T]],
        *,
        write: bool,
        session_id: str | None = None,
        single: bool = False,
    ) -> T:
        # Shielded: a cancelled caller must not leave a transaction half done.
        # `single`: `work` is one statement, already a transaction of its own.
        return await asyncio.shield(
            self._guarded(work, write=write, session_id=session_id, single=single)
        )

    async def _guarded(
        self,
        work: Callable[[aiosqlite.Connection], Awaitable[T]],
        *,
        write: bool,
        session_id: str | None,
        single: bool,
    ) -> T:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise self._error("closed", "the store is not open")
            try:
                if not write or single:
                    return await work(conn)
                async with transaction(conn):
                    return await work(conn)
            except (sqlite3.Error, OSError, _BadRow) as exc:
                raise self._translate(exc, session_id) from exc

    # --- sessions ----------
    async def save_session(self, record: SessionRecord) -> None:
        # An upsert, never INSERT OR REPLACE: a replace deletes the row first,
        # and the cascade would take the session's history with it.
        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute_fetchall(_UPSERT_SESSION, _session_row(record))

        await self._run(work, write=True, single=True)

    async def load_sessions(self, *, include_ended: bool) -> list[SessionRecord]:
        async def work(conn: aiosqlite.Connection) -> list[SessionRecord]:
            return [_record(row) for row in await self._session_rows(conn, include_ended)]

        return await self._run(work, write=False)

    @staticmethod
    async def _session_rows(conn: aiosqlite.Connection, include_ended: bool) -> list[Sequence[Any]]:
        return list(await conn.execute_fetchall(_ALL_SESSIONS if include_ended else _LIVE_SESSIONS))

    async def rewrite_specs(self, rewrite: SpecRewrite) -> list[str]:
        """Rewrite the specs in one transaction, then wipe every replaced copy from the files.

        An UPDATE leaves the old text in the page's free space, and in the WAL until a
        checkpoint; older deletions may have left more in free pages. VACUUM rebuilds the
        file from the live rows only, and a truncating checkpoint moves it out of the WAL.
        """

        async def work(conn: aiosqlite.Connection) -> list[str]:
            changed: list[str] = []
            for session_id, spec_json in await conn.execute_fetchall(_ALL_SPECS):
                text = rewrite(str(session_id), str(spec_json))
                if text is not None and text != spec_json:
                    await conn.execute_fetchall(_UPDATE_SPEC, (text, session_id))
                    changed.append(str(session_id))
            return changed

        changed = await self._run(work, write=True)
        if changed:
            await self._run(self._wipe_free_space, write=False)
        return changed

    async def _wipe_free_space(self, conn: aiosqlite.Connection) -> None:
        await conn.execute_fetchall("VACUUM")
        rows = list(await conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)"))
        if rows and rows[0][0]:
            raise self._error(
                "locked",
                "the old copies of rewritten secrets could not be wiped from the write-ahead "
                "log while another program reads the database; once it is closed, run "
                "sqlite3 on the file with VACUUM",
            )

    async def find_by_token_hash(self, digest: str) -> tuple[SessionRecord, bool] | None:
        async def work(conn: aiosqlite.Connection) -> tuple[SessionRecord, bool] | None:
            rows = list(await conn.execute_fetchall(_SESSION_BY_DIGEST, (digest, digest)))
            if not rows:
                return None
            first = min(rows, key=lambda row: (row[0], -row[1]))
            return _record(first[2:]), bool(first[1])

        return await self._run(work, write=False)

    async def delete_session(self, session_id: str) -> None:
        async def work(conn: aiosqlite.Connection) -> None:
            # foreign_keys=ON: the cascade removes history, summary, memory and events.
            await conn.execute_fetchall("DELETE FROM sessions WHERE id = ?", (session_id,))

        await self._run(work, write=True)

    async def expire_ended(self, before: datetime) -> list[str]:
        async def work(conn: aiosqlite.Connection) -> list[str]:
            rows = await conn.execute_fetchall(_EXPIRED, (_ts(before),))
            expired = [str(row[0]) for row in rows]
            await conn.execute_fetchall(_DELETE_EXPIRED, (_ts(before),))
            return expired

        return await self._run(work, write=True)

    # --- history ----------
    async def save_message(self, session_id: str, message: Message) -> None:
        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute_fetchall(_UPSERT_MESSAGE, _message_row(session_id, message))

        await self._run(work, write=True, session_id=session_id, single=True)

    async def load_messages(self, session_id: str) -> list[Message]:
        async def work(conn: aiosqlite.Connection) -> list[Message]:
            rows = await conn.execute_fetchall(_MESSAGES, (session_id,))
            return [_message(row) for row in rows]

        return await self._run(work, write=False)

    # --- summaries and memory ----------
    async def save_summary(self, session_id: str, upto_turn: int, text: str) -> None:
        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute_fetchall(
                "INSERT INTO summaries (session_id, upto_turn, text) VALUES (?, ?, ?) "
                "ON CONFLICT (session_id) DO UPDATE SET upto_turn = excluded.upto_turn, "
                "text = excluded.text",
                (session_id, upto_turn, text),
            )

        await self._run(work, write=True, session_id=session_id)

    async def load_summary(self, session_id: str) -> tuple[int, str] | None:
        async def work(conn: aiosqlite.Connection) -> tuple[int, str] | None:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT upto_turn, text FROM summaries WHERE session_id = ?", (session_id,)
                )
            )
            return (int(rows[0][0]), str(rows[0][1])) if rows else None

        return await self._run(work, write=False)

    async def save_memory(self, session_id: str, text: str) -> None:
        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute_fetchall(
                "INSERT INTO memory (session_id, text) VALUES (?, ?) "
                "ON CONFLICT (session_id) DO UPDATE SET text = excluded.text",
                (session_id, text),
            )

        await self._run(work, write=True, session_id=session_id)

    async def load_memory(self, session_id: str) -> str | None:
        async def work(conn: aiosqlite.Connection) -> str | None:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT text FROM memory WHERE session_id = ?", (session_id,)
                )
            )
            return str(rows[0][0]) if rows else None

        return await self._run(work, write=False)

    # --- events ----------
    async def save_events(
        self,
        session_id: str,
        events: Sequence[EventRecord],
        *,
        messages: Sequence[Message] = (),
        keep_last: int | None = None,
    ) -> None:
        async def work(conn: aiosqlite.Connection) -> None:
            if not events and not messages:
                # An empty batch inserts nothing the foreign key could refuse: look.
                known = await conn.execute_fetchall(
                    "SELECT 1 FROM sessions WHERE id = ?", (session_id,)
                )
                if not list(known):
                    raise unknown_session(session_id, str(self.path))
            for message in messages:
                await conn.execute_fetchall(_UPSERT_MESSAGE, _message_row(session_id, message))
            for start in range(0, len(events), EVENT_ROWS_PER_STATEMENT):
                chunk = events[start : start + EVENT_ROWS_PER_STATEMENT]
                # Only the number of placeholder groups varies; every value is a parameter.
                sql = _UPSERT_EVENTS.format(rows=", ".join([_EVENT_ROW] * len(chunk)))
                values = [v for e in chunk for v in (session_id, e.seq, e.type, e.data)]
                await conn.execute_fetchall(sql, values)
            if keep_last is not None:
                await conn.execute_fetchall(_PRUNE_EVENTS, (session_id, session_id, keep_last))

        await self._run(work, write=True, session_id=session_id)

    async def load_events(self, session_id: str, *, after_seq: int = 0) -> list[EventRecord]:
        async def work(conn: aiosqlite.Connection) -> list[EventRecord]:
            rows = await conn.execute_fetchall(
                "SELECT seq, type, data FROM events WHERE session_id = ? AND seq > ? ORDER BY seq",
                (session_id, after_seq),
            )
            return [EventRecord(seq=row[0], type=row[1], data=row[2]) for row in rows]

        return await self._run(work, write=False)

    # --- start-up ----------
    async def load_all(self, *, include_ended: bool) -> list[StoredSession]:
        """Every session with its history, summary, memory and events: one query per table."""

        async def work(conn: aiosqlite.Connection) -> list[StoredSession]:
            stored = {
                row[0]: StoredSession(record=_record(row), events=[])
                for row in await self._session_rows(conn, include_ended)
            }
            messages = _ALL_MESSAGES if include_ended else _LIVE_MESSAGES
            for row in await conn.execute_fetchall(messages):
                if (target := stored.get(row[0])) is not None:
                    target.messages.append(_message(row[1:]))
            summaries = _ALL_SUMMARIES if include_ended else _LIVE_SUMMARIES
            for row in await conn.execute_fetchall(summaries):
                if (target := stored.get(row[0])) is not None:
                    target.summary = (int(row[1]), str(row[2]))
            memory = _ALL_MEMORY if include_ended else _LIVE_MEMORY
            for row in await conn.execute_fetchall(memory):
                if (target := stored.get(row[0])) is not None:
                    target.memory = str(row[1])
            events = _ALL_EVENTS if include_ended else _LIVE_EVENTS
            for row in await conn.execute_fetchall(events):
                if (target := stored.get(row[0])) is not None and target.events is not None:
                    target.events.append(_event(row[1:]))
            return list(stored.values())

        return await self._run(work, write=False)
