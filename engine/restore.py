"""Bringing stored sessions back when the engine starts (SPEC: restart behaviour).

Ended sessions come back readable (history, status, replay) until their retention
passes, each read from the store when a token first asks for it. Live ones come back
paused, with the reason `server_restart`: a reply that
was being generated when the process stopped becomes a tombstone, placed by the
Rectifier and announced by an `error` event like any other failed turn. Every event
anyone was shown is in the store, so numbering goes on from the last stored event
and a reconnect with `since` replays what the store kept.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Literal

from engine.errors import FellowshipError, SecretUnreadable, ServerRestarted
from engine.events import BaseEvent, ErrorEvent, SessionPaused
from engine.history import History, Message
from engine.hub import Frame
from engine.llm.client import Backend, named_backend
from engine.loop import SessionLoop
from engine.session import EngineDeps, Session, spec_backends
from engine.spec.models import SECRET_FIELDS, SessionSpec
from engine.store.base import SessionRecord, StoredSession
from engine.store.secrets import SecretBox, open_secrets
from engine.summarizer import restore_summary

log = logging.getLogger("fellowship.restore")

Restored = Literal["ended", "paused"]
Adopt = Callable[[Session, Restored | None], SessionLoop]
"""Builds a restored session's loop (in the state given; None: running) and registers it."""


async def restore_all(deps: EngineDeps, secret_box: SecretBox, adopt: Adopt) -> None:
    """Bring back every live stored session; one that cannot be restored is logged and
    skipped. Ended ones stay in the store until a token asks for one
    (`SessionManager.find` reads it back then): most stored sessions are ended, and
    nothing of them is needed to start serving."""
    # Restoring creates a great many objects that live on (every message, every
    # buffered event): the cyclic collector would walk them again and again while
    # they are made. It is paused until they are all in place.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for stored in await deps.store.load_all(include_ended=False):
            try:
                await restore_session(stored, deps, secret_box, adopt)
            except Exception:
                log.exception("could not restore session %s", stored.record.id)
    finally:
        if collecting:
            gc.enable()


async def restore_session(
    stored: StoredSession,
    deps: EngineDeps,
    secret_box: SecretBox,
    adopt: Adopt,
    *,
    taken_over: bool = False,
    before_start: Callable[[Session], None] | None = None,
) -> SessionLoop:
    """Bring one stored session back: ended ones readable, live ones paused.

    `taken_over`: a cluster node took the session over from a node that stopped or
    died (engine/cluster/): it goes on in the state it was stored in, running unless
    it was paused, as if nothing had happened but the cut reply. `before_start` sees
    the session once its hub is restored, before anything new is published.
    """
    record = stored.record
    ended = record.state == "ended"
    if not ended:
        # The stored counter lags a turn that was in flight; history does not.
        bot_turns = sum(1 for m in stored.messages if m.kind == "bot")
        record = record.model_copy(update={"bot_turns": bot_turns})
    spec, unreadable = stored_spec(record, secret_box)
    backends, missing = spec_backends(spec, deps.settings)
    if missing and not ended:
        # LLM_BACKENDS lost a name since: those calls go to the session's own backend.
        log.warning(
            "session %s names backends this server no longer has (%s); their calls go "
            "to the session's own backend",
            record.id,
            ", ".join(missing),
        )
    session = Session(
        record=record,
        spec=spec,
        deps=deps,
        backend=_stored_backend(deps, spec, unreadable),
        backends=backends,
        history=History(stored.messages),
        memory=stored.memory if spec.options.memory_mode == "inherit" else None,
    )
    if stored.summary is not None:
        restore_summary(session, *stored.summary)
    events = (
        stored.events if stored.events is not None else await deps.store.load_events(session.id)
    )
    session.hub.restore([Frame(e.seq, e.type, e.data) for e in events], record.last_seq)
    if before_start is not None:
        before_start(session)
    paused = not taken_over or record.state == "paused"
    loop = adopt(session, "ended" if ended else "paused" if paused else None)
    if ended:
        session.hub.close()
        loop.ended.set()
        return loop
    talker_turns = [m.turn for m in stored.messages if m.kind == "talker"]
    last_bot = max((m.turn for m in stored.messages if m.kind == "bot"), default=0)
    loop.started = spec.options.participation == "autonomous" or bool(talker_turns)
    loop.unanswered = sum(1 for turn in talker_turns if turn > last_bot)
    for message in session.history.pending_reserved():
        await session.commit(partial(_restart_tombstone, session, message))
    if taken_over:
        await session.save()
        loop.start()
        session.log.info("session taken over (%s) with %d messages", record.state,
                         len(session.history))  # fmt: skip
        return loop
    session.emit(SessionPaused(reason="server_restart"))
    await session.save(state="paused")
    loop.start()
    session.log.info("session restored (paused) with %d messages", len(session.history))
    return loop


def stored_spec(
    record: SessionRecord, secret_box: SecretBox
) -> tuple[SessionSpec, SecretUnreadable | None]:
    """A stored spec with its secrets opened, and why one cannot be, if so.

    A secret that cannot be opened is left out: the session comes back all the same
    (its history readable), only its calls to the backend fail.
    """
    opened = open_secrets(
        json.loads(record.spec_json), SECRET_FIELDS, secret_box, context=record.id
    )
    unreadable = opened.unreadable[0] if opened.unreadable else None
    if unreadable is not None and record.state != "ended":
        log.error("session %s cannot reach its backend: %s", record.id, unreadable.message)
    return SessionSpec.model_validate(opened.data), unreadable


def _stored_backend(
    deps: EngineDeps, spec: SessionSpec, unreadable: SecretUnreadable | None
) -> Backend:
    llm = deps.llm
    name = spec.llm.backend if spec.llm else None
    named = named_backend(deps.settings, name) if name else None
    if named is not None:
        return named  # its key is the server's, not the stored spec's
    # A backend allowed at creation may be disallowed now, a name gone from LLM_BACKENDS:
    # fall back to the default.
    try:
        backend = llm.resolve_backend(
            spec.llm.base_url if spec.llm else None, spec.llm.api_key if spec.llm else None
        )
    except FellowshipError:
        backend = llm.default_backend
    if unreadable is None:
        return backend
    # Its own key is lost to us, and no other key may go in its place.
    return Backend(base_url=backend.base_url, unreadable_key=unreadable.message)


def _restart_tombstone(session: Session, reserved: Message) -> tuple[Message, list[BaseEvent]]:
    """A reply cut by the restart: its slot becomes a tombstone, announced by an error."""
    tomb = session.rectifier.abandon(reserved)
    notice = ErrorEvent(
        message="the server restarted during this generation",
        code=ServerRestarted.code,
        turn=tomb.turn,
    )
    return tomb, [notice]
