"""What reading and checking a spec report: located issues, refusals, the result.

Both steps of loading a spec (`engine.spec.reading`, `engine.spec.checking`) describe
problems the same way: a `SpecIssue` with a dotted path and, for YAML, a line. A step
that stops raises a `SpecRejected` subclass whose kind maps to an HTTP status; a step
that finishes returns a `SpecResult`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal, TypeVar

from pydantic import BaseModel, Field

from engine.errors import BadRequest, FellowshipError, PayloadTooLarge
from engine.spec.models import SessionSpec

logger = logging.getLogger(__name__)

SpecFailure = Literal["malformed", "too_large", "invalid"]
Loc = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line and column


class SpecIssue(BaseModel):
    """One problem found in a spec, located by path and (for YAML) line."""

    path: str = Field(
        description="Where the problem is: keys joined by dots, list items as [index] "
        "(e.g. bots[1].name). Empty when it concerns the whole document."
    )
    message: str = Field(description="What is wrong, in plain words.")
    line: int | None = Field(None, description="1-based line in the submitted document.")
    column: int | None = Field(None, description="1-based column in the submitted document.")

    def __str__(self) -> str:
        if not self.path:
            if self.line is None:
                return self.message
            where = f"line {self.line}"
            if self.column is not None:
                where += f", column {self.column}"
            return f"{where}: {self.message}"
        where = self.path if self.line is None else f"{self.path} (line {self.line})"
        return f"{where}: {self.message}"


class SpecWarning(SpecIssue):
    """Something accepted but worth knowing: an ignored key, an unbuilt option."""


IssueT = TypeVar("IssueT", bound=SpecIssue)


class SpecRejected(FellowshipError):
    """A spec was refused; `issues` lists every problem found.

    The subclass says how: `MalformedSpec` (400), `SpecTooLarge` (413) or
    `InvalidSpec` (422).
    """

    failure: ClassVar[SpecFailure]

    def __init__(self, issues: Sequence[SpecIssue]) -> None:
        self.issues = list(issues)
        summary = str(self.issues[0]) if self.issues else "the spec was refused"
        if len(self.issues) > 1:
            summary += f" (and {len(self.issues) - 1} more problems)"
        super().__init__(summary)


class MalformedSpec(SpecRejected, BadRequest):
    """The document cannot be read: encoding, syntax, aliases, several documents."""

    code = "malformed_spec"
    failure = "malformed"


class SpecTooLarge(SpecRejected, PayloadTooLarge):
    """The document is larger than MAX_SPEC_BYTES."""

    code = "spec_too_large"
    failure = "too_large"


class InvalidSpec(SpecRejected):
    """The document was read but is not a valid spec (maps to HTTP 422)."""

    code = "invalid_spec"
    failure = "invalid"


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
