"""The command bus on a real Redis: two nodes in this process, each with its own connections.

Node "a" runs the sessions (its handler records what it was asked); node "b" only sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pydantic import JsonValue

from engine.cluster.bus import Command, CommandBus, RemoteError, raise_remote
from engine.errors import (
    InternalError,
    LLMError,
    OwnerUnreachable,
    SessionEnded,
    TooManyTalkers,
)
from server.errors import status_for
from tests.support.services import Redis as RedisService

Handler = Callable[[Command], Awaitable[JsonValue]]


class Owner:
    """A handler that records every command it ran and answers with what it was sent."""

    def __init__(self) -> None:
        self.ran: list[Command] = []
        self.delay = 0.0

    async def __call__(self, command: Command) -> JsonValue:
        self.ran.append(command)
        if command.kind == "end":
            raise SessionEnded(f"session {command.session} has ended")
        if command.kind == "pause":
            raise RuntimeError("a bug")
        await asyncio.sleep(self.delay)
        return {"session": command.session, "kind": command.kind, "payload": command.payload}


StartBus = Callable[..., Awaitable[CommandBus]]


@pytest.fixture
async def start_bus(redis_service: RedisService, redis_prefix: str) -> AsyncIterator[StartBus]:
    started: list[CommandBus] = []

    async def start(node_id: str, handler: Handler | None = None, **kw: float) -> CommandBus:
        bus = CommandBus(redis_service.url, redis_prefix, node_id, handler, **kw)
        await bus.open()
        started.append(bus)
        return bus

    yield start
    for bus in started:
        await bus.close()


async def test_a_command_reaches_the_owner_and_its_result_comes_back(
    start_bus: StartBus,
) -> None:
    owner = Owner()
    await start_bus("a", owner)
    sender = await start_bus("b")
    result = await sender.send("a", "s1", "talk", {"talker": "Dana", "content": "hi"})
    assert result == {
        "session": "s1", "kind": "talk", "payload": {"talker": "Dana", "content": "hi"},
    }  # fmt: skip
    assert [c.kind for c in owner.ran] == ["talk"]


async def test_a_typed_error_comes_back_as_the_same_class(start_bus: StartBus) -> None:
    await start_bus("a", Owner())
    sender = await start_bus("b")
    with pytest.raises(SessionEnded) as caught:
        await sender.send("a", "s1", "end")
    assert caught.value.message == "session s1 has ended"
    assert caught.value.code == "session_ended"
    # Anything else the handler raised is an internal error, its details stay on the owner.
    with pytest.raises(InternalError):
        await sender.send("a", "s1", "pause")


def test_an_error_is_rebuilt_by_its_class_name() -> None:
    with pytest.raises(TooManyTalkers, match="full"):
        raise_remote(RemoteError(type="TooManyTalkers", code="too_many_talkers", message="full"))
    # A class whose constructor wants more keeps its class and the code it was raised with.
    with pytest.raises(LLMError) as caught:
        raise_remote(RemoteError(type="LLMError", code="llm_timeout", message="slow"))
    assert (caught.value.code, caught.value.message) == ("llm_timeout", "slow")
    for unknown in ("NoSuchError", "Final", "BaseModel"):
        with pytest.raises(InternalError, match="odd"):
            raise_remote(RemoteError(type=unknown, code="x", message="odd"))


async def test_a_duplicate_id_runs_once_and_gets_the_first_reply(start_bus: StartBus) -> None:
    owner = Owner()
    await start_bus("a", owner)
    sender = await start_bus("b")
    first = await sender.send("a", "s1", "talk", {"content": "once"}, command_id="m-1")
    again = await sender.send("a", "s1", "talk", {"content": "once"}, command_id="m-1")
    assert again == first
    assert len(owner.ran) == 1
    # Both at once (a retry racing the original): still placed once, both answered.
    both = await asyncio.gather(
        sender.send("a", "s1", "talk", {"content": "twice"}, command_id="m-2"),
        sender.send("a", "s1", "talk", {"content": "twice"}, command_id="m-2"),
    )
    assert both[0] == both[1]
    assert len(owner.ran) == 2


async def test_no_owner_reading_is_owner_unreachable(start_bus: StartBus) -> None:
    sender = await start_bus("b", reply_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(OwnerUnreachable) as caught:
        await sender.send("nobody", "s1", "resume")
    assert 0.25 <= loop.time() - started < 3
    assert caught.value.code == "owner_unreachable"
    assert status_for(caught.value) == 503


async def test_concurrent_commands_keep_their_replies_apart(start_bus: StartBus) -> None:
    owner = Owner()
    owner.delay = 0.01
    await start_bus("a", owner)
    senders = [await start_bus("b"), await start_bus("c")]
    sends = [senders[i % 2].send("a", f"s{i % 5}", "talk", {"n": i}) for i in range(60)]
    results = await asyncio.gather(*sends)
    for i, result in enumerate(results):
        assert result == {"session": f"s{i % 5}", "kind": "talk", "payload": {"n": i}}
    assert len(owner.ran) == 60


async def test_one_sessions_commands_run_in_the_order_of_the_stream(
    start_bus: StartBus,
) -> None:
    owner = Owner()
    await start_bus("a", owner)
    sender = await start_bus("b")
    # Many at once, without waiting for replies in between: the owner must run them in
    # the order its stream holds them, not in the order their handlers happen to finish.
    await asyncio.gather(*(sender.send("a", "s1", "talk", {"n": i}) for i in range(30)))
    entries: Any = await sender.redis.xrange(sender.stream_key("a"))
    in_stream = [Command.model_validate_json(fields[b"c"]).payload["n"] for _, fields in entries]
    assert [c.payload["n"] for c in owner.ran] == in_stream
    assert sorted(in_stream) == list(range(30))  # type: ignore[type-var]
