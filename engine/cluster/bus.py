"""Commands between cluster nodes: a request reaches the node that runs a session, and
its answer or typed error comes back (SPEC §21, cluster mode).

Any node serves any request, but only a session's owner may change it. A node that
gets a talker message or a command (talk, pause, resume, end, delete) for a session
another node runs hands it to that node through a `CommandBus`:

- each node reads its own command stream `<prefix>node:<node id>:commands`, blocking
  in XREAD on a connection of its own;
- the sender appends the `Command` to the owner's stream and waits (BLPOP) on the
  command's reply key `<prefix>reply:<id>`;
- the owner runs the command through its handler and pushes the `Reply` to that key,
  which expires shortly after (nobody may be waiting any more);
- an error the handler raised travels as its class name and message, and the sender
  raises the same class from `engine.errors` again; no reply in time raises
  `OwnerUnreachable`.

Delivery is at least once: a command whose sender timed out may still run when the
owner catches up, and a sender may retry. Every command therefore carries an id that
the owner remembers for `DEDUP_SECONDS` (SET NX): a command seen before is not run
again, its sender gets the first run's reply. A retry should reuse the id; that is
what places a retried talker message once.

Commands of one session run one after the other on the owner, in the order they were
read, so talker messages keep their order; commands of different sessions run side by
side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

from pydantic import BaseModel, JsonValue
from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine import errors
from engine.errors import FellowshipError, InternalError, OwnerUnreachable

log = logging.getLogger("fellowship.cluster")

CommandKind = Literal[
    "talk", "pause", "resume", "end", "delete", "fork",
    "status", "history", "transcript", "join", "leave", "touch",
]  # fmt: skip
"""What a command asks of the owner: place a talker message, one of the controls, a
read of the live session, or news of a member connected to another node."""

REPLY_TIMEOUT: Final = 5.0
"""Seconds a sender waits for the owner's reply before it gives up (`OwnerUnreachable`)."""
REPLY_TTL_SECONDS: Final = 60
"""A reply nobody took (its sender gave up) vanishes after this long."""
DEDUP_SECONDS: Final = 600
"""How long an owner remembers a command id, and the reply it gave to it."""
PENDING_SECONDS: Final = 30
"""How long a command counts as running before its id may be run again: a node that
died mid-command must not block a retry on the next owner for `DEDUP_SECONDS`."""
STREAM_MAXLEN: Final = 10_000
"""About how many commands a node's stream keeps (older ones were answered or dropped)."""
STREAM_TTL_SECONDS: Final = 24 * 3600
"""The stream of a node nobody sends to vanishes after this long."""
READ_BLOCK_MS: Final = 5000
"""How long one XREAD of the reader waits for commands before it asks again."""
READ_COUNT: Final = 100
"""Most commands one XREAD takes."""
COMMAND_TIMEOUT: Final = 5.0
"""Seconds a plain Redis command may take before it counts as failed."""
RETRY_SECONDS: Final = 0.5
RETRY_MAX_SECONDS: Final = 5.0
"""First and longest wait of the reader before it asks a Redis that failed again."""

_PENDING: Final = "pending"  # the remembered value of a command id while it runs


class Command(BaseModel):
    """One request for the node that runs `session`."""

    id: str
    session: str
    kind: CommandKind
    payload: dict[str, JsonValue] = {}
    reply_to: str  # the Redis list the sender waits on


class RemoteError(BaseModel):
    """A typed error raised by the owner's handler, as it travels back."""

    type: str  # the class name in engine.errors
    code: str
    message: str


class Reply(BaseModel):
    """The owner's answer: the handler's result, or the error it raised."""

    id: str
    result: JsonValue = None
    error: RemoteError | None = None


CommandHandler = Callable[[Command], Awaitable[JsonValue]]
"""Runs a command on the owner (the SessionManager); raises a `FellowshipError` to refuse."""


def raise_remote(error: RemoteError) -> None:
    """Raise `error` as the class of engine.errors it names (unknown: `InternalError`)."""
    cls = getattr(errors, error.type, None)
    if not (isinstance(cls, type) and issubclass(cls, FellowshipError)):
        raise InternalError(error.message)
    try:
        exc = cls(error.message)
    except TypeError:
        # Its constructor wants more than a message (e.g. LLMError's code): the class,
        # code and message are what a caller and the HTTP mapping look at.
        exc = cls.__new__(cls)
        Exception.__init__(exc, error.message)
        exc.message = error.message
    if exc.code != error.code:
        exc.code = error.code  # a code chosen at the raise (LLMError)
    raise exc


class CommandBus:
    """One node's end of the command bus: sends commands, and runs those sent to it.

    Without a `handler` the node only sends. `open` starts the reader, `close` stops it.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        node_id: str,
        handler: CommandHandler | None = None,
        *,
        reply_timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self.prefix = prefix
        self.node_id = node_id
        self.reply_timeout = reply_timeout
        self._handler = handler
        name = f"fellowship-{node_id}"  # what CLIENT LIST shows an operator
        # Waiting senders block one pooled connection each; the socket must outlast BLPOP.
        self.redis = Redis.from_url(
            url,
            socket_timeout=reply_timeout + COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            client_name=f"{name}-bus",
        )
        self._reader_redis = Redis.from_url(
            url,
            socket_timeout=READ_BLOCK_MS / 1000 + COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            client_name=f"{name}-bus-reader",
        )
        self._reader: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._queues: dict[str, _SessionQueue] = {}  # by session: one command at a time
        self._closing = False

    def stream_key(self, node_id: str) -> str:
        """The Redis key of a node's command stream."""
        return f"{self.prefix}node:{node_id}:commands"

    def reply_key(self, command_id: str) -> str:
        """The Redis list a command's reply is pushed to."""
        return f"{self.prefix}reply:{command_id}"

    def _seen_key(self, command_id: str) -> str:
        return f"{self.prefix}cmd:{command_id}"

    async def open(self) -> None:
        """Start reading this node's commands (only with a handler)."""
        if self._handler is None:
            return
        # Commands sent while no process of this node read were given up by their
        # senders: start after the stream's current end.
        cursor = "0-0"
        with contextlib.suppress(RedisError, OSError):
            last: Any = await self.redis.xrevrange(self.stream_key(self.node_id), count=1)
            if last:
                cursor = _text(last[0][0])
        self._reader = asyncio.create_task(self._read_loop(cursor), name="command-bus-reader")

    async def close(self) -> None:
        """Stop reading, let running commands finish briefly, close the connections."""
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader], timeout=COMMAND_TIMEOUT)
            self._reader = None
        if self._running:
            await asyncio.wait(set(self._running), timeout=COMMAND_TIMEOUT)
        await self.redis.aclose()
        await self._reader_redis.aclose()

    # --- sending ----------
    async def send(
        self,
        owner: str,
        session: str,
        kind: CommandKind,
        payload: dict[str, JsonValue] | None = None,
        *,
        command_id: str | None = None,
    ) -> JsonValue:
        """Run a command on the node `owner` and return its handler's result.

        Raises the handler's typed error, or `OwnerUnreachable` when no reply came within
        the reply timeout (the command may still run later: retry with the same
        `command_id` to have it run at most once).
        """
        command_id = command_id or secrets.token_hex(16)
        command = Command(
            id=command_id, session=session, kind=kind, payload=payload or {},
            reply_to=self.reply_key(command_id),
        )  # fmt: skip
        stream = self.stream_key(owner)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    stream, {"c": command.model_dump_json()}, maxlen=STREAM_MAXLEN,
                    approximate=True,
                )  # fmt: skip
                pipe.expire(stream, STREAM_TTL_SECONDS)
                await pipe.execute()
            popped: Any = await self.redis.blpop([command.reply_to], timeout=self.reply_timeout)
        except (RedisError, OSError) as exc:
            message = f"Redis did not carry the command to node {owner}: {exc}"
            raise OwnerUnreachable(message) from exc
        if popped is None:
            raise OwnerUnreachable(
                f"node {owner} did not answer a {kind} command for session {session} within "
                f"{self.reply_timeout:g} s"
            )
        reply = Reply.model_validate_json(popped[1])
        if reply.error is not None:
            raise_remote(reply.error)
        return reply.result

    # --- running ----------
    async def _read_loop(self, cursor: str) -> None:
        key = self.stream_key(self.node_id)
        delay = RETRY_SECONDS
        while True:
            try:
                read: Any = await self._reader_redis.xread(
                    {key: cursor}, count=READ_COUNT, block=READ_BLOCK_MS
                )
            except (RedisError, OSError) as exc:
                if self._closing:
                    return
                log.warning("Redis unreachable, commands for this node wait: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            delay = RETRY_SECONDS
            for _key, entries in read or []:
                for entry_id, fields in entries:
                    cursor = _text(entry_id)
                    self._start(fields)

    def _start(self, fields: dict[Any, Any]) -> None:
        raw: Any = fields.get(b"c", fields.get("c"))
        try:
            command = Command.model_validate_json(raw)
        except ValueError as exc:
            log.warning("a malformed command was dropped: %s", exc)
            return
        # Created in read order: the session's lock (FIFO) keeps that order.
        task = asyncio.create_task(self._run(command), name=f"command-{command.kind}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, command: Command) -> None:
        queue = self._queues.setdefault(command.session, _SessionQueue())
        queue.users += 1
        try:
            async with queue.lock:
                reply = await self._reply_to(command)
        finally:
            queue.users -= 1
            if queue.users == 0:
                del self._queues[command.session]
        if reply is not None:
            await self._push(command, reply)

    async def _reply_to(self, command: Command) -> Reply | None:
        """Run the command once per id; the reply to send, or None (runs elsewhere)."""
        seen = self._seen_key(command.id)
        try:
            first = await self.redis.set(seen, _PENDING, nx=True, ex=PENDING_SECONDS)
            if not first:
                remembered: Any = await self.redis.get(seen)
                if remembered is None or _text(remembered) == _PENDING:
                    return None  # another process runs it; its reply goes to the same key
                return Reply.model_validate_json(remembered)
        except (RedisError, OSError) as exc:
            log.warning("command %s not run, Redis unreachable: %s", command.id, exc)
            return None
        reply = await self._handle(command)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.set(seen, reply.model_dump_json(), ex=DEDUP_SECONDS)
        return reply

    async def _handle(self, command: Command) -> Reply:
        assert self._handler is not None
        try:
            result = await self._handler(command)
        except FellowshipError as exc:
            error = RemoteError(type=type(exc).__name__, code=exc.code, message=exc.message)
            return Reply(id=command.id, error=error)
        except Exception:
            log.exception("command %s (%s) failed", command.id, command.kind)
            failure = InternalError("the command failed on the node that runs the session")
            error = RemoteError(type="InternalError", code=failure.code, message=failure.message)
            return Reply(id=command.id, error=error)
        return Reply(id=command.id, result=result)

    async def _push(self, command: Command, reply: Reply) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(command.reply_to, reply.model_dump_json())
                pipe.expire(command.reply_to, REPLY_TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("reply to command %s lost, Redis unreachable: %s", command.id, exc)


class _SessionQueue:
    """The lock that runs one session's commands in turn (FIFO), and how many wait on it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
