"""The fan-out load process: many observers of one session, half WebSocket, half SSE.

Run by `bench/fanout.py` as its own process (`python -m bench.load ...`), so that the
clients' work is not done by the server's interpreter. It connects every observer (a
bounded number at a time), prints `READY <seconds>` once each has its `history` event
and has been told (by a `presence` event, or its own history) that every observer is
there, then reads until every stream has delivered `session_end` or closed. For each
event it notes the delay from the event's `ts` (stamped by the server when it was
published) to its receipt here — one machine, one clock — and checks that the `seq`
numbers run without a gap. The result is one JSON line on stdout (`LoadResult`).

The clients are bare asyncio protocols rather than full client libraries: thousands of
observers in one Python process must cost microseconds per event, or the figure would
measure the load process instead of the server. They speak the protocols as a browser
does — the WebSocket client offers `permessage-deflate` (every browser does, and the
server accepts it), the SSE client reads a chunked `text/event-stream`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import gc
import os
import re
import resource
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from bench.procs import raise_nofile
from bench.stats import Distribution

CONNECT_CONCURRENCY: Final = 64
"""Connections opened at once: a burst of thousands would overflow the listen backlog."""
MEMBERSHIP_TYPES: Final = frozenset({"member_joined", "member_left", "presence"})
"""Events caused by the observers themselves; their delays are reported apart."""
_HEAD: Final = re.compile(rb'"type":"([^"]+)","seq":(\d+),"ts":"([^"]+)"')
_OBSERVERS: Final = re.compile(rb'"observers":(\d+)')
"""The observer count of a `presence` event, or of a `history` event's `presence`."""
_PREFIX_BYTES: Final = 160
"""Every event starts `{"type":..,"seq":..,"ts":..}`: parsing that prefix is enough."""
SETTLE_POLL_SECONDS: Final = 0.05
READY_LINE: Final = "READY"
RESULT_PREFIX: Final = "RESULT "

_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA
_DEFLATE_TAIL: Final = b"\x00\x00\xff\xff"
_LEN16, _LEN64 = 126, 127
_FIN, _RSV1, _MASK_BIT = 0x80, 0x40, 0x80
_MASK_BYTES = 4
_CRLF2 = b"\r\n\r\n"


class LoadResult(BaseModel):
    """What the observers saw."""

    observers: int = Field(description="Observers started.")
    ws: int = Field(description="Of which WebSocket.")
    sse: int = Field(description="Of which SSE.")
    connect_seconds: float = Field(
        description="Time to connect them all, each with its history and told that all are there."
    )
    connect_failures: int = Field(description="Observers that could not connect.")
    completed: int = Field(description="Observers that received session_end.")
    closed_early: int = Field(description="Streams that ended before session_end.")
    close_reasons: dict[str, int] = Field(description="Why streams ended early, counted.")
    events_received: int = Field(description="Events received, all observers together.")
    events_lost: int = Field(description="Seq numbers missing from some observer's stream.")
    final_seq: int = Field(description="The session_end seq.")
    delay_ms: Distribution = Field(description="Publish-to-receipt delay of session events.")
    membership_delay_ms: Distribution = Field(
        description="Delay of presence events (observers are counted there, not announced)."
    )
    delay_by_kind_ms: dict[str, Distribution] = Field(
        description="Delay of session events per transport and event type (`ws:bot_message`)."
    )
    delay_by_server_ms: dict[str, Distribution] = Field(
        default_factory=dict,
        description="Delay of session events per server the observers were connected to "
        "(`host:port`, in the order given), when there were several.",
    )
    load_cpu_seconds: float = Field(description="CPU time this load process used.")
    wall_seconds: float = Field(description="From READY to the last stream's end.")


@dataclass
class Tally:
    """Delays of every observer, kept in flat lists (cheap to append to)."""

    delays: list[float] = field(default_factory=list)
    membership: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    by_server: dict[str, list[float]] = field(default_factory=dict)
    final_seq: int = 0
    published: dict[int, float] = field(default_factory=dict)
    """Publication time of each seq: every observer gets the same event, parsed once."""


class Observer(asyncio.Protocol):
    """One stream's bookkeeping; subclasses parse their transport's framing."""

    kind = "?"

    def __init__(self, tally: Tally, host: str, path: str) -> None:
        self.tally = tally
        self.host = host
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.history_seq: int | None = None
        self.last_seq: int | None = None
        self.observers_told: int | None = None  # the latest observer count it was given
        self.received = 0
        self.gaps = 0
        self.ended = False
        self.close_reason: str | None = None
        self.ready = asyncio.Event()  # history received, or the stream is over
        self.done = asyncio.Event()
        self._buffer = bytearray()
        self._head_done = False

    # --- asyncio.Protocol ----------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request())

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._head_done:
            end = self._buffer.find(_CRLF2)
            if end < 0:
                return
            head = bytes(self._buffer[:end]).decode("latin-1")
            del self._buffer[: end + len(_CRLF2)]
            self._head_done = True
            if not self.accept(head):
                self.finish(f"{self.kind} refused: {head.splitlines()[0]}")
                return
        self.frames(time.time())

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(self.close_reason or f"{self.kind} connection lost")

    # --- for subclasses ----------
    def request(self) -> bytes:
        """The HTTP request that opens the stream."""
        raise NotImplementedError

    def accept(self, head: str) -> bool:
        """Whether the response head opens the stream."""
        raise NotImplementedError

    def frames(self, received_at: float) -> None:
        """Consume whole frames from `self._buffer`."""
        raise NotImplementedError

    # --- shared ----------
    def finish(self, reason: str) -> None:
        """The stream is over (for whatever reason)."""
        if self.close_reason is None:
            self.close_reason = reason
        self.ready.set()
        self.done.set()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def note(self, event: bytes, received_at: float) -> None:
        """Account for one event's JSON text."""
        match = _HEAD.search(event, 0, _PREFIX_BYTES)
        if match is None:
            return  # something this client does not know: ignore it, as clients must
        kind, seq = match.group(1).decode(), int(match.group(2))
        if kind in ("history", "presence"):
            # The count comes last in both (a history's messages cannot hold it unescaped).
            start = event.rfind(b'"observers":')
            told = _OBSERVERS.match(event, start) if start >= 0 else None
            if told is not None:
                self.observers_told = int(told.group(1))
        if kind == "history":
            self.history_seq = self.last_seq = seq
            self.ready.set()
            return
        last = self.last_seq
        if kind in ("pong", "error") and last is not None and seq <= last:
            return  # replies to this client alone repeat the last seq
        tally = self.tally
        published = tally.published.get(seq)
        if published is None:
            published = datetime.fromisoformat(match.group(3).decode()).timestamp()
            tally.published[seq] = published
        delay = (received_at - published) * 1000.0
        if kind in MEMBERSHIP_TYPES:
            tally.membership.append(delay)
        else:
            tally.delays.append(delay)
            tally.by_kind.setdefault(f"{self.kind}:{kind}", []).append(delay)
            tally.by_server[self.host].append(delay)
        self.received += 1
        if last is not None and seq > last + 1:
            self.gaps += seq - last - 1
        self.last_seq = seq if last is None else max(seq, last)
        if kind == "session_end":
            self.ended = True
            tally.final_seq = max(tally.final_seq, seq)


class WsObserver(Observer):
    """A WebSocket observer (RFC 6455 client, with permessage-deflate like a browser)."""

    kind = "ws"

    def __init__(self, tally: Tally, host: str, path: str) -> None:
        super().__init__(tally, host, path)
        self._inflate: zlib._Decompress | None = None
        self._message = bytearray()
        self._compressed = False

    def request(self) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()

    def accept(self, head: str) -> bool:
        if not head.startswith("HTTP/1.1 101"):
            return False
        if "permessage-deflate" in head.lower():
            self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        return True

    def frames(self, received_at: float) -> None:
        # Read by offset and trim once: trimming after every frame would move the rest
        # of a large read again and again.
        buffer = self._buffer
        size, pos = len(buffer), 0
        try:
            while size - pos >= 2:
                first, second = buffer[pos], buffer[pos + 1]
                length, offset = second & 0x7F, 2
                if length == _LEN16:
                    if size - pos < 4:
                        return
                    length, offset = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
                elif length == _LEN64:
                    if size - pos < 10:
                        return
                    length, offset = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
                if size - pos < offset + length:
                    return
                payload = bytes(buffer[pos + offset : pos + offset + length])
                pos += offset + length
                self._frame(first, payload, received_at)
        finally:
            del buffer[:pos]

    def _frame(self, first: int, payload: bytes, received_at: float) -> None:
        opcode = first & 0x0F
        if opcode in (_OP_TEXT, _OP_BINARY):
            self._message = bytearray(payload)
            self._compressed = bool(first & _RSV1)
        elif opcode == _OP_CONTINUATION:
            self._message += payload
        elif opcode == _OP_PING:
            self._send(_OP_PONG, payload)
            return
        elif opcode == _OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_reason = f"ws {code}"
            self._send(_OP_CLOSE, payload[:2])
            self.finish(self.close_reason)
            return
        else:
            return
        if not first & _FIN:
            return
        message = bytes(self._message)
        if self._compressed and self._inflate is not None:
            message = self._inflate.decompress(message + _DEFLATE_TAIL)
        self.note(message, received_at)

    def _send(self, opcode: int, payload: bytes) -> None:
        # Client frames are masked (RFC 6455 §5.3); control payloads are under 126 bytes.
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(_MASK_BYTES)
        masked = bytes(b ^ mask[i % _MASK_BYTES] for i, b in enumerate(payload))
        self.transport.write(bytes([_FIN | opcode, _MASK_BIT | len(payload)]) + mask + masked)


class SseObserver(Observer):
    """An SSE observer: HTTP/1.1 GET, a chunked `text/event-stream` body."""

    kind = "sse"

    def __init__(self, tally: Tally, host: str, path: str) -> None:
        super().__init__(tally, host, path)
        self._chunked = False
        self._chunk_left = 0
        self._body = bytearray()

    def request(self) -> bytes:
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()

    def accept(self, head: str) -> bool:
        self._chunked = "transfer-encoding: chunked" in head.lower()
        return head.startswith("HTTP/1.1 200")

    def frames(self, received_at: float) -> None:
        self._dechunk()
        body = self._body
        pos = 0
        while (end := body.find(b"\n", pos)) >= 0:
            line = bytes(body[pos:end])
            pos = end + 1
            if line.startswith(b"data: "):
                self.note(line[6:], received_at)
            elif line.startswith(b": closed"):
                self.close_reason = "sse " + line[2:].decode(errors="replace")
        del body[:pos]

    def _dechunk(self) -> None:
        buffer = self._buffer
        if not self._chunked:
            self._body += buffer
            buffer.clear()
            return
        size, pos = len(buffer), 0
        try:
            while pos < size:
                if self._chunk_left > 0:
                    take = min(self._chunk_left, size - pos)
                    self._body += buffer[pos : pos + take]
                    pos += take
                    self._chunk_left -= take
                    continue
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    return
                size_text = bytes(buffer[pos:end]).split(b";")[0].strip()
                pos = end + 2
                if not size_text:  # the CRLF after a chunk's data
                    continue
                chunk = int(size_text, 16)
                if chunk == 0:
                    self.finish(self.close_reason or "sse body ended")
                    return
                self._chunk_left = chunk
        finally:
            del buffer[:pos]


async def _open(
    loop: asyncio.AbstractEventLoop,
    make: Callable[[], Observer],
    address: tuple[str, int],
    gate: asyncio.Semaphore,
) -> Observer:
    observer = make()
    async with gate:
        try:
            await loop.create_connection(lambda: observer, *address)
        except OSError as exc:
            observer.finish(f"{observer.kind} connect failed: {exc.strerror}")
        await observer.ready.wait()
    return observer


async def _counted(observers: list[Observer], owner: str) -> None:
    """Wait until every open stream was told that every observer connected to the node
    that runs the session (`owner`, host:port) is there.

    Observers are not announced one by one: the server sends a coalesced `presence`
    event (at most one a second) with the count, and each `history` carries it too. A
    node counts the members it holds, and only the node that runs the session publishes
    events, so on a cluster the count is of the observers on that node.
    """
    while True:
        open_ = [o for o in observers if o.history_seq is not None and not o.done.is_set()]
        on_owner = sum(1 for o in open_ if o.host == owner)
        if all(o.observers_told == on_owner for o in open_):
            return
        # Polled: thousands of streams would each need a wake-up on every event otherwise.
        await asyncio.sleep(SETTLE_POLL_SECONDS)


async def _settled(observers: list[Observer]) -> None:
    """Wait until every open stream has caught up with the newest event any of them has.

    While the session is paused the only events are the ones the observers' arrivals
    cause. Measuring starts once they have been delivered, everywhere.
    """
    while True:
        newest = max((o.last_seq or 0) for o in observers)
        # Polled: thousands of streams would each need a wake-up on every event otherwise.
        while any(not o.done.is_set() and (o.last_seq or 0) < newest for o in observers):  # noqa: ASYNC110
            await asyncio.sleep(SETTLE_POLL_SECONDS)
        await asyncio.sleep(SETTLE_POLL_SECONDS)
        if max((o.last_seq or 0) for o in observers) == newest:
            return


async def run(base_urls: list[str], token: str, ws: int, sse: int, deadline: float) -> None:
    """Connect the observers, report READY, collect until the session ends; print the result.

    With several base URLs (nodes of a cluster) the observers are spread evenly over
    them, each getting as many WebSocket as SSE observers.
    """
    raise_nofile()
    # A full collection walks every observer and buffer: a pause of 100 ms or more that
    # would be counted as delivery delay. This short-lived process makes little
    # cyclic garbage, so the collector is simply off.
    gc.disable()
    cpu_start = _cpu()
    tally = Tally()
    addresses: list[tuple[str, int]] = []
    for base_url in base_urls:
        parts = urlsplit(base_url)
        addresses.append((parts.hostname or "127.0.0.1", parts.port or 80))
        tally.by_server[f"{addresses[-1][0]}:{addresses[-1][1]}"] = []  # in the given order
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    # Interleave the two kinds, so both meet the same session at the same moments.
    makers: list[tuple[Callable[[], Observer], tuple[str, int]]] = []
    for index in range(max(ws, sse)):
        host, port = address = addresses[index % len(addresses)]
        if index < ws:
            path = f"/v1/session/{token}/connect?role=observer"
            makers.append((functools.partial(WsObserver, tally, f"{host}:{port}", path), address))
        if index < sse:
            path = f"/v1/session/{token}/stream"
            makers.append((functools.partial(SseObserver, tally, f"{host}:{port}", path), address))
    began = time.monotonic()
    observers = await asyncio.wait_for(
        asyncio.gather(*(_open(loop, make, address, gate) for make, address in makers)),
        deadline,
    )
    owner = f"{addresses[0][0]}:{addresses[0][1]}"  # the first base URL runs the session
    await asyncio.wait_for(_counted(observers, owner), deadline)
    await asyncio.wait_for(_settled(observers), deadline)
    connected = time.monotonic() - began
    print(f"{READY_LINE} {connected:.3f}", flush=True)
    go = time.monotonic()
    waits = [asyncio.ensure_future(o.done.wait()) for o in observers]
    _, pending = await asyncio.wait(waits, timeout=deadline)
    for task in pending:
        task.cancel()
    for observer in observers:
        observer.finish("unfinished at the deadline")
    wall = time.monotonic() - go
    result = _result(observers, tally, ws, sse, connected, _cpu() - cpu_start, wall)
    print(RESULT_PREFIX + result.model_dump_json(), flush=True)


def _result(
    observers: list[Observer],
    tally: Tally,
    ws: int,
    sse: int,
    connected: float,
    cpu: float,
    wall: float,
) -> LoadResult:
    reasons: dict[str, int] = {}
    lost = 0
    for observer in observers:
        if observer.history_seq is None:
            continue
        if not observer.ended:
            reason = observer.close_reason or "unfinished"
            reasons[reason] = reasons.get(reason, 0) + 1
            # What it never got: everything from where it stopped to the end of the session.
            lost += max(0, tally.final_seq - (observer.last_seq or observer.history_seq))
        lost += observer.gaps
    return LoadResult(
        observers=len(observers),
        ws=ws,
        sse=sse,
        connect_seconds=connected,
        connect_failures=sum(1 for o in observers if o.history_seq is None),
        completed=sum(1 for o in observers if o.ended),
        closed_early=sum(1 for o in observers if o.history_seq is not None and not o.ended),
        close_reasons=reasons,
        events_received=sum(o.received for o in observers),
        events_lost=lost,
        final_seq=tally.final_seq,
        delay_ms=Distribution.of(tally.delays),
        membership_delay_ms=Distribution.of(tally.membership),
        delay_by_kind_ms={k: Distribution.of(v) for k, v in sorted(tally.by_kind.items())},
        delay_by_server_ms=(
            {k: Distribution.of(v) for k, v in tally.by_server.items()}
            if len(tally.by_server) > 1
            else {}
        ),
        load_cpu_seconds=cpu,
        wall_seconds=wall,
    )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.load --base-url ... [--base-url ...] --token ... --ws N --sse N
    --deadline S`."""
    parser = argparse.ArgumentParser(description="Fan-out load: observers of one session.")
    parser.add_argument(
        "--base-url",
        action="append",
        required=True,
        help="http://127.0.0.1:<port>; repeated: observers spread evenly over the servers",
    )
    parser.add_argument("--token", required=True, help="observer token of the session")
    parser.add_argument("--ws", type=int, required=True, help="WebSocket observers")
    parser.add_argument("--sse", type=int, required=True, help="SSE observers")
    parser.add_argument("--deadline", type=float, required=True, help="seconds per phase, max")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args.base_url, args.token, args.ws, args.sse, args.deadline))
    except TimeoutError:
        print(f"load: a phase took longer than {args.deadline} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
