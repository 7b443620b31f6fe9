"""`fellowship validate`: check spec files and report every problem with path and line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Final

from engine.config import Settings, get_settings
from engine.spec.loader import SpecResult, load_spec

STDIN: Final = "-"
_CONTENT_TYPES: Final = {
    ".json": "application/json",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
}


def register(sub: Any) -> None:
    """Add the `validate` sub-command."""
    parser = sub.add_parser(
        "validate",
        help="check session spec files; exit 1 if any has an error",
        description="Check session specs (YAML or JSON) as the server would. Prints OK or "
        "every error with its path and line, plus warnings; exits 1 if any file has an "
        "error.",
    )
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help=f"a spec file, or {STDIN} for standard input"
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    settings = get_settings()
    # The loader logs unknown keys for the server's log; here they are printed below,
    # so keep Python's last-resort handler from echoing them a second time.
    logging.getLogger("engine.spec").addHandler(logging.NullHandler())
    failed = False
    for name in args.files:
        failed |= not _report(name, settings)
    return 1 if failed else 0


def _report(name: str, settings: Settings) -> bool:
    """Print the verdict on one file; True when it is a valid spec."""
    try:
        data = sys.stdin.buffer.read() if name == STDIN else Path(name).read_bytes()
    except OSError as exc:
        print(f"{name}: cannot read: {exc.strerror or exc}")
        return False
    content_type = _CONTENT_TYPES.get(Path(name).suffix.lower())
    result = load_spec(data, content_type=content_type, settings=settings)
    print(f"{name}: {_verdict(result)}")
    for error in result.errors:
        print(f"  error: {error}")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    return result.ok


def _verdict(result: SpecResult) -> str:
    if result.ok:
        count = len(result.warnings)
        return "OK" if not count else f"OK ({count} warning{'s' if count != 1 else ''})"
    count = len(result.errors)
    return f"{count} error{'s' if count != 1 else ''}"
