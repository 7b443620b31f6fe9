"""The engine's public face: the one object the server, the CLI and tests use.

`SessionManager` creates sessions from validated specs, opens them by token,
and carries out every client action (status, history, transcript, pause, resume,
end, fork, connect, talk). The work behind it lives next door: bringing stored
sessions back in engine/restore.py, idle timeouts and retention in engine/housekeeping.py,
the token lookup in engine/registry.py, the checks of member input in
engine/checks.py, forks in engine/fork.py, transcripts in engine/transcript.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Coroutine, Mapping
from functools import partial
from typing import Any

from pydantic import BaseModel, Field, JsonValue, TypeAdapter

from engine.auth import mint_token, token_hash
from engine.checks import InputChecks
from engine.clock import Clock, SystemClock
from engine.cluster.bus import CommandKind
from engine.cluster.node import ClusterNode, RemoteHandle
from engine.cluster.owner import Ownership
from engine.config import Settings
from engine.errors import (
    FellowshipError,
    NotFound,
    ObserverToken,
    SecretKeyMissing,
    StorageFailure,
    TooManySessions,
)
from engine.events import MemberRole, SessionPaused
from engine.fork import DEFAULT_FORK_START, ForkPlan, ForkStart, plan_fork, resume_point
from engine.history import History, Message
from engine.housekeeping import HOUSEKEEPING_INTERVAL, Housekeeper
from engine.hub import CLOSE_LEFT, CLOSE_SHUTDOWN, HubFactory, local_hub
from engine.llm.client import Backend, LLMClient, named_backend
from engine.llm.protocol import ChatClient
from engine.loop import SessionLoop
from engine.memory import write_memory
from engine.metrics import LiveState, Metrics, PrometheusMetrics, sample_live
from engine.orchestrator import Orchestrator
from engine.registry import Handle, SessionRegistry
from engine.restore import Restored, restore_all, restore_session
from engine.session import MEMBER_ID_BYTES, EngineDeps, Member, Session, spec_backends
from engine.spec.loader import InvalidSpec, SpecIssue
from engine.spec.models import MEMORY_INHERIT_PREFIX, REDACTED, SECRET_FIELDS, SessionSpec
from engine.status import (
    BackendReport,
    LimitReport,
    SessionStatus,
    TokenReport,
)
from engine.store.base import SessionRecord, Store
from engine.store.in_memory import MemoryStore
from engine.store.secrets import SecretBox, seal_secrets, seal_stored
from engine.store.timed import TimedStore
from engine.summarizer import restore_summary, summarize
from engine.tokens import get_counter
from engine.transcript import (
    RenderedTranscript,
    TranscriptInfo,
    build_transcript,
    render_transcript,
    transcript_format,
)

__all__ = ["CreatedSession", "Handle", "Opened", "RemoteHandle", "SessionManager"]

SESSION_ID_BYTES = 9

Opened = Handle | RemoteHandle
"""A session opened by a token: run by this process, or (cluster mode) by another node."""

_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])


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


class SessionManager:
    """Creates, finds and drives sessions.

    What it is given besides the settings is what a deployment may replace: the
    store, the LLM client (and through it the concurrency limiters), the clock,
    and the factory of each session's event hub. Left out, each is the in-process
    default. `metrics` (by default a Prometheus registry of this manager's own) counts
    what the sessions do; a client passed in as `llm` records into it only if it was
    built with it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        llm: ChatClient | None = None,
        clock: Clock | None = None,
        hubs: HubFactory = local_hub,
        secret_box: SecretBox | None = None,
        housekeeping_interval: float = HOUSEKEEPING_INTERVAL,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or PrometheusMetrics()
        timed = TimedStore(store or MemoryStore(), self.metrics)
        clock = clock or SystemClock()
        self._sessions = SessionRegistry()
        self._background: set[asyncio.Task[None]] = set()
        self._reading: dict[str, asyncio.Task[None]] = {}  # ended sessions being read back
        self.cluster: ClusterNode | None = None
        self._ownership: Ownership | None = None
        if settings.cluster_mode:
            self._ownership = owner = Ownership(
                self, self._sessions, self._adopt, self._in_background
            )
            self.cluster = ClusterNode(
                settings, timed, clock, self.metrics,
                on_command=owner.run, on_taken=owner.take_over, on_lost=owner.lose,
            )  # fmt: skip
            hubs = self.cluster.events.owner
        self.deps = EngineDeps(
            settings=settings,
            llm=llm or LLMClient(settings, metrics=self.metrics),
            store=timed,
            clock=clock,
            counter=get_counter(settings.tokenizer),
            hubs=hubs,
            metrics=self.metrics,
        )
        self.secret_box = secret_box or _secret_box(settings, self.deps.store)
        self.checks = InputChecks(settings)
        self._housekeeper = Housekeeper(self.deps, self._sessions, interval=housekeeping_interval)
        self._closed = False
        self.metrics.watch(self.live_state)

    # --- lifecycle of the manager ----------
    async def start(self) -> None:
        """Open the store, bring back stored sessions, start housekeeping."""
        await self.deps.store.open()
        await seal_stored(self.deps.store, self.secret_box, SECRET_FIELDS)
        # Ended sessions are read back from the store when a token asks for one (`find`).
        if self.cluster is None:
            await restore_all(self.deps, self.secret_box, self._adopt)
        else:
            # A node runs what it creates and what it takes over (expired leases, e.g.
            # every live session after the whole cluster stopped).
            await self.cluster.start()
        self._housekeeper.start()

    async def close(self) -> None:
        """Stop every loop at once, close members' streams, release the store and backends."""
        if self._closed:
            return
        self._closed = True
        await self._housekeeper.stop()
        if self.cluster is not None:
            await self.cluster.quiesce()
        every = self._sessions.loops()
        loops = [loop for loop in every if loop.loop_state != "ended"]
        await asyncio.gather(*(loop.stop() for loop in loops), return_exceptions=True)
        await asyncio.gather(*(loop.wait_stopped() for loop in every))
        # Events still being written are stored (and delivered) before the store closes.
        await asyncio.gather(*(loop.session.hub.flushed() for loop in every))
        for loop in loops:
            with contextlib.suppress(Exception):
                await loop.session.save()
            loop.session.hub.close(CLOSE_SHUTDOWN)
        if self._background:
            await asyncio.wait(self._background, timeout=self.settings.shutdown_grace_seconds)
        if self.cluster is not None:
            # The loops are stopped and their last writes done: other nodes take over now.
            await self.cluster.hand_over()
            await self.cluster.close()
        await self.deps.llm.aclose()
        await self.deps.store.close()

    # --- create and open ----------
    async def create(self, spec: SessionSpec, warnings: list[str] | None = None) -> CreatedSession:
        """Create a session from a validated spec and start it."""
        self._require_room()
        backend = self._backend_for(spec)
        backends = self._named_backends(spec)
        memory = await self._inherited_memory(spec)
        record, token, observer_token = self._new_record(spec, list(warnings or []))
        session = Session(
            record=record,
            spec=spec,
            deps=self.deps,
            backend=backend,
            backends=backends,
            memory=memory,
        )
        await session.save()
        await self._claim(session.id)
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

    async def fork(
        self,
        handle: Opened,
        at_turn: int,
        overrides: Mapping[str, Any] | None = None,
        start: ForkStart = DEFAULT_FORK_START,
    ) -> CreatedSession:
        """A new session whose history is a copy of this one's positions 1..`at_turn`.

        `overrides` are merged over the spec (engine/fork.py says how, and what happens
        to the summary and memory); the fork starts `paused` or `running`. The source
        goes on untouched. Full token only. Raises `TurnNotFound`, `TurnInFlight`,
        `InvalidSpec`, `TooManySessions`. In cluster mode the node that runs the source
        makes (and runs) the fork.
        """
        self.require_full(handle)
        if isinstance(handle, RemoteHandle):
            payload: dict[str, JsonValue] = {
                "at_turn": at_turn, "overrides": _json(overrides or {}), "start": start,
            }  # fmt: skip
            return CreatedSession.model_validate(await self._forward(handle, "fork", payload))
        source = handle.session
        source.touch()
        self._require_room()
        plan = plan_fork(source, at_turn, overrides or {}, self.settings)
        spec = plan.spec
        backend = self._backend_for(spec)
        memory = plan.memory if plan.memory_copied else await self._inherited_memory(spec)
        paused = start == "paused"
        record, token, observer_token = self._new_record(
            spec, plan.warnings, bot_turns=plan.bot_turns, state="paused" if paused else "active"
        )
        session = Session(
            record=record,
            spec=spec,
            deps=self.deps,
            backend=backend,
            backends=self._named_backends(spec),
            history=History(plan.messages),
            memory=memory,
        )
        if plan.summary is not None:
            restore_summary(session, *plan.summary)
        await self._store_fork(session, plan, memory)
        loop = self._adopt(session, "paused" if paused else None)
        loop.started, loop.unanswered = resume_point(plan.messages, spec.options.participation)
        if paused:
            session.emit(SessionPaused())
        loop.start()
        session.log.info(
            "session forked from %s at turn %d (%s)", plan.source_id, plan.at_turn, start
        )
        return CreatedSession(
            id=record.id,
            token=token,
            observer_token=observer_token,
            spec=spec.public_dict(),
            warnings=record.warnings,
        )

    async def _store_fork(self, session: Session, plan: ForkPlan, memory: str | None) -> None:
        """Store a new fork whole: its row, copied history, summary and memory; or nothing."""
        store = self.deps.store
        await session.save()
        try:
            await self._claim(session.id)
            await store.save_events(session.id, [], messages=plan.messages)
            if plan.summary is not None:
                await store.save_summary(session.id, *plan.summary)
            if memory is not None:
                await store.save_memory(session.id, memory)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await store.delete_session(session.id)
            if isinstance(exc, FellowshipError):
                raise
            raise StorageFailure(f"could not store the fork: {exc}") from exc

    def transcript(self, handle: Handle, format: str | None = None) -> RenderedTranscript:
        """The conversation as a document: `markdown` (default), `json` or `html`.

        Either token. Raises `UnknownFormat` for any other format.
        """
        session, record = handle.session, handle.session.record
        session.touch()
        chosen = transcript_format(format)
        transcript = build_transcript(
            session.spec,
            session.history.messages,
            TranscriptInfo(
                session_id=session.id,
                state=handle.loop.state,
                created_at=record.created_at,
                ended_at=record.ended_at,
                end_reason=record.end_reason,
                exported_at=self.deps.clock.now(),
            ),
        )
        return render_transcript(transcript, chosen)

    async def _claim(self, session_id: str) -> None:
        """Cluster mode: this node runs what it creates, under a lease of its own."""
        if self.cluster is not None:
            await self.cluster.claim(session_id)

    def _require_room(self) -> None:
        if self.live_sessions() >= self.settings.max_sessions:
            raise TooManySessions("too many sessions are running; try again later")

    def _new_record(
        self, spec: SessionSpec, warnings: list[str], *, bot_turns: int = 0, state: str = "active"
    ) -> tuple[SessionRecord, str, str]:
        """A new session's row (its secrets sealed), with its two fresh tokens."""
        token, observer_token = mint_token("full"), mint_token("observer")
        session_id = secrets.token_hex(SESSION_ID_BYTES)
        record = SessionRecord(
            id=session_id,
            name=spec.name,
            spec_json=self._storage_json(spec, session_id),
            full_token_hash=token_hash(token),
            observer_token_hash=token_hash(observer_token),
            state=state,
            created_at=self.deps.clock.now(),
            warnings=warnings,
            bot_turns=bot_turns,
        )
        return record, token, observer_token

    def _adopt(self, session: Session, restored: Restored | None = None) -> SessionLoop:
        options = session.options
        loop = SessionLoop(
            session,
            selector=Orchestrator(self.metrics) if options.turn_order == "orchestrated" else None,
            summarizer=summarize if options.summarize_context else None,
            on_end=self._session_ended,
            restored=restored,
            gives_up=None if self._ownership is None else partial(
                self._ownership.give_up, session.id
            ),
        )
        self._sessions.add(loop)
        return loop

    def _backend_for(self, spec: SessionSpec) -> Backend:
        """The session's own backend: `llm.backend`, else `llm.base_url`, else the default."""
        llm = spec.llm
        if llm is not None and llm.backend is not None:
            named = named_backend(self.settings, llm.backend)
            if named is None:
                raise _refuse("llm.backend", f"unknown backend {llm.backend!r}")
            return named
        try:
            return self.deps.llm.resolve_backend(
                llm.base_url if llm else None, llm.api_key if llm else None
            )
        except FellowshipError as exc:
            raise _refuse("llm.base_url", exc.message) from None

    def _named_backends(self, spec: SessionSpec) -> dict[str, Backend]:
        """The LLM_BACKENDS the spec names; spec checking refused unknown names already,
        so a miss here is a spec made in code (or LLM_BACKENDS changed under it)."""
        backends, missing = spec_backends(spec, self.settings)
        if missing:
            raise InvalidSpec(
                [SpecIssue(path=path, message="unknown backend (LLM_BACKENDS)") for path in missing]
            )
        return backends

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
        """The session a token opens, in this process. Unknown tokens and unknown sessions
        look the same."""
        return self._sessions.open(token)

    async def find(self, token: str) -> Opened:
        """The session a token opens: as `open`, and also an ended session not read back
        since the start (read now from the store, and kept) and, in cluster mode, a
        session another node runs (a `RemoteHandle`)."""
        try:
            return self._sessions.open(token)
        except NotFound:
            pass
        found = await self.deps.store.find_by_token_hash(token_hash(token))
        if found is None:
            raise NotFound("no session for this token")
        record, full = found
        if record.state != "ended":
            if self.cluster is None:  # one process runs every live session it has
                raise NotFound("no session for this token")
            return RemoteHandle(record, "full" if full else "observer")
        await self._read_back(record.id)
        return self._sessions.open(token)

    async def _read_back(self, session_id: str) -> None:
        """Bring an ended session back from the store, once however many ask at once."""
        if self._sessions.holds(session_id):
            return
        task = self._reading.get(session_id)
        if task is None:

            async def read() -> None:
                stored = await self.deps.store.load_session(session_id)
                if stored is not None and not self._sessions.holds(session_id):
                    await restore_session(stored, self.deps, self.secret_box, self._adopt)

            task = asyncio.create_task(read(), name=f"read-back-{session_id}")
            self._reading[session_id] = task
            task.add_done_callback(lambda _: self._reading.pop(session_id, None))
        await asyncio.shield(task)

    @staticmethod
    def require_full(handle: Opened) -> None:
        """Refuse control actions to the read-only observer token."""
        if handle.access != "full":
            raise ObserverToken("the observer token can only observe")

    # --- reads ----------
    def status(self, handle: Handle) -> SessionStatus:
        """State, counters, members, usage and warnings."""
        session, loop = handle.session, handle.loop
        handle.session.touch()
        options, record = session.options, session.record
        return SessionStatus(
            id=session.id,
            name=record.name,
            state=loop.state,
            loop_state=loop.loop_state,
            participation=options.participation,
            turn_order=options.turn_order,
            created_at=record.created_at,
            ended_at=record.ended_at,
            end_reason=record.end_reason,
            bot_turns=record.bot_turns,
            messages=len(session.history),
            last_seq=session.hub.durable_seq,
            members=session.presence_now(),
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
            backends=_backend_report(session),
            backend_outage=session.outage,
            warnings=_with_backend_warning(record.warnings, session.backend),
        )

    def history(self, handle: Handle) -> list[Message]:
        """Every history position, reserved slots and tombstones included."""
        handle.session.touch()
        return handle.session.history.messages

    async def status_of(self, opened: Opened) -> SessionStatus:
        """`status`, of a session run here or (cluster mode) by another node."""
        if isinstance(opened, RemoteHandle):
            return SessionStatus.model_validate(await self._forward(opened, "status"))
        return self.status(opened)

    async def history_of(self, opened: Opened) -> list[Message]:
        """`history`, of a session run here or (cluster mode) by another node."""
        if isinstance(opened, RemoteHandle):
            return _MESSAGES.validate_python(await self._forward(opened, "history"))
        return self.history(opened)

    async def transcript_of(self, opened: Opened, format: str | None = None) -> RenderedTranscript:
        """`transcript`, of a session run here or (cluster mode) by another node."""
        if isinstance(opened, RemoteHandle):
            transcript_format(format)  # an unknown format is refused here, as locally
            done = await self._forward(opened, "transcript", {"format": format})
            assert isinstance(done, dict)
            return RenderedTranscript(
                body=str(done["body"]),
                media_type=str(done["media_type"]),
                filename=str(done["filename"]),
            )
        return self.transcript(opened, format)

    # --- control ----------
    async def pause(self, handle: Opened) -> None:
        """Pause the loop (409 unless active)."""
        self.require_full(handle)
        if isinstance(handle, RemoteHandle):
            await self._forward(handle, "pause")
            return
        handle.session.touch()
        handle.loop.pause()
        await handle.session.save(state="paused")

    async def resume(self, handle: Opened) -> None:
        """Resume the loop (409 unless paused)."""
        self.require_full(handle)
        if isinstance(handle, RemoteHandle):
            await self._forward(handle, "resume")
            return
        handle.session.touch()
        handle.loop.resume()
        await handle.session.save(state="active")

    async def end(self, handle: Opened) -> None:
        """End the session at the client's request (409 if already ended)."""
        self.require_full(handle)
        if isinstance(handle, RemoteHandle):
            await self._forward(handle, "end")
            return
        await handle.loop.end("client_request")

    # --- members ----------
    def connect(
        self, handle: Handle, role: MemberRole, name: str | None, since: int | None
    ) -> Member:
        """Connect a talker or observer; its stream starts with history or the missed events."""
        name = self.checks.display_name(name)
        if role == "talker":
            self.require_full(handle)
            self.checks.talker_name(name, handle.session.bot_names)
        return handle.session.join(role, name, since)

    async def join(
        self, opened: Opened, role: MemberRole, name: str | None, since: int | None
    ) -> Member:
        """`connect`, to a session run here or (cluster mode) by another node: then the
        member's stream comes from that node's events, and a talker is announced there."""
        if not isinstance(opened, RemoteHandle):
            return self.connect(opened, role, name, since)
        assert self.cluster is not None
        name = self.checks.display_name(name)
        member_id = secrets.token_hex(MEMBER_ID_BYTES)
        if role == "talker":
            self.require_full(opened)
            self.checks.talker_name(name, _bot_names(opened.record))
            await self._forward(opened, "join", {"member": member_id, "name": name})
        subscription = await self.cluster.join(opened, since)
        return Member(id=member_id, role=role, name=name, subscription=subscription)

    @staticmethod
    def seen_to_the_end(opened: Opened, since: int | None) -> bool:
        """Whether the session ended and `since` is its last event: nothing more to send."""
        if isinstance(opened, RemoteHandle) or since is None:
            return False  # another node runs it: it has not ended
        return opened.loop.state == "ended" and since >= opened.session.hub.durable_seq

    def display_name(self, name: str | None) -> str | None:
        """A member's display name, trimmed; refused when too long or not one plain line."""
        return self.checks.display_name(name)

    async def post(self, handle: Opened, member: Member, content: str) -> Message:
        """A talker's message: validated, placed in history, broadcast, and the loop woken."""
        self.checks.message(member, content)
        if isinstance(handle, RemoteHandle):
            payload: dict[str, JsonValue] = {
                "member": member.id, "name": member.name, "content": content,
            }  # fmt: skip
            return Message.model_validate(await self._forward(handle, "talk", payload))
        return await handle.loop.post(member, content)

    def disconnect(self, handle: Opened, member: Member) -> None:
        """A member went away."""
        if not isinstance(handle, RemoteHandle):
            handle.session.leave(member)
            return
        member.subscription.close(CLOSE_LEFT, drain=False)
        if member.role == "talker":
            self._in_background(
                self._forward(handle, "leave", {"member": member.id}), f"leave-{member.id}"
            )

    # --- housekeeping ----------
    async def sweep(self) -> None:
        """End sessions idle past their ttl; forget ended ones past retention, at once."""
        await self._housekeeper.sweep()

    def _session_ended(self, session: Session) -> None:
        # Members are gone with the stream; the session stays readable until retention passes.
        session.members.clear()
        if session.options.memory_mode == "none" and self.cluster is None:
            return
        # Writing memory is an LLM call: it must not hold up the end (or a DELETE). In
        # cluster mode the lease goes once nothing more is written.
        self._in_background(self._after_end(session), f"ended-{session.id}")

    async def _after_end(self, session: Session) -> None:
        try:
            if session.options.memory_mode != "none":
                await write_memory(session.turn_view(), self.deps.store)
        finally:
            if self.cluster is not None:
                await self.cluster.release(session.id)
                # From now on the store tells what the session is: ended, or (when its
                # end could not be stored) running again under the node that takes it
                # over. A copy kept here could contradict it.
                self._sessions.forget(session.id)

    def _in_background(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for background work (memory writing after an end) to finish."""
        while self._background:
            await asyncio.wait(set(self._background))

    def live_sessions(self) -> int:
        """Sessions not ended."""
        return self._sessions.live_count()

    def live_state(self) -> LiveState:
        """The gauges of the metrics: sessions, members and queue depths right now."""
        llm = self.deps.llm
        limiters = llm.limiters() if isinstance(llm, LLMClient) else {}
        return sample_live(self._sessions.loops(), limiters)

    # --- cluster mode (engine/cluster/) ----------
    async def _forward(
        self, handle: RemoteHandle, kind: CommandKind, payload: dict[str, JsonValue] | None = None
    ) -> JsonValue:
        assert self.cluster is not None
        return await self.cluster.forward(handle, kind, payload)

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


def _backend_report(session: Session) -> BackendReport:
    """Names of the backends a session uses: LLM_BACKENDS names, `default` or `llm.base_url`."""
    llm = session.spec.llm
    own = session.backend.name or ("llm.base_url" if llm and llm.base_url else "default")
    view = session.turn_view()

    def label(backend: Backend) -> str:
        # Only the session's own backend can be unnamed.
        return backend.name or own

    return BackendReport(
        session=own,
        bots={name: label(view.backend_for("bot", name)) for name in session.bot_names},
        orchestrator=label(view.backend_for("orchestrator")),
        summarizer=label(view.backend_for("summary")),
    )


def _with_backend_warning(warnings: list[str], backend: Backend) -> list[str]:
    """Status warnings, with the reason a restored session cannot reach its backend."""
    if backend.unreadable_key is None:
        return warnings
    return [*warnings, f"secret_unreadable: {backend.unreadable_key}"]


def _bot_names(record: SessionRecord) -> list[str]:
    """The bot names of a stored spec (a talker may not take one)."""
    bots = json.loads(record.spec_json).get("bots", [])
    return [str(bot.get("name", "")) for bot in bots]


def _json(data: Mapping[str, Any]) -> dict[str, JsonValue]:
    """A JSON object as it travels to another node."""
    loaded: dict[str, JsonValue] = json.loads(json.dumps(data))
    return loaded
