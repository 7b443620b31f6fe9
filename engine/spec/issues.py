"""What reading and checking a spec report: located issues, refusals, the result.

Both steps of loading a spec (`engine.spec.reading`, `engine.spec.checking`) describe
problems the same way: a `SpecIssue` with a dotted path and, for YAML, a line. A step
that stops raises a `SpecRejected` subclass whose kind maps to an HTTP status; a step
that finishes returns a `SpecResult`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TypeVar

from pydantic import BaseModel, Field

# The spec errors live with every other error (engine/errors.py); importable from here too.
from engine.errors import InvalidSpec as InvalidSpec
from engine.errors import MalformedSpec as MalformedSpec
from engine.errors import SpecFailure as SpecFailure
from engine.errors import SpecIssue as SpecIssue
from engine.errors import SpecRejected as SpecRejected
from engine.errors import SpecTooLarge as SpecTooLarge
from engine.spec.models import SessionSpec

logger = logging.getLogger(__name__)

Loc = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line and column


class SpecWarning(SpecIssue):
    """Something accepted but worth knowing: an ignored key, an unbuilt option."""


IssueT = TypeVar("IssueT", bound=SpecIssue)


class SpecResult(BaseModel):
    """The outcome of loading a spec: the spec and its warnings, or every error."""

    spec: SessionSpec | None = Field(None, description="The checked spec; None on failure.")
    warnings: list[SpecWarning] = Field(
        default_factory=list, description="Ignored keys and unbuilt options, in order."
    )
    errors: list[SpecIssue] = Field(
        default_factory=list, description="Every problem found; empty on success."
    )
    status_hint: SpecFailure | None = Field(
        None,
        description="On failure, its kind: malformed (400), too_large (413), invalid (422).",
    )

    @property
    def ok(self) -> bool:
        """True when `spec` is set."""
        return self.spec is not None

    def raise_for_errors(self) -> SessionSpec:
        """Return the spec, or raise the `SpecRejected` subclass matching `status_hint`."""
        if self.spec is not None:
            return self.spec
        kinds: dict[SpecFailure, type[SpecRejected]] = {
            "malformed": MalformedSpec,
            "too_large": SpecTooLarge,
            "invalid": InvalidSpec,
        }
        raise kinds[self.status_hint or "invalid"](self.errors)

    @classmethod
    def refused(cls, exc: SpecRejected, warnings: Sequence[SpecWarning] = ()) -> SpecResult:
        """A failed result carrying the problems of `exc`."""
        return cls(errors=exc.issues, warnings=list(warnings), status_hint=exc.failure)


def document_issue(message: str, position: Position | None = None) -> SpecIssue:
    """An issue about the whole document (no path), at `position` if known."""
    line, column = position if position else (None, None)
    return SpecIssue(path="", message=message, line=line, column=column)


def located(
    kind: type[IssueT], loc: Loc, message: str, positions: Mapping[Loc, Position]
) -> IssueT:
    """An issue (or warning) at `loc`, with the line of `loc` or of its nearest ancestor."""
    # A missing key has no position of its own; its nearest ancestor's is close enough.
    line = column = None
    for end in range(len(loc), -1, -1):
        position = positions.get(loc[:end])
        if position is not None:
            line, column = position
            break
    return kind(path=format_path(loc), message=message, line=line, column=column)


def format_path(loc: Loc) -> str:
    """`("bots", 1, "name")` → `bots[1].name`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def unexpected_failure() -> SpecResult:
    """The result for a bug met while loading a spec: logged, and answered as unreadable."""
    # A bug, not bad input; the caller still gets an answer rather than a crash.
    logger.exception("unexpected failure while reading a session spec")
    return SpecResult.refused(MalformedSpec([document_issue("the spec could not be read")]))
