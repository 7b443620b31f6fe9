"""`fellowship diagrams`: draw the state machines into `docs/` (or check they are fresh)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.diagrams import graphviz_available, render_all


def register(sub: Any) -> None:
    """Add the `diagrams` sub-command."""
    parser = sub.add_parser("diagrams", help="render the state-machine diagrams into docs/")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="docs folder")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed files are stale"
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    svg = graphviz_available()
    if not svg:
        print("note: Graphviz 'dot' not found; SVG files skipped", file=sys.stderr)
    files = render_all(args.docs, svg=svg)
    if args.check:
        stale = [
            str(path)
            for path, text in files.items()
            if not path.exists() or path.read_text(encoding="utf-8") != text
        ]
        if stale:
            print("stale diagrams (run 'make diagrams'): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("diagrams are up to date")
        return 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0
