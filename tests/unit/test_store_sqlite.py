"""SqliteStore on its own: WAL, migrations, durability, and every way the file can fail.

Bad storage must never lose data silently: a read-only file or folder, random
bytes, a damaged database, a newer schema, a full disk and a lock held by another
process each end in a `StorageError` that names the problem and the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosqlite
import pytest

from engine.config import load_settings
from engine.history import Message
from engine.store.base import EventRecord, SessionRecord, StorageError
from engine.store.migrations import LATEST_VERSION, MIGRATIONS, migrate
from engine.store.sqlite import SqliteStore

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def record(session_id: str = "s1", **changes: object) -> SessionRecord:
    values: dict[str, object] = {
        "id": session_id,
        "spec_json": "{}",
        "full_token_hash": f"full-{session_id}",
        "observer_token_hash": f"observer-{session_id}",
        "created_at": T0,
    }
    values.update(changes)
    return SessionRecord.model_validate(values)


def message(turn: int, content: str | None = None) -> Message:
    return Message(
        turn=turn,
        kind="bot",
        speaker="Alice",
        content=f"message {turn}" if content is None else content,
        ts=T0 + timedelta(seconds=turn),
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "fellowship.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(db_path)
    await opened.open()
    await opened.save_session(record())
    yield opened
    await opened.close()


async def make_database(path: Path, messages: int = 0) -> None:
    """A real, closed database holding one session and `messages` positions."""
    made = SqliteStore(path)
    await made.open()
    await made.save_session(record())
    for turn in range(1, messages + 1):
        await made.save_message("s1", message(turn, content="x" * 500))
    await made.close()


def schema_versions(path: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    return [row[0] for row in rows]


def connection(opened: SqliteStore) -> aiosqlite.Connection:
    assert opened._conn is not None
    return opened._conn


async def refused(opened: SqliteStore) -> StorageError:
    with pytest.raises(StorageError) as caught:
        await opened.open()
    return caught.value


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make a file or folder unwritable, even for root (chmod does not stop root)."""
    if os.geteuid() != 0:
        mode = stat.S_IMODE(path.stat().st_mode)
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], check=False).returncode:
        pytest.skip("running as root where chattr +i is unavailable: cannot make it read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


# --- opening and the schema ----------
async def test_a_new_database_is_created_with_its_folders_at_the_latest_schema(
    db_path: Path,
) -> None:
    opened = SqliteStore(db_path)
    await opened.open()
    await opened.close()
    assert schema_versions(db_path) == [m.version for m in MIGRATIONS]
    assert schema_versions(db_path)[-1] == LATEST_VERSION


async def test_the_database_file_is_readable_by_its_owner_only(store: SqliteStore) -> None:
    # The spec column may hold API keys.
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


async def test_the_database_runs_in_wal_mode_with_foreign_keys(store: SqliteStore) -> None:
    conn = connection(store)
    assert list(await conn.execute_fetchall("PRAGMA journal_mode")) == [("wal",)]
    assert list(await conn.execute_fetchall("PRAGMA foreign_keys")) == [(1,)]
    with contextlib.closing(sqlite3.connect(store.path)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize(("mode", "level"), [("OFF", 0), ("NORMAL", 1), ("FULL", 2)])
async def test_the_synchronous_mode_comes_from_the_settings(
    db_path: Path, mode: str, level: int
) -> None:
    settings = load_settings(_env_file=None, database_path=db_path, db_synchronous=mode)
    opened = SqliteStore.from_settings(settings)
    await opened.open()
    try:
        assert list(await connection(opened).execute_fetchall("PRAGMA synchronous")) == [(level,)]
    finally:
        await opened.close()


async def test_opening_twice_is_harmless_and_a_closed_store_reopens(db_path: Path) -> None:
    opened = SqliteStore(db_path)
    await opened.open()
    await opened.open()
    await opened.save_session(record())
    await opened.close()
    await opened.close()
    await opened.open()
    assert [r.id for r in await opened.load_sessions(include_ended=True)] == ["s1"]
    await opened.close()


async def test_an_older_database_is_upgraded_and_keeps_its_data(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    async with aiosqlite.connect(db_path, isolation_level=None) as conn:
        assert await migrate(conn, where=str(db_path), target=1) == 1
        await conn.execute_fetchall(
            "INSERT INTO sessions (id, spec_json, full_token_hash, observer_token_hash, state,"
            " created_at) VALUES ('old', '{}', 'f', 'o', 'active', '2030-01-02T03:04:05.000000Z')"
        )
    assert schema_versions(db_path) == [1]

    opened = SqliteStore(db_path)
    await opened.open()
    try:
        assert schema_versions(db_path) == [m.version for m in MIGRATIONS]
        assert [r.id for r in await opened.load_sessions(include_ended=True)] == ["old"]
        await opened.save_events("old", [EventRecord(seq=1, type="t", data="{}")])
        assert len(await opened.load_events("old")) == 1
    finally:
        await opened.close()


async def test_upgrading_moves_live_sessions_past_numbers_older_versions_never_stored(
    db_path: Path,
) -> None:
    db_path.parent.mkdir(parents=True)
    async with aiosqlite.connect(db_path, isolation_level=None) as conn:
        assert await migrate(conn, where=str(db_path), target=2) == 2
        for session_id, state in (("live", "paused"), ("done", "ended")):
            await conn.execute_fetchall(
                "INSERT INTO sessions (id, spec_json, full_token_hash, observer_token_hash, state,"
                " created_at, last_seq)"
                " VALUES (?, '{}', ?, ?, ?, '2030-01-02T03:04:05.000000Z', 40)",
                (session_id, f"f-{session_id}", f"o-{session_id}", state),
            )
    opened = SqliteStore(db_path)
    await opened.open()
    try:
        seqs = {r.id: r.last_seq for r in await opened.load_sessions(include_ended=True)}
    finally:
        await opened.close()
    # Versions 1-2 jumped by 100000 at each restart and stored events only at turn ends.
    assert seqs == {"live": 100040, "done": 40}


async def test_a_database_from_a_newer_fellowship_is_refused_untouched(db_path: Path) -> None:
    await make_database(db_path)
    newer = LATEST_VERSION + 1
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?, 'from the future', '2031-01-01')", (newer,)
        )
    error = await refused(SqliteStore(db_path))
    assert error.problem == "schema_too_new"
    assert error.code == "storage_error"
    assert str(db_path) in error.message
    assert f"version {newer}" in error.message
    assert schema_versions(db_path)[-1] == newer


async def test_a_sqlite_file_of_another_application_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    error = await refused(SqliteStore(db_path))
    assert error.problem == "unknown_schema"
    assert "invoices" in error.message
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert tables == {"invoices"}


# --- bad storage ----------
async def test_random_bytes_are_refused_as_not_a_database_and_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    garbage = os.urandom(16384)
    write_bytes(db_path, garbage)
    error = await refused(SqliteStore(db_path))
    assert error.problem == "not_a_database"
    assert "not a SQLite database" in error.message
    assert str(db_path) in error.message
    assert read_bytes(db_path) == garbage


async def test_a_damaged_database_is_refused_at_open(db_path: Path) -> None:
    await make_database(db_path, messages=200)
    data = bytearray(read_bytes(db_path))
    page = 4096
    # Keep page 1 (header and schema) intact; scribble over the history's pages.
    for offset in range(3 * page, 8 * page):
        data[offset] = (offset * 7919) % 256
    write_bytes(db_path, bytes(data))
    error = await refused(SqliteStore(db_path))
    assert error.problem == "corrupt"
    assert "damaged" in error.message


async def test_a_read_only_database_file_is_refused_at_open(db_path: Path) -> None:
    await make_database(db_path)
    with read_only(db_path):
        error = await refused(SqliteStore(db_path))
    assert error.problem == "read_only"
    assert "read-only" in error.message
    assert str(db_path) in error.message


async def test_a_new_database_in_a_read_only_folder_is_refused_at_open(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with read_only(db_path.parent):
        error = await refused(SqliteStore(db_path))
    assert error.problem == "read_only"
    assert not os.path.exists(db_path)  # noqa: ASYNC240 - a test's one-off check


async def test_an_existing_database_in_a_read_only_folder_is_refused_at_open(
    db_path: Path,
) -> None:
    # WAL needs its -wal and -shm files next to the database.
    await make_database(db_path)
    with read_only(db_path.parent):
        error = await refused(SqliteStore(db_path))
    assert error.problem == "cannot_open"
    assert str(db_path) in error.message


async def test_a_database_path_under_a_file_is_refused_at_open(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    error = await refused(SqliteStore(tmp_path / "data" / "fellowship.db"))
    assert error.code == "storage_error"
    assert error.problem == "cannot_open"


async def test_a_full_disk_fails_the_write_and_loses_nothing_committed(
    store: SqliteStore,
) -> None:
    await store.save_message("s1", message(1))
    conn = connection(store)
    (pages,) = next(iter(await conn.execute_fetchall("PRAGMA page_count")))
    await conn.execute_fetchall(f"PRAGMA max_page_count = {pages}")

    with pytest.raises(StorageError) as caught:
        for turn in range(2, 50):
            await store.save_message("s1", message(turn, content="y" * 4000))
    assert caught.value.problem == "disk_full"
    assert "disk is full" in caught.value.message
    stored = await store.load_messages("s1")
    assert stored[0] == message(1)
    assert [m.turn for m in stored] == list(range(1, len(stored) + 1))  # no half-written row

    await conn.execute_fetchall(f"PRAGMA max_page_count = {pages * 1000}")
    failed_turn = len(stored) + 1
    await store.save_message("s1", message(failed_turn, content="y" * 4000))
    assert (await store.load_messages("s1"))[-1].turn == failed_turn


async def test_a_lock_held_by_another_process_fails_the_write_as_locked(db_path: Path) -> None:
    await make_database(db_path)
    opened = SqliteStore(db_path, busy_timeout=0.01)
    await opened.open()
    try:
        with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StorageError) as caught:
                await opened.save_message("s1", message(1))
            assert caught.value.problem == "locked"
            other.execute("ROLLBACK")
        await opened.save_message("s1", message(1))
        assert await opened.load_messages("s1") == [message(1)]
    finally:
        await opened.close()


async def test_a_stored_row_that_no_longer_validates_is_reported_as_corrupt(
    store: SqliteStore,
) -> None:
    await store.save_message("s1", message(1))
    with contextlib.closing(sqlite3.connect(store.path)) as other, other:
        other.execute("UPDATE messages SET kind = 'robot'")
    with pytest.raises(StorageError) as caught:
        await store.load_messages("s1")
    assert caught.value.problem == "corrupt"


async def test_calls_on_a_store_that_is_not_open_raise_storage_error(db_path: Path) -> None:
    unopened = SqliteStore(db_path)
    with pytest.raises(StorageError) as caught:
        await unopened.load_sessions(include_ended=True)
    assert caught.value.problem == "closed"
    await unopened.open()
    await unopened.close()
    with pytest.raises(StorageError):
        await unopened.save_session(record())


def test_an_unknown_synchronous_mode_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(db_path, synchronous="EXTRA; DROP TABLE sessions")  # type: ignore[arg-type]


# --- durability and ordering ----------
async def test_a_saved_message_is_committed_when_save_returns(store: SqliteStore) -> None:
    await store.save_message("s1", message(1))
    # Another connection (another process, say a backup) sees it at once.
    with contextlib.closing(sqlite3.connect(store.path)) as other:
        assert other.execute("SELECT content FROM messages").fetchall() == [("message 1",)]


async def test_everything_survives_a_restart(db_path: Path) -> None:
    first = SqliteStore(db_path)
    await first.open()
    await first.save_session(record(state="paused", bot_turns=2, last_seq=5))
    await first.save_message("s1", message(1))
    await first.save_message(
        "s1", Message(turn=2, kind="bot", speaker="Bob", status="reserved", ts=T0)
    )
    await first.save_summary("s1", 1, "summary")
    await first.save_memory("s1", "memory")
    await first.save_events("s1", [EventRecord(seq=5, type="bot_message", data="{}")])
    await first.close()

    second = SqliteStore(db_path)
    await second.open()
    try:
        (loaded,) = await second.load_all(include_ended=False)
        assert loaded.record == record(state="paused", bot_turns=2, last_seq=5)
        assert [m.status for m in loaded.messages] == ["complete", "reserved"]
        assert (loaded.summary, loaded.memory) == ((1, "summary"), "memory")
        assert [e.seq for e in await second.load_events("s1")] == [5]
    finally:
        await second.close()


async def test_a_rewritten_spec_leaves_no_old_copy_in_the_files(db_path: Path) -> None:
    secret = "sk-old-plain-text-0123456789"
    opened = SqliteStore(db_path)
    await opened.open()
    try:
        await opened.save_session(record(spec_json=f'{{"key": "{secret}"}}'))
        await opened.save_session(record("gone", spec_json=f'{{"key": "{secret}"}}'))
        await opened.delete_session("gone")
        files = [db_path, db_path.with_name(f"{db_path.name}-wal")]
        assert any(secret.encode() in read_bytes(f) for f in files if f.exists())

        assert await opened.rewrite_specs(lambda _id, _json: '{"key": "sealed"}') == ["s1"]

        assert not any(secret.encode() in read_bytes(f) for f in files if f.exists())
        assert (await opened.load_sessions(include_ended=True))[0].spec_json == '{"key": "sealed"}'
    finally:
        await opened.close()
    assert secret.encode() not in read_bytes(db_path)


async def test_concurrent_writes_from_many_tasks_all_land(store: SqliteStore) -> None:
    await asyncio.gather(*(store.save_message("s1", message(turn)) for turn in range(1, 201)))
    assert [m.turn for m in await store.load_messages("s1")] == list(range(1, 201))


async def test_a_write_whose_caller_is_cancelled_still_commits_whole(store: SqliteStore) -> None:
    task = asyncio.create_task(store.save_message("s1", message(1)))
    await asyncio.sleep(0)  # let it start its transaction
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.save_message("s1", message(2))
    assert await store.load_messages("s1") == [message(1), message(2)]


async def test_deleting_a_session_cascades_in_the_database(store: SqliteStore) -> None:
    await store.save_message("s1", message(1))
    await store.save_memory("s1", "memory")
    await store.delete_session("s1")
    with contextlib.closing(sqlite3.connect(store.path)) as other:
        for table in ("messages", "summaries", "memory", "events"):
            assert other.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,)


# --- performance shape (no clocks: count queries and check plans) ----------
async def count_selects(opened: SqliteStore, include_ended: bool) -> int:
    statements: list[str] = []
    conn = connection(opened)
    await conn.set_trace_callback(statements.append)
    try:
        await opened.load_all(include_ended=include_ended)
    finally:
        await conn.set_trace_callback(None)  # type: ignore[arg-type]  # None removes it
    return sum(1 for s in statements if s.lstrip().upper().startswith("SELECT"))


async def test_load_all_reads_each_table_once_however_many_sessions(store: SqliteStore) -> None:
    small = await count_selects(store, include_ended=True)
    for number in range(2, 40):
        await store.save_session(record(f"s{number}"))
        await store.save_message(f"s{number}", message(1))
        await store.save_memory(f"s{number}", "memory")
    assert await count_selects(store, include_ended=True) == small == 5
    assert await count_selects(store, include_ended=False) == 5


async def test_token_lookups_use_the_hash_indexes(store: SqliteStore) -> None:
    from engine.store.sqlite import _SESSION_BY_DIGEST

    plan = " ".join(
        str(row[-1])
        for row in await connection(store).execute_fetchall(
            "EXPLAIN QUERY PLAN " + _SESSION_BY_DIGEST, ("x", "x")
        )
    )
    assert "sessions_by_full_token" in plan
    assert "sessions_by_observer_token" in plan
    assert "SCAN" not in plan.replace("SCAN CONSTANT", "")
