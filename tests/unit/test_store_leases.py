"""Ownership on PostgreSQL: leases, take-overs, and fencing of the old owner's writes.

Two "nodes" are two `PostgresStore`s with different node ids on one schema. What the
cluster relies on: one live lease per session, epochs that only grow, expiry judged by
the database's clock, and a node that lost a lease writing nothing more for that
session — not even a write that was already under way when the take-over happened (the
lease row is locked FOR SHARE by the write, so the two are ordered). One process (SQLite,
memory) keeps its old behaviour: it owns every session.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from engine.errors import Fenced, StorageError
from engine.history import Message
from engine.store.base import EventRecord, SessionRecord, Store
from engine.store.in_memory import MemoryStore
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
LEASE = 30.0  # long: these tests expire leases themselves, by the database's clock
WAIT = 10.0


class Holder:
    """The smallest `Fencing` hook: the epochs a node holds, and the refusals it was told."""

    def __init__(self) -> None:
        self.epochs: dict[str, int] = {}
        self.refused: list[tuple[str, int]] = []

    def epoch_of(self, session_id: str) -> int | None:
        return self.epochs.get(session_id)

    def fenced(self, session_id: str, epoch: int) -> None:
        self.refused.append((session_id, epoch))


class Node:
    """A store of its own with a node id and a fencing hook: one node of the cluster."""

    def __init__(self, url: str, node_id: str) -> None:
        self.store = PostgresStore(url, node_id=node_id)
        self.holder = Holder()
        self.store.fencing = self.holder

    async def acquire(self, session_id: str, seconds: float = LEASE) -> int | None:
        epoch = await self.store.acquire_lease(session_id, seconds)
        if epoch is not None:
            self.holder.epochs[session_id] = epoch
        return epoch


def record(session_id: str, **changes: object) -> SessionRecord:
    values: dict[str, object] = {
        "id": session_id,
        "spec_json": json.dumps({"bots": []}),
        "full_token_hash": f"f-{session_id}",
        "observer_token_hash": f"o-{session_id}",
        "created_at": T0,
    }
    values.update(changes)
    return SessionRecord(**values)  # type: ignore[arg-type]


def message(turn: int, content: str) -> Message:
    return Message(turn=turn, kind="talker", speaker="Dana", content=content, ts=T0)


@pytest.fixture
async def nodes(postgres_url: str) -> AsyncIterator[tuple[Node, Node]]:
    a, b = Node(postgres_url, "node-a"), Node(postgres_url, "node-b")
    await a.store.open()
    await b.store.open()
    yield a, b
    await a.store.close()
    await b.store.close()


async def sql(url: str, statement: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(statement, *args)
    finally:
        await conn.close()


async def expire(url: str, session_id: str) -> None:
    """End a lease now, by the database's clock (as if its owner stopped renewing)."""
    await sql(
        url,
        "UPDATE leases SET expires_at = now() - interval '1 second' WHERE session_id = $1",
        session_id,
    )


async def created(a: Node, session_id: str = "s1") -> int:
    """A session created by node A, which then takes its lease."""
    await a.store.save_session(record(session_id))
    epoch = await a.acquire(session_id)
    assert epoch is not None
    return epoch


async def blocked_behind(url: str, blocker_pid: int, depth: int = 1) -> None:
    """Wait until a backend waits (directly, or behind one that waits) on `blocker_pid`."""
    direct = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))"
    behind = (
        "SELECT count(*) FROM pg_stat_activity w WHERE EXISTS (SELECT 1 FROM pg_stat_activity a"
        " WHERE a.pid = ANY (pg_blocking_pids(w.pid)) AND $1 = ANY (pg_blocking_pids(a.pid)))"
    )
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await sql(url, direct if depth == 1 else behind, blocker_pid):
        assert asyncio.get_running_loop().time() < deadline, "nothing waited on the lock"
        await asyncio.sleep(0.02)


# --- acquire, renew, take over, release ----------
async def test_one_live_lease_per_session_and_a_take_over_raises_the_epoch(
    nodes: tuple[Node, Node], postgres_url: str
) -> None:
    a, b = nodes
    assert await created(a) == 1
    assert await b.acquire("s1") is None  # A's lease is live
    assert await a.acquire("s1") == 2  # its own again: a new epoch fences its older writers
    await expire(postgres_url, "s1")
    assert await b.acquire("s1") == 3
    assert await a.acquire("s1") is None
    assert await sql(postgres_url, "SELECT node_id FROM leases WHERE session_id = 's1'") == "node-b"


async def test_expiry_is_judged_by_the_database_clock(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    await a.store.save_session(record("s1"))
    assert await a.acquire("s1", seconds=0.3) == 1
    assert await b.acquire("s1") is None
    await asyncio.sleep(0.5)
    assert await b.acquire("s1") == 2


async def test_renewal_keeps_a_lease_and_reports_one_that_was_taken(
    nodes: tuple[Node, Node], postgres_url: str
) -> None:
    a, b = nodes
    await created(a, "s1")
    await created(a, "s2")
    await a.store.save_session(record("s3"))  # never leased by A
    held = {"s1": 1, "s2": 1, "s3": 1}
    assert await a.store.renew_leases(held, LEASE) == {"s1", "s2"}
    # An expired lease that nobody took is still A's: its epoch never changed.
    await expire(postgres_url, "s1")
    assert await a.store.renew_leases(held, LEASE) == {"s1", "s2"}
    assert await b.acquire("s1") is None
    await expire(postgres_url, "s2")
    assert await b.acquire("s2") == 2
    assert await a.store.renew_leases(held, LEASE) == {"s1"}  # s2 is lost
    assert await a.store.renew_leases({}, LEASE) == set()


async def test_a_released_lease_is_taken_at_once_and_a_stale_release_does_nothing(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    await created(a)
    await a.store.release_leases({"s1": 1})
    assert await b.acquire("s1") == 2
    await a.store.release_leases({"s1": 1})  # not A's any more: B keeps it
    assert await a.acquire("s1") is None


async def test_a_lease_on_a_session_that_is_not_stored_is_refused(
    nodes: tuple[Node, Node],
) -> None:
    a, _ = nodes
    with pytest.raises(StorageError) as refused:
        await a.acquire("nobody")
    assert refused.value.problem == "unknown_session"


# --- fencing ----------
def old_owner_writes(store: Store, turn: int) -> list[Awaitable[None]]:
    """Every kind of write a session's owner makes."""
    return [
        store.save_session(record("s1", bot_turns=99)),
        store.save_message("s1", message(turn, "old owner")),
        store.save_events("s1", [EventRecord(seq=7, type="x", data="{}")]),
        store.save_events("s1", [], messages=[message(turn, "old owner")]),
        store.save_events(
            "s1", [EventRecord(seq=7, type="x", data="{}")], messages=[message(turn, "old owner")]
        ),
        store.save_summary("s1", turn, "old summary"),
        store.save_memory("s1", "old memory"),
        store.delete_session("s1"),
    ]


async def test_after_a_take_over_the_old_owner_writes_nothing_for_the_session(
    nodes: tuple[Node, Node], postgres_url: str
) -> None:
    a, b = nodes
    await created(a)
    await a.store.save_message("s1", message(1, "by A"))
    await expire(postgres_url, "s1")
    assert await b.acquire("s1") == 2
    await b.store.save_message("s1", message(2, "by B"))
    for write in old_owner_writes(a.store, turn=2):
        with pytest.raises(Fenced) as refused:
            await write
        assert refused.value.code == "fenced" and refused.value.problem == "fenced"
    assert set(a.holder.refused) == {("s1", 1)}
    # Nothing of A's landed: position 2 is B's alone, and the session is whole.
    assert [(m.turn, m.content) for m in await b.store.load_messages("s1")] == [
        (1, "by A"),
        (2, "by B"),
    ]
    assert await b.store.load_summary("s1") is None
    assert await b.store.load_memory("s1") is None
    assert await b.store.load_events("s1") == []
    (stored,) = await b.store.load_sessions(include_ended=True)
    assert stored.bot_turns == 0
    # The new owner writes as before.
    for write in old_owner_writes(b.store, turn=3):
        await write
    assert await b.store.load_sessions(include_ended=True) == []


async def test_a_node_without_a_lease_may_create_a_session_but_change_none(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    await created(a)
    with pytest.raises(Fenced):
        await b.store.save_session(record("s1", bot_turns=5))  # exists: not B's to change
    with pytest.raises(Fenced):
        await b.store.save_message("s1", message(1, "by B"))
    assert b.holder.refused == []  # B held nothing, so it lost nothing
    await b.store.save_session(record("s2"))  # a new one is B's to create
    assert sorted(r.id for r in await a.store.load_sessions(include_ended=True)) == ["s1", "s2"]
    (stored,) = [r for r in await a.store.load_sessions(include_ended=True) if r.id == "s1"]
    assert stored.bot_turns == 0


async def test_a_write_under_way_when_the_lease_is_taken_lands_before_the_take_over(
    nodes: tuple[Node, Node], postgres_url: str
) -> None:
    a, b = nodes
    await a.store.save_session(record("s1"))
    assert await a.acquire("s1", seconds=0.2) == 1
    await a.store.save_message("s1", message(5, "first"))
    await asyncio.sleep(0.4)  # the lease expired; nobody took it yet
    # Hold A's write in the middle of its transaction: after the fence, at the message.
    blocker = await asyncpg.connect(postgres_url)
    try:
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT 1 FROM messages WHERE turn = 5 FOR UPDATE")
        writing = asyncio.create_task(
            a.store.save_events(
                "s1", [EventRecord(seq=1, type="x", data="{}")], messages=[message(5, "A's reply")]
            )
        )
        await blocked_behind(postgres_url, blocker.get_server_pid())
        taking = asyncio.create_task(b.acquire("s1"))
        await blocked_behind(postgres_url, blocker.get_server_pid(), depth=2)
        assert not writing.done() and not taking.done()  # the take-over waits for the write
        await blocker.execute("ROLLBACK")
    finally:
        await blocker.close()
    await asyncio.wait_for(writing, WAIT)  # A's write committed whole
    assert await asyncio.wait_for(taking, WAIT) == 2
    # B took over after it: B's view of the session has it.
    assert [m.content for m in await b.store.load_messages("s1")] == ["A's reply"]
    assert [e.seq for e in await b.store.load_events("s1")] == [1]
    with pytest.raises(Fenced):
        await a.store.save_message("s1", message(6, "too late"))


@pytest.mark.parametrize("kind", ["one statement", "several statements"])
async def test_a_write_that_waited_on_a_take_over_finds_the_new_epoch_and_writes_nothing(
    nodes: tuple[Node, Node], postgres_url: str, kind: str
) -> None:
    a, _ = nodes
    await created(a)
    await a.store.save_message("s1", message(1, "first"))
    # Another node's take-over in progress: the lease row is updated, not yet committed.
    taker = await asyncpg.connect(postgres_url)
    try:
        await taker.execute("BEGIN")
        await taker.execute(
            "UPDATE leases SET node_id = 'node-b', epoch = epoch + 1 WHERE session_id = 's1'"
        )
        if kind == "one statement":
            write = a.store.save_message("s1", message(1, "old owner"))
        else:
            write = a.store.save_events("s1", [], messages=[message(1, "old owner")])
        writing = asyncio.ensure_future(write)
        await blocked_behind(postgres_url, taker.get_server_pid())
        await taker.execute("COMMIT")
    finally:
        await taker.close()
    with pytest.raises(Fenced):
        await asyncio.wait_for(writing, WAIT)
    assert [m.content for m in await a.store.load_messages("s1")] == ["first"]


async def test_no_position_is_used_twice_when_the_old_owner_keeps_writing(
    nodes: tuple[Node, Node], postgres_url: str
) -> None:
    a, b = nodes
    await created(a)
    refusals = 0

    async def old_owner() -> None:
        # A goes on with the positions it believes are next, as a frozen node would.
        nonlocal refusals
        turn = 1
        while refusals < 20:
            try:
                await a.store.save_message("s1", message(turn, "A"))
                turn += 1
            except Fenced:
                refusals += 1
            await asyncio.sleep(0.005)

    async def new_owner() -> int:
        await asyncio.sleep(0.1)
        await expire(postgres_url, "s1")
        assert await b.acquire("s1") == 2
        last = max(m.turn for m in await b.store.load_messages("s1"))
        for turn in range(last + 1, last + 11):
            await b.store.save_message("s1", message(turn, "B"))
            await asyncio.sleep(0.005)
        return last

    _, last = await asyncio.gather(old_owner(), new_owner())
    stored = [(m.turn, m.content) for m in await b.store.load_messages("s1")]
    assert stored == [(t, "A" if t <= last else "B") for t in range(1, last + 11)]
    assert last >= 1 and set(a.holder.refused) == {("s1", 1)}


# --- the scan: expired leases of a dead node, spread over the live ones ----------
async def test_two_live_nodes_share_the_sessions_of_a_dead_one(
    nodes: tuple[Node, Node], postgres_url: str
) -> None:
    a, b = nodes
    dead = Node(postgres_url, "node-dead")
    await dead.store.open()
    try:
        for n in range(10):
            await created(dead, f"s{n}")
        await dead.store.save_session(record("gone", state="ended"))
        await dead.acquire("gone")
        await a.store.heartbeat(LEASE)
        await b.store.heartbeat(LEASE)
        assert await a.store.take_expired_leases(LEASE) == {}  # nothing expired yet
        await sql(postgres_url, "UPDATE leases SET expires_at = now() - interval '1 second'")
        taken_a, taken_b = await asyncio.gather(
            a.store.take_expired_leases(LEASE), b.store.take_expired_leases(LEASE)
        )
    finally:
        await dead.store.close()
    assert not set(taken_a) & set(taken_b)
    assert set(taken_a) | set(taken_b) == {f"s{n}" for n in range(10)}  # not the ended one
    assert len(taken_a) == len(taken_b) == 5
    assert set(taken_a.values()) == set(taken_b.values()) == {2}


async def test_a_scan_takes_its_share_and_leaves_what_it_already_runs(
    nodes: tuple[Node, Node], postgres_url: str
) -> None:
    a, b = nodes
    for n in range(6):
        await created(a, f"s{n}")
    await a.store.heartbeat(LEASE)
    await b.store.heartbeat(LEASE)
    await sql(postgres_url, "UPDATE leases SET expires_at = now() - interval '1 second'")
    # B alone scans: half the expired ones (6 / 2 live nodes), the oldest first.
    assert len(await b.store.take_expired_leases(LEASE)) == 3
    # A runs the rest (excluded: they are its own) and takes none of them back.
    assert await a.store.take_expired_leases(LEASE, exclude=[f"s{n}" for n in range(6)]) == {}
    snapshot = await a.store.cluster_snapshot()
    assert sorted(node.node_id for node in snapshot.nodes) == ["node-a", "node-b"]
    assert all(node.alive for node in snapshot.nodes)
    by_node = {lease.session_id: lease.node_id for lease in snapshot.leases}
    assert sorted(by_node.values()).count("node-b") == 3
    for lease in snapshot.leases:
        assert lease.held_seconds is not None and lease.held_seconds >= 0
        assert lease.expires_in_seconds is not None


async def test_a_node_that_leaves_hands_over_every_lease_at_once(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    for n in range(3):
        await created(a, f"s{n}")
    await a.store.heartbeat(LEASE)
    await b.store.heartbeat(LEASE)
    await a.store.leave_cluster({f"s{n}": 1 for n in range(3)})
    assert await b.store.take_expired_leases(LEASE) == {f"s{n}": 2 for n in range(3)}
    assert [node.node_id for node in (await b.store.cluster_snapshot()).nodes] == ["node-b"]


# --- one process ----------
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_one_process_owns_every_session_without_leases(kind: str, tmp_path: Path) -> None:
    store: Store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "f.db")
    await store.open()
    try:
        await store.save_session(record("s1"))
        await store.save_session(record("s2", state="ended"))
        assert await store.acquire_lease("s1", LEASE) == 1
        assert await store.renew_leases({"s1": 1}, LEASE) == {"s1"}
        assert await store.take_expired_leases(LEASE) == {}
        await store.release_leases({"s1": 1})
        await store.save_message("s1", message(1, "still writes"))
        snapshot = await store.cluster_snapshot()
        assert [node.node_id for node in snapshot.nodes] == [store.node_id]
        assert [lease.session_id for lease in snapshot.leases] == ["s1"]
    finally:
        await store.close()


async def test_postgres_without_a_lease_keeper_writes_as_one_process(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, node_id="solo")
    await store.open()
    try:
        await store.save_session(record("s1"))
        await store.save_message("s1", message(1, "no lease needed"))
        snapshot = await store.cluster_snapshot()
        assert [lease.session_id for lease in snapshot.leases] == ["s1"]
        assert [node.node_id for node in snapshot.nodes] == ["solo"]
    finally:
        await store.close()
