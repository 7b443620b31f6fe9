"""Reads and forks of a session asked of a node that does not run it are answered by the
node that does, as that node would answer them itself.

Two cluster nodes in one process (each a `SessionManager` with its own node id, on the
same real PostgreSQL schema and Redis prefix): the three-node tests with real processes
cover the controls and talker messages; this covers the transcript, the history and a
fork, and an unknown transcript format refused on the node that was asked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cluster.node import RemoteHandle
from engine.errors import TurnNotFound, UnknownFormat
from engine.llm.mock import MockLLM
from engine.manager import Handle, SessionManager
from engine.store import configured_store
from tests.support.engine import Watcher, make_settings, spec
from tests.support.services import Redis


async def node(
    tmp_path: Path, mock: MockLLM, postgres_url: str, redis: Redis, prefix: str, name: str
) -> SessionManager:
    settings = make_settings(
        tmp_path / name, mock.base_url,
        database_url=postgres_url, redis_url=redis.url, redis_prefix=prefix, node_id=name,
    )  # fmt: skip
    manager = SessionManager(settings, store=configured_store(settings))
    await manager.start()
    return manager


async def test_reads_and_forks_on_another_node_are_the_owners_answers(
    tmp_path: Path, mock: MockLLM, postgres_url: str, redis_service: Redis, redis_prefix: str
) -> None:
    a = await node(tmp_path, mock, postgres_url, redis_service, redis_prefix, "a")
    b = await node(tmp_path, mock, postgres_url, redis_service, redis_prefix, "b")
    try:
        created = await a.create(spec(["Ann", "Bob"], participation="autonomous", max_turns=4))
        local = a.open(created.token)
        await Watcher(a, local, a.connect(local, "observer", None, None)).until_closed()

        # Ended: b reads it back from the store, and answers as a would.
        ended = await b.find(created.token)
        assert isinstance(ended, Handle)
        assert [m.content for m in await b.history_of(ended)] == [
            m.content for m in a.history(local)
        ]

        running = await a.create(spec(["Ann", "Bob"], participation="reactive"))
        remote = await b.find(running.token)
        assert isinstance(remote, RemoteHandle)
        mine = a.open(running.token)
        assert (await b.status_of(remote)).model_dump() == a.status(mine).model_dump()
        there = await b.transcript_of(remote, "json")
        here = a.transcript(mine, "json")
        assert (there.media_type, there.filename) == (here.media_type, here.filename)
        with pytest.raises(UnknownFormat):
            await b.transcript_of(remote, "pdf")

        with pytest.raises(TurnNotFound):  # a's refusal, come back as it is
            await b.fork(remote, 1, {"name": "forked"}, "paused")
        talker = await b.join(remote, "talker", "Dana", None)
        placed = await b.post(remote, talker, "hello from b")
        assert a.history(mine)[placed.turn - 1].content == "hello from b"
        fork = await b.fork(remote, placed.turn, {"name": "forked"}, "paused")
        assert a.open(fork.token).session.spec.name == "forked"  # made and run by a
        assert isinstance(await b.find(fork.token), RemoteHandle)
    finally:
        await b.close()
        await a.close()
