"""Session specs: the models, reading and checking them, the named library, the schema."""

from engine.spec.checking import validate_spec_data
from engine.spec.issues import (
    InvalidSpec,
    MalformedSpec,
    SpecIssue,
    SpecRejected,
    SpecResult,
    SpecTooLarge,
    SpecWarning,
)
from engine.spec.library import LibraryEntry, SpecNotFound, list_specs, load_named_spec
from engine.spec.loader import load_spec
from engine.spec.models import (
    BotSpec,
    LLMOverride,
    MemoryMode,
    SessionOptions,
    SessionSpec,
)
from engine.spec.reading import SpecDocument, read_spec_document

__all__ = [
    "BotSpec",
    "InvalidSpec",
    "LLMOverride",
    "LibraryEntry",
    "MalformedSpec",
    "MemoryMode",
    "SessionOptions",
    "SessionSpec",
    "SpecDocument",
    "SpecIssue",
    "SpecNotFound",
    "SpecRejected",
    "SpecResult",
    "SpecTooLarge",
    "SpecWarning",
    "list_specs",
    "load_named_spec",
    "load_spec",
    "read_spec_document",
    "validate_spec_data",
]
