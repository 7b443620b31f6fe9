"""Schemathesis hooks for Fellowship: two findings that are documented behaviour, checked.

Loaded through `schemathesis.toml` at the repository root, by the fuzz test and by
`schemathesis run` started from there. Every check stays on; `filter_failure` drops a
finding only after confirming that it is one of these two, and nothing else:

- **Deleted resource still available** (`use_after_free`). `DELETE /v1/session/{token}`
  *ends* a session (SPEC §12); the ended session stays readable until
  ENDED_RETENTION_SECONDS, and can be forked (SPEC §23). A read or a fork that succeeds
  after the DELETE is accepted only when the session's status says `ended`.
- **Schema-valid request rejected** (`positive_data_acceptance`) on
  `POST /v1/session/create` and `POST /v1/session/{token}/fork` with 422
  `invalid_spec`, when every problem listed in `details` is one of the rules a JSON
  Schema cannot state (the create route's description lists them): bot names unique
  ignoring case, an `inherit:` token naming an existing session, `llm.base_url`
  passing the server's backend guard (host in ALLOWED_LLM_HOSTS, a port that parses),
  and backend names being in the server's LLM_BACKENDS (`llm.backend` not beside
  `llm.base_url` or `llm.api_key`); for a fork also what depends on the spec its
  overrides are merged over (how many bots, and at least three for `orchestrated`).

This file imports nothing from the project, so the CLI can load it from anywhere.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import requests
import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData, UseAfterFree

CREATE = ("POST", "/v1/session/create")
FORK = ("POST", "/v1/session/{token}/fork")
SPEC_BODIES = frozenset({CREATE, FORK})
# What an ended session still answers: its reads, and forks (an ended session forks).
SESSION_READS = frozenset(
    {
        ("GET", "/v1/session/{token}"),
        ("GET", "/v1/session/{token}/history"),
        ("GET", "/v1/session/{token}/stream"),
        ("GET", "/v1/session/{token}/transcript"),
        FORK,
    }
)
STATUS_TIMEOUT = 10.0  # seconds; the server is on loopback
# The problems (`details[].path`, start of `message`) of the rules a schema cannot state.
UNSTATABLE_RULES = (
    (re.compile(r"bots\[\d+\]\.name"), "must be unique"),
    (re.compile(r"options\.memory"), ""),
    (re.compile(r"llm\.base_url"), ""),
    (re.compile(r"bots\[\d+\]\.backend"), "unknown backend"),
    (re.compile(r"llm\.(orchestrator_|summarizer_)?backend"), ""),
    # A fork's overrides are merged over its session's spec: what the merged spec holds
    # (how many bots, whether enough for orchestrated) is not known from the body alone.
    (re.compile(r"bots"), "too many bots"),
    (re.compile(r"options\.turn_order"), "orchestrated turn order needs"),
)


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext, failure: Any, case: schemathesis.Case, response: Any
) -> bool:
    """Keep every failure except the two documented behaviours above."""
    key = (case.method.upper(), case.path)
    if isinstance(failure, UseAfterFree) and key in SESSION_READS:
        return not _session_ended(response.request.url, case.path_parameters or {})
    if isinstance(failure, RejectedPositiveData) and key in SPEC_BODIES:
        return not _only_unstatable_rules(response.status_code, response.content)
    return True


def _session_ended(url: str, path_parameters: dict[str, Any]) -> bool:
    """Whether the status route calls the session of this token ended."""
    parts = urlsplit(url)
    token = str(path_parameters.get("token", ""))
    status = requests.get(
        f"{parts.scheme}://{parts.netloc}/v1/session/{token}", timeout=STATUS_TIMEOUT
    )
    return status.status_code == 200 and status.json().get("state") == "ended"


def _only_unstatable_rules(status: int, content: bytes) -> bool:
    if status != 422:
        return False
    try:
        body = json.loads(content)
    except ValueError:
        return False
    details = body.get("details") if isinstance(body, dict) else None
    if body.get("code") != "invalid_spec" or not details:
        return False
    return all(_unstatable(detail) for detail in details)


def _unstatable(detail: dict[str, Any]) -> bool:
    path = str(detail.get("path", ""))
    message = str(detail.get("message", ""))
    return any(p.fullmatch(path) and message.startswith(m) for p, m in UNSTATABLE_RULES)
