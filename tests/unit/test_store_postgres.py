"""What PostgreSQL adds to the store contract: migrations under a lock, refusals, secrets.

The shared behaviour is in test_store_contract.py. Here: nodes starting together
migrate once; a schema of another application or of a newer Fellowship is refused
untouched; failures say where without the password; a write whose caller was cancelled
still lands before the next read; API keys rewritten at rest leave no old copy in the
table's file.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from engine.config import load_settings
from engine.history import Message
from engine.spec.models import SECRET_FIELDS
from engine.store import configured_store
from engine.store.base import SessionRecord, StorageError
from engine.store.postgres import PostgresStore, display_url
from engine.store.postgres_migrations import LATEST_VERSION, MIGRATIONS, migrate
from engine.store.secrets import SecretBox, generate_key, rotate_stored, seal_stored
from engine.store.sqlite import SqliteStore
from tests.support.services import free_port, with_query

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
API_KEY = "sk-plain-key-that-must-not-stay-0123456789"


def record(session_id: str, spec: dict[str, object] | None = None) -> SessionRecord:
    return SessionRecord(
        id=session_id,
        spec_json=json.dumps(spec if spec is not None else {"bots": []}),
        full_token_hash=f"f-{session_id}",
        observer_token_hash=f"o-{session_id}",
        created_at=T0,
    )


async def applied(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
    finally:
        await conn.close()


async def execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


# --- selection ----------
def test_database_url_selects_postgres_and_its_absence_sqlite(tmp_path: Path) -> None:
    url = "postgresql://fellow:hunter2@db.example:5433/fellowship"
    chosen = configured_store(load_settings(_env_file=None, database_url=url))
    assert isinstance(chosen, PostgresStore)
    assert "hunter2" not in repr(chosen) and "hunter2" not in chosen.where
    plain = configured_store(load_settings(_env_file=None, database_path=tmp_path / "x.db"))
    assert isinstance(plain, SqliteStore)


def test_a_database_url_of_another_kind_is_refused_without_echoing_it() -> None:
    from engine.config import ConfigError

    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None, database_url="mysql://root:hunter2@localhost/x")
    assert "DATABASE_URL" in str(refused.value) and "hunter2" not in str(refused.value)


def test_the_displayed_url_keeps_everything_but_the_password_and_query() -> None:
    shown = display_url("postgresql://fellow:hunter2@db:5433/f?search_path=s&password=x")
    assert shown == "postgresql://fellow@db:5433/f"


# --- migrations ----------
async def test_nodes_starting_together_migrate_the_schema_once(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url) for _ in range(5)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        assert await applied(postgres_url) == [m.version for m in MIGRATIONS]
        await stores[0].save_session(record("s1"))
        assert [r.id for r in await stores[4].load_sessions(include_ended=True)] == ["s1"]
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_an_older_schema_is_brought_up_to_date_keeping_its_rows(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await migrate(conn, where="test", target=1) == 1
        await conn.execute(
            "INSERT INTO sessions (id, spec_json, full_token_hash, observer_token_hash, state,"
            " created_at) VALUES ('old', '{}', 'f', 'o', 'active', now())"
        )
    finally:
        await conn.close()
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        assert await applied(postgres_url) == list(range(1, LATEST_VERSION + 1))
        assert [r.id for r in await store.load_sessions(include_ended=True)] == ["old"]
    finally:
        await store.close()


async def test_the_leases_table_is_ready_for_fencing(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    await store.save_session(record("s1"))
    await store.close()
    conn = await asyncpg.connect(postgres_url)
    try:
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'leases' ORDER BY 1"
        )
        assert [c[0] for c in columns] == [
            "acquired_at",  # since version 3
            "epoch",
            "expires_at",
            "node_id",
            "session_id",
        ]
        await conn.execute("INSERT INTO leases VALUES ('s1', 'node-a', 1, now())")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE leases SET epoch = 0")
    finally:
        await conn.close()
    store = PostgresStore(postgres_url)
    await store.open()
    await store.delete_session("s1")  # the lease goes with its session
    await store.close()
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM leases") == 0
    finally:
        await conn.close()


async def test_a_schema_from_a_newer_fellowship_is_refused_untouched(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    await store.close()
    await execute(postgres_url, "INSERT INTO schema_migrations VALUES (999, 'future', now())")
    with pytest.raises(StorageError) as refused:
        await PostgresStore(postgres_url).open()
    assert refused.value.problem == "schema_too_new"
    assert 999 in await applied(postgres_url)


async def test_another_applications_tables_of_our_names_are_refused(postgres_url: str) -> None:
    await execute(postgres_url, "CREATE TABLE sessions (id INT)", "CREATE TABLE unrelated (x INT)")
    with pytest.raises(StorageError) as refused:
        await PostgresStore(postgres_url).open()
    assert refused.value.problem == "unknown_schema"
    assert "sessions" in refused.value.message
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()


async def test_a_search_path_naming_no_schema_is_refused(postgres_url: str) -> None:
    with pytest.raises(StorageError) as refused:
        await PostgresStore(with_query(postgres_url, search_path="no_such_schema")).open()
    assert refused.value.problem == "cannot_open"


# --- failures ----------
async def test_a_server_that_does_not_answer_is_named_without_the_password() -> None:
    url = f"postgresql://fellow:hunter2@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StorageError) as refused:
        await PostgresStore(url).open()
    assert refused.value.problem == "cannot_open"
    assert "127.0.0.1" in refused.value.message and "hunter2" not in refused.value.message


async def test_a_closed_store_refuses_calls(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    await store.close()
    with pytest.raises(StorageError) as refused:
        await store.save_session(record("s1"))
    assert refused.value.problem == "closed"


# --- order ----------
async def test_a_write_whose_caller_is_cancelled_still_lands_before_the_next_read(
    postgres_url: str,
) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await store.save_session(record("s1"))
        messages = [
            Message(turn=t, kind="talker", speaker="Dana", content=f"m{t}", ts=T0)
            for t in range(1, 21)
        ]
        writers = [asyncio.create_task(store.save_message("s1", m)) for m in messages]
        await asyncio.sleep(0)
        for writer in writers:
            writer.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        assert [m.turn for m in await store.load_messages("s1")] == list(range(1, 21))
    finally:
        await store.close()


async def test_writes_for_one_session_land_in_the_order_they_were_made(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await store.save_session(record("s1"))
        versions = [
            Message(turn=1, kind="bot", speaker="A", content=f"v{n}", ts=T0) for n in range(30)
        ]
        await asyncio.gather(*(store.save_message("s1", m) for m in versions))
        assert [m.content for m in await store.load_messages("s1")] == ["v29"]
    finally:
        await store.close()


# --- secrets at rest ----------
async def test_sealing_and_rotation_work_on_postgres(postgres_url: str) -> None:
    old, new = generate_key(), generate_key()
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await store.save_session(record("s1", {"bots": [], "llm": {"api_key": API_KEY}}))
        report = await seal_stored(store, SecretBox([old]), SECRET_FIELDS)
        assert report.sealed == ["s1"]
        report = await rotate_stored(store, SecretBox([new, old]), SECRET_FIELDS)
        assert report.resealed == ["s1"]
        (row,) = await store.load_sessions(include_ended=True)
        assert API_KEY not in row.spec_json
        assert json.loads(row.spec_json)["llm"]["api_key"]["key_id"] == SecretBox([new]).key_ids[0]
    finally:
        await store.close()


async def test_a_rewritten_key_leaves_no_old_copy_in_the_tables_file(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            pytest.skip("reading the table's file needs a superuser")
        data_dir = Path(await conn.fetchval("SHOW data_directory"))
    finally:
        await conn.close()

    async def table_file() -> bytes | None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute("CHECKPOINT")  # the pages reach the file
            path = data_dir / await conn.fetchval("SELECT pg_relation_filepath('sessions')")
        finally:
            await conn.close()
        try:
            return path.read_bytes()
        except OSError:
            return None  # another machine's server, or not ours to read

    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await store.save_session(record("s1", {"bots": [], "llm": {"api_key": API_KEY}}))
        before = await table_file()
        if before is None:
            pytest.skip("the server's files are not readable from here")
        assert API_KEY.encode() in before  # the check below can see a copy
        await seal_stored(store, SecretBox([generate_key()]), SECRET_FIELDS)
        after = await table_file()
        assert after is not None and API_KEY.encode() not in after
    finally:
        await store.close()
