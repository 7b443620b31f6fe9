"""Secrets at rest: the API keys a stored spec must keep, encrypted under `SECRET_KEY`.

Session tokens are stored only as hashes (`engine.auth`). API keys cannot be hashed: a
restarted server has to send them again. So before a spec reaches a store, each of its
secret fields is replaced by a `SealedSecret`: AES-256-GCM (authenticated) under the
first key of `SECRET_KEY`, with the session id and the field's path as associated data,
so that a sealed value copied into another session or field does not open. Every key
of `SECRET_KEY` opens what it sealed; a sealed value names its key by a fingerprint,
which tells "no key" and "wrong key" apart from "damaged".

Nothing here knows a database. A store keeps the sealed JSON as text, and
`Store.rewrite_specs` lets `seal_stored` (at start-up: encrypt the plain secrets of an
older database, move secrets of an older key to the first one) and `rotate_stored`
(the `fellowship rotate-secrets` command) replace every stored spec in one transaction.
Another store (PostgreSQL) gets all of this by implementing `rewrite_specs`.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from engine.config import SECRET_KEY_BYTES, Settings, decode_secret_key
from engine.errors import SecretKeyMissing, SecretUnreadable
from engine.store.base import Store

log = logging.getLogger("fellowship.secrets")

CIPHER: Final = "aes-256-gcm"
NONCE_BYTES: Final = 12  # the nonce size GCM is specified for; random for every seal
KEY_ID_CHARS: Final = 16  # hex digits of a key's fingerprint kept next to what it sealed
_KEY_ID_LABEL: Final = b"fellowship SECRET_KEY id\x00"  # the fingerprint is never a bare hash

SecretPath = tuple[str, ...]
"""Where a secret sits in a JSON document: the keys from the top, e.g. ("llm", "api_key")."""

FieldOutcome = Literal["sealed", "resealed", "current", "left_plain", "unreadable"]
"""What sealing did to one field: encrypted a plain value, moved it to the first key,
found it already under the first key, left it plain (no key), or could not open it."""


class SealedSecret(BaseModel):
    """One encrypted secret, as it is stored in place of the plain text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cipher: Literal["aes-256-gcm"] = Field(description="The authenticated cipher used.")
    key_id: str = Field(description="Fingerprint of the key that sealed it (not the key).")
    nonce: str = Field(description="The GCM nonce, URL-safe base64.")
    data: str = Field(description="Ciphertext with its authentication tag, URL-safe base64.")


def key_id(key: bytes) -> str:
    """A public fingerprint of `key`: names it in stored values and logs, reveals nothing."""
    return hashlib.sha256(_KEY_ID_LABEL + key).hexdigest()[:KEY_ID_CHARS]


def generate_key() -> str:
    """A fresh random key in `SECRET_KEY`'s format."""
    return base64.urlsafe_b64encode(os.urandom(SECRET_KEY_BYTES)).decode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.encode("ascii"))


class SecretBox:
    """Seals with the first of its keys and opens with any of them.

    `context` binds a sealed value to where it belongs (the session id and field):
    opening it under another context fails like a wrong key.
    """

    def __init__(self, keys: Sequence[str | SecretStr]) -> None:
        self._ciphers: dict[str, AESGCM] = {}
        for key in keys:
            raw = decode_secret_key(key.get_secret_value() if isinstance(key, SecretStr) else key)
            self._ciphers.setdefault(key_id(raw), AESGCM(raw))
        self._first = next(iter(self._ciphers), None)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """The box of `SECRET_KEY` (possibly without keys: then it seals nothing)."""
        return cls(settings.secret_key)

    @classmethod
    def ephemeral(cls) -> SecretBox:
        """A box with a random key that lives as long as the process: for a store that
        keeps nothing beyond it, where a lost key loses nothing."""
        return cls([generate_key()])

    @property
    def can_seal(self) -> bool:
        """Whether the box has a key to seal with."""
        return self._first is not None

    @property
    def key_ids(self) -> list[str]:
        """Fingerprints of the keys, the sealing one first."""
        return list(self._ciphers)

    def seal(self, plain: str, context: str) -> SealedSecret:
        """`plain` encrypted under the first key, bound to `context`."""
        if self._first is None:
            raise SecretKeyMissing(
                "this server keeps no API keys: SECRET_KEY is not set, so they cannot be "
                "stored encrypted (make run sets one; see docs/security.md)"
            )
        nonce = os.urandom(NONCE_BYTES)
        data = self._ciphers[self._first].encrypt(nonce, plain.encode("utf-8"), context.encode())
        return SealedSecret(cipher=CIPHER, key_id=self._first, nonce=_b64(nonce), data=_b64(data))

    def open(self, sealed: SealedSecret, context: str) -> str:
        """The plain text of `sealed`; `SecretUnreadable` says why it cannot be had."""
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None:
            if not self._ciphers:
                raise SecretUnreadable("the API key is stored encrypted, but SECRET_KEY is not set")
            raise SecretUnreadable(
                f"the API key was encrypted with key {sealed.key_id}, which SECRET_KEY does "
                f"not hold (it holds {', '.join(self._ciphers)})"
            )
        try:
            plain = cipher.decrypt(_unb64(sealed.nonce), _unb64(sealed.data), context.encode())
        except (InvalidTag, ValueError):  # ValueError: not base64, or a bad nonce size
            raise SecretUnreadable(
                f"the API key does not decrypt with key {sealed.key_id}: the stored value "
                "was altered or damaged"
            ) from None
        return plain.decode("utf-8")

    def is_current(self, sealed: SealedSecret) -> bool:
        """Whether `sealed` is under the first key (nothing to re-encrypt)."""
        return sealed.key_id == self._first


# --- secrets inside a JSON document ----------------------------------------------------------


def _context(context: str, path: SecretPath) -> str:
    return f"{context}\x00{'.'.join(path)}"


def _parent(data: dict[str, Any], path: SecretPath) -> dict[str, Any] | None:
    """The mapping that holds the last key of `path`, if the document has one."""
    node: Any = data
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _sealed(value: object) -> SealedSecret:
    """A stored secret that is not text must be a sealed one; anything else is damage."""
    try:
        return SealedSecret.model_validate(value)
    except ValidationError:
        raise SecretUnreadable(
            "the stored API key is neither text nor an encrypted value: the row was damaged"
        ) from None


@dataclass(slots=True)
class Opened:
    """A document with its secrets in plain text, and the ones that could not be opened."""

    data: dict[str, Any]
    unreadable: list[SecretUnreadable] = field(default_factory=list)


def open_secrets(
    data: dict[str, Any], paths: Iterable[SecretPath], box: SecretBox, *, context: str
) -> Opened:
    """`data` with each sealed secret at `paths` replaced by its plain text.

    A secret that cannot be opened becomes None and its reason is listed; a plain
    value (a database not migrated yet) passes through as it is. `data` itself is
    never changed: the result is a copy when anything had to be replaced.
    """
    opened = Opened(data)
    for path in paths:
        parent = _parent(opened.data, path)
        stored = parent.get(path[-1]) if parent is not None else None
        if stored is None or isinstance(stored, str):
            continue  # nothing, or plain text from a database not migrated yet
        try:
            value: str | None = box.open(_sealed(stored), _context(context, path))
        except SecretUnreadable as problem:
            value = None
            opened.unreadable.append(problem)
        opened.data = _replaced(opened.data, data, path, value)
    return opened


def _replaced(
    current: dict[str, Any], original: dict[str, Any], path: SecretPath, value: object
) -> dict[str, Any]:
    """`current` with `value` at `path`, copied first if it is still the caller's `original`."""
    if current is original:
        current = copy.deepcopy(original)
    parent = _parent(current, path)
    assert parent is not None  # found in `original`, so in its copy
    parent[path[-1]] = value
    return current


@dataclass(slots=True)
class Sealed:
    """A document with its secrets sealed, and what was done to each secret field."""

    data: dict[str, Any]
    outcomes: list[FieldOutcome] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether any field was written anew."""
        return any(outcome in ("sealed", "resealed") for outcome in self.outcomes)


def seal_secrets(
    data: dict[str, Any],
    paths: Iterable[SecretPath],
    box: SecretBox,
    *,
    context: str,
    lenient: bool = False,
) -> Sealed:
    """`data` with each secret at `paths` sealed under the box's first key.

    Plain values are sealed; values sealed under another key of the box are opened and
    sealed again. Strict (the default), a value that cannot be sealed raises
    `SecretKeyMissing` or `SecretUnreadable`. `lenient` (start-up) leaves such a value
    as it is and says so in the outcomes, so that one unreadable session never stops
    the others. `data` itself is never changed: the result is a copy when anything was
    sealed (and `data` when nothing was, which is the common case at start-up).
    """
    sealed = Sealed(data)
    for path in paths:
        parent = _parent(sealed.data, path)
        value = parent.get(path[-1]) if parent is not None else None
        if value is None:
            continue
        where = _context(context, path)
        try:
            existing = value if isinstance(value, str) else _sealed(value)
            if isinstance(existing, str):
                fresh = box.seal(existing, where)
                outcome: FieldOutcome = "sealed"
            elif box.is_current(existing):
                sealed.outcomes.append("current")
                continue
            else:
                fresh = box.seal(box.open(existing, where), where)
                outcome = "resealed"
        except SecretKeyMissing:
            if not lenient:
                raise
            outcome = "left_plain"
        except SecretUnreadable:
            if not lenient:
                raise
            outcome = "unreadable"
        else:
            sealed.data = _replaced(sealed.data, data, path, fresh.model_dump())
        sealed.outcomes.append(outcome)
    return sealed


# --- every stored spec -----------------------------------------------------------------------


@dataclass(slots=True)
class StoredSecrets:
    """What a pass over the stored specs did, by session id."""

    sealed: list[str] = field(default_factory=list)
    resealed: list[str] = field(default_factory=list)
    left_plain: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def note(self, session_id: str, outcomes: Iterable[FieldOutcome]) -> None:
        """Record the outcomes of one session's fields."""
        lists = {
            "sealed": self.sealed,
            "resealed": self.resealed,
            "left_plain": self.left_plain,
            "unreadable": self.unreadable,
        }
        for outcome in dict.fromkeys(outcomes):
            if outcome in lists:
                lists[outcome].append(session_id)


async def seal_stored(store: Store, box: SecretBox, paths: Sequence[SecretPath]) -> StoredSecrets:
    """The start-up pass over every stored spec, in one transaction of the store.

    Plain secrets (a database from before encryption) are sealed, secrets of an older
    key of `SECRET_KEY` are moved to the first key; what cannot be done is left as it
    is and logged: plain secrets when no key is set, sealed ones no key of the box
    opens. Never raises for a secret; the store's own errors propagate.
    """
    report = StoredSecrets()

    def rewrite(session_id: str, spec_json: str) -> str | None:
        sealed = seal_secrets(json.loads(spec_json), paths, box, context=session_id, lenient=True)
        report.note(session_id, sealed.outcomes)
        return json.dumps(sealed.data) if sealed.changed else None

    await store.rewrite_specs(rewrite)
    if report.sealed:
        log.info("encrypted the API keys of %d sessions stored in plain text", len(report.sealed))
    if report.resealed:
        log.info(
            "re-encrypted the API keys of %d sessions under the first SECRET_KEY (%s)",
            len(report.resealed),
            box.key_ids[0],
        )
    if report.left_plain:
        log.warning(
            "%d sessions keep their API keys in plain text because SECRET_KEY is not set; "
            "set it (make run does) and restart to encrypt them: %s",
            len(report.left_plain),
            ", ".join(report.left_plain),
        )
    if report.unreadable:
        log.error(
            "%d sessions hold API keys that SECRET_KEY cannot decrypt (%s); they cannot reach "
            "their backend until the key that encrypted them is added to SECRET_KEY: %s",
            len(report.unreadable),
            "no key is set" if not box.key_ids else f"keys held: {', '.join(box.key_ids)}",
            ", ".join(report.unreadable),
        )
    return report


async def rotate_stored(store: Store, box: SecretBox, paths: Sequence[SecretPath]) -> StoredSecrets:
    """Seal every stored secret under the box's first key, all or nothing.

    Any secret that no key of the box opens (or a plain one when the box has no key)
    raises before anything is changed.
    """
    report = StoredSecrets()

    def rewrite(session_id: str, spec_json: str) -> str | None:
        try:
            sealed = seal_secrets(json.loads(spec_json), paths, box, context=session_id)
        except SecretUnreadable as problem:
            raise SecretUnreadable(f"session {session_id}: {problem.message}") from None
        report.note(session_id, sealed.outcomes)
        return json.dumps(sealed.data) if sealed.changed else None

    await store.rewrite_specs(rewrite)
    return report
