"""`fellowship serve`: run the HTTP/WebSocket/SSE server (what `make run` starts)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from engine.config import get_settings, load_settings


def register(sub: Any) -> None:
    """Add the `serve` sub-command."""
    parser = sub.add_parser(
        "serve",
        help="run the server",
        description="Run the Fellowship server. Configuration comes from the environment "
        "and .env (see .env.example); --host and --port override HOST and PORT. With an "
        "empty LLM_BASE_URL it runs the embedded llama.cpp backend (built on first start, "
        "with a progress display); --mock uses the built-in mock instead. SIGINT or "
        "SIGTERM shut it down gracefully.",
    )
    parser.add_argument("--host", help="address to bind (default: HOST)")
    parser.add_argument("--port", type=int, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--mock",
        action="store_true",
        help="talk to the built-in mock backend (instant, no model; for demos and tests)",
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    # Imported here so the other sub-commands do not pay for Quart and Hypercorn.
    from engine.embedded.recipe import cache_root
    from server.cli.progress import BuildDisplay
    from server.hosting import run

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_settings(**overrides) if overrides else get_settings()
    display = BuildDisplay(
        sys.stderr,
        cache=cache_root(settings),
        note="The server is up meanwhile: its console shows the progress too.",
    )
    return run(settings, mock=args.mock, display=display)
