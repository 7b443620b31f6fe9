"""The engine's public face: the one object the server, the CLI and tests use.

`SessionManager` creates sessions from validated specs, opens them by token,
and carries out every client action (status, history, pause, resume, end,
connect, talk). It also runs housekeeping: time limits, idle timeouts and the
retention of ended sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from pydantic import BaseModel, Field

from engine.auth import Access, hashes_match, mint_token, token_hash
from engine.clock import Clock, SystemClock
from engine.config import Settings
from engine.errors import BadRequest, FellowshipError, Forbidden, NotFound, TooMany
from engine.events import BaseEvent, ErrorEvent, MemberRole, SessionPaused
from engine.history import History, Message
from engine.hub import CLOSE_SHUTDOWN, Frame
from engine.input_text import has_control_chars
from engine.llm.client import Backend, LLMClient
from engine.loop import SessionLoop
from engine.memory import write_memory
from engine.orchestrator import Orchestrator
from engine.session import EngineDeps, Member, Session
from engine.spec.loader import InvalidSpec, SpecIssue
from engine.spec.models import MEMORY_INHERIT_PREFIX, REDACTED, SECRET_FIELDS, SessionSpec
from engine.status import LimitReport, MemberCounts, SessionStatus, TokenReport
from engine.store.base import SessionRecord, Store, StoredSession
from engine.store.in_memory import MemoryStore
from engine.store.secrets import (
    SecretBox,
    SecretKeyMissing,
    SecretUnreadable,
    open_secrets,
    seal_secrets,
    seal_stored,
)
from engine.summarizer import restore_summary, summarize
from engine.tokens import get_counter

log = logging.getLogger("fellowship.manager")

SESSION_ID_BYTES = 9
HOUSEKEEPING_INTERVAL = 1.0
"""Seconds between checks of time limits and idle sessions: how late a limit may end one."""


class CreatedSession(BaseModel):
    """What creating a session returns (the only time the tokens are shown)."""

    id: str = Field(description="Public session id (not secret; used in logs and events).")
    token: str = Field(description="Full-control token. Keep it secret.")
    observer_token: str = Field(description="Read-only token: observe, stream, status, history.")
    spec: dict[str, object] = Field(description="The normalized spec, secrets removed.")
    warnings: list[str] = Field(description="Unknown keys and options not implemented yet.")


def _refuse(path: str, message: str) -> InvalidSpec:
    """A spec that validated on its own but cannot run here (e.g. a backend not allowed)."""
    return InvalidSpec([SpecIssue(path=path, message=message)])


@dataclass(slots=True)
class Handle:
    """An opened session and the access level of the token that opened it."""

    session: Session
    loop: SessionLoop
    access: Access


class SessionManager:
    """Creates, finds and drives sessions."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        llm: LLMClient | None = None,
        clock: Clock | None = None,
        secret_box: SecretBox | None = None,
        housekeeping_interval: float = HOUSEKEEPING_INTERVAL,
    ) -> None:
        self.settings = settings
        self._housekeeping_interval = housekeeping_interval
        self.deps = EngineDeps(
            settings=settings,
            llm=llm or LLMClient(settings),
            store=store or MemoryStore(),
            clock=clock or SystemClock(),
            counter=get_counter(settings.tokenizer),
        )
        self.secret_box = secret_box or _secret_box(settings, self.deps.store)
        self._loops: dict[str, SessionLoop] = {}
        self._by_hash: dict[str, tuple[str, Access]] = {}
        self._housekeeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- lifecycle of the manager ----------
    async def start(self) -> None:
        """Open the store, bring back stored sessions, start housekeeping."""
        await self.deps.store.open()
        await seal_stored(self.deps.store, self.secret_box, SECRET_FIELDS)
        # Restoring creates a great many objects that live on (every message, every
        # buffered event): the cyclic collector would walk them again and again while
        # they are made. It is paused until they are all in place.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for stored in await self.deps.store.load_all(include_ended=True):
                try:
                    await self._restore(stored)
                except Exception:
                    log.exception("could not restore session %s", stored.record.id)
        finally:
            if collecting:
                gc.enable()
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="housekeeping")

    async def _restore(self, stored: StoredSession) -> None:
        """Bring a stored session back: ended ones readable, live ones paused.

        A reply that was being generated when the process stopped becomes a
        tombstone. Every event anyone was shown is in the store, so numbering goes
        on from the last stored event and replay covers what the store kept.
        """
        record = stored.record
        ended = record.state == "ended"
        if not ended:
            # The stored counter lags a turn that was in flight; history does not.
            bot_turns = sum(1 for m in stored.messages if m.kind == "bot")
            record = record.model_copy(update={"bot_turns": bot_turns})
        spec, unreadable = self._stored_spec(record)
        session = Session(
            record=record,
            spec=spec,
            deps=self.deps,
            backend=self._stored_backend(spec, unreadable),
            history=History(stored.messages),
            memory=stored.memory if spec.options.memory_mode == "inherit" else None,
        )
        if stored.summary is not None:
            restore_summary(session, *stored.summary)
        events = await self.deps.store.load_events(session.id)
        session.hub.restore([Frame(e.seq, e.type, e.data) for e in events], record.last_seq)
        loop = self._adopt(session, restored="ended" if ended else "paused")
        if ended:
            session.hub.close()
            loop.ended.set()
            return
        talker_turns = [m.turn for m in stored.messages if m.kind == "talker"]
        last_bot = max((m.turn for m in stored.messages if m.kind == "bot"), default=0)
        loop.started = spec.options.participation == "autonomous" or bool(talker_turns)
        loop.unanswered = sum(1 for turn in talker_turns if turn > last_bot)
        for message in session.history.pending_reserved():
            await session.commit(partial(_restart_tombstone, session, message))
        session.emit(SessionPaused(reason="server_restart"))
        await session.save(state="paused")
        loop.start()
        session.log.info("session restored (paused) with %d messages", len(session.history))

    def _stored_backend(self, spec: SessionSpec, unreadable: SecretUnreadable | None) -> Backend:
        # A backend allowed at creation may be disallowed now: fall back to the default.
        try:
            backend = self._backend_for(spec)
        except FellowshipError:
            backend = self.deps.llm.default_backend
        if unreadable is None:
            return backend
        # Its own key is lost to us, and no other key may go in its place.
        return Backend(base_url=backend.base_url, unreadable_key=unreadable.message)

    async def close(self) -> None:
        """Stop every loop at once, close members' streams, release the store and backends."""
        if self._closed:
            return
        self._closed = True
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeper
        loops = [loop for loop in self._loops.values() if loop.machine.state != "ended"]
        await asyncio.gather(*(loop.stop() for loop in loops), return_exceptions=True)
        await asyncio.gather(*(loop.wait_stopped() for loop in self._loops.values()))
        # Events still being written are stored (and delivered) before the store closes.
        await asyncio.gather(*(loop.session.hub.flushed() for loop in self._loops.values()))
        for loop in loops:
            with contextlib.suppress(Exception):
                await loop.session.save()
            loop.session.hub.close(CLOSE_SHUTDOWN)
        if self._background:
            await asyncio.wait(self._background, timeout=self.settings.shutdown_grace_seconds)
        await self.deps.llm.aclose()
        await self.deps.store.close()

    # --- create and open ----------
    async def create(self, spec: SessionSpec, warnings: list[str] | None = None) -> CreatedSession:
        """Create a session from a validated spec and start it."""
        if self.live_sessions() >= self.settings.max_sessions:
            raise TooMany(
                "too many sessions are running; try again later", code="too_many_sessions"
            )
        backend = self._backend_for(spec)
        memory = await self._inherited_memory(spec)
        token, observer_token = mint_token("full"), mint_token("observer")
        session_id = secrets.token_hex(SESSION_ID_BYTES)
        record = SessionRecord(
            id=session_id,
            name=spec.name,
            spec_json=self._storage_json(spec, session_id),
            full_token_hash=token_hash(token),
            observer_token_hash=token_hash(observer_token),
            created_at=self.deps.clock.now(),
            warnings=list(warnings or []),
        )
        session = Session(record=record, spec=spec, deps=self.deps, backend=backend, memory=memory)
        await session.save()
        if memory is not None:
            # The chain's memory so far; it replaces the earlier session's token in storage.
            await self.deps.store.save_memory(session.id, memory)
        loop = self._adopt(session)
        loop.start()
        session.log.info(
            "session created: %d bots, %s, %s",
            len(spec.bots),
            spec.options.participation,
            spec.options.turn_order,
        )
        return CreatedSession(
            id=record.id,
            token=token,
            observer_token=observer_token,
            spec=spec.public_dict(),
            warnings=record.warnings,
        )

    def _adopt(self, session: Session, restored: str | None = None) -> SessionLoop:
        options = session.options
        loop = SessionLoop(
            session,
            selector=Orchestrator() if options.turn_order == "orchestrated" else None,
            summarizer=summarize if options.summarize_context else None,
            on_end=self._session_ended,
            restored=restored,
        )
        self._loops[session.id] = loop
        self._by_hash[session.record.full_token_hash] = (session.id, "full")
        self._by_hash[session.record.observer_token_hash] = (session.id, "observer")
        return loop

    def _backend_for(self, spec: SessionSpec) -> Backend:
        llm = spec.llm
        try:
            return self.deps.llm.resolve_backend(
                llm.base_url if llm else None, llm.api_key if llm else None
            )
        except FellowshipError as exc:
            raise _refuse("llm.base_url", exc.message) from None

    async def _inherited_memory(self, spec: SessionSpec) -> str | None:
        token = spec.options.memory_token
        if spec.options.memory_mode != "inherit" or token is None:
            return None
        found = await self.deps.store.find_by_token_hash(token_hash(token))
        if found is None:
            raise _refuse("options.memory", "no session has that token")
        record, full = found
        if not full:
            raise _refuse(
                "options.memory", "inheriting memory needs the earlier session's full token"
            )
        return await self.deps.store.load_memory(record.id)

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

    @staticmethod
    def require_full(handle: Handle) -> None:
        """Refuse control actions to the read-only observer token."""
        if handle.access != "full":
            raise Forbidden("the observer token can only observe", code="observer_token")

    # --- reads ----------
    def status(self, handle: Handle) -> SessionStatus:
        """State, counters, members, usage and warnings."""
        session, loop = handle.session, handle.loop
        handle.session.touch()
        options, record = session.options, session.record
        return SessionStatus(
            id=session.id,
            name=record.name,
            state=loop.lifecycle.state,
            loop_state=loop.machine.state,
            participation=options.participation,
            turn_order=options.turn_order,
            created_at=record.created_at,
            ended_at=record.ended_at,
            end_reason=record.end_reason,
            bot_turns=record.bot_turns,
            messages=len(session.history),
            last_seq=session.hub.durable_seq,
            members=MemberCounts(
                talkers=[m.name or "" for m in session.members.values() if m.role == "talker"],
                observers=sum(1 for m in session.members.values() if m.role == "observer"),
            ),
            tokens=TokenReport(
                context=session.context_tokens,
                limit=session.context_limit,
                history=session.history.tokens,
                backend_prompt=session.usage.prompt_tokens,
                backend_completion=session.usage.completion_tokens,
                by_bot=session.usage.by_bot,
            ),
            limits=LimitReport(
                max_turns=options.max_turns,
                max_time=options.max_time,
                max_context_tokens=session.context_limit,
                ttl=session.ttl,
            ),
            backend_outage=session.outage,
            warnings=_with_backend_warning(record.warnings, session.backend),
        )

    def history(self, handle: Handle) -> list[Message]:
        """Every history position, reserved slots and tombstones included."""
        handle.session.touch()
        return handle.session.history.messages

    # --- control ----------
    async def pause(self, handle: Handle) -> None:
        """Pause the loop (409 unless active)."""
        self.require_full(handle)
        handle.session.touch()
        handle.loop.pause()
        await handle.session.save(state="paused")

    async def resume(self, handle: Handle) -> None:
        """Resume the loop (409 unless paused)."""
        self.require_full(handle)
        handle.session.touch()
        handle.loop.resume()
        await handle.session.save(state="active")

    async def end(self, handle: Handle) -> None:
        """End the session at the client's request (409 if already ended)."""
        self.require_full(handle)
        await handle.loop.end("client_request")

    # --- members ----------
    def connect(
        self, handle: Handle, role: MemberRole, name: str | None, since: int | None
    ) -> Member:
        """Connect a talker or observer; its stream starts with history or the missed events."""
        name = self.display_name(name)
        if role == "talker":
            self.require_full(handle)
            if not name:
                raise BadRequest("a talker needs a display name (?name=...)", code="name_required")
            if name.casefold() in {bot.casefold() for bot in handle.session.bot_names}:
                # Bots would read this talker's lines as their own or a fellow bot's.
                raise BadRequest(
                    f"{name!r} is the name of a bot in this session", code="name_taken"
                )
        return handle.session.join(role, name, since)

    def display_name(self, name: str | None) -> str | None:
        """A member's display name, trimmed; refused when too long or not one plain line."""
        name = name.strip() if name else None
        if name and len(name) > self.settings.max_name_chars:
            raise BadRequest(
                f"display name longer than {self.settings.max_name_chars} characters",
                code="name_too_long",
            )
        if name and has_control_chars(name):
            raise BadRequest(
                "a display name is one line, without tabs or control characters",
                code="invalid_name",
            )
        return name

    async def post(self, handle: Handle, member: Member, content: str) -> Message:
        """A talker's message: validated, placed in history, broadcast, and the loop woken."""
        if member.role != "talker":
            raise Forbidden("observers cannot send messages", code="observer_cannot_talk")
        if not content.strip():
            raise BadRequest("empty message", code="empty_message")
        if len(content) > self.settings.max_message_chars:
            raise BadRequest(
                f"message longer than {self.settings.max_message_chars} characters",
                code="message_too_long",
            )
        return await handle.loop.post(member, content)

    @staticmethod
    def disconnect(handle: Handle, member: Member) -> None:
        """A member went away."""
        handle.session.leave(member)

    # --- housekeeping ----------
    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self._housekeeping_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("housekeeping failed")

    async def sweep(self) -> None:
        """End sessions past `max_time` or idle past their ttl; forget expired ended ones."""
        now = self.deps.clock.monotonic()
        cutoff = self.deps.clock.now() - timedelta(seconds=self.settings.ended_retention_seconds)
        for session_id in await self.deps.store.expire_ended(cutoff):
            expired = self._loops.get(session_id)
            if expired is not None:
                self._forget(expired.session)
        for loop in list(self._loops.values()):
            session = loop.session
            if loop.lifecycle.state == "ended":
                continue
            max_time = session.options.max_time
            if max_time is not None and session.elapsed >= max_time:
                await loop.end("max_time")
            elif not session.members and now - session.last_activity >= session.ttl:
                await loop.end("idle_timeout")

    def _forget(self, session: Session) -> None:
        self._loops.pop(session.id, None)
        self._by_hash.pop(session.record.full_token_hash, None)
        self._by_hash.pop(session.record.observer_token_hash, None)

    def _session_ended(self, session: Session) -> None:
        # Members are gone with the stream; the session stays readable until retention passes.
        session.members.clear()
        if session.options.memory_mode != "none":
            # Writing memory is an LLM call: it must not hold up the end (or a DELETE).
            task = asyncio.create_task(write_memory(session), name=f"memory-{session.id}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for background work (memory writing after an end) to finish."""
        while self._background:
            await asyncio.wait(set(self._background))

    def live_sessions(self) -> int:
        """Sessions not ended."""
        return sum(1 for loop in self._loops.values() if loop.machine.state != "ended")

    # --- secrets at rest ----------
    def _storage_json(self, spec: SessionSpec, session_id: str) -> str:
        """The stored spec, its secrets sealed; refused when there is no key to seal with."""
        try:
            sealed = seal_secrets(
                _storage_dict(spec), SECRET_FIELDS, self.secret_box, context=session_id
            )
        except SecretKeyMissing as exc:
            raise _refuse("llm.api_key", exc.message) from None
        return json.dumps(sealed.data)

    def _stored_spec(self, record: SessionRecord) -> tuple[SessionSpec, SecretUnreadable | None]:
        """A stored spec with its secrets opened, and why one cannot be, if so.

        A secret that cannot be opened is left out: the session comes back all the same
        (its history readable), only its calls to the backend fail.
        """
        opened = open_secrets(
            json.loads(record.spec_json), SECRET_FIELDS, self.secret_box, context=record.id
        )
        unreadable = opened.unreadable[0] if opened.unreadable else None
        if unreadable is not None and record.state != "ended":
            log.error(
                "session %s cannot reach its backend: %s", record.id, unreadable.message
            )
        return SessionSpec.model_validate(opened.data), unreadable


def _restart_tombstone(session: Session, reserved: Message) -> tuple[Message, list[BaseEvent]]:
    """A reply cut by the restart: its slot becomes a tombstone, announced by an error."""
    tomb = session.history.fill(reserved.model_copy(update={"status": "failed", "content": ""}))
    notice = ErrorEvent(
        message="the server restarted during this generation", code="server_restart", turn=tomb.turn
    )
    return tomb, [notice]


def _storage_dict(spec: SessionSpec) -> dict[str, Any]:
    """The spec as stored: secrets kept for the backend, but no other session's token."""
    data = spec.storage_dict()
    if spec.options.memory_mode == "inherit":
        data["options"]["memory"] = f"{MEMORY_INHERIT_PREFIX}{REDACTED}"
    return data


def _secret_box(settings: Settings, store: Store) -> SecretBox:
    """The keys of `SECRET_KEY`; a store that keeps nothing past the process (`fellowship
    run`, tests) gets a key of its own when none is set, as nothing of it can be lost."""
    if settings.secret_key or store.durable:
        return SecretBox.from_settings(settings)
    return SecretBox.ephemeral()


def _with_backend_warning(warnings: list[str], backend: Backend) -> list[str]:
    """Status warnings, with the reason a restored session cannot reach its backend."""
    if backend.unreadable_key is None:
        return warnings
    return [*warnings, f"secret_unreadable: {backend.unreadable_key}"]
