"""API keys at rest, against the real server and its SQLite file.

A session's `llm.api_key` must never be readable in any file the server writes (the
database and its WAL are searched byte for byte), yet a restored session must still
call its backend with that key (the mock records the Authorization header). A server
without the right SECRET_KEY starts, names the sessions it cannot serve, and fails only
their backend calls, with `secret_unreadable`. An old database with plain keys is
encrypted at start-up; `fellowship rotate-secrets` moves every key to a new SECRET_KEY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.auth import mint_token, token_hash
from engine.llm.mock import MockLLM
from engine.spec.models import SessionSpec
from engine.store.secrets import generate_key
from engine.store.sqlite import SqliteStore
from tests.integration.conftest import (
    RunningServer,
    ServerFactory,
    create_session,
    spec_dict,
    ws_join,
)
from tests.support.engine import TEST_SECRET_KEY, WAIT_SECONDS

KEY_A = "sk-alpha-0123456789abcdef"
KEY_B = "sk-bravo-fedcba9876543210"
OTHER_SECRET_KEY = generate_key()


def keyed_spec(api_key: str | None) -> dict[str, Any]:
    """One bot that answers each talker message, with its own backend key if given."""
    spec = spec_dict(["Tutor"], participation="reactive")
    if api_key is not None:
        spec["llm"] = {"api_key": api_key}
    return spec


def files_holding(tmp_path: Path, secret: str) -> list[str]:
    """The database files (main file, WAL, shared memory) whose bytes contain `secret`."""
    database = tmp_path / "test.db"
    assert database.exists()
    needle = secret.encode()
    return [p.name for p in sorted(tmp_path.glob("test.db*")) if needle in p.read_bytes()]


async def one_reply(server: RunningServer, created: dict[str, Any], mock: MockLLM) -> str | None:
    """Resume the (restored, paused) session, say one line; the Authorization it sent."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as http:
        status = (await http.get(f"/v1/session/{created['token']}")).json()
        if status["state"] == "paused":
            resumed = await http.post(f"/v1/session/{created['token']}/resume")
            assert resumed.status_code == 200, resumed.text
    before = len(mock.requests)
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    try:
        await talker.say("What is a prime?")
        await talker.wait_type("bot_message")
    finally:
        await talker.close()
    assert len(mock.requests) == before + 1
    return mock.requests[-1].authorization


async def test_a_key_is_in_no_database_file_after_create_restart_and_rotation(
    server_factory: ServerFactory, mock: MockLLM, tmp_path: Path
) -> None:
    first = await server_factory()
    async with httpx.AsyncClient(base_url=first.base_url, timeout=WAIT_SECONDS) as http:
        created = await create_session(http, keyed_spec(KEY_A))
    assert await one_reply(first, created, mock) == f"Bearer {KEY_A}"
    assert files_holding(tmp_path, KEY_A) == []
    await first.stop()
    assert files_holding(tmp_path, KEY_A) == []

    second = await server_factory()
    assert await one_reply(second, created, mock) == f"Bearer {KEY_A}"
    assert files_holding(tmp_path, KEY_A) == []
    await second.stop()

    result = await asyncio.to_thread(
        rotate, tmp_path, f"--old-key={TEST_SECRET_KEY}", f"--new-key={OTHER_SECRET_KEY}"
    )
    assert result.returncode == 0, result.stderr
    assert "re-encrypted the API keys of 1 sessions" in result.stdout
    assert OTHER_SECRET_KEY not in result.stdout + result.stderr
    assert files_holding(tmp_path, KEY_A) == []

    third = await server_factory(secret_key=OTHER_SECRET_KEY)
    assert await one_reply(third, created, mock) == f"Bearer {KEY_A}"
    assert files_holding(tmp_path, KEY_A) == []


def rotate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`fellowship rotate-secrets` on the test database, isolated from any developer .env."""
    env = {k: v for k, v in os.environ.items() if k.upper() != "SECRET_KEY"}
    env["LOG_DIR"] = str(tmp_path / "logs")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "rotate-secrets",
            f"--database={tmp_path / 'test.db'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        cwd=tmp_path,
        env=env,
        check=False,
    )


async def test_rotation_with_a_wrong_old_key_changes_nothing(
    server_factory: ServerFactory, mock: MockLLM, tmp_path: Path
) -> None:
    first = await server_factory()
    async with httpx.AsyncClient(base_url=first.base_url, timeout=WAIT_SECONDS) as http:
        created = await create_session(http, keyed_spec(KEY_A))
    await first.stop()
    before = (tmp_path / "test.db").read_bytes()

    wrong = await asyncio.to_thread(
        rotate, tmp_path, f"--old-key={OTHER_SECRET_KEY}", f"--new-key={generate_key()}"
    )
    assert wrong.returncode == 1
    assert "nothing changed" in wrong.stderr and created["id"] in wrong.stderr
    malformed = await asyncio.to_thread(rotate, tmp_path, "--new-key=sk-not-a-fernet-key")
    assert malformed.returncode == 2 and "sk-not-a-fernet-key" not in malformed.stderr
    assert (tmp_path / "test.db").read_bytes() == before

    second = await server_factory()
    assert await one_reply(second, created, mock) == f"Bearer {KEY_A}"


@pytest.mark.parametrize(
    ("secret_key", "reason"),
    [
        (OTHER_SECRET_KEY, "which SECRET_KEY does not hold"),
        ("", "SECRET_KEY is not set"),
    ],
    ids=["wrong key", "no key"],
)
async def test_without_the_right_key_only_the_locked_session_fails_and_nothing_is_lost(
    server_factory: ServerFactory,
    mock: MockLLM,
    caplog: pytest.LogCaptureFixture,
    secret_key: str,
    reason: str,
) -> None:
    first = await server_factory()
    async with httpx.AsyncClient(base_url=first.base_url, timeout=WAIT_SECONDS) as http:
        locked = await create_session(http, keyed_spec(KEY_A))
        free = await create_session(http, keyed_spec(None))
    await first.stop()

    caplog.set_level("INFO")
    second = await server_factory(secret_key=secret_key)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert f"session {locked['id']} cannot reach its backend" in logged
    assert reason in logged
    assert free["id"] not in logged

    async with httpx.AsyncClient(base_url=second.base_url, timeout=WAIT_SECONDS) as http:
        status = (await http.get(f"/v1/session/{locked['token']}")).json()
        assert any(w.startswith("secret_unreadable") for w in status["warnings"])
        assert (await http.post(f"/v1/session/{locked['token']}/resume")).status_code == 200
        before = len(mock.requests)
        talker = await ws_join(second, locked["token"], role="talker", name="Dana")
        await talker.say("What is a prime?")
        error = (await talker.wait_type("error"))[0]
        await talker.close()
        assert error["code"] == "secret_unreadable"
        assert reason in error["message"]
        assert len(mock.requests) == before  # nothing was sent, no other key in its place
        history = (await http.get(f"/v1/session/{locked['token']}/history")).json()["messages"]
        assert [m["status"] for m in history][-2:] == ["complete", "failed"]

    assert await one_reply(second, free, mock) is None
    await second.stop()

    # The right key brings the session back whole: nothing was dropped or rewritten.
    third = await server_factory()
    assert await one_reply(third, locked, mock) == f"Bearer {KEY_A}"


async def test_a_server_without_secret_key_refuses_to_store_an_api_key(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = await server_factory(secret_key="")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as http:
        refused = await http.post("/v1/session/create", json=keyed_spec(KEY_A))
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert "SECRET_KEY" in json.dumps(body) and "llm.api_key" in json.dumps(body)
        assert KEY_A not in refused.text
        await create_session(http, keyed_spec(None))  # a session without a key is fine
    assert files_holding(tmp_path, KEY_A) == []


async def make_schema(path: Path) -> None:
    store = SqliteStore(path)
    await store.open()
    await store.close()


async def test_an_old_database_with_plain_keys_is_encrypted_at_start_and_still_works(
    server_factory: ServerFactory, mock: MockLLM, tmp_path: Path
) -> None:
    # What an older Fellowship wrote: the spec with its key in plain text, and a session
    # deleted since, whose text lingers in the file's free space (SQLite builds without
    # secure_delete leave it there).
    token = mint_token("full")
    await make_schema(tmp_path / "test.db")
    with contextlib.closing(sqlite3.connect(tmp_path / "test.db")) as conn:
        conn.execute("PRAGMA secure_delete = OFF")
        for session_id, key in (("old", KEY_A), ("gone", KEY_B)):
            spec = SessionSpec.model_validate({**keyed_spec(key), "name": session_id})
            conn.execute(
                "INSERT INTO sessions (id, spec_json, full_token_hash, observer_token_hash,"
                " state, created_at) VALUES (?, ?, ?, ?, 'active', '2030-01-02T03:04:05.000000Z')",
                (
                    session_id,
                    json.dumps(spec.storage_dict()),
                    token_hash(f"{token}{session_id}"),
                    token_hash(mint_token("observer")),
                ),
            )
        conn.commit()
        conn.execute("DELETE FROM sessions WHERE id = 'gone'")
        conn.commit()
    assert files_holding(tmp_path, KEY_A) == ["test.db"]  # the search does find a key
    assert files_holding(tmp_path, KEY_B) == ["test.db"]

    server = await server_factory()
    assert files_holding(tmp_path, KEY_A) == []
    assert files_holding(tmp_path, KEY_B) == []
    [record] = await server.manager.deps.store.load_sessions(include_ended=True)
    assert json.loads(record.spec_json)["llm"]["api_key"]["cipher"] == "aes-256-gcm"
    assert await one_reply(server, {"token": f"{token}old"}, mock) == f"Bearer {KEY_A}"
    await server.stop()
    assert files_holding(tmp_path, KEY_A) == []
    assert files_holding(tmp_path, KEY_B) == []
