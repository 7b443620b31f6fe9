"""The storage interface the engine writes through.

Everything that must survive a restart goes through a `Store`: sessions (spec,
token hashes, state, counters), every history position, summaries and memory.

Cluster mode adds ownership: a node runs a session under a lease with an epoch, and a
store that several nodes share (PostgreSQL) makes every write of a session conditional
on the epoch the node holds (fencing). The node tells the store its epochs through a
`Fencing` hook (`engine.cluster.leases.LeaseKeeper`). A store of one process (SQLite,
memory) has one node, which always owns every session: its leases are granted at once
and never lost.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, Field

# The store's errors live with every other error; importable from here as before.
from engine.errors import Fenced as Fenced
from engine.errors import StorageError as StorageError
from engine.errors import StorageFailure as StorageFailure
from engine.errors import StorageProblem as StorageProblem
from engine.history import Message


class SessionRecord(BaseModel):
    """A session's stored row. `spec_json` holds secrets and is never returned by the API."""

    id: str = Field(description="Public session id.")
    name: str | None = Field(None, description="The spec's label.")
    # repr=False: a record logged or printed by mistake must not carry the spec's secrets.
    spec_json: str = Field(repr=False, description="The full validated spec, as JSON.")
    full_token_hash: str = Field(description="SHA-256 of the full-control token.")
    observer_token_hash: str = Field(description="SHA-256 of the observer token.")
    state: str = Field("active", description="Lifecycle state.")
    created_at: datetime = Field(description="Creation time (UTC).")
    ended_at: datetime | None = Field(None, description="When it ended, if it did.")
    end_reason: str | None = Field(None, description="Why it ended, if it did.")
    warnings: list[str] = Field(default_factory=list, description="Spec warnings at creation.")
    bot_turns: int = Field(0, description="Bot turns dispatched so far.")
    last_seq: int = Field(0, description="Last event seq published.")


class EventRecord(BaseModel):
    """One published event frame, kept so members can replay it after a restart."""

    seq: int = Field(ge=1, description="The event's sequence number in its session.")
    type: str = Field(description="Event type (the SSE event name).")
    data: str = Field(description="The serialized event, exactly as sent.")


class StoredSession(BaseModel):
    """Everything stored for one session, as loaded in bulk at start-up."""

    record: SessionRecord = Field(description="The session row.")
    messages: list[Message] = Field(default_factory=list, description="History, in order.")
    summary: tuple[int, str] | None = Field(
        None, description="Latest summary: (position it covers up to, text)."
    )
    memory: str | None = Field(None, description="Memory the session left, if any.")
    events: list[EventRecord] | None = Field(
        None,
        description="Stored events in order, when the store read them in bulk too "
        "(None: ask `load_events`).",
    )


class LeaseInfo(BaseModel):
    """Who runs a session, under which epoch, and how fresh the lease is."""

    session_id: str = Field(description="Public session id.")
    node_id: str = Field(description="The node holding the lease.")
    epoch: int = Field(ge=1, description="Fencing number: raised by every take-over.")
    held_seconds: float | None = Field(
        None, description="Seconds since this node took the lease (absent: one process)."
    )
    expires_in_seconds: float | None = Field(
        None,
        description="Seconds until the lease expires unless renewed; negative once it has "
        "expired and waits for another node (absent: one process, no expiry).",
    )


class NodeInfo(BaseModel):
    """A node of the cluster, as its heartbeat row says."""

    node_id: str = Field(description="The node's NODE_ID.")
    alive: bool = Field(description="Whether its heartbeat has not expired.")
    started_at: datetime | None = Field(None, description="When it joined (absent: unknown).")
    last_seen_seconds: float | None = Field(
        None, description="Seconds since its last heartbeat (absent: this process itself)."
    )


class ClusterSnapshot(BaseModel):
    """The nodes and the leases of live sessions, read at one moment of the store's clock."""

    nodes: list[NodeInfo] = Field(default_factory=list, description="Known nodes.")
    leases: list[LeaseInfo] = Field(
        default_factory=list, description="Leases of sessions that have not ended."
    )


class Fencing(Protocol):
    """What a store asks the node's lease keeper before writing for a session."""

    def epoch_of(self, session_id: str) -> int | None:
        """The epoch of this node's lease on the session; None when it holds none."""

    def fenced(self, session_id: str, epoch: int) -> None:
        """A write under `epoch` was refused: another node holds the session now."""


SpecRewrite = Callable[[str, str], str | None]
"""Given a session id and its stored spec JSON, the JSON to store instead (None: keep it)."""


def unknown_session(session_id: str, where: str) -> StorageError:
    """The error every store raises when writing for a session it does not hold."""
    return StorageError(
        f"storage error on {where}: session {session_id} is not stored, its data cannot be saved",
        problem="unknown_session",
    )


class Store(ABC):
    """Persistence for sessions, history, summaries and memory."""

    durable: bool = True
    """Whether what is saved outlives the process (then secrets must be encrypted)."""

    node_id: str = "local"
    """This node's name in the leases (NODE_ID)."""

    fencing: Fencing | None = None
    """Set by the node's lease keeper in cluster mode: every write of a session is then
    conditional on the epoch it holds. None: one process, writes are unconditional."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare the store (connect, migrate)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    @abstractmethod
    async def save_session(self, record: SessionRecord) -> None:
        """Insert or update a session row (an update keeps everything stored for it)."""

    @abstractmethod
    async def load_sessions(self, *, include_ended: bool) -> list[SessionRecord]:
        """Every stored session in the order first saved (the ended ones only when asked)."""

    @abstractmethod
    async def find_by_token_hash(self, digest: str) -> tuple[SessionRecord, bool] | None:
        """The session a token opens and whether it is the full-control token."""

    @abstractmethod
    async def delete_session(self, session_id: str) -> None:
        """Forget a session and everything stored for it."""

    @abstractmethod
    async def rewrite_specs(self, rewrite: SpecRewrite) -> list[str]:
        """Pass every stored spec (ended sessions' too) through `rewrite`, in one transaction.

        Returns the ids of the sessions whose spec changed. If `rewrite` raises, nothing
        changes and the exception propagates. Specs hold secrets: a store that keeps
        files leaves no replaced spec readable in them (free pages, logs).
        """

    @abstractmethod
    async def save_message(self, session_id: str, message: Message) -> None:
        """Insert or replace one history position; durable when it returns.

        Raises `StorageError` (problem `unknown_session`) if the session is not stored.
        """

    @abstractmethod
    async def load_messages(self, session_id: str) -> list[Message]:
        """Every history position of a session, in order."""

    @abstractmethod
    async def save_summary(self, session_id: str, upto_turn: int, text: str) -> None:
        """Record a summary covering positions up to `upto_turn`."""

    @abstractmethod
    async def load_summary(self, session_id: str) -> tuple[int, str] | None:
        """The latest summary and the position it covers up to."""

    @abstractmethod
    async def save_memory(self, session_id: str, text: str) -> None:
        """Store the memory a session leaves for its successors."""

    @abstractmethod
    async def load_memory(self, session_id: str) -> str | None:
        """The memory a session left, if any."""

    @abstractmethod
    async def save_events(
        self,
        session_id: str,
        events: Sequence[EventRecord],
        *,
        messages: Sequence[Message] = (),
        keep_last: int | None = None,
    ) -> None:
        """Store published events (insert or replace by seq) with the history positions
        they announce (insert or replace by turn), all in one write: all or nothing.

        With `keep_last`, only that many most recent events of the session are kept.
        Raises `StorageError` (problem `unknown_session`) if the session is not stored.
        """

    @abstractmethod
    async def load_events(self, session_id: str, *, after_seq: int = 0) -> list[EventRecord]:
        """The stored events of a session with seq greater than `after_seq`, in order."""

    async def load_all(self, *, include_ended: bool) -> list[StoredSession]:
        """Every stored session with its history, summary and memory (start-up).

        Same order as `load_sessions`. Stores with a real database override this
        to read each table once rather than once per session.
        """
        return [
            StoredSession(
                record=record,
                messages=await self.load_messages(record.id),
                summary=await self.load_summary(record.id),
                memory=await self.load_memory(record.id),
            )
            for record in await self.load_sessions(include_ended=include_ended)
        ]

    async def load_session(self, session_id: str) -> StoredSession | None:
        """One stored session with its history, summary and memory (a cluster node taking
        it over); None when it is not stored. Stores shared between nodes read it from
        one snapshot."""
        for record in await self.load_sessions(include_ended=True):
            if record.id == session_id:
                return StoredSession(
                    record=record,
                    messages=await self.load_messages(session_id),
                    summary=await self.load_summary(session_id),
                    memory=await self.load_memory(session_id),
                )
        return None

    async def load_history(self, session_id: str) -> tuple[list[Message], int]:
        """A session's history and the seq of its last stored event, as of one moment.

        Messages are stored with the events that announce them, so the pair describes
        the session exactly as a member who saw every event up to that seq knows it.
        """
        messages = await self.load_messages(session_id)
        events = await self.load_events(session_id)
        return messages, events[-1].seq if events else 0

    async def expire_ended(self, before: datetime) -> list[str]:
        """Delete the sessions that ended before `before`, with all their data.

        Returns the ids deleted. Sessions still running are never touched.
        """
        expired = [
            record.id
            for record in await self.load_sessions(include_ended=True)
            if record.state == "ended" and record.ended_at is not None and record.ended_at < before
        ]
        for session_id in expired:
            await self.delete_session(session_id)
        return expired

    # --- ownership (cluster mode) ----------
    # The defaults are one process's: a single node owns every session, so a lease is
    # granted at once, never expires, and no other node can take it. PostgresStore
    # overrides them with real leases in the `leases` table.

    async def acquire_lease(self, session_id: str, seconds: float) -> int | None:
        """Take the session's lease for `seconds`, or take it over if it expired (or is
        already this node's): the new epoch, raised by one on every take-over. None
        while another node's lease is live. Expiry is judged by the store's clock."""
        return 1

    async def renew_leases(self, held: Mapping[str, int], seconds: float) -> set[str]:
        """Extend the leases this node holds (session id -> epoch) by `seconds` from now.

        Returns the sessions renewed; a missing one is lost (taken over, or gone).
        """
        return set(held)

    async def lease_owner(self, session_id: str) -> str | None:
        """The node whose lease on the session is live now; None when nobody's is."""
        return self.node_id

    async def release_leases(self, held: Mapping[str, int]) -> None:  # noqa: B027 - one node
        """Hand leases over at once (they expire now), so another node may take them."""

    async def take_expired_leases(
        self, seconds: float, *, exclude: Sequence[str] = ()
    ) -> dict[str, int]:
        """Take over this node's share of expired leases of live sessions (session id ->
        new epoch): at most the expired ones divided by the live nodes, rounded up, or
        more while this node runs fewer than its fair share. `exclude`: sessions this
        node already runs."""
        return {}

    async def heartbeat(self, seconds: float) -> None:  # noqa: B027 - one node
        """Record that this node is alive for `seconds` more (the nodes registry)."""

    async def leave_cluster(self, held: Mapping[str, int]) -> None:  # noqa: B027 - one node
        """A clean stop: release every lease in `held` and leave the nodes registry."""

    async def cluster_snapshot(self) -> ClusterSnapshot:
        """The nodes and the leases of live sessions.

        One process: this node alone, running every session that has not ended.
        """
        return ClusterSnapshot(
            nodes=[NodeInfo(node_id=self.node_id, alive=True)],
            leases=[
                LeaseInfo(session_id=record.id, node_id=self.node_id, epoch=1)
                for record in await self.load_sessions(include_ended=False)
            ],
        )
