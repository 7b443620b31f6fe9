"""The storage contract: MemoryStore, SqliteStore and PostgresStore behave the same, call
for call.

Every test here runs against every store (PostgreSQL in a schema of its own per
test), and against the `TimedStore` the manager wraps around any of them (here around
SQLite). What the engine relies on: upserts that keep what hangs off a row, history
in position order, a reserved slot replaced by its filled message, tombstones kept,
the spec (with its secrets) stored but never shown, and data refused for a session
that is not stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.history import Message
from engine.llm.types import Usage
from engine.metrics import PrometheusMetrics
from engine.store.base import EventRecord, SessionRecord, StorageError, Store
from engine.store.in_memory import MemoryStore
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore
from engine.store.timed import TimedStore

T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
API_KEY = "sk-very-secret-key-1234"


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(tmp_path / "f.db")
    if kind == "timed":
        return TimedStore(SqliteStore(tmp_path / "f.db"), PrometheusMetrics())
    # Asked for only here, so that the other stores run without a PostgreSQL.
    return PostgresStore(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["memory", "sqlite", "timed", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    made = make_store(request.param, request, tmp_path)
    await made.open()
    yield made
    await made.close()


def record(session_id: str = "s1", **changes: Any) -> SessionRecord:
    values: dict[str, Any] = {
        "id": session_id,
        "name": f"name of {session_id}",
        "spec_json": json.dumps({"bots": [], "llm": {"api_key": API_KEY}}),
        "full_token_hash": f"full-{session_id}",
        "observer_token_hash": f"observer-{session_id}",
        "created_at": T0,
        "warnings": ["unknown key: x"],
    }
    values.update(changes)
    return SessionRecord(**values)


def message(turn: int, **changes: Any) -> Message:
    values: dict[str, Any] = {
        "turn": turn,
        "kind": "bot",
        "speaker": "Alice",
        "content": f"message {turn}",
        "ts": T0 + timedelta(seconds=turn),
        "tokens": turn,
    }
    values.update(changes)
    return Message(**values)


async def with_session(store: Store, session_id: str = "s1", **changes: Any) -> SessionRecord:
    saved = record(session_id, **changes)
    await store.save_session(saved)
    return saved


# --- sessions ----------
async def test_a_saved_session_loads_back_field_for_field(store: Store) -> None:
    saved = record(
        state="ended",
        ended_at=T0 + timedelta(hours=1),
        end_reason="max_turns",
        bot_turns=7,
        last_seq=42,
        warnings=["a", "b"],
    )
    await store.save_session(saved)
    assert await store.load_sessions(include_ended=True) == [saved]


async def test_a_session_without_optional_fields_loads_back(store: Store) -> None:
    saved = record(name=None, warnings=[])
    await store.save_session(saved)
    assert await store.load_sessions(include_ended=False) == [saved]


async def test_saving_a_session_again_updates_it_in_place_and_keeps_its_data(
    store: Store,
) -> None:
    await with_session(store, "s1")
    await with_session(store, "s2")
    await store.save_message("s1", message(1))
    await store.save_summary("s1", 1, "so far")
    await store.save_memory("s1", "remember")
    await store.save_events("s1", [EventRecord(seq=1, type="bot_message", data="{}")])

    updated = record("s1", state="paused", bot_turns=3, last_seq=9)
    await store.save_session(updated)

    assert await store.load_sessions(include_ended=True) == [updated, record("s2")]
    assert await store.load_messages("s1") == [message(1)]
    assert await store.load_summary("s1") == (1, "so far")
    assert await store.load_memory("s1") == "remember"
    assert len(await store.load_events("s1")) == 1


async def test_sessions_list_in_the_order_first_saved(store: Store) -> None:
    for session_id in ["c", "a", "b"]:
        await with_session(store, session_id)
    await with_session(store, "a", bot_turns=1)
    assert [r.id for r in await store.load_sessions(include_ended=True)] == ["c", "a", "b"]


async def test_ended_sessions_are_listed_only_when_asked(store: Store) -> None:
    await with_session(store, "live")
    await with_session(store, "paused", state="paused")
    await with_session(store, "done", state="ended", ended_at=T0, end_reason="client_request")
    live = await store.load_sessions(include_ended=False)
    every = await store.load_sessions(include_ended=True)
    assert [r.id for r in live] == ["live", "paused"]
    assert [r.id for r in every] == ["live", "paused", "done"]


async def test_a_loaded_record_is_a_copy_not_the_stored_row(store: Store) -> None:
    await with_session(store)
    loaded = (await store.load_sessions(include_ended=True))[0]
    loaded.warnings.append("changed by a caller")
    assert (await store.load_sessions(include_ended=True))[0].warnings == ["unknown key: x"]


# --- tokens ----------
async def test_the_full_token_hash_finds_the_session_with_full_access(store: Store) -> None:
    saved = await with_session(store)
    assert await store.find_by_token_hash("full-s1") == (saved, True)


async def test_the_observer_token_hash_finds_the_session_read_only(store: Store) -> None:
    saved = await with_session(store)
    assert await store.find_by_token_hash("observer-s1") == (saved, False)


async def test_an_unknown_token_hash_finds_nothing(store: Store) -> None:
    await with_session(store)
    assert await store.find_by_token_hash("full-s2") is None


async def test_an_ended_session_is_still_found_by_its_token(store: Store) -> None:
    saved = await with_session(store, state="ended", ended_at=T0, end_reason="max_turns")
    assert await store.find_by_token_hash("full-s1") == (saved, True)


# --- history ----------
async def test_messages_load_back_in_position_order_whatever_the_save_order(
    store: Store,
) -> None:
    await with_session(store)
    for turn in [3, 1, 2]:
        await store.save_message("s1", message(turn))
    assert await store.load_messages("s1") == [message(1), message(2), message(3)]


async def test_every_message_field_survives_storage(store: Store) -> None:
    await with_session(store)
    bot = message(
        1, usage=Usage(prompt_tokens=120, completion_tokens=30, total_tokens=150), tokens=30
    )
    talker = message(
        2,
        kind="talker",
        speaker="Zoë 👋",
        talker_id="t-1",
        content='it\'s "quoted"; DROP TABLE sessions; --\nsecond line',
    )
    await store.save_message("s1", bot)
    await store.save_message("s1", talker)
    assert await store.load_messages("s1") == [bot, talker]


async def test_a_reserved_slot_is_replaced_by_its_reply_at_the_same_position(
    store: Store,
) -> None:
    await with_session(store)
    await store.save_message("s1", message(1))
    await store.save_message("s1", message(2, status="reserved", content=""))
    reply = message(2, content="the reply", usage=Usage(completion_tokens=5))
    await store.save_message("s1", reply)
    assert await store.load_messages("s1") == [message(1), reply]


async def test_a_tombstone_keeps_its_position_and_stays_stored(store: Store) -> None:
    await with_session(store)
    await store.save_message("s1", message(1, status="reserved", content=""))
    tombstone = message(1, status="failed", content="", tokens=0)
    await store.save_message("s1", tombstone)
    await store.save_message("s1", message(2))
    stored = await store.load_messages("s1")
    assert stored == [tombstone, message(2)]
    assert [m.visible_to_bots for m in stored] == [False, True]


async def test_histories_of_two_sessions_never_mix(store: Store) -> None:
    await with_session(store, "a")
    await with_session(store, "b")
    await store.save_message("a", message(1, content="for a"))
    await store.save_message("b", message(1, content="for b"))
    assert [m.content for m in await store.load_messages("a")] == ["for a"]
    assert [m.content for m in await store.load_messages("b")] == ["for b"]


async def test_a_session_without_history_loads_an_empty_one(store: Store) -> None:
    await with_session(store)
    assert await store.load_messages("s1") == []
    assert await store.load_messages("never-saved") == []


# --- summaries and memory ----------
async def test_the_latest_summary_replaces_the_previous_one(store: Store) -> None:
    await with_session(store)
    assert await store.load_summary("s1") is None
    await store.save_summary("s1", 10, "first ten")
    await store.save_summary("s1", 20, "first twenty")
    assert await store.load_summary("s1") == (20, "first twenty")


async def test_memory_is_stored_per_session_and_replaced_on_save(store: Store) -> None:
    await with_session(store, "a")
    await with_session(store, "b")
    assert await store.load_memory("a") is None
    await store.save_memory("a", "old")
    await store.save_memory("a", "new — with ünïcode")
    assert await store.load_memory("a") == "new — with ünïcode"
    assert await store.load_memory("b") is None


# --- events ----------
async def test_events_load_in_seq_order_after_the_given_seq(store: Store) -> None:
    await with_session(store)
    batch = [EventRecord(seq=s, type="bot_message", data=f'{{"seq": {s}}}') for s in (3, 1, 2)]
    await store.save_events("s1", batch)
    assert [e.seq for e in await store.load_events("s1")] == [1, 2, 3]
    assert await store.load_events("s1", after_seq=2) == [batch[0]]


async def test_keep_last_prunes_all_but_the_newest_events(store: Store) -> None:
    await with_session(store)
    await store.save_events("s1", [EventRecord(seq=s, type="t", data="{}") for s in range(1, 8)])
    await store.save_events("s1", [EventRecord(seq=8, type="t", data="{}")], keep_last=3)
    assert [e.seq for e in await store.load_events("s1")] == [6, 7, 8]


async def test_keep_last_counts_stored_events_not_seq_numbers(store: Store) -> None:
    await with_session(store)
    await store.save_events("s1", [EventRecord(seq=s, type="t", data="{}") for s in (1, 2)])
    await store.save_events("s1", [EventRecord(seq=3, type="t", data="{}")], keep_last=3)
    assert [e.seq for e in await store.load_events("s1")] == [1, 2, 3]
    # Holes in the numbering (older files): still exactly the newest three.
    await store.save_events("s1", [EventRecord(seq=s, type="t", data="{}") for s in (7, 9)])
    await store.save_events("s1", [EventRecord(seq=10, type="t", data="{}")], keep_last=3)
    assert [e.seq for e in await store.load_events("s1")] == [7, 9, 10]


async def test_events_and_the_messages_they_announce_are_stored_together(store: Store) -> None:
    await with_session(store)
    await store.save_message("s1", message(1).model_copy(update={"status": "reserved"}))
    events = [EventRecord(seq=s, type="bot_message", data="{}") for s in (4, 5)]
    await store.save_events("s1", events, messages=[message(1), message(2)])
    assert await store.load_messages("s1") == [message(1), message(2)]
    assert [e.seq for e in await store.load_events("s1")] == [4, 5]


async def test_a_slot_reserved_and_filled_in_one_batch_is_stored_filled(store: Store) -> None:
    await with_session(store)
    reserved = message(1, status="reserved", content="")
    events = [EventRecord(seq=1, type="t", data="first"), EventRecord(seq=1, type="t", data="last")]
    await store.save_events("s1", events, messages=[reserved, message(1)])
    assert await store.load_messages("s1") == [message(1)]
    assert [e.data for e in await store.load_events("s1")] == ["last"]


async def test_events_with_messages_for_an_unknown_session_store_nothing(store: Store) -> None:
    with pytest.raises(StorageError) as refused:
        await store.save_events(
            "ghost", [EventRecord(seq=1, type="t", data="{}")], messages=[message(1)]
        )
    assert refused.value.problem == "unknown_session"
    assert await store.load_events("ghost") == [] and await store.load_messages("ghost") == []


# --- deletion and retention ----------
async def test_deleting_a_session_forgets_everything_stored_for_it(store: Store) -> None:
    await with_session(store, "gone")
    await with_session(store, "kept")
    for session_id in ("gone", "kept"):
        await store.save_message(session_id, message(1))
        await store.save_summary(session_id, 1, "summary")
        await store.save_memory(session_id, "memory")
        await store.save_events(session_id, [EventRecord(seq=1, type="t", data="{}")])

    await store.delete_session("gone")

    assert [r.id for r in await store.load_sessions(include_ended=True)] == ["kept"]
    assert await store.find_by_token_hash("full-gone") is None
    assert await store.load_messages("gone") == []
    assert await store.load_summary("gone") is None
    assert await store.load_memory("gone") is None
    assert await store.load_events("gone") == []
    assert await store.load_messages("kept") == [message(1)]
    assert await store.load_memory("kept") == "memory"


async def test_deleting_an_unknown_session_is_a_no_op(store: Store) -> None:
    await with_session(store)
    await store.delete_session("never-saved")
    assert len(await store.load_sessions(include_ended=True)) == 1


async def test_expire_ended_removes_only_sessions_that_ended_before_the_cutoff(
    store: Store,
) -> None:
    cutoff = T0 + timedelta(days=7)
    await with_session(store, "old", state="ended", ended_at=T0, end_reason="max_turns")
    await with_session(store, "recent", state="ended", ended_at=cutoff + timedelta(seconds=1))
    await with_session(store, "running")
    await with_session(store, "paused", state="paused")
    await store.save_message("old", message(1))

    assert await store.expire_ended(cutoff) == ["old"]
    assert [r.id for r in await store.load_sessions(include_ended=True)] == [
        "recent",
        "running",
        "paused",
    ]
    assert await store.load_messages("old") == []
    assert await store.expire_ended(cutoff) == []


# --- bulk load at start-up ----------
async def test_load_all_returns_each_session_with_its_history_summary_and_memory(
    store: Store,
) -> None:
    await with_session(store, "a")
    await with_session(store, "b")
    await with_session(store, "done", state="ended", ended_at=T0, end_reason="max_time")
    for turn in (2, 1):
        await store.save_message("a", message(turn))
    await store.save_message("done", message(1))
    await store.save_summary("a", 1, "a so far")
    await store.save_memory("b", "b remembers")

    live = await store.load_all(include_ended=False)
    assert [s.record.id for s in live] == ["a", "b"]
    a, b = live
    assert (a.messages, a.summary, a.memory) == ([message(1), message(2)], (1, "a so far"), None)
    assert (b.messages, b.summary, b.memory) == ([], None, "b remembers")

    every = await store.load_all(include_ended=True)
    assert [s.record.id for s in every] == ["a", "b", "done"]
    assert every[2].messages == [message(1)]


async def test_events_loaded_in_bulk_are_those_load_events_gives(store: Store) -> None:
    await with_session(store, "a")
    await with_session(store, "done", state="ended", ended_at=T0, end_reason="max_time")
    for session_id in ("a", "done"):
        await store.save_events(
            session_id,
            [EventRecord(seq=seq, type="t", data=f"{session_id}{seq}") for seq in (2, 1)],
        )
    for include_ended in (False, True):
        for stored in await store.load_all(include_ended=include_ended):
            if stored.events is not None:  # a store may leave them to load_events
                assert stored.events == await store.load_events(stored.record.id)


# --- secrets ----------
async def test_the_spec_is_stored_whole_but_never_shown_in_a_record_listing(
    store: Store,
) -> None:
    saved = await with_session(store)
    listed = await store.load_sessions(include_ended=True)
    found = await store.find_by_token_hash("full-s1")
    bulk = await store.load_all(include_ended=True)
    assert listed[0].spec_json == saved.spec_json  # stored: a restart needs it
    for shown in (listed, found, bulk):
        assert API_KEY not in repr(shown)
        assert API_KEY not in str(shown)


async def test_rewriting_specs_replaces_only_what_the_rewrite_returns(store: Store) -> None:
    await with_session(store, "s1")
    await with_session(store, "s2", state="ended", ended_at=T0)
    await store.save_message("s2", message(1))
    seen: list[str] = []

    def rewrite(session_id: str, spec_json: str) -> str | None:
        seen.append(session_id)
        assert API_KEY in spec_json
        return '{"sealed": true}' if session_id == "s2" else None

    assert await store.rewrite_specs(rewrite) == ["s2"]
    assert seen == ["s1", "s2"]  # ended sessions too
    listed = {r.id: r for r in await store.load_sessions(include_ended=True)}
    assert listed["s1"] == record("s1")
    assert listed["s2"] == record("s2", state="ended", ended_at=T0, spec_json='{"sealed": true}')
    assert await store.load_messages("s2") == [message(1)]


async def test_a_rewrite_that_fails_midway_changes_no_spec(store: Store) -> None:
    await with_session(store, "s1")
    await with_session(store, "s2")

    def rewrite(session_id: str, spec_json: str) -> str | None:
        if session_id == "s2":
            raise ValueError("cannot rewrite s2")
        return "{}"

    with pytest.raises(ValueError, match="s2"):
        await store.rewrite_specs(rewrite)
    assert await store.load_sessions(include_ended=True) == [record("s1"), record("s2")]


# --- refusals ----------
@pytest.mark.parametrize("write", ["message", "summary", "memory", "events"])
async def test_data_for_a_session_that_is_not_stored_is_refused(store: Store, write: str) -> None:
    await with_session(store)
    attempts = {
        "message": lambda: store.save_message("ghost", message(1)),
        "summary": lambda: store.save_summary("ghost", 1, "text"),
        "memory": lambda: store.save_memory("ghost", "text"),
        "events": lambda: store.save_events("ghost", []),
    }
    with pytest.raises(StorageError) as caught:
        await attempts[write]()
    assert caught.value.problem == "unknown_session"
    assert caught.value.code == "storage_error"
    assert "ghost" in caught.value.message
    assert await store.load_messages("ghost") == []
