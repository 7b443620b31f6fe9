"""The JSON Schema of session specs, generated from the models.

Editors pick it up through the first line of a spec file
(`# yaml-language-server: $schema=./session-spec.schema.json`). Unknown keys are
allowed by the schema, as by the server, which ignores them with a warning.
"""

from __future__ import annotations

import json
from typing import Any, Final

from engine.spec.models import SessionSpec

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILE_NAME: Final = "session-spec.schema.json"


def session_spec_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `SessionSpec`, with every field described."""
    generated = SessionSpec.model_json_schema(mode="validation")
    return {
        "$schema": SCHEMA_DIALECT,
        **generated,
        "description": (
            "A Fellowship session spec: the bots of one conversation and how it runs. "
            "Unknown keys are accepted and ignored with a warning."
        ),
    }


def render_schema(schema: dict[str, Any] | None = None) -> str:
    """The schema as committed: 2-space indent, field order kept, trailing newline.

    One serializer for both writing and checking, so the two can never disagree.
    """
    return json.dumps(schema or session_spec_schema(), indent=2, ensure_ascii=False) + "\n"
