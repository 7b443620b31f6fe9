"""`fellowship rotate-secrets`: re-encrypt every stored API key under a new key.

Run it with the server stopped. It opens the database, opens every sealed secret with
the old keys, seals it again under the new key, and writes all of it in one
transaction: either every session moves to the new key or nothing changes. Plain
secrets (a database from before encryption) are sealed on the way. The old copies are
then wiped from the file. Afterwards `SECRET_KEY` must be the new key.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from engine.config import decode_secret_key, get_settings
from engine.errors import SecretUnreadable, StorageError
from engine.spec.models import SECRET_FIELDS
from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.secrets import SecretBox, StoredSecrets, rotate_stored
from engine.store.sqlite import SqliteStore


def register(sub: Any) -> None:
    """Add the `rotate-secrets` sub-command."""
    parser = sub.add_parser(
        "rotate-secrets",
        help="re-encrypt the stored API keys under a new SECRET_KEY (server stopped)",
        description="Re-encrypt every API key stored in the database under --new-key, in "
        "one transaction. --old-key (repeatable) are the keys that open them now; without "
        "it, the keys of SECRET_KEY. Stop the server first, and set SECRET_KEY to the new "
        "key before starting it again. Exits 1 and changes nothing if any stored key "
        "cannot be opened.",
    )
    parser.add_argument("--new-key", required=True, help="the key to encrypt with from now on")
    parser.add_argument(
        "--old-key",
        action="append",
        default=[],
        help="a key that opens the stored secrets now (default: SECRET_KEY)",
    )
    parser.add_argument(
        "--database",
        type=Path,
        metavar="FILE",
        help="the SQLite database (default: DATABASE_URL if set, else DATABASE_PATH)",
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    settings = get_settings()
    keys = [args.new_key, *(args.old_key or [k.get_secret_value() for k in settings.secret_key])]
    for key in keys:
        try:
            decode_secret_key(key)
        except ValueError as exc:
            # The key itself is never echoed, not even a wrong one.
            print(f"fellowship: {exc} (make one with `fellowship secret-key`)", file=sys.stderr)
            return 2
    if args.database is None and settings.database_url.get_secret_value():
        postgres = PostgresStore.from_settings(settings)
        store: Store = postgres
        where = postgres.where
    else:
        path: Path = args.database or settings.database_path
        if not path.exists():
            print(f"fellowship: no database at {path}", file=sys.stderr)
            return 1
        store = SqliteStore.from_settings(settings.model_copy(update={"database_path": path}))
        where = str(path)
    box = SecretBox(keys)
    try:
        report = asyncio.run(_rotate(store, box))
    except (SecretUnreadable, StorageError) as exc:
        print(f"fellowship: nothing changed: {exc.message}", file=sys.stderr)
        return 1
    moved = len({*report.sealed, *report.resealed})
    print(
        f"re-encrypted the API keys of {moved} sessions under key {box.key_ids[0]} in {where}; "
        "set SECRET_KEY to the new key before starting the server"
    )
    return 0


async def _rotate(store: Store, box: SecretBox) -> StoredSecrets:
    await store.open()
    try:
        return await rotate_stored(store, box, SECRET_FIELDS)
    finally:
        await store.close()
