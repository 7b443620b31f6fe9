"""A `Store` that times every write of the store it wraps, for the metrics.

The `SessionManager` wraps whichever store it is given, so SQLite, PostgreSQL and
the in-memory store are all measured the same way, from the engine's side: a write's
time includes waiting for the database's lock or connection. Reads pass straight
through. Every method of `Store` is forwarded explicitly (a test checks it), so a
store's own faster versions of the optional ones (`load_all`) are still used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from engine.history import Message
from engine.metrics import Metrics
from engine.store.base import (
    ClusterSnapshot,
    EventRecord,
    Fencing,
    SessionRecord,
    SpecRewrite,
    Store,
    StoredSession,
)


class TimedStore(Store):
    """`inner`, with each write timed into `metrics` by operation name."""

    def __init__(self, inner: Store, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics
        self.durable = inner.durable
        self.node_id = inner.node_id

    @property
    def fencing(self) -> Fencing | None:
        """The wrapped store's fencing: the lease keeper sets it there."""
        return self.inner.fencing

    @fencing.setter
    def fencing(self, fencing: Fencing | None) -> None:
        self.inner.fencing = fencing

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    # --- writes (timed) ----------
    async def save_session(self, record: SessionRecord) -> None:
        with self._metrics.timed_write("save_session"):
            await self.inner.save_session(record)

    async def delete_session(self, session_id: str) -> None:
        with self._metrics.timed_write("delete_session"):
            await self.inner.delete_session(session_id)

    async def rewrite_specs(self, rewrite: SpecRewrite) -> list[str]:
        with self._metrics.timed_write("rewrite_specs"):
            return await self.inner.rewrite_specs(rewrite)

    async def save_message(self, session_id: str, message: Message) -> None:
        with self._metrics.timed_write("save_message"):
            await self.inner.save_message(session_id, message)

    async def save_summary(self, session_id: str, upto_turn: int, text: str) -> None:
        with self._metrics.timed_write("save_summary"):
            await self.inner.save_summary(session_id, upto_turn, text)

    async def save_memory(self, session_id: str, text: str) -> None:
        with self._metrics.timed_write("save_memory"):
            await self.inner.save_memory(session_id, text)

    async def save_events(
        self,
        session_id: str,
        events: Sequence[EventRecord],
        *,
        messages: Sequence[Message] = (),
        keep_last: int | None = None,
    ) -> None:
        with self._metrics.timed_write("save_events"):
            await self.inner.save_events(session_id, events, messages=messages, keep_last=keep_last)

    async def expire_ended(self, before: datetime) -> list[str]:
        with self._metrics.timed_write("expire_ended"):
            return await self.inner.expire_ended(before)

    # --- reads ----------
    async def load_sessions(self, *, include_ended: bool) -> list[SessionRecord]:
        return await self.inner.load_sessions(include_ended=include_ended)

    async def find_by_token_hash(self, digest: str) -> tuple[SessionRecord, bool] | None:
        return await self.inner.find_by_token_hash(digest)

    async def load_messages(self, session_id: str) -> list[Message]:
        return await self.inner.load_messages(session_id)

    async def load_summary(self, session_id: str) -> tuple[int, str] | None:
        return await self.inner.load_summary(session_id)

    async def load_memory(self, session_id: str) -> str | None:
        return await self.inner.load_memory(session_id)

    async def load_events(self, session_id: str, *, after_seq: int = 0) -> list[EventRecord]:
        return await self.inner.load_events(session_id, after_seq=after_seq)

    async def load_all(self, *, include_ended: bool) -> list[StoredSession]:
        return await self.inner.load_all(include_ended=include_ended)

    async def load_session(self, session_id: str) -> StoredSession | None:
        return await self.inner.load_session(session_id)

    async def load_history(self, session_id: str) -> tuple[list[Message], int]:
        return await self.inner.load_history(session_id)

    # --- leases (forwarded: the wrapped store holds them) ----------
    async def acquire_lease(self, session_id: str, seconds: float) -> int | None:
        return await self.inner.acquire_lease(session_id, seconds)

    async def lease_owner(self, session_id: str) -> str | None:
        return await self.inner.lease_owner(session_id)

    async def renew_leases(self, held: Mapping[str, int], seconds: float) -> set[str]:
        return await self.inner.renew_leases(held, seconds)

    async def release_leases(self, held: Mapping[str, int]) -> None:
        await self.inner.release_leases(held)

    async def take_expired_leases(
        self, seconds: float, *, exclude: Sequence[str] = ()
    ) -> dict[str, int]:
        return await self.inner.take_expired_leases(seconds, exclude=exclude)

    async def heartbeat(self, seconds: float) -> None:
        await self.inner.heartbeat(seconds)

    async def leave_cluster(self, held: Mapping[str, int]) -> None:
        await self.inner.leave_cluster(held)

    async def cluster_snapshot(self) -> ClusterSnapshot:
        return await self.inner.cluster_snapshot()
