"""One conversation: its spec, history, members, events and counters.

`Session` holds the state; `SessionLoop` (engine/loop.py) drives it. Every history
change goes through `record`, which assigns the position, commits it to the store
and only then broadcasts it, all under one lock, so positions, commits and event
order always agree.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.clock import Clock
from engine.config import Settings
from engine.errors import FellowshipError, TalkersNotAllowed, TooManyTalkers
from engine.events import (
    BaseEvent,
    DebugCategory,
    DebugEvent,
    ErrorEvent,
    HistoryEvent,
    MemberJoined,
    MemberLeft,
    MemberRole,
)
from engine.history import History, Message, UsageTotals
from engine.hub import CLOSE_LEFT, Frame, Hub, HubFactory, HubOptions, Subscription, local_hub
from engine.llm.client import Backend, named_backend
from engine.llm.protocol import ChatClient
from engine.logs import SessionLogger, session_logger
from engine.metrics import NO_METRICS, Metrics
from engine.presence import PresenceAnnouncer
from engine.prompts import PromptParts, system_prompt
from engine.rectifier import Rectifier
from engine.spec.issues import format_path
from engine.spec.models import BotSpec, SessionSpec
from engine.status import MemberCounts
from engine.store.base import EventRecord, SessionRecord, Store
from engine.tokens import TokenCounter
from engine.turn_view import TurnView

MEMBER_ID_BYTES = 8


@dataclass(frozen=True, slots=True)
class EngineDeps:
    """What every session needs from the outside world, passed as one object.

    `store`, `hubs`, `clock` and the LLM client's limiters are the parts a cluster
    node replaces; the defaults run everything in this process.
    """

    settings: Settings
    llm: ChatClient
    store: Store
    clock: Clock
    counter: TokenCounter
    hubs: HubFactory = local_hub
    metrics: Metrics = NO_METRICS


def spec_backends(spec: SessionSpec, settings: Settings) -> tuple[dict[str, Backend], list[str]]:
    """The LLM_BACKENDS the spec names (by name), and the paths of names the server lacks."""
    found: dict[str, Backend] = {}
    missing: list[str] = []
    for loc, name in spec.named_backends():
        backend = found.get(name) or named_backend(settings, name)
        if backend is None:
            missing.append(format_path(loc))
        else:
            found[name] = backend
    return found, missing


@dataclass(slots=True)
class Member:
    """A connected human (or program): a talker or an observer."""

    id: str
    role: MemberRole
    name: str | None
    subscription: Subscription


class Session:
    """State of one conversation (no driving logic: see `SessionLoop`)."""

    def __init__(
        self,
        *,
        record: SessionRecord,
        spec: SessionSpec,
        deps: EngineDeps,
        backend: Backend,
        backends: Mapping[str, Backend] | None = None,
        history: History | None = None,
        memory: str | None = None,
    ) -> None:
        self.record = record
        self.id = record.id
        self.spec = spec
        self.options = spec.options
        self.deps = deps
        self.backend = backend  # the session's own: llm.backend, llm.base_url or the default
        self.backends = dict(backends or {})  # what the spec names per bot or purpose
        self.memory = memory
        self.summary: str | None = None
        self.summary_upto = 0
        self.summarized_tokens = 0  # history tokens folded into the summary
        self.history = history or History()
        self.rectifier = Rectifier(
            self.history, enabled=spec.options.rectify_history, now=deps.clock.now
        )
        self.hub: Hub = deps.hubs(
            HubOptions(
                session_id=record.id,
                first_seq=record.last_seq,
                persist=self._store_events,
                buffer_size=deps.settings.event_buffer_size,
                member_queue_size=deps.settings.member_queue_size,
                now=deps.clock.now,
                metrics=deps.metrics,
            )
        )
        self.log: SessionLogger = session_logger("fellowship.session", self.id)
        self.members: dict[str, Member] = {}
        # Observers are counted, not announced one by one (engine/presence.py).
        self.presence = PresenceAnnouncer(
            count=self.presence_now, emit=self._emit_presence, clock=deps.clock
        )
        self.started_monotonic = deps.clock.monotonic()
        self.last_activity = self.started_monotonic
        self.debug_enabled = deps.settings.debug or spec.options.debug
        self.outage: str | None = None  # why a turn is waiting for the backend, while it is
        self.loop_state = "idle"
        self._lock = asyncio.Lock()
        self._system_tokens = max(
            (deps.counter.count(self.system_text(bot)) for bot in spec.bots), default=0
        )
        self._extra_tokens = 0
        self.refresh_extra_tokens()

    # --- bots and names ----------
    def bot(self, name: str) -> BotSpec:
        """The bot called `name` (exact spec spelling)."""
        return next(b for b in self.spec.bots if b.name == name)

    @property
    def bot_names(self) -> list[str]:
        """Bot names in spec order."""
        return [b.name for b in self.spec.bots]

    def participant_names(self) -> list[str]:
        """Everyone who may appear in the conversation: bots, then talkers seen so far."""
        names = self.bot_names
        seen = {n.casefold() for n in names}
        for member in self.members.values():
            if member.role == "talker" and member.name and member.name.casefold() not in seen:
                names.append(member.name)
                seen.add(member.name.casefold())
        return names

    def system_text(self, bot: BotSpec) -> str:
        """The system message of `bot` without memory and summary (counted apart)."""
        return system_prompt(
            PromptParts(
                bot_name=bot.name,
                bot_system_prompt=bot.system_prompt,
                bot_role=bot.role,
                global_system_prompt=self.spec.system_prompt,
            )
        )

    def turn_view(self) -> TurnView:
        """The narrow view a turn, a selector, the summarizer or the memory writer gets."""

        def warn(error: FellowshipError) -> None:
            # A lasting warning: in the log, in status (and the console), and as an event.
            self.log.warning("%s: %s", error.code, error.message)
            self.record.warnings.append(f"{error.code}: {error.message}")
            self.emit(ErrorEvent(message=error.message, code=error.code))

        return TurnView(
            session_id=self.id,
            spec=self.spec,
            settings=self.deps.settings,
            history=self.history,
            summary=self.summary,
            summary_upto=self.summary_upto,
            memory=self.memory,
            bot_turns=self.record.bot_turns,
            context_tokens=self.context_tokens,
            context_limit=self.context_limit,
            counter=self.deps.counter,
            llm=self.deps.llm,
            backend=self.backend,
            participant_names=self.participant_names,
            log=self.log,
            emit=self.emit,
            debug=self.debug,
            debug_enabled=self.debug_enabled,
            warn=warn,
            backends=self.backends,
        )

    # --- tokens ----------
    def refresh_extra_tokens(self) -> None:
        """Recount memory and summary tokens (they change rarely)."""
        self._extra_tokens = sum(
            self.deps.counter.count(text) for text in (self.memory, self.summary) if text
        )

    @property
    def context_tokens(self) -> int:
        """History (since the last summary) + largest system prompt + memory and summary."""
        return (
            self.history.tokens
            - self.summarized_tokens
            + self._system_tokens
            + (self._extra_tokens)
        )

    @property
    def context_limit(self) -> int:
        """The session's context token limit."""
        return self.options.max_context_tokens or self.deps.settings.default_context_limit

    @property
    def usage(self) -> UsageTotals:
        """Backend-reported usage of every turn in history (so it survives restarts)."""
        return self.history.usage

    # --- time ----------
    def touch(self) -> None:
        """Note client activity (idle timeout)."""
        self.last_activity = self.deps.clock.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since the session started."""
        return self.deps.clock.monotonic() - self.started_monotonic

    @property
    def ttl(self) -> int:
        """Idle timeout in seconds."""
        return self.options.ttl or self.deps.settings.session_ttl_default

    # --- events ----------
    def emit(self, event: BaseEvent) -> None:
        """Broadcast an event that changes no history."""
        self.hub.publish(event)

    def debug(self, category: DebugCategory, **data: Any) -> None:
        """Broadcast a debug event when debug is on for this session."""
        if self.debug_enabled:
            self.hub.publish(DebugEvent(category=category, data=data))

    def snapshot(self, joining: MemberRole | None = None, name: str | None = None) -> HistoryEvent:
        """The `history` event a new member starts with.

        Its `presence` counts the member `joining` (with `name`) already, unless the
        session has ended: a member of an ended session is never counted.
        """
        presence = self.presence_now()
        if joining is not None and not self.hub.closed:
            if joining == "talker":
                presence.talkers.append(name or "")
            else:
                presence.observers += 1
        return HistoryEvent(
            messages=self.history.messages, state=self.loop_state, presence=presence
        )

    async def commit(self, place: Callable[[], tuple[Message | None, list[BaseEvent]]]) -> None:
        """Assign a position, commit it, then broadcast — atomically with respect to others.

        `place` runs under the session lock, changes the in-memory history and
        returns the message to commit (if any) and the events to broadcast after.
        """
        async with self._lock:
            message, events = place()
            await self.hub.commit(message, events)

    # --- members ----------
    @property
    def talker_count(self) -> int:
        """Talkers connected now."""
        return sum(1 for m in self.members.values() if m.role == "talker")

    def presence_now(self) -> MemberCounts:
        """Who is connected to this process now: talkers by name, observers counted."""
        talkers = [m.name or "" for m in self.members.values() if m.role == "talker"]
        return MemberCounts(talkers=talkers, observers=len(self.members) - len(talkers))

    def _emit_presence(self, event: BaseEvent) -> None:
        # Nothing may follow session_end, whichever way the hub was closed.
        if not self.hub.closed:
            self.emit(event)

    def join(
        self,
        role: MemberRole,
        name: str | None,
        since: int | None,
        *,
        remote_id: str | None = None,
    ) -> Member:
        """Connect a member; talkers are refused when the mode or `max_talkers` forbids.

        A talker's arrival is announced (`member_joined`); an observer's only changes
        the counts of the next `presence` event. `remote_id`: the member is connected to
        another cluster node, which streams to it (engine/cluster/node.py); here it only
        counts, under that id.
        """
        if role == "talker":
            if self.options.participation == "autonomous":
                raise TalkersNotAllowed(
                    "this session is autonomous: bots only, connect as an observer"
                )
            if self.talker_count >= self.options.max_talkers:
                raise TooManyTalkers(
                    f"this session already has its {self.options.max_talkers} talker(s)"
                )
        member = Member(
            id=remote_id or secrets.token_hex(MEMBER_ID_BYTES),
            role=role,
            name=name,
            subscription=(
                self.hub.subscribe(lambda: self.snapshot(role, name), since)
                if remote_id is None
                else Subscription(0, 1, _streamed_elsewhere)
            ),
        )
        self.touch()
        if self.hub.closed:
            return member  # an ended session: history (or replay) only, then the stream ends
        self.members[member.id] = member
        if role == "talker":
            self.emit(MemberJoined(role=role, name=name))
        self.presence.changed()
        self.log.info("%s joined (%s)", role, name or "anonymous")
        return member

    def leave(self, member: Member) -> None:
        """Disconnect a member (idempotent); announced as `join` announces arrivals."""
        if self.members.pop(member.id, None) is None:
            return
        member.subscription.close(CLOSE_LEFT, drain=False)
        self.touch()
        if not self.hub.closed:
            if member.role == "talker":
                self.emit(MemberLeft(role=member.role, name=member.name))
            self.presence.changed()
        self.log.info("%s left (%s)", member.role, member.name or "anonymous")

    # --- persistence ----------
    async def save(self, **changes: Any) -> None:
        """Persist the session row with `changes` applied."""
        self.record = self.record.model_copy(update={**changes, "last_seq": self.hub.durable_seq})
        await self.deps.store.save_session(self.record)

    async def _store_events(self, frames: list[Frame], messages: list[Message]) -> None:
        # The hub's `persist`: events (and the messages they announce) are stored
        # in one write before any member sees them.
        await self.deps.store.save_events(
            self.id,
            [EventRecord(seq=f.seq, type=f.type, data=f.data) for f in frames],
            messages=messages,
            keep_last=self.deps.settings.event_buffer_size,
        )

    def now(self) -> datetime:
        """Current UTC time from the injected clock."""
        return self.deps.clock.now()


def _streamed_elsewhere(subscription: Subscription) -> None:
    """A remote member's placeholder stream: its node closes the real one."""
