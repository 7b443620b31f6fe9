"""`fellowship.client` against a real server (mock backend): the calls and their typed errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from engine.events import BotMessage, HistoryEvent, SessionEnd, TalkerMessage, TurnEnd
from fellowship.client import (
    BadRequest,
    ErrorEvent,
    Event,
    EventStream,
    FellowshipClient,
    Forbidden,
    InvalidSpec,
    InvalidState,
    MalformedSpec,
    NotFound,
    ObserverToken,
    Reconnect,
    SessionEnded,
    SessionSpec,
    SpecNotFound,
    StreamClosed,
    TalkersNotAllowed,
    Transport,
)
from tests.integration.conftest import RunningServer, spec_dict
from tests.support.engine import WAIT_SECONDS

UNKNOWN_TOKEN = "fsk_" + "x" * 43
YAML_SPEC = """
name: Tea or coffee
bots:
  - name: Alice
    system_prompt: You love espresso.
  - name: Bob
    system_prompt: You only drink tea.
options:
  participation: reactive
"""


@pytest.fixture
async def fc(server: RunningServer) -> AsyncIterator[FellowshipClient]:
    # A test that goes wrong fails instead of waiting for a server that will not come.
    policy = Reconnect(give_up_after=WAIT_SECONDS / 2)
    async with FellowshipClient(server.base_url, reconnect=policy) as client:
        yield client


async def collect(stream: EventStream, until: type[Event] = SessionEnd) -> list[Event]:
    """Every event of `stream` up to and including the first of type `until`."""
    events: list[Event] = []

    async def read() -> None:
        async for event in stream:
            events.append(event)
            if isinstance(event, until):
                return

    await asyncio.wait_for(read(), WAIT_SECONDS)
    return events


# --- the HTTP calls ---------------------------------------------------------------------------


async def test_create_accepts_a_dict_yaml_text_and_a_session_spec(fc: FellowshipClient) -> None:
    from_dict = await fc.create(spec_dict(participation="reactive"))
    from_yaml = await fc.create(YAML_SPEC)
    from_model = await fc.create(SessionSpec.model_validate(spec_dict(participation="reactive")))
    for created in (from_dict, from_yaml, from_model):
        assert created.token.startswith("fsk_")
        assert created.observer_token.startswith("fso_")
        assert created.token not in repr(created) and created.observer_token not in repr(created)
    assert from_yaml.spec["name"] == "Tea or coffee"
    bots = from_model.spec["bots"]
    assert isinstance(bots, list) and [b["name"] for b in bots] == ["Alice", "Bob", "Carol"]


async def test_create_from_the_library_with_overrides(fc: FellowshipClient) -> None:
    names = [entry.name for entry in await fc.library()]
    assert "debate" in names
    created = await fc.create({"options": {"participation": "reactive"}}, library="debate")
    assert (await fc.status(created.token)).participation == "reactive"
    with pytest.raises(SpecNotFound):
        await fc.create(library="no-such-spec")


async def test_status_pause_resume_end_and_history(fc: FellowshipClient) -> None:
    created = await fc.create(spec_dict(participation="reactive"))
    status = await fc.status(created.observer_token)
    assert status.id == created.id and status.state == "active"
    assert (await fc.pause(created.token)).state == "paused"
    with pytest.raises(InvalidState) as refused:
        await fc.pause(created.token)
    assert refused.value.status == 409 and refused.value.code == "invalid_state"
    assert (await fc.resume(created.token)).state == "active"
    assert await fc.history(created.token) == []
    assert (await fc.end(created.token)).state == "ended"
    with pytest.raises(SessionEnded):
        await fc.end(created.token)


# --- typed errors ------------------------------------------------------------------------------


async def test_an_unknown_token_raises_not_found_everywhere(fc: FellowshipClient) -> None:
    for call in (fc.status, fc.history, fc.pause, fc.resume, fc.end):
        with pytest.raises(NotFound) as refused:
            await call(UNKNOWN_TOKEN)
        assert refused.value.status == 404 and UNKNOWN_TOKEN not in str(refused.value)
    transports: tuple[Transport, ...] = ("sse", "ws")
    for transport in transports:
        with pytest.raises(NotFound):
            await collect(fc.observe(UNKNOWN_TOKEN, transport=transport))
    with pytest.raises(NotFound) as refused:
        await fc.talk(UNKNOWN_TOKEN, "Dana").send("hello?")
    assert refused.value.close_code == 4004


async def test_the_observer_token_on_a_control_call_raises_forbidden(fc: FellowshipClient) -> None:
    created = await fc.create(spec_dict(participation="reactive"))
    for call in (fc.pause, fc.resume, fc.end):
        with pytest.raises(ObserverToken) as refused:
            await call(created.observer_token)
        assert isinstance(refused.value, Forbidden) and refused.value.status == 403
    with pytest.raises(ObserverToken) as refused:
        await fc.talk(created.observer_token, "Dana").send("let me in")
    assert refused.value.close_code == 4003


async def test_a_talker_in_an_autonomous_session_is_refused(fc: FellowshipClient) -> None:
    created = await fc.create(spec_dict(max_turns=2))
    talk = fc.talk(created.token, "Dana")
    with pytest.raises(TalkersNotAllowed):
        await talk.send("hello")
    # A reader learns it too, once; every later send raises it again.
    with pytest.raises(TalkersNotAllowed):
        await anext(talk)
    with pytest.raises(StopAsyncIteration):
        await anext(talk)
    with pytest.raises(TalkersNotAllowed):
        await talk.send("hello?")


async def test_a_bad_talker_name_raises_bad_request(fc: FellowshipClient) -> None:
    created = await fc.create(spec_dict(participation="reactive"))
    with pytest.raises(BadRequest) as refused:
        await collect(fc.talk(created.token, "Alice"))  # a bot's name
    assert refused.value.code == "name_taken" and refused.value.close_code == 4000


async def test_an_invalid_spec_raises_invalid_spec_with_every_issue(fc: FellowshipClient) -> None:
    bad = {"bots": [{"name": "Ann"}, {"name": "ann"}], "options": {"max_turns": 0}}
    with pytest.raises(InvalidSpec) as refused:
        await fc.create(bad)
    assert refused.value.status == 422 and refused.value.code == "invalid_spec"
    paths = {issue.path for issue in refused.value.issues}
    assert {"bots[1].name", "options.max_turns"} <= paths
    with pytest.raises(MalformedSpec) as malformed:
        await fc.create("bots: [unclosed")
    assert malformed.value.status == 400 and malformed.value.issues[0].line is not None


# --- streams -------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_observe_yields_typed_events_from_history_to_session_end(
    fc: FellowshipClient, transport: Transport
) -> None:
    created = await fc.create(spec_dict(max_turns=4))
    events = await collect(fc.observe(created.observer_token, transport=transport))
    assert isinstance(events[0], HistoryEvent)
    assert isinstance(events[-1], SessionEnd) and events[-1].reason == "max_turns"
    replies = {e.turn for e in events if isinstance(e, BotMessage)}
    replies |= {m.turn for m in events[0].messages if m.status == "complete"}
    assert replies == {1, 2, 3, 4}
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_observing_an_ended_session_gives_its_history_and_stops(
    fc: FellowshipClient, transport: Transport
) -> None:
    created = await fc.create(spec_dict(max_turns=2))
    first = await collect(fc.observe(created.observer_token, transport=transport))
    events = [e async for e in fc.observe(created.observer_token, transport=transport)]
    assert [e.type for e in events] == ["history"]
    assert isinstance(events[0], HistoryEvent) and len(events[0].messages) == 2
    # Resuming after the last event: nothing is missing, and nothing comes.
    again = fc.observe(created.observer_token, transport=transport, since=first[-1].seq)
    assert [e async for e in again] == []


async def test_talk_sends_and_receives(fc: FellowshipClient) -> None:
    created = await fc.create(spec_dict(["Alice", "Bob"], participation="reactive"))
    async with fc.talk(created.token, "Dana") as talk:
        await talk.send("Coffee or tea?")  # joins by itself; nobody iterates yet
        events = await collect(talk, until=TurnEnd)
        await talk.send("")  # refused by the server: an error to this talker alone
        refusal = await collect(talk, until=ErrorEvent)
    mine = [e for e in events if isinstance(e, TalkerMessage)]
    assert [(m.talker, m.content) for m in mine] == [("Dana", "Coffee or tea?")]
    reply = next(e for e in events if isinstance(e, BotMessage))
    assert reply.content.startswith("Alice answers Dana")
    error = refusal[-1]
    assert isinstance(error, ErrorEvent) and error.code == "empty_message"
    assert error.seq == talk.last_seq  # it repeats the last seq; it is not a session event
    with pytest.raises(StreamClosed):
        await talk.send("after close")


async def test_send_after_the_session_ended_raises_session_ended(fc: FellowshipClient) -> None:
    created = await fc.create(spec_dict(["Alice"], participation="reactive"))
    talk = fc.talk(created.token, "Dana")
    await talk.send("hello")
    await fc.end(created.token)
    events = await collect(talk)
    assert isinstance(events[-1], SessionEnd) and events[-1].reason == "client_request"
    with pytest.raises(SessionEnded):
        await talk.send("anyone?")


async def test_no_token_reaches_a_log_line(
    fc: FellowshipClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await fc.create(spec_dict(max_turns=2))
    await fc.status(created.token)
    await collect(fc.observe(created.observer_token))
    await collect(fc.observe(created.observer_token, transport="ws"))
    with pytest.raises(NotFound):
        await fc.status(UNKNOWN_TOKEN)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/v1/session/***" in text  # the requests were logged, without their tokens
    for token in (created.token, created.observer_token, UNKNOWN_TOKEN):
        assert token not in text
