"""Replay across restarts, as a property: hub + store under random interleavings.

A model server keeps one session's history and events in a real store (SQLite,
PostgreSQL or the in-memory one) through the same hub the engine uses. Hypothesis interleaves
messages being committed, plain events, writes making progress, the kept buffer
being trimmed, crashes (whatever was not stored is gone, as after `kill -9`) with
restarts from the store, and clients reconnecting with the last `seq` they saw or
an earlier one. Every client rebuilds the conversation from what it receives; at
the end each one's view equals the stored history, and no client ever got a `seq`
twice or out of order.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import HistoryEvent, StateChanged, TalkerMessage, parse_event
from engine.history import Message
from engine.hub import Frame, LocalHub, Subscription
from engine.store.base import EventRecord, SessionRecord, Store
from engine.store.in_memory import MemoryStore
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SESSION = "s1"
CLIENTS = 3


@dataclass
class Client:
    """A member that rebuilds the conversation from its stream, as an app would."""

    view: dict[int, str] = field(default_factory=dict)
    seen: list[int] = field(default_factory=list)  # every seq received, in order
    views: dict[int, dict[int, str]] = field(default_factory=dict)  # view as of each seq
    sub: Subscription | None = None

    def read(self) -> None:
        assert self.sub is not None
        for frame in self.sub.take():
            event = parse_event(frame.data)
            if isinstance(event, HistoryEvent):
                self.view = {m.turn: m.content for m in event.messages}
            elif isinstance(event, TalkerMessage):
                assert event.turn not in self.view, f"turn {event.turn} delivered twice"
                self.view[event.turn] = event.content
            if self.seen:
                assert frame.seq > self.seen[-1], (self.seen[-1], frame.seq)
            self.seen.append(frame.seq)
            self.views[frame.seq] = dict(self.view)
        if self.sub.closed:
            self.sub = None  # told to reconnect (its missed events were trimmed meanwhile)


class ModelServer:
    """One session of a server process: in-memory history plus a hub writing to `store`."""

    def __init__(self, store: Store, buffer: int) -> None:
        self.store = store
        self.buffer = buffer
        self.history: list[Message] = []
        self.hub = self._hub()
        self.commits: list[asyncio.Task[None]] = []

    def _hub(self) -> LocalHub:
        return LocalHub(buffer_size=self.buffer, member_queue_size=10_000, persist=self._persist)

    async def _persist(self, frames: list[Frame], messages: list[Message]) -> None:
        await asyncio.sleep(0)  # the write takes time: a crash now means it never happened
        records = [EventRecord(seq=f.seq, type=f.type, data=f.data) for f in frames]
        await self.store.save_events(SESSION, records, messages=messages, keep_last=self.buffer)

    def snapshot(self) -> HistoryEvent:
        return HistoryEvent(messages=list(self.history))

    def say(self, text: str) -> None:
        self.commits.append(asyncio.create_task(self._say(text)))

    async def _say(self, text: str) -> None:
        # As `Session.commit` does: the history changes in the same step as the write is
        # queued, so no member can join between the two (and see the message twice).
        turn = len(self.history) + 1
        message = Message(turn=turn, kind="talker", speaker="Dana", content=text, ts=T0)
        self.history.append(message)
        event = TalkerMessage(talker="Dana", talker_id="t", turn=turn, content=text)
        await self.hub.commit(message, [event])

    def note(self) -> None:
        self.hub.publish(StateChanged(state="idle"))

    async def settle(self) -> None:
        await self.hub.flushed()
        await asyncio.gather(*self.commits)
        self.commits.clear()

    async def crash_and_restart(self) -> None:
        """Everything in memory is gone; a write already under way ends as a whole."""
        doomed = [*self.commits, *([self.hub._flusher] if self.hub._flusher else [])]
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        self.commits.clear()
        (row,) = await self.store.load_sessions(include_ended=True)  # after that write
        self.history = await self.store.load_messages(SESSION)
        stored = await self.store.load_events(SESSION)
        self.hub = self._hub()
        self.hub.restore([Frame(e.seq, e.type, e.data) for e in stored], row.last_seq)

    async def save_row(self) -> None:
        (row,) = await self.store.load_sessions(include_ended=True)
        await self.store.save_session(row.model_copy(update={"last_seq": self.hub.durable_seq}))


operation = st.one_of(
    st.tuples(st.just("say"), st.integers(1, 3)),
    st.tuples(st.just("note"), st.just(0)),
    st.tuples(st.just("step"), st.integers(1, 3)),
    st.tuples(st.just("settle"), st.just(0)),
    st.tuples(st.just("save_row"), st.just(0)),
    st.tuples(st.just("crash"), st.just(0)),
    st.tuples(st.just("drop"), st.integers(0, CLIENTS - 1)),
    st.tuples(st.just("reconnect"), st.integers(0, CLIENTS - 1)),
    st.tuples(st.just("rewind"), st.integers(0, CLIENTS * 100)),
)


async def run_scenario(
    kind: str, buffer: int, operations: list[tuple[str, int]], postgres_url: str = ""
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store: Store = {
            "memory": MemoryStore,
            "sqlite": lambda: SqliteStore(Path(folder) / "f.db"),
            "postgres": lambda: PostgresStore(postgres_url),
        }[kind]()
        await store.open()
        await store.delete_session(SESSION)  # PostgreSQL: what the example before left
        try:
            record = SessionRecord(
                id=SESSION, spec_json="{}", full_token_hash="f", observer_token_hash="o",
                created_at=T0,
            )  # fmt: skip
            await store.save_session(record)
            await check_scenario(ModelServer(store, buffer), operations)
        finally:
            await store.close()


def connect(server: ModelServer, client: Client, since: int | None) -> None:
    client.sub = server.hub.subscribe(server.snapshot, since)


async def check_scenario(server: ModelServer, operations: list[tuple[str, int]]) -> None:
    clients = [Client() for _ in range(CLIENTS)]
    for client in clients:
        connect(server, client, None)
    said = 0
    for name, arg in operations:
        if name == "say":
            for _ in range(arg):
                said += 1
                server.say(f"line {said}")
        elif name == "note":
            server.note()
        elif name == "step":  # let writes under way make that much progress
            for _ in range(arg):
                await asyncio.sleep(0)
        elif name == "settle":
            await server.settle()
        elif name == "save_row":
            await server.settle()
            await server.save_row()
        elif name == "crash":
            for client in clients:
                if client.sub is not None:
                    client.read()
                    client.sub = None
            await server.crash_and_restart()
        elif name == "drop":
            client = clients[arg]
            if client.sub is not None:
                client.read()
                client.sub.close("left", drain=False)
                client.sub = None
        elif name == "reconnect":
            client = clients[arg]
            if client.sub is None:
                connect(server, client, client.seen[-1] if client.seen else None)
        else:  # rewind: a client that lost its own state goes back to a seq it had seen
            client = clients[arg % CLIENTS]
            if client.sub is None and client.seen:
                since = client.seen[(arg // CLIENTS) % len(client.seen)]
                client.view = dict(client.views[since])
                client.seen = [seq for seq in client.seen if seq <= since]
                connect(server, client, since)
        for client in clients:
            if client.sub is not None:
                client.read()
    await server.settle()
    stored = {m.turn: m.content for m in await server.store.load_messages(SESSION)}
    assert stored == {m.turn: m.content for m in server.history}
    for client in clients:
        while True:  # as an app would: read, and reconnect whenever the stream is closed
            if client.sub is None:
                connect(server, client, client.seen[-1] if client.seen else None)
            await server.hub.flushed()
            client.read()
            if client.sub is not None:
                break
        assert client.view == stored


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["memory", "sqlite"]),
    buffer=st.integers(2, 12),
    operations=st.lists(operation, max_size=40),
)
def test_every_client_ends_with_the_stored_history_across_restarts(
    kind: str, buffer: int, operations: list[tuple[str, int]]
) -> None:
    asyncio.run(run_scenario(kind, buffer, operations))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(buffer=st.integers(2, 12), operations=st.lists(operation, max_size=40))
def test_every_client_ends_with_the_stored_history_across_restarts_on_postgres(
    postgres_url: str, buffer: int, operations: list[tuple[str, int]]
) -> None:
    # Fewer examples: each one goes to a real server, in the test's own schema.
    asyncio.run(run_scenario("postgres", buffer, operations, postgres_url))
