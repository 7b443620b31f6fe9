"""`fellowship secret-key`: make a `SECRET_KEY`, or write one into `.env` if none is set.

`make run` calls `fellowship secret-key --ensure .env` before every start: the first
start writes a fresh random key into `.env`, later starts find it and change nothing.
A key set in the environment counts too, so a deployment that passes its own key is
never given a second one. The key itself is never printed by `--ensure`, only its id.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from engine.config import decode_secret_key
from engine.store.secrets import generate_key, key_id

VARIABLE: Final = "SECRET_KEY"
ENV_FILE_MODE: Final = 0o600  # .env holds the keys: only its owner may read it
_ASSIGNMENT = re.compile(rf"^\s*(?:export\s+)?{VARIABLE}\s*=(.*)$", re.IGNORECASE)


def register(sub: Any) -> None:
    """Add the `secret-key` sub-command."""
    parser = sub.add_parser(
        "secret-key",
        help="print a new SECRET_KEY, or write one into an env file that has none",
        description="Without options: print a fresh random key for SECRET_KEY. With "
        "--ensure FILE: when SECRET_KEY is set neither in the environment nor in FILE, "
        "write a fresh key into FILE (readable by its owner only); otherwise change nothing.",
    )
    parser.add_argument(
        "--ensure", type=Path, metavar="FILE", help="the env file to complete (make run: .env)"
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    if args.ensure is None:
        print(generate_key())
        return 0
    written = ensure_secret_key(args.ensure, os.environ)
    if written is None:
        return 0
    print(f"fellowship: wrote a new SECRET_KEY (id {written}) into {args.ensure}; back it up")
    return 0


def _value(line: str) -> str | None:
    match = _ASSIGNMENT.match(line)
    if match is None:
        return None
    value = match.group(1).split(" #", 1)[0].strip()
    return value.strip("'\"")


def ensure_secret_key(path: Path, environ: Mapping[str, str]) -> str | None:
    """Write a new key into the env file at `path` unless a key is already set.

    Set means: a non-empty `SECRET_KEY` in `environ` (which wins over the file, as
    for the server) or in the file. An empty `SECRET_KEY=` line (as copied from
    `.env.example`) is filled in; without one, a line is added. Returns the new key's
    id, or None when nothing was written.
    """
    if any(name.upper() == VARIABLE and value.strip() for name, value in environ.items()):
        return None
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    values = [(index, _value(line)) for index, line in enumerate(lines)]
    assigned = [(index, value) for index, value in values if value is not None]
    if assigned and assigned[-1][1]:
        return None  # the last assignment is the one that counts, as in the server
    key = generate_key()
    line = f"{VARIABLE}={key}"
    if assigned:
        lines[assigned[-1][0]] = line
    else:
        lines.append(line)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, ENV_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    path.chmod(ENV_FILE_MODE)
    return key_id(decode_secret_key(key))
