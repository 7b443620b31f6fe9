"""The cluster's store: everything durable in PostgreSQL, through `asyncpg`.

Selected by `DATABASE_URL=postgresql://…` (SPEC §21). It keeps the promises of
`SqliteStore`, call for call (the contract tests run against both):

- every write is one transaction, committed before the call returns, and shielded
  from cancellation: once started it commits or rolls back as a whole;
- the calls for one session run one after the other, in the order they were made,
  even when a caller is cancelled meanwhile (its write still goes first); a read of
  all sessions waits for the writes already under way, so it sees them;
- every failure comes out as a `StorageError` that says what happened and where
  (the URL without its password).

What differs from SQLite: calls for different sessions run side by side on a pool
of connections, and several nodes may share the database. The schema is migrated at
start-up under an advisory lock (`engine.store.postgres_migrations`), so nodes that
start together are safe.

Ownership (cluster mode): the `leases` table says which node runs each session, under
which epoch, until when; `nodes` holds each node's heartbeat. Expiry is always judged
by the database's clock (`now()`), never by a node's. Once the node's lease keeper sets
`fencing`, every write of a session is conditional on the epoch the node held when it
made the call, in the same statement or transaction: the lease row is read `FOR SHARE`,
so a take-over (which updates that row) either waits for the write to commit, or
commits first and the write then finds the new epoch and writes nothing (`Fenced`). A
node that lost a session's lease can never write for it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from engine.config import Settings
from engine.history import Message
from engine.llm.limiter import FairLimiter
from engine.llm.types import Usage
from engine.store.base import (
    ClusterSnapshot,
    EventRecord,
    Fenced,
    LeaseInfo,
    NodeInfo,
    SessionRecord,
    SpecRewrite,
    StorageError,
    StorageProblem,
    Store,
    StoredSession,
    unknown_session,
)
from engine.store.postgres_migrations import Connection, migrate

log = logging.getLogger("fellowship.store")

T = TypeVar("T")
V = TypeVar("V")
Row: TypeAlias = asyncpg.Record | Sequence[Any]

POOL_SIZE: Final = 10
"""Connections one node keeps to the database at most (PostgreSQL allows 100 by default)."""
CONNECT_TIMEOUT: Final = 10.0
"""Seconds allowed to open one connection."""
COMMAND_TIMEOUT: Final = 60.0
"""Longest a statement may take before its call fails (problem `io`)."""
WIPE_TIMEOUT: Final = 3600.0
"""Longest the rewrite of the sessions table (after secrets changed) may take."""
NODE_FORGET_SECONDS: Final = 600.0
"""How long a node that stopped heartbeating (and runs nothing) stays in `nodes`."""

_FOREIGN_KEY_VIOLATION: Final = "23503"
# By SQLSTATE, then by its class (the first two characters).
_CODES: Final[dict[str, tuple[StorageProblem, str]]] = {
    "25006": ("read_only", "the database is read-only (a standby?)"),
    "42501": ("read_only", "the database user may not write these tables"),
    "53100": ("disk_full", "the database server's disk is full"),
    "XX001": ("corrupt", "the database reports damaged data"),
    "XX002": ("corrupt", "the database reports a damaged index"),
    "55P03": ("locked", "a lock the write needs is held elsewhere"),
    "40P01": ("locked", "the write deadlocked with another one"),
    "40001": ("locked", "the write conflicted with a concurrent one"),
    "57014": ("locked", "the statement was cancelled (too slow, or by an operator)"),
    "3D000": ("cannot_open", "the database does not exist"),
    "3F000": ("cannot_open", "the schema does not exist"),
}
_CLASSES: Final[dict[str, tuple[StorageProblem, str]]] = {
    "08": ("io", "the connection to the database failed"),
    "28": ("cannot_open", "the database refused the login"),
    "53": ("disk_full", "the database server ran out of resources"),
    "57": ("io", "the database server is shutting down or restarting"),
    "58": ("io", "the database server had an I/O error"),
}

# Plain SQL text, never built from input; every value goes through a placeholder.
_UPSERT_SESSION = """
    INSERT INTO sessions (id, name, spec_json, full_token_hash, observer_token_hash, state,
                          created_at, ended_at, end_reason, warnings, bot_turns, last_seq)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (id) DO UPDATE SET
        name = excluded.name, spec_json = excluded.spec_json,
        full_token_hash = excluded.full_token_hash,
        observer_token_hash = excluded.observer_token_hash, state = excluded.state,
        created_at = excluded.created_at, ended_at = excluded.ended_at,
        end_reason = excluded.end_reason, warnings = excluded.warnings,
        bot_turns = excluded.bot_turns, last_seq = excluded.last_seq
"""
_ALL_SESSIONS = """
    SELECT id, name, spec_json, full_token_hash, observer_token_hash, state, created_at,
           ended_at, end_reason, warnings, bot_turns, last_seq
    FROM sessions ORDER BY position
"""
_LIVE_SESSIONS = """
    SELECT id, name, spec_json, full_token_hash, observer_token_hash, state, created_at,
           ended_at, end_reason, warnings, bot_turns, last_seq
    FROM sessions WHERE state != 'ended' ORDER BY position
"""
_SESSION_BY_ID = """
    SELECT id, name, spec_json, full_token_hash, observer_token_hash, state, created_at,
           ended_at, end_reason, warnings, bot_turns, last_seq
    FROM sessions WHERE id = $1
"""
_ALL_SPECS = "SELECT id, spec_json FROM sessions ORDER BY position FOR UPDATE"
_UPDATE_SPEC = "UPDATE sessions SET spec_json = $2 WHERE id = $1"
# Two indexed lookups rather than one OR; the oldest session wins, the full token first.
_SESSION_BY_DIGEST = """
    SELECT position, true, id, name, spec_json, full_token_hash, observer_token_hash, state,
           created_at, ended_at, end_reason, warnings, bot_turns, last_seq
    FROM sessions WHERE full_token_hash = $1
    UNION ALL
    SELECT position, false, id, name, spec_json, full_token_hash, observer_token_hash, state,
           created_at, ended_at, end_reason, warnings, bot_turns, last_seq
    FROM sessions WHERE observer_token_hash = $1
    ORDER BY 1, 2 DESC LIMIT 1
"""
_EXPIRE = """
    WITH gone AS (
        DELETE FROM sessions
        WHERE state = 'ended' AND ended_at IS NOT NULL AND ended_at < $1
        RETURNING id, position)
    SELECT id FROM gone ORDER BY position
"""
_UPSERT_MESSAGE = """
    INSERT INTO messages (session_id, turn, kind, speaker, talker_id, content, status, ts,
                          tokens, usage_json)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (session_id, turn) DO UPDATE SET
        kind = excluded.kind, speaker = excluded.speaker, talker_id = excluded.talker_id,
        content = excluded.content, status = excluded.status, ts = excluded.ts,
        tokens = excluded.tokens, usage_json = excluded.usage_json
"""
_MESSAGES = """
    SELECT turn, kind, speaker, talker_id, content, status, ts, tokens, usage_json
    FROM messages WHERE session_id = $1 ORDER BY turn
"""
_ALL_MESSAGES = """
    SELECT session_id, turn, kind, speaker, talker_id, content, status, ts, tokens, usage_json
    FROM messages ORDER BY session_id, turn
"""
_LIVE_MESSAGES = """
    SELECT session_id, turn, kind, speaker, talker_id, content, status, ts, tokens, usage_json
    FROM messages WHERE session_id IN (SELECT id FROM sessions WHERE state != 'ended')
    ORDER BY session_id, turn
"""
_ALL_SUMMARIES = "SELECT session_id, upto_turn, text FROM summaries"
_LIVE_SUMMARIES = """
    SELECT session_id, upto_turn, text FROM summaries
    WHERE session_id IN (SELECT id FROM sessions WHERE state != 'ended')
"""
_ALL_MEMORY = "SELECT session_id, text FROM memory"
_LIVE_MEMORY = """
    SELECT session_id, text FROM memory
    WHERE session_id IN (SELECT id FROM sessions WHERE state != 'ended')
"""
_KNOWN = "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1)"
# A whole batch in one statement: the rows travel as three arrays.
_UPSERT_EVENTS = """
    INSERT INTO events (session_id, seq, type, data)
    SELECT $1, seq, type, data FROM unnest($2::bigint[], $3::text[], $4::text[])
        AS batch (seq, type, data)
    ON CONFLICT (session_id, seq) DO UPDATE SET type = excluded.type, data = excluded.data
"""
_UPSERT_SUMMARY = """
    INSERT INTO summaries (session_id, upto_turn, text) VALUES ($1, $2, $3)
    ON CONFLICT (session_id) DO UPDATE SET upto_turn = excluded.upto_turn, text = excluded.text
"""
_UPSERT_MEMORY = """
    INSERT INTO memory (session_id, text) VALUES ($1, $2)
    ON CONFLICT (session_id) DO UPDATE SET text = excluded.text
"""
# A new session, written by a node that holds no lease on it yet: only if it is new.
_INSERT_NEW_SESSION = _UPSERT_SESSION.split("ON CONFLICT", 1)[0] + "ON CONFLICT (id) DO NOTHING"
# Everything up to the (keep_last + 1)-th newest event goes.
_PRUNE_EVENTS = """
    DELETE FROM events WHERE session_id = $1 AND seq <= (
        SELECT seq FROM events WHERE session_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)
"""


# --- ownership ----------
# The fence of a write: this node's lease row under the epoch it holds, locked FOR SHARE
# so that a take-over (an UPDATE of the row) is ordered with the write: it waits for
# the write's commit, or, committed first, makes the write find no row.
_FENCE = "SELECT 1 FROM leases WHERE session_id = $1 AND node_id = $2 AND epoch = $3 FOR SHARE"
_FENCE_EXISTS = (
    "EXISTS (SELECT 1 FROM leases WHERE session_id = $1 AND node_id = ${node} "
    "AND epoch = ${epoch} FOR SHARE)"
)
_ACQUIRE = """
    INSERT INTO leases AS l (session_id, node_id, epoch, expires_at, acquired_at)
    VALUES ($1, $2, 1, now() + make_interval(secs => $3), now())
    ON CONFLICT (session_id) DO UPDATE SET
        node_id = excluded.node_id, epoch = l.epoch + 1,
        expires_at = excluded.expires_at, acquired_at = now()
    WHERE l.expires_at < now() OR l.node_id = excluded.node_id
    RETURNING epoch
"""
# Renewal keeps the epoch: a lease that expired but that nobody took is still this
# node's, and its writes were never in doubt (fencing is by epoch, not by time).
_RENEW = """
    UPDATE leases AS l SET expires_at = now() + make_interval(secs => $2)
    FROM unnest($3::text[], $4::bigint[]) AS mine (session_id, epoch)
    WHERE l.session_id = mine.session_id AND l.node_id = $1 AND l.epoch = mine.epoch
    RETURNING l.session_id
"""
_RELEASE = """
    UPDATE leases AS l SET expires_at = now()
    FROM unnest($2::text[], $3::bigint[]) AS mine (session_id, epoch)
    WHERE l.session_id = mine.session_id AND l.node_id = $1 AND l.epoch = mine.epoch
"""
# This node's share of the expired leases of live sessions: at least the expired ones
# divided by the live nodes (rounded up), more while it runs fewer sessions than its
# fair share. SKIP LOCKED: nodes scanning at once pick different rows, and a row whose
# old owner is still writing (FOR SHARE) waits for the next scan.
_TAKE_EXPIRED = """
    WITH expired AS (
        SELECT l.session_id FROM leases l JOIN sessions s ON s.id = l.session_id
        WHERE l.expires_at < now() AND s.state <> 'ended'
          AND NOT (l.session_id = ANY ($3::text[]))),
    live_nodes AS (
        SELECT GREATEST(count(*), 1)::numeric AS n FROM nodes WHERE expires_at >= now()),
    running AS (
        SELECT count(*) AS total,
               count(*) FILTER (WHERE l.node_id = $1 AND l.expires_at >= now()) AS mine
        FROM leases l JOIN sessions s ON s.id = l.session_id WHERE s.state <> 'ended'),
    quota AS (
        SELECT GREATEST(ceil((SELECT count(*) FROM expired) / live_nodes.n),
                        ceil(running.total / live_nodes.n) - running.mine)::bigint AS n
        FROM live_nodes, running),
    picked AS (
        SELECT l.session_id FROM leases l
        WHERE l.session_id IN (SELECT session_id FROM expired)
        ORDER BY l.expires_at, l.session_id
        LIMIT (SELECT n FROM quota)
        FOR UPDATE SKIP LOCKED)
    UPDATE leases AS l SET node_id = $1, epoch = l.epoch + 1,
        expires_at = now() + make_interval(secs => $2), acquired_at = now()
    FROM picked WHERE l.session_id = picked.session_id AND l.expires_at < now()
    RETURNING l.session_id, l.epoch
"""
_LEASE_OWNER = "SELECT node_id FROM leases WHERE session_id = $1 AND expires_at >= now()"
# The heartbeat also forgets nodes long gone that run nothing any more.
_HEARTBEAT = """
    WITH forgotten AS (
        DELETE FROM nodes AS n
        WHERE n.expires_at < now() - make_interval(secs => $3)
          AND NOT EXISTS (SELECT 1 FROM leases l JOIN sessions s ON s.id = l.session_id
                          WHERE l.node_id = n.node_id AND s.state <> 'ended'))
    INSERT INTO nodes (node_id, started_at, seen_at, expires_at)
    VALUES ($1, now(), now(), now() + make_interval(secs => $2))
    ON CONFLICT (node_id) DO UPDATE SET seen_at = now(), expires_at = excluded.expires_at
"""
_NODES = """
    SELECT node_id, started_at, extract(epoch FROM now() - seen_at), expires_at >= now()
    FROM nodes ORDER BY node_id
"""
_LEASES = """
    SELECT l.session_id, l.node_id, l.epoch, extract(epoch FROM now() - l.acquired_at),
           extract(epoch FROM l.expires_at - now())
    FROM leases l JOIN sessions s ON s.id = l.session_id
    WHERE s.state <> 'ended' ORDER BY l.node_id, s.position
"""


def _fenced_insert(sql: str, count: int) -> str:
    """`sql` (an INSERT of one VALUES row of `count` parameters, $1 the session id)
    made conditional on this node's lease: parameters count + 1 and count + 2 are the
    node id and the epoch. Nothing is inserted (or updated) when the fence fails."""
    head, values = sql.split("VALUES (", 1)
    row, tail = values.split(")", 1)
    fence = _FENCE_EXISTS.replace("${node}", f"${count + 1}").replace("${epoch}", f"${count + 2}")
    return f"{head}SELECT {row} WHERE {fence}{tail}"


def _rows_written(status: str) -> int:
    """The row count of a command's status (`INSERT 0 1`, `DELETE 3`)."""
    return int(status.rsplit(" ", 1)[-1])


_FENCED_UPSERT_SESSION: Final = _fenced_insert(_UPSERT_SESSION, 12)
_FENCED_UPSERT_MESSAGE: Final = _fenced_insert(_UPSERT_MESSAGE, 10)
_FENCED_UPSERT_SUMMARY: Final = _fenced_insert(_UPSERT_SUMMARY, 3)
_FENCED_UPSERT_MEMORY: Final = _fenced_insert(_UPSERT_MEMORY, 2)
_FENCED_UPSERT_EVENTS: Final = _UPSERT_EVENTS.replace(
    "AS batch (seq, type, data)",
    "AS batch (seq, type, data)\n    WHERE "
    + _FENCE_EXISTS.replace("${node}", "$5").replace("${epoch}", "$6"),
)

_FAILURES: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
"""What the driver raises when the database fails (anything else is the caller's)."""


class _BadRow(Exception):
    """A stored row that no longer parses into its model."""


def _utc(value: datetime) -> datetime:
    # The engine's times are UTC; a naive time is taken as UTC too.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def display_url(url: str) -> str:
    """`url` without its password (and query), fit for logs and error messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://(unreadable URL)"
    user = f"{parts.username}@" if parts.username else ""
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))


def _session_row(record: SessionRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.name,
        record.spec_json,
        record.full_token_hash,
        record.observer_token_hash,
        record.state,
        _utc(record.created_at),
        _utc(record.ended_at) if record.ended_at is not None else None,
        record.end_reason,
        list(record.warnings),
        record.bot_turns,
        record.last_seq,
    )


def _record(row: Row) -> SessionRecord:
    try:
        return SessionRecord(
            id=row[0],
            name=row[1],
            spec_json=row[2],
            full_token_hash=row[3],
            observer_token_hash=row[4],
            state=row[5],
            created_at=row[6],
            ended_at=row[7],
            end_reason=row[8],
            warnings=list(row[9]),
            bot_turns=row[10],
            last_seq=row[11],
        )
    except (ValueError, TypeError) as exc:  # pydantic errors are ValueErrors
        raise _BadRow(f"sessions row {row[0]!r}") from exc


def _message_row(session_id: str, message: Message) -> tuple[Any, ...]:
    return (
        session_id,
        message.turn,
        message.kind,
        message.speaker,
        message.talker_id,
        message.content,
        message.status,
        _utc(message.ts),
        message.tokens,
        message.usage.model_dump_json() if message.usage is not None else None,
    )


def _message(row: Row) -> Message:
    try:
        return Message(
            turn=row[0],
            kind=row[1],
            speaker=row[2],
            talker_id=row[3],
            content=row[4],
            status=row[5],
            ts=row[6],
            tokens=row[7],
            usage=Usage.model_validate_json(row[8]) if row[8] is not None else None,
        )
    except (ValueError, TypeError) as exc:
        raise _BadRow(f"messages row at position {row[0]!r}") from exc


def _last_of_each(items: Iterable[V], key: Callable[[V], Hashable]) -> list[V]:
    """One item per key, the last one given (as successive upserts would leave it)."""
    return list({key(item): item for item in items}.values())


async def _keep_session_state(conn: Connection) -> None:
    """A connection goes back to the pool as it is: the store sets no session state, so
    asyncpg's reset (a round trip per call) would undo nothing."""


class PostgresStore(Store):
    """Sessions, history, summaries, memory, events (and leases) in PostgreSQL."""

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE, node_id: str | None = None) -> None:
        self.url = url
        if node_id is not None:
            self.node_id = node_id
        self.where = display_url(url)
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        # asyncpg's pool hands a freed connection to whoever asks next, so a session
        # writing again at once takes it before those that waited: under load some
        # sessions went twice as fast as others. Connections are handed out in order.
        self._turns = FairLimiter(pool_size)
        self._open_lock = asyncio.Lock()
        # The call under way (or queued) last for each session, and every one under way.
        self._tails: dict[str, asyncio.Task[Any]] = {}
        self._running: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"  # never the password

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresStore:
        """The store of `DATABASE_URL`, writing as node `NODE_ID`."""
        return cls(settings.database_url.get_secret_value(), node_id=settings.node_id)

    # --- errors ----------
    def _error(self, problem: StorageProblem, what: str) -> StorageError:
        return StorageError(f"storage error on {self.where}: {what}", problem=problem)

    def _translate(self, exc: BaseException, session_id: str | None = None) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, asyncpg.PostgresError):
            state = str(exc.sqlstate or "")
            if state == _FOREIGN_KEY_VIOLATION and session_id is not None:
                return unknown_session(session_id, self.where)
            problem, what = _CODES.get(state) or _CLASSES.get(
                state[:2], ("other", "the database failed")
            )
            return self._error(problem, f"{what} ({state}: {exc})")
        if isinstance(exc, asyncpg.ConnectionDoesNotExistError):
            return self._error("io", "the connection to the database was lost")
        if isinstance(exc, asyncpg.InterfaceError):
            if "closed" in str(exc):
                return self._error("closed", "the store is closed")
            return self._error("other", f"the database client failed ({exc})")
        if isinstance(exc, TimeoutError):
            return self._error("io", f"the database did not answer within {COMMAND_TIMEOUT:g} s")
        if isinstance(exc, OSError):
            return self._error("io", f"the database cannot be reached ({exc.strerror or exc})")
        if isinstance(exc, _BadRow):
            return self._error("corrupt", f"a stored row is invalid ({exc})")
        return self._error("other", f"unexpected failure ({exc.__class__.__name__})")

    # --- lifecycle ----------
    async def open(self) -> None:
        """Connect, migrate the schema under the migration lock, and check that it is writable.

        Raises `StorageError` when the server cannot be reached or refuses the login,
        the schema holds another application's tables or was written by a newer
        Fellowship, or the database cannot be written.
        """
        async with self._open_lock:
            if self._pool is not None:
                return
            try:
                pool = await asyncpg.create_pool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT,
                    reset=_keep_session_state,
                )
            except (OSError, TimeoutError) as exc:
                raise self._error(
                    "cannot_open", f"the database cannot be reached ({exc.__class__.__name__})"
                ) from exc
            except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
                # ValueError: asyncpg could not read the URL (its text is not shown).
                raise (
                    self._translate(exc)
                    if not isinstance(exc, ValueError)
                    else self._error("cannot_open", "DATABASE_URL cannot be read")
                ) from exc
            try:
                async with pool.acquire() as conn:
                    version = await migrate(conn, where=self.where)
                    # A write that changes nothing: a standby or a user without rights
                    # is refused now, not at the first message.
                    async with conn.transaction():
                        await conn.execute("DELETE FROM schema_migrations WHERE false")
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await pool.close()
                if isinstance(exc, Exception):
                    raise self._translate(exc) from exc
                raise
            self._pool = pool
            log.info("database %s open (schema version %d)", self.where, version)

    async def close(self) -> None:
        """Let the calls under way finish, then close every connection."""
        async with self._open_lock:
            pool, self._pool = self._pool, None
            if pool is None:
                return
            if self._running:
                await asyncio.wait(list(self._running))
            try:
                await pool.close()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise self._translate(exc) from exc

    # --- the one way in ----------
    async def _run(
        self,
        work: Callable[[Connection], Awaitable[T]],
        *,
        write: bool,
        session_id: str | None = None,
        after_all: bool = False,
        single: bool = False,
        urgent: bool = False,
    ) -> T:
        """Run `work` on a pooled connection, in a transaction when it writes.

        `single`: `work` is one statement, a transaction of its own already (one round
        trip rather than three, on the hot path of every turn). `urgent`: it takes the
        next free connection instead of queueing behind the sessions' calls in order
        (keeping the leases: a renewal that waits behind a thousand sessions' writes
        could let every lease of the node expire).

        With `session_id`, it runs after the calls for that session made before it;
        with `after_all`, after every call under way. Shielded: a cancelled caller
        does not cut it short.
        """
        before: list[asyncio.Task[Any]] = []
        if session_id is not None and (tail := self._tails.get(session_id)) is not None:
            before.append(tail)
        if after_all:
            before.extend(self._running)
        task = asyncio.ensure_future(
            self._after(before, work, write and not single, session_id, urgent)
        )
        self._running.add(task)
        if session_id is not None:
            self._tails[session_id] = task
        task.add_done_callback(lambda done: self._settled(done, session_id))
        return await asyncio.shield(task)

    def _settled(self, task: asyncio.Task[Any], session_id: str | None) -> None:
        self._running.discard(task)
        if session_id is not None and self._tails.get(session_id) is task:
            del self._tails[session_id]
        if not task.cancelled():
            task.exception()  # its caller may be gone: the error was still seen

    async def _after(
        self,
        before: list[asyncio.Task[Any]],
        work: Callable[[Connection], Awaitable[T]],
        transaction: bool,
        session_id: str | None,
        urgent: bool,
    ) -> T:
        if before:
            await asyncio.wait(before)
        pool = self._pool
        if pool is None:
            raise self._error("closed", "the store is not open")
        try:
            turn = contextlib.nullcontext() if urgent else self._turns.slot(session_id)
            async with turn, pool.acquire() as conn:
                if not transaction:
                    return await work(conn)
                async with conn.transaction():
                    return await work(conn)
        except (*_FAILURES, _BadRow) as exc:
            raise self._translate(exc, session_id) from exc

    # --- fencing ----------
    def _epoch_for_write(self, session_id: str) -> int | None:
        """The epoch a write made now is conditional on (None: one process, no fence).

        Read when the call is made, not when it runs: a write queued behind others stays
        bound to the lease its caller held. Raises `Fenced` at once when this node holds
        no lease on the session.
        """
        if self.fencing is None:
            return None
        epoch = self.fencing.epoch_of(session_id)
        if epoch is None:
            raise self._fenced(session_id, None)
        return epoch

    def _fenced(self, session_id: str, epoch: int | None) -> Fenced:
        held = "no lease" if epoch is None else f"a lease of epoch {epoch} that is no longer its"
        return Fenced(
            f"storage error on {self.where}: node {self.node_id!r} holds {held} on session "
            f"{session_id}; nothing was written (another node runs it)"
        )

    async def _guard(self, session_id: str, epoch: int | None, write: Awaitable[None]) -> None:
        """Await `write`; when it was fenced, tell the lease keeper the lease is lost."""
        try:
            await write
        except Fenced:
            if epoch is not None and self.fencing is not None:
                self.fencing.fenced(session_id, epoch)
            raise

    async def _write_one(
        self, session_id: str, plain: str, fenced: str, row: Sequence[Any]
    ) -> None:
        """One statement for one session: `plain`, or in cluster mode `fenced` (the same
        made conditional on this node's lease; nothing written when the fence fails)."""
        epoch = self._epoch_for_write(session_id)

        async def work(conn: Connection) -> None:
            if epoch is None:
                await conn.execute(plain, *row)
            elif not _rows_written(await conn.execute(fenced, *row, self.node_id, epoch)):
                raise self._fenced(session_id, epoch)

        await self._guard(
            session_id, epoch, self._run(work, write=True, session_id=session_id, single=True)
        )

    # --- leases ----------
    async def acquire_lease(self, session_id: str, seconds: float) -> int | None:
        async def work(conn: Connection) -> int | None:
            try:
                epoch = await conn.fetchval(_ACQUIRE, session_id, self.node_id, float(seconds))
            except asyncpg.ForeignKeyViolationError as exc:
                raise unknown_session(session_id, self.where) from exc
            return None if epoch is None else int(epoch)

        return await self._run(work, write=True, single=True, urgent=True)

    async def renew_leases(self, held: Mapping[str, int], seconds: float) -> set[str]:
        if not held:
            return set()
        ids, epochs = list(held), [held[session_id] for session_id in held]

        async def work(conn: Connection) -> set[str]:
            rows = await conn.fetch(_RENEW, self.node_id, float(seconds), ids, epochs)
            return {str(row[0]) for row in rows}

        return await self._run(work, write=True, single=True, urgent=True)

    async def release_leases(self, held: Mapping[str, int]) -> None:
        if not held:
            return
        ids, epochs = list(held), [held[session_id] for session_id in held]

        async def work(conn: Connection) -> None:
            await conn.execute(_RELEASE, self.node_id, ids, epochs)

        await self._run(work, write=True, single=True, urgent=True)

    async def take_expired_leases(
        self, seconds: float, *, exclude: Sequence[str] = ()
    ) -> dict[str, int]:
        async def work(conn: Connection) -> dict[str, int]:
            rows = await conn.fetch(_TAKE_EXPIRED, self.node_id, float(seconds), list(exclude))
            return {str(row[0]): int(row[1]) for row in rows}

        return await self._run(work, write=True, single=True, urgent=True)

    async def lease_owner(self, session_id: str) -> str | None:
        if self.fencing is None:
            return self.node_id  # one process on PostgreSQL

        async def work(conn: Connection) -> str | None:
            owner = await conn.fetchval(_LEASE_OWNER, session_id)
            return None if owner is None else str(owner)

        return await self._run(work, write=False, urgent=True)

    async def heartbeat(self, seconds: float) -> None:
        async def work(conn: Connection) -> None:
            await conn.execute(_HEARTBEAT, self.node_id, float(seconds), NODE_FORGET_SECONDS)

        await self._run(work, write=True, single=True, urgent=True)

    async def leave_cluster(self, held: Mapping[str, int]) -> None:
        ids, epochs = list(held), [held[session_id] for session_id in held]

        async def work(conn: Connection) -> None:
            if ids:
                await conn.execute(_RELEASE, self.node_id, ids, epochs)
            await conn.execute("DELETE FROM nodes WHERE node_id = $1", self.node_id)

        await self._run(work, write=True, urgent=True)

    async def cluster_snapshot(self) -> ClusterSnapshot:
        if self.fencing is None:
            return await super().cluster_snapshot()  # one process on PostgreSQL

        async def work(conn: Connection) -> ClusterSnapshot:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                nodes = [
                    NodeInfo(
                        node_id=row[0],
                        started_at=row[1],
                        last_seen_seconds=float(row[2]),
                        alive=bool(row[3]),
                    )
                    for row in await conn.fetch(_NODES)
                ]
                leases = [
                    LeaseInfo(
                        session_id=row[0],
                        node_id=row[1],
                        epoch=row[2],
                        held_seconds=float(row[3]),
                        expires_in_seconds=float(row[4]),
                    )
                    for row in await conn.fetch(_LEASES)
                ]
            return ClusterSnapshot(nodes=nodes, leases=leases)

        return await self._run(work, write=False)

    # --- sessions ----------
    async def save_session(self, record: SessionRecord) -> None:
        row = _session_row(record)
        if self.fencing is not None and self.fencing.epoch_of(record.id) is None:
            # No lease yet: a node may only create a session, never change one it
            # does not hold (its lease is taken once the row exists).
            async def create(conn: Connection) -> None:
                if not _rows_written(await conn.execute(_INSERT_NEW_SESSION, *row)):
                    raise self._fenced(record.id, None)

            await self._run(create, write=True, session_id=record.id, single=True)
            return
        await self._write_one(record.id, _UPSERT_SESSION, _FENCED_UPSERT_SESSION, row)

    async def load_sessions(self, *, include_ended: bool) -> list[SessionRecord]:
        async def work(conn: Connection) -> list[SessionRecord]:
            return [_record(row) for row in await self._session_rows(conn, include_ended)]

        return await self._run(work, write=False, after_all=True)

    @staticmethod
    async def _session_rows(conn: Connection, include_ended: bool) -> list[Any]:
        return list(await conn.fetch(_ALL_SESSIONS if include_ended else _LIVE_SESSIONS))

    async def rewrite_specs(self, rewrite: SpecRewrite) -> list[str]:
        """Rewrite the specs in one transaction, then rebuild the table without the old copies.

        An UPDATE leaves the old row version in the table's file until it is vacuumed,
        and a plain VACUUM may leave its bytes in the page. VACUUM FULL writes the table
        anew from the live rows only. The write-ahead log, standbys and backups keep
        what they already hold (docs/persistence.md).
        """

        async def work(conn: Connection) -> list[str]:
            changed: list[tuple[str, str]] = []
            for row in await conn.fetch(_ALL_SPECS):
                session_id, spec_json = str(row[0]), str(row[1])
                text = rewrite(session_id, spec_json)
                if text is not None and text != spec_json:
                    changed.append((session_id, text))
            if changed:
                await conn.executemany(_UPDATE_SPEC, changed)
            return [session_id for session_id, _ in changed]

        changed = await self._run(work, write=True, after_all=True)
        if changed:

            async def wipe(conn: Connection) -> None:
                await conn.execute("VACUUM FULL sessions", timeout=WIPE_TIMEOUT)

            await self._run(wipe, write=False)
        return changed

    async def find_by_token_hash(self, digest: str) -> tuple[SessionRecord, bool] | None:
        async def work(conn: Connection) -> tuple[SessionRecord, bool] | None:
            row = await conn.fetchrow(_SESSION_BY_DIGEST, digest)
            return None if row is None else (_record(list(row)[2:]), bool(row[1]))

        return await self._run(work, write=False)

    async def delete_session(self, session_id: str) -> None:
        epoch = self._epoch_for_write(session_id)

        async def work(conn: Connection) -> None:
            if (
                epoch is not None
                and await conn.fetchval(_FENCE, session_id, self.node_id, epoch) is None
            ):
                raise self._fenced(session_id, epoch)
            # The cascade removes history, summary, memory, events and the lease.
            await conn.execute("DELETE FROM sessions WHERE id = $1", session_id)

        await self._guard(
            session_id,
            epoch,
            self._run(work, write=True, session_id=session_id, single=epoch is None),
        )

    async def expire_ended(self, before: datetime) -> list[str]:
        async def work(conn: Connection) -> list[str]:
            return [str(row[0]) for row in await conn.fetch(_EXPIRE, _utc(before))]

        return await self._run(work, write=True, after_all=True)

    # --- history ----------
    async def save_message(self, session_id: str, message: Message) -> None:
        await self._write_one(
            session_id, _UPSERT_MESSAGE, _FENCED_UPSERT_MESSAGE, _message_row(session_id, message)
        )

    async def load_messages(self, session_id: str) -> list[Message]:
        async def work(conn: Connection) -> list[Message]:
            return [_message(row) for row in await conn.fetch(_MESSAGES, session_id)]

        return await self._run(work, write=False, session_id=session_id)

    # --- summaries and memory ----------
    async def save_summary(self, session_id: str, upto_turn: int, text: str) -> None:
        await self._write_one(
            session_id, _UPSERT_SUMMARY, _FENCED_UPSERT_SUMMARY, (session_id, upto_turn, text)
        )

    async def load_summary(self, session_id: str) -> tuple[int, str] | None:
        async def work(conn: Connection) -> tuple[int, str] | None:
            row = await conn.fetchrow(
                "SELECT upto_turn, text FROM summaries WHERE session_id = $1", session_id
            )
            return None if row is None else (int(row[0]), str(row[1]))

        return await self._run(work, write=False, session_id=session_id)

    async def save_memory(self, session_id: str, text: str) -> None:
        await self._write_one(session_id, _UPSERT_MEMORY, _FENCED_UPSERT_MEMORY, (session_id, text))

    async def load_memory(self, session_id: str) -> str | None:
        async def work(conn: Connection) -> str | None:
            text = await conn.fetchval("SELECT text FROM memory WHERE session_id = $1", session_id)
            return None if text is None else str(text)

        return await self._run(work, write=False, session_id=session_id)

    # --- events ----------
    async def save_events(
        self,
        session_id: str,
        events: Sequence[EventRecord],
        *,
        messages: Sequence[Message] = (),
        keep_last: int | None = None,
    ) -> None:
        # One row per key, the last given: one statement may not upsert a row twice.
        rows = _last_of_each(events, lambda event: event.seq)
        filled = _last_of_each(messages, lambda message: message.turn)
        epoch = self._epoch_for_write(session_id)
        batch = (
            session_id,
            [event.seq for event in rows],
            [event.type for event in rows],
            [event.data for event in rows],
        )

        async def work(conn: Connection) -> None:
            if epoch is not None:
                # The fence first, in the events' own statement when there are events
                # (no extra round trip), else on its own; nothing after it runs unless
                # the lease is this node's, and the row stays locked until the commit.
                if rows:
                    fenced = _FENCED_UPSERT_EVENTS
                    if not _rows_written(await conn.execute(fenced, *batch, self.node_id, epoch)):
                        raise self._fenced(session_id, epoch)
                elif await conn.fetchval(_FENCE, session_id, self.node_id, epoch) is None:
                    raise self._fenced(session_id, epoch)
            # An empty batch inserts nothing the foreign key could refuse: look.
            elif not rows and not filled and not await conn.fetchval(_KNOWN, session_id):
                raise unknown_session(session_id, self.where)
            if filled:
                await conn.executemany(
                    _UPSERT_MESSAGE, [_message_row(session_id, message) for message in filled]
                )
            if rows and epoch is None:
                await conn.execute(_UPSERT_EVENTS, *batch)
            if keep_last is not None:
                await conn.execute(_PRUNE_EVENTS, session_id, keep_last)

        await self._guard(session_id, epoch, self._run(work, write=True, session_id=session_id))

    async def load_events(self, session_id: str, *, after_seq: int = 0) -> list[EventRecord]:
        async def work(conn: Connection) -> list[EventRecord]:
            rows = await conn.fetch(
                "SELECT seq, type, data FROM events WHERE session_id = $1 AND seq > $2 "
                "ORDER BY seq",
                session_id,
                after_seq,
            )
            return [EventRecord(seq=row[0], type=row[1], data=row[2]) for row in rows]

        return await self._run(work, write=False, session_id=session_id)

    async def load_session(self, session_id: str) -> StoredSession | None:
        async def work(conn: Connection) -> StoredSession | None:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow(_SESSION_BY_ID, session_id)
                if row is None:
                    return None
                messages = [_message(m) for m in await conn.fetch(_MESSAGES, session_id)]
                summary = await conn.fetchrow(
                    "SELECT upto_turn, text FROM summaries WHERE session_id = $1", session_id
                )
                memory = await conn.fetchval(
                    "SELECT text FROM memory WHERE session_id = $1", session_id
                )
            return StoredSession(
                record=_record(row),
                messages=messages,
                summary=None if summary is None else (int(summary[0]), str(summary[1])),
                memory=None if memory is None else str(memory),
            )

        return await self._run(work, write=False, session_id=session_id)

    async def load_history(self, session_id: str) -> tuple[list[Message], int]:
        async def work(conn: Connection) -> tuple[list[Message], int]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                messages = [_message(m) for m in await conn.fetch(_MESSAGES, session_id)]
                last = await conn.fetchval(
                    "SELECT coalesce(max(seq), 0) FROM events WHERE session_id = $1", session_id
                )
            return messages, int(last)

        return await self._run(work, write=False, session_id=session_id)

    # --- start-up ----------
    async def load_all(self, *, include_ended: bool) -> list[StoredSession]:
        """Every session with its history, summary and memory: one query per table, all
        from one snapshot (another node may be writing meanwhile)."""

        async def work(conn: Connection) -> list[StoredSession]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                stored = {
                    row[0]: StoredSession(record=_record(row))
                    for row in await self._session_rows(conn, include_ended)
                }
                for row in await conn.fetch(_ALL_MESSAGES if include_ended else _LIVE_MESSAGES):
                    if (target := stored.get(row[0])) is not None:
                        target.messages.append(_message(list(row)[1:]))
                for row in await conn.fetch(_ALL_SUMMARIES if include_ended else _LIVE_SUMMARIES):
                    if (target := stored.get(row[0])) is not None:
                        target.summary = (int(row[1]), str(row[2]))
                for row in await conn.fetch(_ALL_MEMORY if include_ended else _LIVE_MEMORY):
                    if (target := stored.get(row[0])) is not None:
                        target.memory = str(row[1])
                return list(stored.values())

        return await self._run(work, write=False, after_all=True)
