"""`fellowship mock-llm`: run the OpenAI-compatible mock backend.

By default it listens where `LLM_BASE_URL` points (so `fellowship serve` finds it
without configuration), or on 127.0.0.1:8080 when that is empty; `--port 0` picks a
free port. `--replies chat` gives conversational replies instead of the echo tests use.
The first line printed on stdout is `mock LLM listening on <base_url>`, for scripts
that need the address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any, Final, get_args
from urllib.parse import urlsplit

from engine.config import get_settings
from engine.llm.mock import Fault, FaultRate, MockLLM
from engine.llm.mock.replies import STRUCTURED_KINDS, ReplyStyle

FALLBACK_URL: Final = "http://127.0.0.1:8080/v1"
"""Where the mock listens when LLM_BASE_URL is empty (llama-server's usual address)."""


def register(sub: Any) -> None:
    """Add the `mock-llm` sub-command."""
    parser = sub.add_parser(
        "mock-llm",
        help="run the OpenAI-compatible mock backend (tests, demos, benchmarks)",
        description="An OpenAI-compatible chat-completions server with deterministic "
        "replies, configurable latency and injectable faults.",
    )
    parser.add_argument("--host", help="address to bind (default: the host of LLM_BASE_URL)")
    parser.add_argument(
        "--port", type=int, help="port to bind, 0 for any free one (default: LLM_BASE_URL's)"
    )
    parser.add_argument("--model", default="mock", help="model name reported (default: mock)")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="fixed wait before every reply"
    )
    parser.add_argument(
        "--first-token-ms", type=float, default=0.0, help="wait before the first token"
    )
    parser.add_argument("--token-ms", type=float, default=0.0, help="wait between tokens")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        type=_fault,
        metavar="MODE[:RATE]",
        help="inject a fault into a share of replies (repeatable); modes: "
        + ", ".join(fault.value for fault in Fault),
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault RNG (default: 0)")
    parser.add_argument(
        "--structured-output",
        type=_kinds,
        default=sorted(STRUCTURED_KINDS),
        metavar="KINDS",
        help="comma-separated kinds of JSON-schema request honoured, or 'none' (default: "
        + ",".join(sorted(STRUCTURED_KINDS))
        + "); the others are ignored",
    )
    parser.add_argument(
        "--replies",
        choices=get_args(ReplyStyle),
        default="echo",
        help="echo: `<Name> answers <Speaker>: ...` (default, what tests expect); "
        "chat: conversational replies for demos",
    )
    parser.set_defaults(handler=_handle)


def _kinds(text: str) -> list[str]:
    kinds = [item.strip() for item in text.split(",") if item.strip()]
    if kinds == ["none"]:
        return []
    unknown = sorted(set(kinds) - STRUCTURED_KINDS)
    if unknown:
        known = ", ".join(sorted(STRUCTURED_KINDS))
        raise argparse.ArgumentTypeError(f"unknown kind {unknown[0]!r} (known: {known}, none)")
    return kinds


def _fault(text: str) -> FaultRate:
    try:
        return FaultRate.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _handle(args: argparse.Namespace) -> int:
    host, port = args.host, args.port
    if host is None or port is None:
        default = urlsplit(get_settings().llm_base_url or FALLBACK_URL)
        host = host if host is not None else (default.hostname or "127.0.0.1")
        port = port if port is not None else (default.port or 80)
    mock = MockLLM(
        host=host,
        port=port,
        model=args.model,
        latency_ms=args.latency_ms,
        first_token_ms=args.first_token_ms,
        token_ms=args.token_ms,
        faults=args.fault,
        seed=args.seed,
        structured_output=args.structured_output,
        record=False,  # a long benchmark run must not grow memory
        replies=args.replies,
    )
    try:
        asyncio.run(_serve(mock))
    except OSError as exc:
        print(f"fellowship mock-llm: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(mock: MockLLM) -> None:
    await mock.start()
    print(f"mock LLM listening on {mock.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await mock.stop()
