"""`fellowship schema`: print, write or check the generated spec schema and reference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.spec.reference import REFERENCE_FILE_NAME, render_reference
from engine.spec.schema import SCHEMA_FILE_NAME, render_schema

DEFAULT_SCHEMA_PATH = Path("specs") / SCHEMA_FILE_NAME
DEFAULT_REFERENCE_PATH = Path("docs") / REFERENCE_FILE_NAME


def register(sub: Any) -> None:
    """Add the `schema` sub-command."""
    parser = sub.add_parser(
        "schema",
        help="print the JSON Schema of session specs (or write/check the generated files)",
        description="Print the JSON Schema of session specs. --write regenerates the "
        "committed schema and the spec reference; --check fails if either is stale.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--write", action="store_true", help="write the schema file and the spec reference"
    )
    mode.add_argument(
        "--check", action="store_true", help="exit 1 if a committed file is out of date"
    )
    parser.add_argument(
        "--schema-path",
        type=Path,
        default=DEFAULT_SCHEMA_PATH,
        help=f"schema file (default: {DEFAULT_SCHEMA_PATH})",
    )
    parser.add_argument(
        "--reference-path",
        type=Path,
        default=DEFAULT_REFERENCE_PATH,
        help=f"Markdown reference (default: {DEFAULT_REFERENCE_PATH})",
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    generated = {args.schema_path: render_schema(), args.reference_path: render_reference()}
    if args.write:
        for path, text in generated.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        return 0
    if args.check:
        stale = [path for path, text in generated.items() if _read(path) != text]
        for path in stale:
            print(
                f"fellowship schema: {path} is out of date with engine/spec/models.py; "
                "run `fellowship schema --write` (or `make schema`) and commit the result",
                file=sys.stderr,
            )
        return 1 if stale else 0
    sys.stdout.write(generated[args.schema_path])
    return 0


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
