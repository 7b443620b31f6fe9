"""The storage interface the engine writes through.

Everything that must survive a restart goes through a `Store`: sessions (spec,
token hashes, state, counters), every history position, summaries and memory.
A later version can put PostgreSQL behind the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import datetime

from pydantic import BaseModel, Field

# The store's errors live with every other error; importable from here as before.
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
