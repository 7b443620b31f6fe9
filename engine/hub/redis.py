"""Hubs for cluster mode: one session's events reach its members on every node, through Redis.

The node that runs a session (its owner) holds a `RedisHub`: a `LocalHub` that numbers,
stores and delivers exactly as in one process, and then appends every *stored* frame to
the session's Redis stream. Every other node with members of that session holds a
`FollowerHub`, fed from that stream by the node's one reader task (`RedisEvents`), and
delivers to its own members the same frames in the same order.

Why Streams and not Pub/Sub: a stream is a log. A follower reads "everything after the
last entry I read", so a dropped connection or a slow node loses nothing while the
entries are still kept (the owner trims each stream to about `EVENT_BUFFER_SIZE`, as the
store trims its events); a node that starts following late reads the tail. Pub/Sub
forgets whatever was sent while a subscriber was away, so every blip would cost a trip
to the store or a resync.

The entry ID is the event's seq (`<seq>-0`). Redis refuses an ID that is not above the
stream's last one, so an owner that lost its lease cannot slip an old number in after its
successor's, and "after seq N" is simply "after ID N-0". Each entry also carries `p`, the
seq of the stored event before it. A follower whose last delivered seq is not `p` missed
something (trimmed while it lagged, not published while Redis was down, stored by an
owner that died before publishing) and fills the gap from the store. When the store no
longer has it either, the follower's members are closed with `CLOSE_RECONNECT` and
reconnect to a fresh `history`, as on one node when the replay buffer turned over.
Numbering may have holes (files from older versions); `p` makes them no gaps.

Only stored frames go to Redis: a frame the store refused (after which the session
ends) is delivered to the owner's own members only, as `LocalHub` does, because its
number may be used again by the next owner, and a follower must never show one number
with two meanings. The session's end travels as entry `<seq>-1` after its last event,
with the reason, so followers close their members the same way.

If Redis is down the owner goes on: commits are stored and delivered to its own
members, publishing is dropped with a warning, and followers fill from the store once
entries flow again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine.errors import NotOwner
from engine.events import BaseEvent, HistoryEvent
from engine.history import Message
from engine.hub.base import (
    CLOSE_RECONNECT,
    CLOSE_SESSION_ENDED,
    CLOSE_SHUTDOWN,
    Frame,
    Hub,
    HubOptions,
    Snapshot,
    Subscription,
)
from engine.hub.local import LocalHub

log = logging.getLogger("fellowship.hub")

LoadStored = Callable[[int], Awaitable[list[Frame]]]
"""The stored frames of a session with seq greater than the one given, in order."""

STREAM_TTL_SECONDS: Final = 24 * 3600
"""A stream nobody writes to vanishes after this long (refreshed at every write); followers
then read from the store, so this bounds Redis memory, not correctness."""
READ_BLOCK_MS: Final = 5000
"""How long one XREAD of the reader waits for entries before it asks again."""
READ_COUNT: Final = 1000
"""Most entries one XREAD takes from each stream."""
FUTURE_SINCE_WAIT: Final = 2.0
"""Seconds a follower holds a member whose `since` it has not received yet (the member
saw it on another node a moment ago) before answering it with a `history`."""
RETRY_SECONDS: Final = 0.5
RETRY_MAX_SECONDS: Final = 5.0
"""First and longest wait of the reader before it asks a Redis that failed again."""
OUTBOX_LIMIT: Final = 100_000
"""Entries waiting to be published; past it the oldest are dropped (followers fill them
from the store)."""
COMMAND_TIMEOUT: Final = 5.0
"""Seconds a Redis command may take before it counts as failed."""
HAND_OVER_REASONS: Final = frozenset({CLOSE_SHUTDOWN, CLOSE_RECONNECT})
"""Close reasons of an owner's hub after which the session goes on under another node:
its end is not announced to the followers."""


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One entry of a session's stream: an event frame, or the end of the session."""

    seq: int
    prev: int  # the seq of the stored event before this one (the end: its own seq)
    frame: Frame | None
    end: str | None = None  # the close reason, for the end entry

    @staticmethod
    def parse(entry_id: bytes | str, fields: dict[Any, Any]) -> StreamEntry:
        """Read an entry as XREAD / XRANGE return it."""
        text = {_text(k): _text(v) for k, v in fields.items()}
        seq_text, _, sub = _text(entry_id).partition("-")
        seq = int(seq_text)
        if sub not in ("", "0"):
            return StreamEntry(seq, seq, None, text.get("end", CLOSE_SESSION_ENDED))
        return StreamEntry(seq, int(text["p"]), Frame(seq, text["t"], text["d"]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(slots=True)
class _Outgoing:
    key: str
    entry_id: str
    fields: dict[Any, Any]
    maxlen: int
    end: bool  # an end entry never creates a stream (an expired one stays gone)
    again: bool = False  # sent again by a new owner: the stream most likely has it


class RedisEvents:
    """One node's link to Redis for its hubs: stream names, one publisher, one reader.

    `owner(options)` is the node's `HubFactory` for the sessions it runs; `follow` builds
    the hub of a session another node runs, and `promote` turns such a follower into the
    owner when this node takes the session over.
    """

    def __init__(self, url: str, prefix: str, *, node_id: str | None = None) -> None:
        self.prefix = prefix
        self.node_id = node_id or secrets.token_hex(6)
        common: dict[str, Any] = {"socket_connect_timeout": COMMAND_TIMEOUT}
        name = f"fellowship-{self.node_id}"  # what CLIENT LIST shows an operator
        self.redis = Redis.from_url(
            url, socket_timeout=COMMAND_TIMEOUT, client_name=f"{name}-hub", **common
        )
        # The reader blocks in XREAD on a connection of its own.
        self.reader_name = f"{name}-reader"
        self._reader_redis = Redis.from_url(
            url,
            socket_timeout=READ_BLOCK_MS / 1000 + COMMAND_TIMEOUT,
            client_name=self.reader_name,
            **common,
        )
        self._outbox: deque[_Outgoing] = deque(maxlen=OUTBOX_LIMIT)
        self._outbox_ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._followers: dict[str, FollowerHub] = {}  # by stream key
        self._cursors: dict[str, str] = {}  # by stream key: the last entry ID read
        self._wake_key = f"{prefix}wake:{self.node_id}"
        self._wake_cursor = "0-0"
        self._tasks: list[asyncio.Task[None]] = []
        self._wakers: set[asyncio.Task[None]] = set()
        self._closing = False
        self.publish_failing = False
        self.read_failing = False

    def stream_key(self, session_id: str) -> str:
        """The Redis key of a session's event stream."""
        return f"{self.prefix}events:{session_id}"

    async def open(self) -> None:
        """Start the publisher and the reader (Redis need not answer yet)."""
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="redis-hub-publisher"),
            asyncio.create_task(self._read_loop(), name="redis-hub-reader"),
        ]

    async def close(self) -> None:
        """Publish what is queued (briefly), stop both tasks and the connections."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.published(), COMMAND_TIMEOUT)
        self._closing = True
        tasks = [*self._tasks, *self._wakers]
        for task in tasks:
            task.cancel()
        # redis-py may turn a cancelled read into a connection error; `_closing` then
        # ends the loop, and a task that still lingers is not waited for forever.
        if tasks:
            await asyncio.wait(tasks, timeout=COMMAND_TIMEOUT)
        self._tasks = []
        await self.redis.aclose()
        await self._reader_redis.aclose()

    # --- hubs ----------
    def owner(self, options: HubOptions) -> RedisHub:
        """The hub of a session this node runs (the node's `HubFactory`)."""
        return RedisHub(self, options)

    async def follow(self, options: HubOptions, load: LoadStored) -> FollowerHub:
        """The hub of a session another node runs, caught up from the store.

        Its buffer starts with the stored tail; from there the reader takes the stream,
        so nothing published after the store was read is missed.
        """
        hub = FollowerHub(self, options, load)
        hub.restore(await load(0), options.first_seq)
        self._register(hub)
        return hub

    async def promote(self, follower: FollowerHub, options: HubOptions) -> RedisHub:
        """Make this node the owner of a session it followed (after taking its lease).

        The follower first delivers every stored event it had not received; the owner
        then continues the numbering after the store's last seq and takes over the
        follower's members without closing them (they see one gapless stream).
        `options.first_seq` is the last seq the session's row recorded.
        """
        self.unregister(follower)
        stored = await follower.catch_up()
        hub = RedisHub(self, options)
        hub.restore(stored, max(options.first_seq, follower.durable_seq))
        hub.adopt(follower.hand_over())
        return hub

    # --- publishing ----------
    def append(
        self, key: str, frames: list[Frame], *, prev: int, maxlen: int, again: bool = False
    ) -> None:
        """Queue stored frames for the stream `key`, each linked to the one before.

        `again`: frames a new owner sends once more in case its predecessor could not;
        Redis refusing them (the stream has them) is expected and not worth a warning.
        """
        for frame in frames:
            fields = {"p": str(prev), "t": frame.type, "d": frame.data}
            self._outbox.append(_Outgoing(key, f"{frame.seq}-0", fields, maxlen, False, again))
            prev = frame.seq
        self._wake_publisher()

    def append_end(self, key: str, last_seq: int, reason: str, *, maxlen: int) -> None:
        """Queue the end of a session, after its last published event."""
        self._outbox.append(_Outgoing(key, f"{last_seq}-1", {"end": reason}, maxlen, end=True))
        self._wake_publisher()

    def _wake_publisher(self) -> None:
        self._idle.clear()
        self._outbox_ready.set()

    async def published(self) -> None:
        """Wait until everything queued so far was sent to Redis (or given up on)."""
        await self._idle.wait()

    async def _publish_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch = list(self._outbox)
            self._outbox.clear()
            if batch:
                await self._send(batch)
            if not self._outbox:
                self._idle.set()

    async def _send(self, batch: list[_Outgoing]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for item in batch:
                    pipe.xadd(
                        item.key, item.fields, id=item.entry_id, maxlen=item.maxlen,
                        approximate=True, nomkstream=item.end,
                    )  # fmt: skip
                for key in dict.fromkeys(item.key for item in batch):
                    pipe.expire(key, STREAM_TTL_SECONDS)
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            if not self.publish_failing:
                log.warning(
                    "Redis unreachable, events are not published to other nodes "
                    "(they fill them from the store): %s", exc,
                )  # fmt: skip
            self.publish_failing = True
            return
        if self.publish_failing:
            log.info("Redis reachable again, publishing events to other nodes")
        self.publish_failing = False
        for item, result in zip(batch, results, strict=False):
            if isinstance(result, Exception):
                # An ID not above the stream's top: another owner published this seq
                # (this node lost the session) or the end was published already.
                level = logging.DEBUG if item.again else logging.WARNING
                log.log(level, "event %s of %s not published: %s", item.entry_id, item.key, result)

    # --- reading ----------
    async def entries(self, session_id: str) -> list[StreamEntry]:
        """Every entry a session's stream holds now, oldest first (tests, diagnostics)."""
        raw: Any = await self.redis.xrange(self.stream_key(session_id))
        return [StreamEntry.parse(entry_id, fields) for entry_id, fields in raw]

    def _register(self, hub: FollowerHub) -> None:
        key = hub.stream_key
        previous = self._followers.get(key)
        if previous is not None and previous is not hub:
            previous.close(CLOSE_RECONNECT)
        self._followers[key] = hub
        self._cursors[key] = f"{hub.durable_seq}-0"
        self._wake_reader()

    def unregister(self, hub: FollowerHub) -> None:
        """Stop reading a follower's stream (it closed, or its node takes the session)."""
        if self._followers.get(hub.stream_key) is hub:
            del self._followers[hub.stream_key]
            self._cursors.pop(hub.stream_key, None)

    def _wake_reader(self) -> None:
        # An entry on the node's own wake stream ends the reader's blocking XREAD, so a
        # new follower is read from at once. A stream, not a signal: an entry added just
        # before the XREAD is still seen by it.
        async def wake() -> None:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.xadd(self._wake_key, {"w": "1"}, maxlen=1)
                await self.redis.expire(self._wake_key, STREAM_TTL_SECONDS)

        task = asyncio.create_task(wake(), name="redis-hub-wake")
        self._wakers.add(task)  # kept, so the task is not collected before it ran
        task.add_done_callback(self._wakers.discard)

    async def _read_loop(self) -> None:
        delay = RETRY_SECONDS
        while True:
            streams: dict[Any, Any] = {self._wake_key: self._wake_cursor, **self._cursors}
            try:
                reply: Any = await self._reader_redis.xread(
                    streams, count=READ_COUNT, block=READ_BLOCK_MS
                )
            except (RedisError, OSError) as exc:
                if self._closing:
                    return
                if not self.read_failing:
                    log.warning("Redis unreachable, followed sessions wait: %s", exc)
                self.read_failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            if self.read_failing:
                log.info("Redis reachable again, followed sessions catch up")
            self.read_failing = False
            delay = RETRY_SECONDS
            for raw_key, raw_entries in reply or []:
                key = _text(raw_key)
                if not raw_entries:
                    continue
                last_id = _text(raw_entries[-1][0])
                if key == self._wake_key:
                    self._wake_cursor = last_id
                    continue
                hub = self._followers.get(key)
                if hub is None:
                    continue  # unfollowed while the read was under way
                self._cursors[key] = last_id
                hub.receive([StreamEntry.parse(i, f) for i, f in raw_entries])


class RedisHub(LocalHub):
    """The owner's hub: `LocalHub` numbering, storing and delivery, then the stream.

    Every frame is published after it is stored and delivered here, linked to the stored
    frame before it. `close` sends the session's end to the followers, except for
    `CLOSE_SHUTDOWN`: a node that stops hands the session over, it does not end it.
    """

    def __init__(self, events: RedisEvents, options: HubOptions) -> None:
        self._events = events
        self.session_id = options.session_id
        self.stream_key = events.stream_key(options.session_id)
        self._store = options.persist
        self._stored_upto = options.first_seq  # the last seq the store took
        self._published_upto = options.first_seq  # the last stored seq sent to the stream
        self._announce_end = True
        self._end_sent = False
        # Whether this hub delivered anything itself: a copy of an ended session read
        # back from the store (to answer a request) has nothing to announce.
        self._delivered = False
        super().__init__(
            buffer_size=options.buffer_size,
            member_queue_size=options.member_queue_size,
            now=options.now,
            first_seq=options.first_seq,
            persist=None if options.persist is None else self._store_then_note,
        )

    async def _store_then_note(self, frames: list[Frame], messages: list[Message]) -> None:
        assert self._store is not None
        await self._store(frames, messages)
        if frames:
            self._stored_upto = frames[-1].seq

    def _deliver(self, frames: list[Frame]) -> None:
        super()._deliver(frames)
        self._delivered = True
        if self._store is None:
            self._stored_upto = frames[-1].seq  # nothing is stored: everything counts
        # Frames the store refused have numbers at or below what it took next: skipped.
        stored = [f for f in frames if self._published_upto < f.seq <= self._stored_upto]
        if stored:
            self._events.append(
                self.stream_key, stored, prev=self._published_upto, maxlen=self._buffer_size
            )
            self._published_upto = stored[-1].seq

    def restore(self, stored: list[Frame], recorded_last_seq: int) -> None:
        """As `LocalHub.restore`; the stream then continues after the restored seq."""
        super().restore(stored, recorded_last_seq)
        self._stored_upto = self._published_upto = self.last_seq
        # The owner before may have died after storing its last events and before
        # publishing them; followers would learn of them only from the link of the next
        # entry, and a quiet session has none. So the last stored event goes out again,
        # linked to the one before: followers fill the gap now. (Found by the replay
        # property test; Redis refuses it, harmlessly, when the stream has it already.)
        if stored and stored[-1].seq == self.last_seq:
            prev = stored[-2].seq if len(stored) > 1 else stored[-1].seq - 1
            self._events.append(
                self.stream_key, stored[-1:], prev=prev, maxlen=self._buffer_size, again=True
            )

    def close(self, reason: str = CLOSE_SESSION_ENDED) -> None:
        """End every member's stream here, and on every node unless the session goes on
        elsewhere (this node stops, or lost the session: `HAND_OVER_REASONS`)."""
        self._announce_end = reason not in HAND_OVER_REASONS
        super().close(reason)

    def _close_members(self) -> None:
        super()._close_members()
        if self._announce_end and self._delivered and not self._end_sent:
            self._end_sent = True
            self._events.append_end(
                self.stream_key, self._published_upto, self._close_reason,
                maxlen=self._buffer_size,
            )  # fmt: skip

    def adopt(self, members: list[Subscription]) -> None:
        """Take over members a follower had, with what they have queued."""
        for sub in members:
            sub.move_to(self.discard)
            self._members[sub.member_id] = sub
        if self._members:
            self._ids = itertools.count(max(self._members) + 1)


@dataclass(slots=True)
class _Waiting:
    """A member whose `since` is ahead of what this follower has delivered so far."""

    sub: Subscription
    since: int
    snapshot: Snapshot | None  # None: it has its `history` already (`subscribe_from`)
    timer: asyncio.TimerHandle | None = None


class FollowerHub(Hub):
    """The hub of a session another node runs: its stream, delivered to members here.

    Frames arrive in seq order, each once; a gap is filled from the store (see the
    module's docstring). A follower has the same replay buffer as the owner, so
    `subscribe` with `since` works as on the owner. It cannot publish: talker messages
    and commands go to the owner, and `publish`/`commit` raise `NotOwner`.
    """

    def __init__(self, events: RedisEvents, options: HubOptions, load: LoadStored) -> None:
        self._events = events
        self.session_id = options.session_id
        self.stream_key = events.stream_key(options.session_id)
        self._load = load
        self._buffer: deque[Frame] = deque()
        self._buffer_size = options.buffer_size
        self._queue_size = options.member_queue_size
        self._now = options.now
        self._members: dict[int, Subscription] = {}
        self._waiting: list[_Waiting] = []
        self._ids = itertools.count(1)
        self._held: list[StreamEntry] = []  # arrived while a gap is being filled
        self._filler: asyncio.Task[None] | None = None
        self._close_reason = CLOSE_SESSION_ENDED
        self.durable_seq = options.first_seq
        self.floor = options.first_seq
        self.closed = False
        self.on_persist_error = None
        self.resyncs = 0  # gaps the store could not fill (members were sent to reconnect)

    @property
    def member_count(self) -> int:
        """Members subscribed through this follower."""
        return len(self._members) + len(self._waiting)

    def publish(self, event: BaseEvent) -> None:
        """Refused: only the owner numbers events."""
        raise NotOwner(f"session {self.session_id} runs on another node")

    async def commit(self, message: Message | None, events: list[BaseEvent]) -> None:
        """Refused: only the owner stores messages."""
        raise NotOwner(f"session {self.session_id} runs on another node")

    async def flushed(self) -> None:
        """Wait until a gap being filled from the store is filled."""
        while (filler := self._filler) is not None:
            await asyncio.shield(filler)

    # --- what the stream brings ----------
    def receive(self, entries: list[StreamEntry]) -> None:
        """Deliver entries read from the stream, in order; a gap is filled first."""
        if self._filler is not None:
            self._held.extend(entries)
            return
        if self.closed:
            return
        batch: list[Frame] = []
        linked = self.durable_seq  # the last seq delivered, or about to be
        for index, entry in enumerate(entries):
            if entry.frame is not None and entry.seq <= linked:
                continue  # delivered already (from the store, or read twice)
            # The end after events all delivered here is no gap.
            gap = entry.prev != linked and not (entry.frame is None and entry.seq <= linked)
            if batch and (gap or entry.frame is None):
                self._deliver(batch)
                batch = []
            if gap:
                self._held = entries[index:]
                self._filler = asyncio.create_task(self._fill(entry.prev), name="hub-fill")
                return
            if entry.frame is None:
                self.close(entry.end or CLOSE_SESSION_ENDED)
                return
            batch.append(entry.frame)
            linked = entry.seq
        if batch:
            self._deliver(batch)

    async def _fill(self, target: int) -> None:
        try:
            stored = await self._stored_after_durable()
            if stored is not None:
                stored = [f for f in stored if f.seq <= target]
            if stored is None or (stored[-1].seq if stored else self.durable_seq) != target:
                self._resync(target)
            elif stored:
                self._deliver(stored)
        except Exception as exc:
            log.warning("session %s: events %d..%d not read from the store: %s",
                        self.session_id, self.durable_seq + 1, target, exc)  # fmt: skip
            self._resync(target)
        finally:
            self._filler = None
        held, self._held = self._held, []
        if held and not self.closed:
            self.receive(held)

    async def _stored_after_durable(self) -> list[Frame] | None:
        """Every stored frame after `durable_seq`, or None when the store no longer
        holds them all (its oldest kept event is past `durable_seq`)."""
        if self.durable_seq == 0:
            stored = await self._load(0)
            return stored if not stored or stored[0].seq == 1 else None
        stored = await self._load(self.durable_seq - 1)
        if not stored or stored[0].seq != self.durable_seq:
            return None
        return stored[1:]

    async def catch_up(self) -> list[Frame]:
        """Deliver every stored frame not delivered yet (before this node takes over).

        Returns the stored frames, for the new owner's replay buffer.
        """
        await self.flushed()
        missing = await self._stored_after_durable()
        if missing is None:
            self._resync(self.durable_seq)
        elif missing:
            self._deliver(missing)
        return await self._load(0)

    def _deliver(self, frames: list[Frame]) -> None:
        buffer = self._buffer
        for frame in frames:
            if len(buffer) >= self._buffer_size:
                self.floor = buffer.popleft().seq
            buffer.append(frame)
            for member in list(self._members.values()):
                member.push(frame)
        self.durable_seq = frames[-1].seq
        if self._waiting:
            caught_up = [w for w in self._waiting if w.since <= self.durable_seq]
            for waiting in caught_up:
                self._stop_waiting(waiting)

    def _resync(self, target: int) -> None:
        """The events up to `target` cannot be delivered exactly: members start again."""
        log.warning("session %s: events after %d are gone, members resync at %d",
                    self.session_id, self.durable_seq, target)  # fmt: skip
        self.resyncs += 1
        for member in list(self._members.values()):
            member.close(CLOSE_RECONNECT)
        self._buffer.clear()
        self.durable_seq = self.floor = target

    # --- members ----------
    def subscribe(self, snapshot: Snapshot, since: int | None = None) -> Subscription:
        """Register a member, as `LocalHub.subscribe` does.

        A `since` above what this node has delivered is most likely an event the member
        saw on another node a moment ago: the member waits (up to `FUTURE_SINCE_WAIT`)
        for this node to catch up and then gets its exact replay, or else a `history`.
        `snapshot` must describe the session as of `durable_seq` when it is called.
        """
        sub = Subscription(next(self._ids), self._queue_size, self.discard)
        if since is not None and since > self.durable_seq and not self.closed:
            waiting = _Waiting(sub, since, snapshot)
            waiting.timer = asyncio.get_running_loop().call_later(
                FUTURE_SINCE_WAIT, self._stop_waiting, waiting
            )
            self._waiting.append(waiting)
            return sub
        self._join(sub, snapshot, since)
        return sub

    def subscribe_from(self, history: HistoryEvent, since: int | None = None) -> Subscription:
        """Register a member that starts from `history`, read from the store at `history.seq`.

        A member on this node cannot get its snapshot from the session (it runs on
        another node), so it gets one from the store, which may be ahead of or behind
        what this follower has delivered; the member then gets exactly the frames after
        it. A `since` this follower can replay exactly is replayed instead.
        """
        if since is not None and self.floor <= since <= self.durable_seq:
            return self.subscribe(lambda: history, since)
        sub = Subscription(next(self._ids), self._queue_size, self.discard)
        sub.push(Frame(history.seq, history.type, history.model_dump_json()))
        if history.seq > self.durable_seq and not self.closed:
            waiting = _Waiting(sub, history.seq, None)
            waiting.timer = asyncio.get_running_loop().call_later(
                FUTURE_SINCE_WAIT, self._stop_waiting, waiting
            )
            self._waiting.append(waiting)
            self._fill_from_store()
        else:
            self._join(sub, None, history.seq)
        return sub

    def _fill_from_store(self) -> None:
        """Deliver what the store has and the stream has not brought yet."""
        if self._filler is None and not self.closed:
            self._filler = asyncio.create_task(self._catch_up_quietly(), name="hub-fill")

    async def _catch_up_quietly(self) -> None:
        try:
            missing = await self._stored_after_durable()
            if missing:
                self._deliver(missing)
        except Exception as exc:
            log.warning("session %s: events not read from the store: %s", self.session_id, exc)
        finally:
            self._filler = None
        held, self._held = self._held, []
        if held and not self.closed:
            self.receive(held)

    def _stop_waiting(self, waiting: _Waiting) -> None:
        if waiting not in self._waiting:
            return
        self._waiting.remove(waiting)
        if waiting.timer is not None:
            waiting.timer.cancel()
        if not waiting.sub.closed:
            self._join(waiting.sub, waiting.snapshot, waiting.since)

    def _join(self, sub: Subscription, snapshot: Snapshot | None, since: int | None) -> None:
        if since is not None and self.floor <= since <= self.durable_seq:
            for frame in self._buffer:
                if frame.seq > since:
                    sub.push(frame)
        elif snapshot is None:
            # It has its history already and what follows cannot be delivered exactly.
            sub.close(CLOSE_RECONNECT)
            return
        else:
            history = snapshot()
            history.seq = self.durable_seq
            history.ts = self._now()
            sub.push(Frame(history.seq, history.type, history.model_dump_json()))
        if self.closed:
            sub.close(self._close_reason)
        elif not sub.closed:
            self._members[sub.member_id] = sub

    def restore(self, stored: list[Frame], recorded_last_seq: int) -> None:
        """Start from the store: the same rule as `LocalHub.restore`."""
        if stored and stored[-1].seq < recorded_last_seq:
            stored = []
        last = max(recorded_last_seq, stored[-1].seq if stored else 0, self.durable_seq)
        self.durable_seq = self.floor = last
        kept = stored[-self._buffer_size :]
        self._buffer = deque(kept)
        if kept:
            self.floor = kept[0].seq - 1

    def discard(self, sub: Subscription) -> None:
        """Forget a member (called when its subscription closes)."""
        self._members.pop(sub.member_id, None)

    def last_frame(self, type: str, upto: int) -> Frame | None:
        """The newest frame of `type` with seq at most `upto` still in the buffer."""
        for frame in reversed(self._buffer):
            if frame.type == type and frame.seq <= upto:
                return frame
        return None

    def hand_over(self) -> list[Subscription]:
        """Give up this follower's members to the new owner (see `RedisEvents.promote`)."""
        for waiting in list(self._waiting):
            self._stop_waiting(waiting)
        members = list(self._members.values())
        self._members.clear()
        self.closed = True
        return members

    def close(self, reason: str = CLOSE_SESSION_ENDED) -> None:
        """End every member's stream here (after what they have queued); stop reading."""
        self.closed = True
        self._close_reason = reason
        self._events.unregister(self)
        for waiting in list(self._waiting):
            self._stop_waiting(waiting)
        for member in list(self._members.values()):
            member.close(reason)
