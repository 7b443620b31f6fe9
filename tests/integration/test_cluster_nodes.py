"""Cluster mode with real nodes: three `fellowship serve` processes on PostgreSQL and Redis.

What SPEC §21 promises, checked from the outside with real clients (httpx, httpx-sse,
websockets) against three node processes sharing one database schema, one Redis prefix
and one mock backend (tests/support/cluster.py):

- a node killed with SIGKILL in the middle of a reply loses its session to another node
  within the lease, and members on the other nodes keep their connections and see one
  gapless stream; the reply that was cut becomes a tombstone with an `error` event, and
  a talker line or a request sent meanwhile waits for the new owner;
- a node frozen (SIGSTOP) past its lease finds, when it wakes, that the session moved on,
  and writes nothing more for it (fencing by epoch in PostgreSQL);
- any node answers any request as the owner would, errors included, and a client may
  reconnect to another node with its last seq and get exactly what it missed;
- a rolling restart (SIGTERM each node in turn, start it again) hands sessions over and
  loses nothing.

The mock backend runs in the test process, one for all nodes (over loopback, as
test_crash_recovery.py does), so that it can hold one node's reply for as long as a test
needs a reply "being generated". Every reply names the node that asked for it (`reply
<n> from node-<id>`), so each history position says which node wrote it.

Waits are for events (or, for another process's state, polls of it) bounded by
WAIT_SECONDS; the only timing asserted is the failover bound of SPEC §21.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import pytest

from tests.integration.conftest import SseReader, WsMember, ws_join
from tests.support.cluster import (
    Cluster,
    Stored,
    TaggingBackend,
    start_cluster,
    stop_cluster,
    until,
    writer_of,
)
from tests.support.engine import WAIT_SECONDS
from tests.support.services import Redis

LEASE_SECONDS: Final = 2.0
"""Short leases keep the failovers of these tests short (the default is 5 s)."""
FAILOVER_SLACK_SECONDS: Final = 2.0
"""Allowance on top of the failover bound checked (LEASE_SECONDS + 2 s) for a loaded machine."""
FAILOVER_BOUND: Final = LEASE_SECONDS + 2.0 + FAILOVER_SLACK_SECONDS

Event = dict[str, Any]


@pytest.fixture
async def cluster(
    tmp_path: Path, postgres_url: str, redis_service: Redis, redis_prefix: str
) -> AsyncIterator[Cluster]:
    """Nodes a, b and c, started together; killed afterwards, whatever happened."""
    async with TaggingBackend() as backend:
        nodes = await start_cluster(
            tmp_path,
            backend,
            database_url=postgres_url,
            redis_url=redis_service.url,
            redis_prefix=redis_prefix,
            lease_seconds=LEASE_SECONDS,
        )
        try:
            yield nodes
        finally:
            await stop_cluster(nodes)
            print(nodes.logs())  # pytest shows it when the test failed


def spec(participation: str, **options: Any) -> dict[str, Any]:
    """Two bots taking turns; enough turns for any test here."""
    return {
        "name": "cluster test",
        "bots": [
            {"name": "Alice", "system_prompt": "You are Alice. Be brief."},
            {"name": "Bob", "system_prompt": "You are Bob. Be brief."},
        ],
        "options": {"participation": participation, "max_turns": 2000, **options},
    }


# --- members across connections -------------------------------------------------------------


@dataclass
class Link:
    """One connection of a member to one node."""

    node: str
    since: int | None
    ws: WsMember | None = None
    sse: SseReader | None = None
    http: httpx.AsyncClient | None = None

    @property
    def events(self) -> list[Event]:
        if self.ws is not None:
            return self.ws.events
        assert self.sse is not None
        return self.sse.events

    @property
    def ended(self) -> bool:
        if self.ws is not None:
            return self.ws.closed
        assert self.sse is not None
        return self.sse.done

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self.sse is not None:
            await self.sse.stop()
        if self.http is not None:
            await self.http.aclose()


@dataclass
class Member:
    """A client of one session (WebSocket or SSE) whose connections may move between nodes."""

    name: str
    cluster: Cluster
    token: str
    transport: Literal["ws", "sse"] = "ws"
    role: str = "observer"
    talker_name: str | None = None
    links: list[Link] = field(default_factory=list)

    @property
    def link(self) -> Link:
        return self.links[-1]

    @property
    def events(self) -> list[Event]:
        return [event for link in self.links for event in link.events]

    @property
    def last_seq(self) -> int:
        return int(self.events[-1]["seq"])

    def of_type(self, *types: str) -> list[Event]:
        return [event for event in self.events if event["type"] in types]

    def contents(self, type_: str) -> list[str]:
        return [str(event["content"]) for event in self.of_type(type_)]

    async def connect(self, node_id: str, since: int | None = None) -> Member:
        node = self.cluster[node_id]
        if self.transport == "ws":
            ws = await ws_join(
                node.ws_url, self.token, role=self.role, name=self.talker_name, since=since
            )
            self.links.append(Link(node_id, since, ws=ws))
        else:
            http = httpx.AsyncClient(base_url=node.base_url, timeout=WAIT_SECONDS)
            headers = {} if since is None else {"Last-Event-ID": str(since)}
            reader = SseReader(http, f"/v1/session/{self.token}/stream", headers)
            self.links.append(Link(node_id, since, sse=reader, http=http))
        return self

    async def reconnect(self, node_id: str) -> None:
        """Close the current connection (if it is open) and connect to `node_id` with the
        last seq seen."""
        await self.link.close()
        await self.connect(node_id, since=self.last_seq)

    async def say(self, content: str) -> None:
        assert self.link.ws is not None
        await self.link.ws.say(content)

    async def wait(self, condition: Callable[[Member], bool], what: str) -> None:
        """Until `condition(self)`; fails at once if the current connection ends first."""

        def ready() -> bool:
            if condition(self):
                return True
            if self.link.ended:
                raise AssertionError(
                    f"{self.name}: connection to node {self.link.node} ended while waiting "
                    f"for {what}; last events: {self.link.events[-5:]}"
                )
            return False

        await until(ready, f"{self.name}: {what}")

    async def wait_ended(self) -> None:
        await until(lambda: self.link.ended, f"{self.name}: its connection to end")

    async def close(self) -> None:
        for link in self.links:
            await link.close()


@pytest.fixture
async def members() -> AsyncIterator[list[Member]]:
    """Members made by a test (append them); every connection is closed afterwards."""
    made: list[Member] = []
    yield made
    for member in made:
        await member.close()


def session_events(member: Member) -> list[Event]:
    """The member's events of the session stream, checked: `history` first, then every seq
    once and in order with no gap, across all its connections. A connection made with a
    seq (`since` / `Last-Event-ID`) must continue right after it, with no `history`.

    `pong` and errors meant for this client alone (they repeat the last seq) are left out.
    """
    out: list[Event] = []
    expected: int | None = None
    for number, link in enumerate(member.links):
        events = [event for event in link.events if event["type"] != "pong"]
        assert events, f"{member.name}: connection {number} (node {link.node}) got nothing"
        if link.since is None:
            assert events[0]["type"] == "history", (member.name, number, events[0])
        else:
            assert expected is not None and link.since + 1 == expected, (
                member.name,
                number,
                link.since,
                expected,
            )
            assert events[0]["type"] != "history", (
                f"{member.name}: a reconnect to node {link.node} with seq {link.since} got a "
                "fresh history instead of the missed events"
            )
        for event in events:
            if event["type"] == "history":
                assert number == 0 or link.since is None, (member.name, number)
                expected = int(event["seq"]) + 1
                out.append(event)
                continue
            if event["type"] == "error" and expected is not None and event["seq"] == expected - 1:
                continue  # an error for this client alone
            assert event["seq"] == expected, (
                f"{member.name}: seq {event['seq']} ({event['type']}) where {expected} was due "
                f"(connection {number}, node {link.node})"
            )
            expected += 1
            out.append(event)
    return out


def own_errors(events: list[Event]) -> list[Event]:
    """Errors meant for this client alone (a refusal of its own message): they repeat the
    seq of the event before them, where an `error` of the session has a seq of its own."""
    out: list[Event] = []
    previous: int | None = None
    for event in events:
        if event["type"] == "pong":
            continue
        if event["type"] == "error" and event["seq"] == previous:
            out.append(event)
            continue
        previous = event["seq"]
    return out


def check_member(member: Member, stored: Stored, history: list[Event]) -> list[Event]:
    """The member's stream is gapless (`session_events`), every event it was shown is the
    one PostgreSQL holds under that seq, and every message it saw is in history at the
    position it was shown at. Returns the session events."""
    events = session_events(member)
    by_turn = {message["turn"]: message for message in history}
    for event in events:
        if event["type"] == "history":
            for message in event["messages"]:
                if message["status"] in ("complete", "failed"):
                    kept = by_turn.get(message["turn"])
                    assert kept is not None, (member.name, message)
                    assert (kept["status"], kept["content"]) == (
                        message["status"],
                        message["content"],
                    ), (member.name, message, kept)
            continue
        assert stored.events.get(event["seq"]) == event, (
            f"{member.name} was shown seq {event['seq']} as {event}, "
            f"but the store holds {stored.events.get(event['seq'])}"
        )
        if event["type"] in ("bot_message", "talker_message"):
            kept = by_turn.get(event["turn"])
            assert kept is not None and kept["status"] == "complete", (member.name, event, kept)
            assert kept["content"] == event["content"], (member.name, event, kept)
    return events


def check_tombstone_announced(member: Member, turn: int) -> None:
    """The member was told, by an `error` event of the session, that the reply at `turn`
    was cut by a node that went away (docs/scale-out.md: `server_restart`)."""
    errors = [e for e in member.of_type("error") if e.get("turn") == turn]
    assert errors, f"{member.name} saw no error event for the tombstone at {turn}"
    assert errors[0]["code"] == "server_restart", errors


def check_positions(history: list[Event]) -> None:
    """History positions 1..N, each once, each complete or a tombstone."""
    assert [m["turn"] for m in history] == list(range(1, len(history) + 1))
    assert {m["status"] for m in history} <= {"complete", "failed"}, history


def check_stored_seqs(stored: Stored) -> None:
    """The stored events are numbered 1..N: nothing was lost between two owners."""
    seqs = sorted(stored.events)
    assert seqs == list(range(1, len(seqs) + 1)), seqs


def bot_turns_after(member: Member, turn: int) -> int:
    return sum(1 for event in member.of_type("bot_message") if event["turn"] > turn)


def has_ended(member: Member) -> bool:
    return bool(member.of_type("session_end"))


async def history_of(cluster: Cluster, node_id: str, token: str) -> list[Event]:
    answer = await cluster.request(node_id, "GET", f"/v1/session/{token}/history")
    assert answer.status_code == 200, answer.text
    messages: list[Event] = answer.json()["messages"]
    return messages


async def end_session(cluster: Cluster, node_id: str, token: str) -> None:
    answer = await cluster.request(node_id, "DELETE", f"/v1/session/{token}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "ended"
    assert answer.json()["end_reason"] == "client_request"


# --- failover ----------------------------------------------------------------------------------


async def test_a_killed_owner_s_session_goes_on_on_another_node_without_a_gap(
    cluster: Cluster, members: list[Member]
) -> None:
    backend = cluster.backend
    created = await cluster.create("a", spec("collaborative"))
    sid, token, observer_token = created["id"], created["token"], created["observer_token"]
    # The creating node owns it.
    assert await cluster.until_lease(sid, "b", lambda lease: True) == ("a", 1)
    sse_b = await Member("SSE observer on b", cluster, observer_token, "sse").connect("b")
    ws_c = await Member("WS observer on c", cluster, observer_token).connect("c")
    talker = await Member("talker on c", cluster, token, role="talker", talker_name="Dana").connect(
        "c"
    )
    members += [sse_b, ws_c, talker]
    watchers = [sse_b, ws_c]
    for member in [*watchers, talker]:
        await member.wait(lambda m: bool(m.of_type("history")), "history")

    said: list[str] = []

    async def say(content: str) -> None:
        said.append(content)
        await talker.say(content)
        for watcher in watchers:
            await watcher.wait(lambda m: content in m.contents("talker_message"), content)

    await say("before the kill, one")
    for watcher in watchers:
        await watcher.wait(lambda m: len(m.of_type("bot_message")) >= 3, "three bot replies")
    await say("before the kill, two")

    # Hold node a's next reply: it is "being generated" until a dies.
    backend.hold_next("a")
    await asyncio.wait_for(backend.held.wait(), WAIT_SECONDS)
    asked = backend.asked("a")
    # Every bot turn is one call and the watchers saw every turn start from the first, so
    # the held call is the turn of the asked-th turn_start.
    for watcher in watchers:
        await watcher.wait(lambda m: len(m.of_type("turn_start")) >= asked, "the held turn")
    cut = int(sse_b.of_type("turn_start")[asked - 1]["turn"])
    assert int(ws_c.of_type("turn_start")[asked - 1]["turn"]) == cut
    before_kill = {w.name: list(w.events) for w in watchers}
    assert all(e["turn"] != cut for w in watchers for e in w.of_type("bot_message"))

    killed_at = time.monotonic()
    await cluster["a"].kill()
    backend.release()
    # A talker line and a request sent to other nodes while nobody runs the session wait
    # for the new owner (docs/scale-out.md: they "wait (up to 7 s) and then reach the new
    # owner"), under one command id: the line is placed once.
    refusals = len(own_errors(talker.events))
    said.append("while the owner is dead")
    await talker.say("while the owner is dead")
    status_in_gap = asyncio.create_task(cluster.request("b", "GET", f"/v1/session/{token}"))

    def goes_on(member: Member) -> bool:
        return any(
            (e["type"] == "turn_start" and e["turn"] > cut)
            or (e["type"] in ("bot_message", "error") and e.get("turn") == cut)
            for e in member.events
        )

    await sse_b.wait(goes_on, "the session to go on after the kill")
    failover = time.monotonic() - killed_at
    # SPEC §21: another node takes the lease within LEASE_SECONDS (plus up to a third of
    # it for the next scan); asked: LEASE_SECONDS + 2 s, plus slack for a loaded machine.
    assert failover <= FAILOVER_BOUND, f"failover took {failover:.2f} s\n{cluster.logs()}"
    print(f"failover after SIGKILL: {failover:.2f} s")
    owner, epoch = await cluster.until_lease(sid, "b", lambda lease: lease[0] != "a")
    assert owner in ("b", "c") and epoch == 2

    def settled(member: Member) -> bool:
        return (
            "while the owner is dead" in member.contents("talker_message")
            or len(own_errors(member.events)) > refusals
        )

    await talker.wait(settled, "the line sent during the gap to be placed or refused")
    assert "while the owner is dead" in talker.contents("talker_message"), (
        f"the line sent during the gap was refused: {own_errors(talker.events)[-1]}"
    )
    answer = await status_in_gap
    assert answer.status_code == 200, f"status asked during the gap: {answer.text}"

    await say("after the failover, one")
    await say("after the failover, two")
    last_said = max(e["turn"] for e in sse_b.of_type("talker_message"))
    for watcher in watchers:
        await watcher.wait(lambda m: bot_turns_after(m, last_said) >= 2, "replies after it")

    await end_session(cluster, "b", token)
    for member in [*watchers, talker]:
        await member.wait(has_ended, "session_end")
        assert member.of_type("session_end")[-1]["reason"] == "client_request"
        assert len(member.links) == 1, f"{member.name} had to reconnect"

    history = await history_of(cluster, "b", token)
    stored = await cluster.stored(sid)
    check_positions(history)
    check_stored_seqs(stored)
    for member in [*watchers, talker]:
        check_member(member, stored, history)
    # Everything the watchers saw before the kill is in the history they see now.
    for watcher in watchers:
        for event in before_kill[watcher.name]:
            if event["type"] in ("bot_message", "talker_message"):
                assert history[event["turn"] - 1]["content"] == event["content"]
    # Each talker message is placed exactly once.
    talker_lines = [m["content"] for m in history if m["kind"] == "talker"]
    assert sorted(talker_lines) == sorted(said), (talker_lines, said)
    # Node a wrote the turns before the cut; the new owner every bot turn after it.
    for message in history:
        if message["kind"] != "bot" or message["status"] != "complete":
            continue
        expected = "a" if message["turn"] < cut else owner
        assert writer_of(message["content"]) == expected, message
    # The reply being generated when node a died is a tombstone, announced to everyone.
    assert history[cut - 1]["status"] == "failed", history[cut - 1]
    for member in [*watchers, talker]:
        check_tombstone_announced(member, cut)


# --- fencing -----------------------------------------------------------------------------------


async def test_an_owner_frozen_past_its_lease_writes_nothing_more_after_it_wakes(
    cluster: Cluster, members: list[Member]
) -> None:
    backend = cluster.backend
    created = await cluster.create("a", spec("autonomous"))
    sid, token, observer_token = created["id"], created["token"], created["observer_token"]
    sse_a = await Member("SSE observer on a", cluster, observer_token, "sse").connect("a")
    ws_b = await Member("WS observer on b", cluster, observer_token).connect("b")
    members += [sse_a, ws_b]
    for watcher in (sse_a, ws_b):
        await watcher.wait(lambda m: len(m.of_type("bot_message")) >= 2, "two bot replies")

    backend.hold_next("a")
    await asyncio.wait_for(backend.held.wait(), WAIT_SECONDS)
    # Autonomous, two bots, no talker: each call is one bot turn is one position.
    cut = backend.asked("a")
    for watcher in (sse_a, ws_b):
        await watcher.wait(
            lambda m: any(e["turn"] == cut for e in m.of_type("turn_start")), "the held turn"
        )
    assert await cluster.lease(sid, via="b") == ("a", 1)

    frozen_at = time.monotonic()
    cluster["a"].freeze()
    owner, epoch = await cluster.until_lease(sid, "b", lambda lease: lease[0] != "a")
    taken_after = time.monotonic() - frozen_at
    print(f"take-over of a frozen owner: {taken_after:.2f} s")
    assert owner in ("b", "c") and epoch == 2
    await ws_b.wait(lambda m: bot_turns_after(m, cut) >= 3, "three turns of the new owner")
    assert time.monotonic() - frozen_at > LEASE_SECONDS  # frozen past its lease
    # The held reply is answered now, into the frozen node's socket: when it wakes, it
    # has a reply in hand (or nearly) that it must not write.
    backend.release()
    before = await cluster.stored(sid)
    cluster["a"].thaw()

    lost = f"lost its lease on session {sid}"
    await until(lambda: lost in cluster["a"].log, "node a to log that it lost the lease")
    # Turns of the new owner measure the time node a had to write, if it were to.
    reached = max(e["turn"] for e in ws_b.of_type("bot_message"))
    await ws_b.wait(lambda m: bot_turns_after(m, reached) >= 3, "three more turns")
    assert await cluster.lease(sid, via="a") == (owner, 2)  # node a sees it too
    await end_session(cluster, "c", token)
    await ws_b.wait(has_ended, "session_end")

    after = await cluster.stored(sid)
    # Nothing stored before node a woke was rewritten (a write of a stale owner lands on
    # positions and seqs the new owner had used already).
    for message in before.messages:
        if message["status"] in ("complete", "failed"):
            assert after.messages[message["turn"] - 1] == message
    for seq, event in before.events.items():
        assert after.events[seq] == event, seq
    check_stored_seqs(after)
    history = await history_of(cluster, "a", token)
    check_positions(history)
    assert [m["turn"] for m in history] == [m["turn"] for m in after.messages]
    # The reply node a held when it froze is a tombstone; the new owner said so.
    assert history[cut - 1]["status"] == "failed", history[cut - 1]
    check_tombstone_announced(ws_b, cut)
    # Node a wrote the turns before the cut, never one after; its held reply nowhere.
    for message in history:
        if message["kind"] == "bot" and message["status"] == "complete":
            assert writer_of(message["content"]) == ("a" if message["turn"] < cut else owner)
    assert all(event.get("content") != backend.held_content for event in after.events.values())
    # What each member was shown is what the store holds under that seq: no number was
    # shown with two meanings, not even by the node that lost the session.
    check_member(ws_b, after, history)
    check_member(sse_a, after, history)
    assert f"took over session {sid}" not in cluster["a"].log


# --- any node answers --------------------------------------------------------------------------


async def answers(cluster: Cluster, method: str, path: str) -> dict[str, tuple[int, Any]]:
    """(status, JSON body) of the same request to every node."""
    out: dict[str, tuple[int, Any]] = {}
    for node_id in cluster.nodes:
        answer = await cluster.request(node_id, method, path)
        out[node_id] = (answer.status_code, answer.json())
    return out


async def settled_answers(cluster: Cluster, path: str) -> dict[str, tuple[int, Any]]:
    """GET `path` of every node until they agree (a `presence` may still be on its way),
    or until WAIT_SECONDS have passed: the last answers either way."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        answered = await answers(cluster, "GET", path)
        if len({repr(body) for body in answered.values()}) == 1 or time.monotonic() > deadline:
            return answered
        await asyncio.sleep(0.2)


def same_everywhere(answered: dict[str, tuple[int, Any]]) -> tuple[int, Any]:
    """The one answer every node gave (they must agree)."""
    first = next(iter(answered.values()))
    assert all(other == first for other in answered.values()), answered
    return first


async def test_every_node_answers_commands_and_replays_like_the_owner(
    cluster: Cluster, members: list[Member]
) -> None:
    created = await cluster.create("a", spec("reactive"))
    sid, token, observer_token = created["id"], created["token"], created["observer_token"]
    assert await cluster.until_lease(sid, "c", lambda lease: True) == ("a", 1)
    talker = await Member("talker on c", cluster, token, role="talker", talker_name="Dana").connect(
        "c"
    )
    sse = await Member("SSE observer", cluster, observer_token, "sse").connect("b")
    ws = await Member("WS observer", cluster, observer_token).connect("a")
    members += [talker, sse, ws]
    for member in (talker, sse, ws):
        await member.wait(lambda m: bool(m.of_type("history")), "history")

    async def exchange(content: str) -> None:
        """A talker line and the bot's reply to it, seen by the talker."""
        await talker.say(content)
        await talker.wait(
            lambda m: any(
                e["type"] == "bot_message" and e["turn"] > placed(m, content) for e in m.events
            ),
            f"the reply to {content!r}",
        )

    def placed(member: Member, content: str) -> int:
        turns = [e["turn"] for e in member.of_type("talker_message") if e["content"] == content]
        return turns[0] if turns else 10**9

    await exchange("hello from c")

    # Status and history: the same body from every node (presence may still settle).
    status_path, history_path = f"/v1/session/{token}", f"/v1/session/{token}/history"
    answered = await settled_answers(cluster, status_path)
    status_code, status = same_everywhere(answered)
    assert status_code == 200 and status["state"] == "active"
    # Talkers of every node are counted; observers only where the loop runs (the WS one
    # on node a, not the SSE one on node b): docs/scale-out.md, "What is per node".
    assert status["members"] == {"talkers": ["Dana"], "observers": 1}
    assert same_everywhere(await answers(cluster, "GET", history_path))[0] == 200

    # Pause on a node that does not own the session; refusals are those of one process.
    paused = await cluster.request("b", "POST", f"/v1/session/{token}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    for watcher in (sse, ws, talker):
        await watcher.wait(lambda m: bool(m.of_type("session_paused")), "session_paused")
    code, body = same_everywhere(await answers(cluster, "POST", f"/v1/session/{token}/pause"))
    assert (code, body["code"]) == (409, "invalid_state")

    # A talker line while paused is placed at once and answered after the resume.
    await talker.say("while paused")
    await sse.wait(lambda m: "while paused" in m.contents("talker_message"), "the queued line")
    paused_status = same_everywhere(await answers(cluster, "GET", status_path))
    assert paused_status[1]["state"] == "paused"
    resumed = await cluster.request("c", "POST", f"/v1/session/{token}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["state"] == "active"
    await talker.wait(
        lambda m: any(
            e["type"] == "bot_message" and e["turn"] > placed(m, "while paused") for e in m.events
        ),
        "the reply to the line sent while paused",
    )
    code, body = same_everywhere(await answers(cluster, "POST", f"/v1/session/{token}/resume"))
    assert (code, body["code"]) == (409, "invalid_state")
    # The observer token may not steer, wherever it is used; an unknown token is unknown.
    for method, path in (("POST", "/pause"), ("POST", "/resume"), ("DELETE", "")):
        code, body = same_everywhere(
            await answers(cluster, method, f"/v1/session/{observer_token}{path}")
        )
        assert (code, body["code"]) == (403, "observer_token")
    code, body = same_everywhere(await answers(cluster, "POST", "/v1/session/fsk_nope/pause"))
    assert (code, body["code"]) == (404, "not_found")
    # Talker errors come back to the talker, typed: a second talker (max_talkers 1) on a
    # node that does not own the session, and a line too long.
    second = await ws_join(cluster["b"].ws_url, token, role="talker", name="Eve")
    await second.wait_closed()
    assert second.close_code == 4009 and second.events[0]["code"] == "too_many_talkers"
    errors_before = len(talker.of_type("error"))
    await talker.say("x" * 8001)
    await talker.wait(lambda m: len(m.of_type("error")) > errors_before, "the refusal")
    assert talker.of_type("error")[-1]["code"] == "message_too_long"

    # The SSE observer leaves node b and comes back on node c with its last seq.
    await sse.link.close()
    left_at = sse.last_seq
    await exchange("while the SSE observer is away")
    await sse.connect("c", since=left_at)
    await sse.wait(lambda m: m.last_seq >= talker.last_seq, "the missed events")
    assert sse.link.events[0]["seq"] == left_at + 1
    # The WS observer leaves node a (the owner) and comes back on node b with `since`.
    await ws.link.close()
    await exchange("while the WS observer is away")
    await ws.connect("b", since=ws.last_seq)
    await ws.wait(lambda m: m.last_seq >= talker.last_seq, "the missed events")

    # DELETE from a node that does not own it ends the session for everyone.
    await end_session(cluster, "b", token)
    for member in (talker, sse, ws):
        await member.wait(has_ended, "session_end")
    code, body = same_everywhere(await answers(cluster, "DELETE", f"/v1/session/{token}"))
    assert (code, body["code"]) == (409, "session_ended")
    ended = same_everywhere(await answers(cluster, "GET", status_path))[1]
    assert ended["state"] == "ended" and ended["end_reason"] == "client_request"

    history = await history_of(cluster, "c", token)
    stored = await cluster.stored(sid)
    check_positions(history)
    assert all(m["status"] == "complete" for m in history)
    assert [m["content"] for m in history if m["kind"] == "talker"] == [
        "hello from c",
        "while paused",
        "while the SSE observer is away",
        "while the WS observer is away",
    ]
    # The owner never changed: node a wrote every reply.
    assert {writer_of(m["content"]) for m in history if m["kind"] == "bot"} == {"a"}
    for member in (talker, sse, ws):
        check_member(member, stored, history)


# --- rolling restart ---------------------------------------------------------------------------


async def until_all_alive(cluster: Cluster, via: str) -> None:
    """Until the cluster view (asked of `via`) shows every node alive."""
    view: dict[str, Any] = {}

    def alive() -> dict[str, bool]:
        return {node["node_id"]: node["alive"] for node in view.get("nodes", [])}

    async with asyncio.timeout(WAIT_SECONDS):
        while alive() != {node_id: True for node_id in cluster.nodes}:
            view = await cluster.view(via)
            await asyncio.sleep(0.1)


async def test_a_rolling_restart_keeps_every_session_going_and_loses_nothing(
    cluster: Cluster, members: list[Member]
) -> None:
    order = ("a", "b", "c")
    sessions = [await cluster.create(node_id, spec("autonomous")) for node_id in order]
    watchers: list[Member] = []
    for number, created in enumerate(sessions):
        transport: Literal["ws", "sse"] = "ws" if number % 2 == 0 else "sse"
        watcher = Member(f"observer of session {number}", cluster, created["observer_token"],
                         transport)  # fmt: skip
        await watcher.connect(order[(number + 1) % len(order)])
        watchers.append(watcher)
    members += watchers
    for watcher in watchers:
        await watcher.wait(lambda m: len(m.of_type("bot_message")) >= 2, "two bot replies")

    # How many times each session's owner was stopped under it: the most tombstones it
    # may have (a reply cut by the stop).
    handovers = [0] * len(sessions)
    for node_id in order:
        for number, created in enumerate(sessions):
            lease = await cluster.lease(created["id"], via=node_id)
            if lease is not None and lease[0] == node_id:
                handovers[number] += 1
        reached = [max(e["turn"] for e in w.of_type("bot_message")) for w in watchers]
        code = await cluster[node_id].stop()
        assert code == 0, cluster[node_id].tail()
        live = [other for other in order if other != node_id]
        for number, watcher in enumerate(watchers):
            if watcher.link.node == node_id:
                await watcher.wait_ended()
                await watcher.reconnect(live[number % len(live)])
        # Every session goes on without the stopped node.
        for number, watcher in enumerate(watchers):
            await watcher.wait(
                lambda m, turn=reached[number]: bot_turns_after(m, turn) >= 2,
                f"two turns after node {node_id} stopped",
            )
        await cluster[node_id].start()
        await until_all_alive(cluster, via=node_id)

    for number, created in enumerate(sessions):
        await end_session(cluster, order[number], created["token"])
    for watcher in watchers:
        await watcher.wait(has_ended, "session_end")

    for number, (created, watcher) in enumerate(zip(sessions, watchers, strict=True)):
        history = await history_of(cluster, order[(number + 2) % 3], created["token"])
        stored = await cluster.stored(created["id"])
        check_positions(history)
        check_stored_seqs(stored)
        events = check_member(watcher, stored, history)
        # A reply cut by a stop of its owner is a tombstone, announced by an `error`
        # event; so may be the last position, a reply the DELETE cut.
        tombstones = [m["turn"] for m in history[:-1] if m["status"] == "failed"]
        assert len(tombstones) <= handovers[number], (tombstones, handovers, len(history))
        announced = {e["turn"] for e in events if e["type"] == "error" and "turn" in e}
        assert set(tombstones) <= announced, (tombstones, announced)
        print(
            f"session {number}: {len(history)} positions, tombstones {tombstones}, last "
            f"{history[-1]['status']}; its owner stopped {handovers[number]} times"
        )
        assert len(watcher.links) > 1  # its node was stopped under it at least once
