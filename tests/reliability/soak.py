"""Soak: many sessions for minutes against the real server; memory and descriptors stay flat.

    .venv/bin/python -m tests.reliability.soak --sessions 30 --minutes 5

Starts `fellowship mock-llm` and `fellowship serve` as subprocesses (in a temporary
folder, configured through the environment only), then keeps `--sessions` sessions
alive at all times: autonomous, collaborative and reactive ones in turn, half of them
streaming tokens, each watched by a WebSocket and an SSE observer and, when talkers may
take part, talked to by a WebSocket talker. A session that reaches `max_turns` is
replaced by a new one; ended sessions expire after `--retention` seconds, so the
server's working set has a steady state. Meanwhile observers come and go (cleanly, or
by dropping the connection), and status and history are polled.

Every few seconds the server's resident memory (VmRSS) and open file descriptors are
read from /proc and printed. The verdict compares the median of the last quarter of
the samples taken after the warm-up with the median of the first quarter: flat means
the last is at most `--tolerance` higher (plus a small absolute slack for descriptors,
whose count moves with connections). Every stream a client received is also checked:
`history` first, consecutive `seq`, closed by `session_end`. The exit status is 0 only
when both figures are flat and no stream had a problem.

Not collected by pytest (the file name does not start with `test_`), and not part of
`make test`: run it with `make soak`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[2]
FELLOWSHIP = ROOT / ".venv" / "bin" / "fellowship"
PARTICIPATION = ("autonomous", "collaborative", "reactive")
STARTUP_SECONDS = 30.0  # how long the subprocesses may take to answer
CALL_SECONDS = 30.0  # bound on one client call, so that a hang is a failure, not a stall
WS_NORMAL = 1000
PAGE = 4096  # bytes read at once from a raw socket
TALK_PAUSE_SECONDS = (0.5, 2.0)  # between a collaborative talker's lines
CHURN_PAUSE_SECONDS = 0.25  # between two observers that come and go


# --- the server and the mock as subprocesses ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Processes:
    mock: subprocess.Popen[bytes]
    server: subprocess.Popen[bytes]
    base_url: str
    mock_port: int

    def stop(self) -> None:
        for process in (self.server, self.mock):
            if process.poll() is None:
                process.terminate()
        for process in (self.server, self.mock):
            try:
                process.wait(STARTUP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()


def launch(args: argparse.Namespace, workdir: Path) -> Processes:
    """Start the mock backend and the server (configured by the environment only)."""
    mock_port, server_port = free_port(), free_port()
    with open(workdir / "mock.err", "wb") as mock_err:
        mock = subprocess.Popen(
            [
                str(FELLOWSHIP),
                "mock-llm",
                "--host=127.0.0.1",
                f"--port={mock_port}",
                f"--latency-ms={args.latency_ms}",
                f"--token-ms={args.token_ms}",
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=mock_err,
        )
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(server_port),
        "LLM_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
        "LLM_MAX_CONCURRENCY": str(args.llm_concurrency),
        "DATABASE_PATH": str(workdir / "soak.db"),
        "LOG_DIR": str(workdir / "logs"),
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "false",
        "SPECS_DIR": str(ROOT / "specs"),
        "ENDED_RETENTION_SECONDS": str(args.retention),
        "MAX_SESSIONS": str(max(1000, args.sessions * 4)),
    }
    with open(workdir / "server.err", "wb") as server_err:
        server = subprocess.Popen(
            [str(FELLOWSHIP), "serve"],
            cwd=workdir,  # no developer .env is read from here
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=server_err,
        )
    return Processes(mock, server, f"http://127.0.0.1:{server_port}", mock_port)


async def wait_ready(processes: Processes, workdir: Path) -> None:
    """Return once the mock and the server both answer."""
    deadline = time.monotonic() + STARTUP_SECONDS
    urls = (f"http://127.0.0.1:{processes.mock_port}/health", f"{processes.base_url}/healthz")
    async with httpx.AsyncClient(timeout=1.0) as http:
        for url in urls:
            while True:
                if any(p.poll() is not None for p in (processes.mock, processes.server)):
                    raise SystemExit(f"soak: a subprocess exited early; see {workdir}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == httpx.codes.OK:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"soak: {url} did not answer; see {workdir}")
                await asyncio.sleep(0.1)


# --- samples --------------------------------------------------------------------------------------


@dataclass
class Sample:
    elapsed: float
    rss_kib: int
    fds: int
    live: int
    done: int
    events: int


def read_process(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open file descriptors) of a process, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Verdict:
    name: str
    first: float
    last: float
    limit: float

    @property
    def flat(self) -> bool:
        return self.last <= self.limit

    def line(self, unit: str) -> str:
        change = (self.last - self.first) / self.first * 100 if self.first else 0.0
        word = "flat" if self.flat else "GROWING"
        return (
            f"{self.name}: first-quarter median {self.first:.1f} {unit}, last-quarter median "
            f"{self.last:.1f} {unit} ({change:+.1f} %), limit {self.limit:.1f} {unit}: {word}"
        )


def judge(values: Sequence[float], name: str, tolerance: float, slack: float) -> Verdict | None:
    """Compare the medians of the first and last quarters (None: too few samples)."""
    quarter = len(values) // 4
    if quarter < 1:
        return None
    first = statistics.median(values[:quarter])
    last = statistics.median(values[-quarter:])
    return Verdict(name, first, last, first * (1 + tolerance) + slack)


# --- the load -------------------------------------------------------------------------------------


@dataclass
class Stats:
    created: int = 0
    done: int = 0
    events: int = 0
    churned: int = 0
    polls: int = 0
    problems: list[str] = field(default_factory=list)
    live_tokens: dict[str, str] = field(default_factory=dict)  # full token -> observer token

    def problem(self, text: str) -> None:
        self.problems.append(text)
        print(f"  problem: {text}", flush=True)


class Stream:
    """Checks one member's events as they arrive: history first, consecutive seq."""

    def __init__(self, stats: Stats, label: str) -> None:
        self.stats = stats
        self.label = label
        self.last_seq: int | None = None
        self.ended = False
        self.replied = asyncio.Event()  # set at each bot reply (and at the end)

    def take(self, event: dict[str, Any]) -> None:
        self.stats.events += 1
        kind, seq = event.get("type"), event.get("seq")
        if not isinstance(seq, int):
            self.stats.problem(f"{self.label}: event without seq: {event}")
            return
        if self.last_seq is None:
            if kind != "history":
                self.stats.problem(f"{self.label}: first event is {kind}, not history")
            self.last_seq = seq
            return
        if kind in ("pong", "error") and seq == self.last_seq:
            return  # a reply to this client only
        if seq != self.last_seq + 1:
            self.stats.problem(f"{self.label}: seq {seq} after {self.last_seq}")
        self.last_seq = seq
        if kind == "session_end":
            self.ended = True
        if kind in ("bot_message", "session_end"):
            self.replied.set()


async def watch_ws(ws: ClientConnection, stream: Stream) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            stream.take(json.loads(raw))
    if ws.close_code != WS_NORMAL:
        stream.stats.problem(f"{stream.label}: closed with {ws.close_code} {ws.close_reason}")


async def watch_sse(sse: httpx.AsyncClient, path: str, stream: Stream) -> None:
    closed = ""
    async with sse.stream("GET", path) as response:
        if response.status_code != httpx.codes.OK:
            stream.stats.problem(f"{stream.label}: SSE answered {response.status_code}")
            return
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                stream.take(json.loads(line[len("data: ") :]))
            elif line.startswith(": closed"):
                closed = line
    if closed != ": closed: session ended":
        stream.stats.problem(f"{stream.label}: SSE ended with {closed or 'nothing'}")


async def talk(ws: ClientConnection, stream: Stream, reactive: bool) -> None:
    """Talk until the session ends: after each reply (reactive), or now and then."""
    for number in itertools.count(1):
        if stream.ended:
            return
        stream.replied.clear()
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"type": "user_message", "content": f"Point {number}?"}))
        if reactive:
            await stream.replied.wait()
        else:
            await asyncio.sleep(random.uniform(*TALK_PAUSE_SECONDS))


async def run_slot(
    slot: int,
    args: argparse.Namespace,
    http: httpx.AsyncClient,
    sse: httpx.AsyncClient,
    stats: Stats,
    deadline: float,
) -> None:
    """Keep one session alive until the deadline, replacing it whenever it ends."""
    ws_base = str(http.base_url).replace("http://", "ws://").rstrip("/")
    for generation in itertools.count():
        if time.monotonic() >= deadline:
            return
        participation = PARTICIPATION[(slot + generation) % len(PARTICIPATION)]
        spec = {
            "name": f"soak {slot}.{generation}",
            "bots": [
                {"name": name, "system_prompt": f"You are {name}. Be brief."}
                for name in ("Alice", "Bob", "Carol")
            ],
            "options": {
                "participation": participation,
                "max_turns": args.turns,
                "stream_tokens": (slot + generation) % 2 == 0,
            },
        }
        response = await http.post("/v1/session/create", json=spec)
        if response.status_code != httpx.codes.CREATED:
            stats.problem(f"create answered {response.status_code}: {response.text[:200]}")
            await asyncio.sleep(1.0)
            continue
        created = response.json()
        token, observer = created["token"], created["observer_token"]
        stats.created += 1
        stats.live_tokens[token] = observer
        label = f"session {slot}.{generation} ({participation})"
        tasks: list[asyncio.Task[None]] = []
        sockets: list[ClientConnection] = []
        try:
            watcher = await connect(f"{ws_base}/v1/session/{observer}/connect?name=watcher")
            sockets.append(watcher)
            watcher_stream = Stream(stats, f"{label} ws observer")
            tasks.append(asyncio.create_task(watch_ws(watcher, watcher_stream)))
            tasks.append(
                asyncio.create_task(
                    watch_sse(
                        sse,
                        f"/v1/session/{observer}/stream?name=reader",
                        Stream(stats, f"{label} sse observer"),
                    )
                )
            )
            if participation != "autonomous":
                talker = await connect(
                    f"{ws_base}/v1/session/{token}/connect?role=talker&name=Dana"
                )
                sockets.append(talker)
                talker_stream = Stream(stats, f"{label} talker")
                tasks.append(asyncio.create_task(watch_ws(talker, talker_stream)))
                tasks.append(
                    asyncio.create_task(
                        talk(talker, talker_stream, reactive=participation == "reactive")
                    )
                )
            # The session runs to max_turns; past the deadline it is ended instead.
            remaining = deadline - time.monotonic()
            done, _ = await asyncio.wait(tasks[:2], timeout=max(0.0, remaining))
            if len(done) < len(tasks[:2]):
                await http.delete(f"/v1/session/{token}")
            async with asyncio.timeout(CALL_SECONDS):
                await asyncio.gather(*tasks)
            stats.done += 1
        except Exception as exc:  # every failure is a finding, reported and counted
            stats.problem(f"{label}: {exc!r}")
        finally:
            stats.live_tokens.pop(token, None)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for ws in sockets:
                await ws.close()


async def raw_vanish(port: int, path: str) -> None:
    """Open a WebSocket on a plain socket, then drop it with a reset (no close frame)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    await reader.read(PAGE)  # the handshake answer (and maybe the history)
    writer.transport.abort()


async def churn_and_poll(
    http: httpx.AsyncClient, sse: httpx.AsyncClient, stats: Stats, deadline: float, port: int
) -> None:
    """Observers that come and go, and status/history reads, all the while."""
    ws_base = str(http.base_url).replace("http://", "ws://").rstrip("/")
    for round_number in itertools.count():
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(CHURN_PAUSE_SECONDS)
        if not stats.live_tokens:
            continue
        token, observer = random.choice(list(stats.live_tokens.items()))
        try:
            kind = round_number % 4
            if kind == 0:
                async with connect(f"{ws_base}/v1/session/{observer}/connect?name=churn") as ws:
                    await ws.recv()
            elif kind == 1:
                async with sse.stream("GET", f"/v1/session/{observer}/stream") as response:
                    async for _ in response.aiter_lines():
                        break
            elif kind == 2:
                await raw_vanish(port, f"/v1/session/{observer}/connect?name=ghost")
            else:
                for path in (f"/v1/session/{token}", f"/v1/session/{observer}/history"):
                    response = await http.get(path)
                    if response.status_code != httpx.codes.OK:
                        stats.problem(f"GET answered {response.status_code}")
                stats.polls += 1
            stats.churned += int(kind != 3)
        except (ConnectionClosed, httpx.HTTPError, OSError):
            pass  # the session ended under our feet: normal in a churn


async def sample_loop(
    pid: int,
    http: httpx.AsyncClient,
    stats: Stats,
    start: float,
    deadline: float,
    interval: float,
) -> AsyncIterator[Sample]:
    while True:
        now = time.monotonic()
        try:
            live = (await http.get("/healthz")).json()["live_sessions"]
        except (httpx.HTTPError, ValueError, KeyError):
            live = -1
        rss, fds = read_process(pid)
        yield Sample(now - start, rss, fds, live, stats.done, stats.events)
        if now >= deadline:
            return
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.soak",
        description="Run many sessions for minutes; check memory and descriptors stay flat.",
    )
    parser.add_argument("--sessions", type=int, default=30, help="sessions kept alive")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run")
    parser.add_argument("--turns", type=int, default=8, help="max_turns of each session")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="mock latency")
    parser.add_argument("--token-ms", type=float, default=10.0, help="mock time per token")
    parser.add_argument("--llm-concurrency", type=int, default=8, help="LLM_MAX_CONCURRENCY")
    parser.add_argument(
        "--retention", type=int, default=10, help="ENDED_RETENTION_SECONDS of the server"
    )
    parser.add_argument(
        "--interval", type=float, default=None, help="seconds between samples (default: auto)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds left out of the verdict (default: a quarter of the run, at least 30)",
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.10, help="allowed growth of a median (0.10: 10 %%)"
    )
    parser.add_argument(
        "--fd-slack", type=int, default=8, help="descriptors allowed on top of the tolerance"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, db)")
    return parser.parse_args(argv)


async def soak(args: argparse.Namespace, workdir: Path) -> int:
    total = args.minutes * 60
    interval = args.interval or max(1.0, min(5.0, total / 40))
    warmup = args.warmup if args.warmup is not None else max(30.0, total / 4)
    processes = launch(args, workdir)
    stats = Stats()
    samples: list[Sample] = []
    print(
        f"soak: {args.sessions} sessions for {args.minutes:g} min, server pid "
        f"{processes.server.pid}, work folder {workdir}",
        flush=True,
    )
    print(f"{'t (s)':>7} {'RSS (MiB)':>10} {'fds':>5} {'live':>5} {'done':>6} {'events':>9}")
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=args.sessions)
    try:
        await wait_ready(processes, workdir)
        async with (
            httpx.AsyncClient(
                base_url=processes.base_url, timeout=CALL_SECONDS, limits=limits
            ) as http,
            httpx.AsyncClient(
                base_url=processes.base_url,
                timeout=httpx.Timeout(CALL_SECONDS, read=None),
                limits=limits,
            ) as sse,
        ):
            start = time.monotonic()
            deadline = start + total
            port = int(processes.base_url.rsplit(":", 1)[1])
            load = [
                asyncio.create_task(run_slot(slot, args, http, sse, stats, deadline))
                for slot in range(args.sessions)
            ]
            load.append(asyncio.create_task(churn_and_poll(http, sse, stats, deadline, port)))
            async for sample in sample_loop(
                processes.server.pid, http, stats, start, deadline, interval
            ):
                samples.append(sample)
                print(
                    f"{sample.elapsed:7.0f} {sample.rss_kib / 1024:10.1f} {sample.fds:5d} "
                    f"{sample.live:5d} {sample.done:6d} {sample.events:9d}",
                    flush=True,
                )
                if processes.server.poll() is not None:
                    stats.problem(f"the server exited with {processes.server.returncode}")
                    break
            await asyncio.gather(*load)
    finally:
        processes.stop()
    measured = [s for s in samples if s.elapsed >= warmup]
    print(
        f"\n{stats.created} sessions created, {stats.done} finished, {stats.events} events "
        f"checked, {stats.churned} observers churned, {stats.polls} status/history polls"
    )
    print(
        f"verdict over {len(measured)} samples after a {warmup:.0f} s warm-up "
        f"(tolerance {args.tolerance:.0%}, +{args.fd_slack} descriptors):"
    )
    rss = judge([s.rss_kib / 1024 for s in measured], "memory (VmRSS)", args.tolerance, 0.0)
    fds = judge([float(s.fds) for s in measured], "descriptors", args.tolerance, args.fd_slack)
    if rss is None or fds is None:
        print("  too few samples after the warm-up for a verdict: run longer")
        return 1
    print(f"  {rss.line('MiB')}\n  {fds.line('fds')}")
    print(f"  stream problems: {len(stats.problems)}")
    ok = rss.flat and fds.flat and not stats.problems
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not FELLOWSHIP.exists():
        print(f"soak: {FELLOWSHIP} not found; run `make` first", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="fellowship-soak-"))
    try:
        return asyncio.run(soak(args, workdir))
    finally:
        if not args.keep:
            for path in sorted(workdir.rglob("*"), reverse=True):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
            workdir.rmdir()


if __name__ == "__main__":
    raise SystemExit(main())
