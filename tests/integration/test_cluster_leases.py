"""Lease keepers on the real PostgreSQL, with fast leases, and nodes as real processes.

What issue 17 asks of ownership at the store's level: renewal keeps a lease, a node
that stops renewing loses its sessions to the others (spread over them), a clean stop
hands them over at once, two processes racing for one expired lease never both win,
and a node frozen with SIGSTOP past its lease writes nothing more for its session after
SIGCONT (the partition test), while the node that took over goes on without a gap.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from engine.cluster.leases import LeaseKeeper
from engine.cluster.view import cluster_view
from engine.errors import Fenced
from engine.history import Message
from engine.store.base import SessionRecord
from engine.store.postgres import PostgresStore

ROOT = Path(__file__).resolve().parents[2]
FAST = 0.5  # LEASE_SECONDS of these tests
WAIT = 15.0
T0 = datetime(2030, 1, 2, tzinfo=UTC)


def record(session_id: str) -> SessionRecord:
    return SessionRecord(
        id=session_id,
        spec_json=json.dumps({"bots": []}),
        full_token_hash=f"f-{session_id}",
        observer_token_hash=f"o-{session_id}",
        created_at=T0,
    )


def message(turn: int, speaker: str) -> Message:
    return Message(turn=turn, kind="talker", speaker=speaker, content="x", ts=T0)


class Node:
    """A store and its lease keeper: what a cluster node runs for ownership."""

    def __init__(self, url: str, node_id: str, lease_seconds: float = FAST) -> None:
        self.store = PostgresStore(url, node_id=node_id, pool_size=3)
        self.lost: list[str] = []
        self.taken: list[tuple[str, int]] = []
        self.keeper = LeaseKeeper(
            self.store, lease_seconds=lease_seconds, on_lost=self._lost, on_taken=self._taken
        )

    async def _lost(self, session_id: str) -> None:
        self.lost.append(session_id)

    async def _taken(self, session_id: str, epoch: int) -> None:
        self.taken.append((session_id, epoch))

    async def start(self) -> Node:
        await self.store.open()
        await self.keeper.start()
        return self

    async def create(self, session_id: str) -> int:
        await self.store.save_session(record(session_id))
        epoch = await self.keeper.acquire(session_id)
        assert epoch is not None
        return epoch


@pytest.fixture
async def cluster(postgres_url: str) -> AsyncIterator[list[Node]]:
    """Nodes made by the test (append to it); each is stopped and closed afterwards."""
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        await node.keeper.stop()
        await node.store.close()


async def until(condition: object, what: str, wait: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + wait
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# --- keepers ----------
async def test_renewal_keeps_a_fast_lease_for_many_periods(
    cluster: list[Node], postgres_url: str
) -> None:
    owner = await Node(postgres_url, "owner").start()
    other = await Node(postgres_url, "other").start()
    cluster.extend([owner, other])
    await owner.create("s1")
    for turn in range(1, 7):
        await asyncio.sleep(FAST / 2)  # six half-leases: three whole leases in all
        assert await other.keeper.acquire("s1") is None
        await owner.store.save_message("s1", message(turn, "owner"))
    assert owner.keeper.held() == {"s1": 1} and owner.lost == [] and other.taken == []


async def test_a_node_that_stops_renewing_loses_its_sessions_to_the_others_spread(
    cluster: list[Node], postgres_url: str
) -> None:
    dead = await Node(postgres_url, "dead").start()
    for n in range(8):
        await dead.create(f"s{n}")
    # It dies: no renewal, no hand-over (its keeper is cancelled without a word).
    assert dead.keeper._task is not None
    dead.keeper._task.cancel()
    survivors = [await Node(postgres_url, f"survivor-{n}").start() for n in range(2)]
    cluster.extend([*survivors, dead])
    await until(lambda: sum(len(s.taken) for s in survivors) == 8, "the take-over")
    taken = [dict(s.taken) for s in survivors]
    assert set(taken[0]) | set(taken[1]) == {f"s{n}" for n in range(8)}
    assert not set(taken[0]) & set(taken[1])
    assert sorted(len(t) for t in taken) == [4, 4]  # spread: half each
    assert all(epoch == 2 for t in taken for epoch in t.values())
    with pytest.raises(Fenced):
        await dead.store.save_message("s0", message(1, "dead"))
    await until(lambda: dead.lost == ["s0"], "the dead node's keeper hearing of the refusal")
    view = await cluster_view(survivors[0].store, lease_seconds=FAST)
    counts = {node.node_id: node.session_count for node in view.nodes}
    assert counts == {"dead": 0, "survivor-0": 4, "survivor-1": 4}
    assert view.mode == "cluster"
    alive = {node.node_id: node.alive for node in view.nodes}
    assert alive == {"dead": False, "survivor-0": True, "survivor-1": True}


async def test_a_lost_lease_is_noticed_at_renewal_and_its_loop_told_to_stop(
    cluster: list[Node], postgres_url: str
) -> None:
    owner = await Node(postgres_url, "owner").start()
    cluster.append(owner)
    await owner.create("s1")
    conn = await asyncpg.connect(postgres_url)
    try:  # another node's take-over, straight in the table
        await conn.execute("UPDATE leases SET node_id = 'thief', epoch = epoch + 1")
    finally:
        await conn.close()
    await until(lambda: owner.lost == ["s1"], "the loss")
    assert owner.keeper.held() == {}
    with pytest.raises(Fenced):
        await owner.store.save_message("s1", message(1, "owner"))


async def test_a_clean_stop_hands_every_session_over_at_once(
    cluster: list[Node], postgres_url: str
) -> None:
    leaving = await Node(postgres_url, "leaving", lease_seconds=60.0).start()
    staying = await Node(postgres_url, "staying", lease_seconds=0.3).start()
    cluster.append(staying)
    for n in range(3):
        await leaving.create(f"s{n}")
    started = asyncio.get_running_loop().time()
    await leaving.keeper.stop()
    await leaving.store.close()
    await until(lambda: len(staying.taken) == 3, "the hand-over")
    # Far sooner than the 60 s lease: it was handed over, not left to expire.
    assert asyncio.get_running_loop().time() - started < 5
    assert dict(staying.taken) == {"s0": 2, "s1": 2, "s2": 2}


# --- nodes as processes ----------
async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.lease_node",
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def line_of(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), WAIT)
    assert line, "the node process ended"
    return line.decode().strip()


async def test_two_processes_racing_for_one_expired_lease_never_both_win(
    postgres_url: str,
) -> None:
    store = PostgresStore(postgres_url, node_id="creator")
    await store.open()
    racers = [await spawn(postgres_url, f"racer-{n}", "race") for n in range(2)]
    try:
        await store.save_session(record("s1"))
        assert await store.acquire_lease("s1", 30.0) == 1
        conn = await asyncpg.connect(postgres_url)
        epochs = []
        try:
            for _ in range(15):
                await conn.execute("UPDATE leases SET expires_at = now() - interval '1 second'")
                for racer in racers:  # both at once
                    assert racer.stdin is not None
                    racer.stdin.write(b"acquire s1\n")
                answers = [await line_of(racer) for racer in racers]
                won = [a for a in answers if a != "none"]
                assert len(won) == 1, answers
                epochs.append(int(won[0].split()[1]))
        finally:
            await conn.close()
        assert epochs == list(range(2, 17))  # one take-over each time, epochs only grow
    finally:
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.close()
            await asyncio.wait_for(racer.wait(), WAIT)
        await store.close()


async def test_a_node_frozen_past_its_lease_writes_nothing_after_it_wakes(
    postgres_url: str,
) -> None:
    survivor = Node(postgres_url, "survivor", lease_seconds=30.0)
    await survivor.store.open()
    await survivor.store.save_session(record("s1"))
    frozen = await spawn(postgres_url, "frozen", "hold", "s1", str(FAST))
    out: list[str] = []
    try:
        assert await line_of(frozen) == "holding 1"
        while len(out) < 5:
            out.append(await line_of(frozen))
        assert all(line.startswith("wrote") for line in out), out
        os.kill(frozen.pid, signal.SIGSTOP)
        await asyncio.sleep(FAST * 3)  # its lease runs out while it is frozen
        # The survivor takes it over and goes on from the store.
        assert await survivor.keeper.acquire("s1") == 2
        survivor.store.fencing = survivor.keeper
        last = max(m.turn for m in await survivor.store.load_messages("s1"))
        for turn in range(last + 1, last + 6):
            await survivor.store.save_message("s1", message(turn, "survivor"))
        os.kill(frozen.pid, signal.SIGCONT)
        while "lost" not in out or len([x for x in out if x.startswith("fenced")]) < 5:
            out.append(await line_of(frozen))
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        assert frozen.stdin is not None
        frozen.stdin.close()
        await asyncio.wait_for(frozen.wait(), WAIT)
    try:
        stored = [(m.turn, m.speaker) for m in await survivor.store.load_messages("s1")]
    finally:
        await survivor.store.close()
    # Everything the frozen node wrote is from before the take-over; nothing after.
    wrote = [int(line.split()[1]) for line in out if line.startswith("wrote")]
    assert wrote == list(range(1, last + 1))
    assert stored == [(t, "frozen" if t <= last else "survivor") for t in range(1, last + 6)]
    # After waking, every try was refused; the first ones, if it tried before it heard
    # of the loss, by the database itself.
    after = out[out.index(f"wrote {last}") + 1 :]
    assert after and all(line.startswith(("fenced", "lost")) for line in after), after
