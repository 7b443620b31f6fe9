"""Sessions built without a loop, for tests that call the orchestrator, summarizer or memory
writer directly against the real LLM client and the mock backend."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from engine.events import BaseEvent, parse_event
from engine.history import History, Message
from engine.hub import Subscription
from engine.manager import SessionManager
from engine.orchestrator import Orchestrator
from engine.session import Session
from engine.speakers import Decision
from engine.spec.models import SessionSpec
from engine.store.base import SessionRecord


async def bare_session(
    manager: SessionManager,
    spec: SessionSpec,
    lines: Sequence[tuple[str, str]] = (),
    *,
    memory: str | None = None,
) -> Session:
    """A stored session over `lines` (`(speaker, text)`; bots by name, anyone else a talker)."""
    deps = manager.deps
    bots = {bot.name for bot in spec.bots}
    messages = [
        Message(
            turn=turn,
            kind="bot" if speaker in bots else "talker",
            speaker=speaker,
            content=text,
            ts=deps.clock.now(),
            tokens=deps.counter.count(text),
        )
        for turn, (speaker, text) in enumerate(lines, start=1)
    ]
    record = SessionRecord(
        id=f"direct-{secrets.token_hex(4)}",
        spec_json=spec.model_dump_json(),
        full_token_hash="full",
        observer_token_hash="observer",
        created_at=deps.clock.now(),
    )
    session = Session(
        record=record,
        spec=spec,
        deps=deps,
        backend=deps.llm.resolve_backend(None, None),
        history=History(messages),
        memory=memory,
    )
    await session.save()
    return session


async def drain(session: Session, subscription: Subscription) -> list[BaseEvent]:
    """Every event `session` published so far that reached `subscription`, parsed.

    Waits for the events being stored to be delivered, never for new ones.
    """
    await session.hub.flushed()
    events: list[BaseEvent] = []
    while subscription.pending:
        frame = await subscription.next_frame()
        assert frame is not None
        events.append(parse_event(frame.data))
    return events


async def decide(session: Session) -> tuple[Decision, dict[str, Any]]:
    """Run one decision; return it with the data of its `orchestrator` debug event."""
    subscription = session.hub.subscribe(session.snapshot)
    decision = await Orchestrator().select(session.turn_view())
    events = [e for e in await drain(session, subscription) if e.type == "debug"]
    data = [e.data for e in events if e.category == "orchestrator"]  # type: ignore[attr-defined]
    assert len(data) == 1
    return decision, data[0]
