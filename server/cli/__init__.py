"""The `fellowship` command: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine.config import ConfigError

from . import (
    backend,
    diagrams,
    mock_llm,
    rotate_secrets,
    run,
    run_cluster,
    schema,
    secret_key,
    serve,
    validate,
)

COMMANDS = (
    serve,
    run_cluster,
    run,
    validate,
    schema,
    diagrams,
    mock_llm,
    backend,
    secret_key,
    rotate_secrets,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="fellowship", description="Multi-bot conversation server for OpenAI-compatible LLMs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"fellowship: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
