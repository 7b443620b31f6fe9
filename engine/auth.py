"""Session credentials: minting, hashing and constant-time checks.

A session has a full-control token and a read-only observer token, each at least
256 bits from `secrets`. Only their SHA-256 hashes are kept; lookups go by hash
and the final comparison is constant-time, so neither timing nor storage reveals
a token. The prefixes let log filters recognise and mask a token that slips in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal

TOKEN_BYTES = 32  # 256 bits of entropy, as SPEC §12 requires.
FULL_PREFIX = "fsk_"
OBSERVER_PREFIX = "fso_"

Access = Literal["full", "observer"]


def mint_token(access: Access) -> str:
    """A fresh random token for the given access level."""
    prefix = FULL_PREFIX if access == "full" else OBSERVER_PREFIX
    return prefix + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def hashes_match(a: str, b: str) -> bool:
    """Constant-time comparison of two token hashes."""
    return hmac.compare_digest(a.encode(), b.encode())
