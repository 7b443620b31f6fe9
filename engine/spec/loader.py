"""Loading a session spec: raw bytes in, a checked `SessionSpec` (or every problem) out.

Two steps, each in its own module and usable on its own:

1. `engine.spec.reading` turns bytes into a top-level mapping (`read_spec_document`),
   refusing what is unsafe or unreadable before anything is built;
2. `engine.spec.checking` checks a mapping against the models and the server's limits
   (`validate_spec_data`), reporting unknown keys as warnings and every error at once.

`load_spec` chains the two and never raises: it returns a `SpecResult` whose
`status_hint` tells the server which status to answer (400, 413 or 422). The issue and
refusal types (`engine.spec.issues`) are re-exported here, as the one import a caller
of `load_spec` needs.
"""

from __future__ import annotations

from engine.config import Settings
from engine.spec.checking import validate_spec_data
from engine.spec.issues import (
    InvalidSpec,
    MalformedSpec,
    SpecFailure,
    SpecIssue,
    SpecRejected,
    SpecResult,
    SpecTooLarge,
    SpecWarning,
    format_path,
    unexpected_failure,
)
from engine.spec.reading import SpecDocument, read_spec_document

__all__ = [
    "InvalidSpec",
    "MalformedSpec",
    "SpecDocument",
    "SpecFailure",
    "SpecIssue",
    "SpecRejected",
    "SpecResult",
    "SpecTooLarge",
    "SpecWarning",
    "format_path",
    "load_spec",
    "read_spec_document",
    "validate_spec_data",
]


def load_spec(data: bytes, *, content_type: str | None = None, settings: Settings) -> SpecResult:
    """Read and check a submitted spec. Never raises; see `SpecResult.status_hint`."""
    try:
        document = read_spec_document(data, content_type=content_type, settings=settings)
    except SpecRejected as exc:
        return SpecResult.refused(exc)
    except Exception:
        return unexpected_failure()
    return validate_spec_data(document.data, settings=settings, positions=document.positions)
