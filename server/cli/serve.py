"""`fellowship serve`: run the HTTP/WebSocket/SSE server (what `make run` starts)."""

from __future__ import annotations

import argparse
from typing import Any

from engine.config import get_settings, load_settings


def register(sub: Any) -> None:
    """Add the `serve` sub-command."""
    parser = sub.add_parser(
        "serve",
        help="run the server",
        description="Run the Fellowship server. Configuration comes from the environment "
        "and .env (see .env.example); --host and --port override HOST and PORT. "
        "SIGINT or SIGTERM shut it down gracefully.",
    )
    parser.add_argument("--host", help="address to bind (default: HOST)")
    parser.add_argument("--port", type=int, help="port to listen on; 0 picks a free one")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    # Imported here so the other sub-commands do not pay for Quart and Hypercorn.
    from server.hosting import run

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_settings(**overrides) if overrides else get_settings()
    return run(settings)
