"""A cluster node that cannot reach PostgreSQL lets its sessions go instead of ending them.

On one server a write that fails ends the session (nothing could run it). In a cluster
another node can, from what the store holds, once the store answers again: the node
whose write failed stops the loop, tells its members to reconnect, releases the lease,
and keeps no copy that could contradict the store. The failure is injected into the
real PostgreSQL store of a real cluster node (Redis and PostgreSQL are real).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cluster.node import RemoteHandle
from engine.errors import StorageError
from engine.hub import CLOSE_RECONNECT
from engine.llm.mock import MockLLM
from engine.manager import SessionManager
from engine.store import configured_store
from engine.store.base import Store
from tests.support.engine import Watcher, make_settings, spec
from tests.support.services import Redis

LEASE_SECONDS = 1.0


async def test_a_session_whose_writes_cannot_reach_the_store_is_let_go_not_ended(
    tmp_path: Path,
    mock: MockLLM,
    postgres_url: str,
    redis_service: Redis,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(
        tmp_path, mock.base_url,
        database_url=postgres_url, redis_url=redis_service.url, redis_prefix=redis_prefix,
        node_id="a", lease_seconds=LEASE_SECONDS,
    )  # fmt: skip
    assert settings.cluster_mode
    manager = SessionManager(settings, store=configured_store(settings))
    await manager.start()
    try:
        created = await manager.create(spec(["Ann", "Bob"], participation="autonomous"))
        handle = manager.open(created.token)
        watcher = Watcher(manager, handle, manager.connect(handle, "observer", None, None))
        await watcher.wait_for(lambda w: len(w.of_type("bot_message")) >= 2)

        # From now on every write of this node fails as a lost connection does.
        lost = StorageError("the connection to the database was lost", problem="io")

        async def unreachable(*args: object, **kwargs: object) -> None:
            raise lost

        store: Store = manager.deps.store.inner  # type: ignore[attr-defined]
        monkeypatch.setattr(store, "save_events", unreachable)
        monkeypatch.setattr(store, "save_session", unreachable)

        await watcher.wait_for(lambda w: w.closed)
        assert watcher.member.subscription.close_reason == CLOSE_RECONNECT
        assert watcher.of_type("session_end") == []
        assert manager.live_sessions() == 0
        monkeypatch.undo()

        # The store still says the session runs: no copy here says otherwise, and its
        # lease is free for the node that takes it over.
        stored = await store.load_session(created.id)
        assert stored is not None and stored.record.state == "active"
        assert isinstance(await manager.find(created.token), RemoteHandle)
        snapshot = await store.cluster_snapshot()
        lease = next(lease for lease in snapshot.leases if lease.session_id == created.id)
        assert lease.expires_in_seconds is not None and lease.expires_in_seconds <= 0
    finally:
        await manager.close()
