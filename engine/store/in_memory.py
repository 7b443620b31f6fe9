"""An in-process store: fast, forgets everything on exit (tests, `fellowship run`)."""

from __future__ import annotations

from collections.abc import Sequence

from engine.history import Message
from engine.store.base import EventRecord, SessionRecord, SpecRewrite, Store, unknown_session

WHERE = "memory"


class MemoryStore(Store):
    """Keeps everything in dictionaries.

    Behaves exactly like `SqliteStore` (the contract tests run against both):
    it hands out copies, and refuses data for a session it does not hold.
    """

    durable = False

    def __init__(self) -> None:
        self._sessions: dict[str, SessionRecord] = {}
        self._messages: dict[str, dict[int, Message]] = {}
        self._summaries: dict[str, tuple[int, str]] = {}
        self._memory: dict[str, str] = {}
        self._events: dict[str, dict[int, EventRecord]] = {}

    def _require(self, session_id: str) -> None:
        if session_id not in self._sessions:
            raise unknown_session(session_id, WHERE)

    async def save_session(self, record: SessionRecord) -> None:
        self._sessions[record.id] = record.model_copy(deep=True)

    async def load_sessions(self, *, include_ended: bool) -> list[SessionRecord]:
        return [
            r.model_copy(deep=True)
            for r in self._sessions.values()
            if include_ended or r.state != "ended"
        ]

    async def rewrite_specs(self, rewrite: SpecRewrite) -> list[str]:
        # Every new text first, then the swap: a `rewrite` that raises changes nothing.
        changed: dict[str, str] = {}
        for session_id, record in self._sessions.items():
            text = rewrite(session_id, record.spec_json)
            if text is not None and text != record.spec_json:
                changed[session_id] = text
        for session_id, text in changed.items():
            self._sessions[session_id] = self._sessions[session_id].model_copy(
                update={"spec_json": text}
            )
        return list(changed)

    async def find_by_token_hash(self, digest: str) -> tuple[SessionRecord, bool] | None:
        for record in self._sessions.values():
            if record.full_token_hash == digest:
                return record.model_copy(deep=True), True
            if record.observer_token_hash == digest:
                return record.model_copy(deep=True), False
        return None

    async def delete_session(self, session_id: str) -> None:
        for table in (
            self._sessions,
            self._messages,
            self._summaries,
            self._memory,
            self._events,
        ):
            table.pop(session_id, None)

    async def save_message(self, session_id: str, message: Message) -> None:
        self._require(session_id)
        self._messages.setdefault(session_id, {})[message.turn] = message.model_copy(deep=True)

    async def load_messages(self, session_id: str) -> list[Message]:
        stored = self._messages.get(session_id, {})
        return [stored[turn].model_copy(deep=True) for turn in sorted(stored)]

    async def save_summary(self, session_id: str, upto_turn: int, text: str) -> None:
        self._require(session_id)
        self._summaries[session_id] = (upto_turn, text)

    async def load_summary(self, session_id: str) -> tuple[int, str] | None:
        return self._summaries.get(session_id)

    async def save_memory(self, session_id: str, text: str) -> None:
        self._require(session_id)
        self._memory[session_id] = text

    async def load_memory(self, session_id: str) -> str | None:
        return self._memory.get(session_id)

    async def save_events(
        self,
        session_id: str,
        events: Sequence[EventRecord],
        *,
        messages: Sequence[Message] = (),
        keep_last: int | None = None,
    ) -> None:
        self._require(session_id)
        for message in messages:
            await self.save_message(session_id, message)
        stored = self._events.setdefault(session_id, {})
        for event in events:
            stored[event.seq] = event.model_copy()
        if keep_last is not None:
            ordered = sorted(stored)
            for seq in ordered[: max(len(ordered) - keep_last, 0)]:
                del stored[seq]

    async def load_events(self, session_id: str, *, after_seq: int = 0) -> list[EventRecord]:
        stored = self._events.get(session_id, {})
        return [stored[seq].model_copy() for seq in sorted(stored) if seq > after_seq]
