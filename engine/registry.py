"""The sessions this process holds, found by id or by token.

A token is looked up by its hash and the last comparison is constant-time
(engine/auth.py), so an unknown token and an unknown session look the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.auth import Access, hashes_match, token_hash
from engine.errors import NotFound
from engine.loop import SessionLoop
from engine.session import Session


@dataclass(slots=True)
class Handle:
    """An opened session and the access level of the token that opened it."""

    session: Session
    loop: SessionLoop
    access: Access

    @property
    def session_id(self) -> str:
        """The session's public id."""
        return self.session.id


class SessionRegistry:
    """Every session's loop by session id, and both its token hashes."""

    def __init__(self) -> None:
        self._loops: dict[str, SessionLoop] = {}
        self._by_hash: dict[str, tuple[str, Access]] = {}

    def add(self, loop: SessionLoop) -> None:
        """Hold `loop` and make its session reachable by both its tokens."""
        record = loop.session.record
        self._loops[record.id] = loop
        self._by_hash[record.full_token_hash] = (record.id, "full")
        self._by_hash[record.observer_token_hash] = (record.id, "observer")

    def forget(self, session_id: str) -> None:
        """Drop a session (its retention passed): its tokens open nothing any more."""
        loop = self._loops.pop(session_id, None)
        if loop is None:
            return
        self._by_hash.pop(loop.session.record.full_token_hash, None)
        self._by_hash.pop(loop.session.record.observer_token_hash, None)

    def open(self, token: str) -> Handle:
        """The session a token opens. Unknown tokens and unknown sessions look the same."""
        digest = token_hash(token)
        entry = self._by_hash.get(digest)
        loop = self._loops.get(entry[0]) if entry else None
        if entry is None or loop is None:
            raise NotFound("no session for this token")
        _, access = entry
        stored = (
            loop.session.record.full_token_hash
            if access == "full"
            else loop.session.record.observer_token_hash
        )
        if not hashes_match(stored, digest):
            raise NotFound("no session for this token")
        return Handle(loop.session, loop, access)

    def get(self, session_id: str) -> SessionLoop | None:
        """The loop of a session held here, by its id."""
        return self._loops.get(session_id)

    def holds(self, session_id: str) -> bool:
        """Whether the session is held here."""
        return session_id in self._loops

    def loops(self) -> list[SessionLoop]:
        """Every session's loop, ended ones included (a copy: safe to change the registry)."""
        return list(self._loops.values())

    def live_count(self) -> int:
        """Sessions not ended."""
        return sum(1 for loop in self._loops.values() if loop.loop_state != "ended")
