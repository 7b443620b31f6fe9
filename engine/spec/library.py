"""The spec library: named specs kept as `<name>.yaml` files in SPECS_DIR.

A client can start a session by name and pass overrides, which are merged over the
stored spec: `options` and `llm` are merged key by key (deeply), `bots` is replaced as a
whole, and any other top-level key is simply replaced.

Names are file stems made of letters, digits, `-` and `_`, so no name can reach
outside the folder.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, Field

from engine.config import Settings
from engine.errors import SpecNotFound as SpecNotFound  # importable from here as before
from engine.errors import Unavailable
from engine.spec.checking import validate_spec_data
from engine.spec.issues import InvalidSpec, SpecIssue, SpecRejected, SpecResult, SpecTooLarge
from engine.spec.loader import load_spec
from engine.spec.reading import read_spec_document

SPEC_SUFFIX: Final = ".yaml"
# What a library name looks like; anything else is answered like an unknown name.
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
_NAME = re.compile(NAME_PATTERN)  # used with fullmatch
_DEEP_MERGED: Final = frozenset({"options", "llm"})
_MODELINE = "yaml-language-server:"
# The name is not echoed: it is client input of any length.
_NOT_FOUND = "there is no library spec by that name"
_ABSENT = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class LibraryEntry(BaseModel):
    """One named spec of the library, as listed to clients."""

    name: str = Field(description="The library name (file name without .yaml) to start it by.")
    title: str | None = Field(None, description="The spec's own `name`, if it sets one.")
    description: str | None = Field(
        None, description="First comment line of the file, as a one-line summary."
    )


def list_specs(settings: Settings) -> list[LibraryEntry]:
    """Every spec in SPECS_DIR, sorted by name. A missing folder is an empty library."""
    folder = settings.specs_dir
    try:
        paths = sorted(folder.glob(f"*{SPEC_SUFFIX}"))
    except OSError:
        return []
    entries: list[LibraryEntry] = []
    for path in paths:
        name = path.name.removesuffix(SPEC_SUFFIX)
        if not _NAME.fullmatch(name) or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        entries.append(
            LibraryEntry(name=name, title=_title(data, settings), description=_description(data))
        )
    return entries


def load_named_spec(
    name: str, *, settings: Settings, overrides: Mapping[str, Any] | None = None
) -> SpecResult:
    """Load library spec `name`, with `overrides` merged over it, and check the result.

    Raises `SpecNotFound` for an unknown or ill-formed name and `Unavailable` when the
    file exists but cannot be read; every problem with the spec itself is reported in
    the returned `SpecResult`. Line numbers are given only when nothing is overridden,
    since they refer to the file.
    """
    try:
        data = read_library_spec(name, settings)
    except SpecTooLarge as exc:
        return SpecResult.refused(exc)
    if not overrides:
        return load_spec(data, content_type="application/yaml", settings=settings)
    if not isinstance(overrides, Mapping):
        return SpecResult.refused(
            InvalidSpec([SpecIssue(path="", message="overrides must be a mapping")])
        )
    try:
        document = read_spec_document(data, content_type="application/yaml", settings=settings)
    except SpecRejected as exc:
        return SpecResult.refused(exc)
    return validate_spec_data(merge_overrides(document.data, overrides), settings=settings)


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied: `options`/`llm` merged deeply, the rest replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if key in _DEEP_MERGED and isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied, mappings merged key by key at every depth."""
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def read_library_spec(name: str, settings: Settings) -> bytes:
    """The bytes of library spec `name`, exactly as stored, without parsing them.

    Only names made of letters, digits, `-` and `_` are looked up, so no name can reach
    outside SPECS_DIR. Raises `SpecNotFound` for an unknown or ill-formed name,
    `SpecTooLarge` for a file over MAX_SPEC_BYTES (before reading it) and `Unavailable`
    when the file exists but cannot be read.
    """
    if not _NAME.fullmatch(name):
        raise SpecNotFound(_NOT_FOUND)
    path: Path = settings.specs_dir / f"{name}{SPEC_SUFFIX}"
    try:
        size = path.stat().st_size
        if size > settings.max_spec_bytes:
            # Refused before reading, like an oversized request body.
            raise SpecTooLarge(
                [
                    SpecIssue(
                        path="",
                        message=f"the library spec is {size} bytes; the limit is "
                        f"{settings.max_spec_bytes} bytes (MAX_SPEC_BYTES)",
                    )
                ]
            )
        return path.read_bytes()
    except OSError as exc:
        if isinstance(exc, _ABSENT) or exc.errno == errno.ENAMETOOLONG:
            raise SpecNotFound(_NOT_FOUND) from None
        raise Unavailable(f"the library spec {name!r} cannot be read") from None


def _title(data: bytes, settings: Settings) -> str | None:
    try:
        document = read_spec_document(data, content_type="application/yaml", settings=settings)
    except SpecRejected:
        return None
    title = document.data.get("name")
    return (title.strip() or None) if isinstance(title, str) else None


def _description(data: bytes) -> str | None:
    """The first comment line at the top of the file, skipping the editor modeline."""
    text = data.decode("utf-8", errors="replace")
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("#"):
            return None
        comment = line.lstrip("#").strip()
        if comment and not comment.startswith(_MODELINE):
            return comment
    return None
