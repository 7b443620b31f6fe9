"""The whole HTTP API, fuzzed from its own OpenAPI document with schemathesis.

Every operation in `/openapi.json` gets requests generated from its schema — valid
ones and deliberately invalid ones — with real tokens mixed into the paths, so that the
fuzzing reaches past the 404 of an unknown token. Whatever comes in, the answer is
never a server error, and every error answer is the documented JSON body
`{"error": ..., "code": ...}`. Generation is derandomized, so a run is repeatable.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.openapi import from_dict
from schemathesis.schemas import APIOperation

from engine.llm.mock import MockLLM
from tests.integration.conftest import RunningServer, create_session

EXAMPLES_PER_OPERATION = 30
CALL_TIMEOUT = 10.0  # seconds; a request that hangs is a failure, not a slow pass
SLOW_BACKEND_MS = 1000  # sessions the fuzzer creates idle on the backend, cheaply


def problems_with(case: Case, status: int, content_type: str, body: bytes) -> list[str]:
    """What is wrong with one answer (empty when it is fine)."""
    where = f"{case.method} {case.formatted_path}"
    if status >= httpx.codes.INTERNAL_SERVER_ERROR:
        return [f"{where}: {status} {body[:200]!r}"]
    if status < httpx.codes.BAD_REQUEST:
        return []
    if not content_type.startswith("application/json"):
        return [f"{where}: {status} answered as {content_type!r}: {body[:200]!r}"]
    try:
        error = httpx.Response(status, content=body).json()
    except ValueError:
        return [f"{where}: {status} with a body that is not JSON: {body[:200]!r}"]
    if not (
        isinstance(error, dict)
        and isinstance(error.get("error"), str)
        and isinstance(error.get("code"), str)
    ):
        return [f"{where}: {status} error body without error/code: {error!r}"]
    return []


def fuzz_operation(
    operation: APIOperation, base_url: str, tokens: list[str], mode: GenerationMode
) -> list[str]:
    """Run the generated cases of one operation; return every problem found."""
    found: list[str] = []
    streams = operation.path.endswith("/stream")

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode), pick=st.integers(0, len(tokens)))
    def check(case: Case, pick: int) -> None:
        if pick < len(tokens) and "token" in (case.path_parameters or {}):
            # A real token instead of the generated one, for most cases. A stream of a
            # live session never ends by itself, so streams only get ended sessions.
            token = tokens[pick]
            if not streams or token.startswith("ended:"):
                case.path_parameters["token"] = token.removeprefix("ended:")
        response = case.call(base_url=base_url, timeout=CALL_TIMEOUT)
        print("FUZZ", case.method, operation.path, response.status_code)
        content_type = response.headers.get("content-type", [""])
        found.extend(
            problems_with(
                case,
                response.status_code,
                content_type[0] if isinstance(content_type, list) else str(content_type),
                response.content,
            )
        )

    try:
        check()
    except Unsatisfiable:
        # Nothing in this operation can be made invalid (no parameters, no body).
        assert mode is GenerationMode.NEGATIVE, operation.label
    return found


def fuzz(document: dict[str, Any], base_url: str, tokens: list[str]) -> list[str]:
    """Fuzz every operation of the document, valid and invalid inputs."""
    schema = from_dict(document)
    found: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the OpenAPI document lists no operation"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            found.extend(fuzz_operation(operation, base_url, tokens, mode))
    return found


async def test_no_generated_request_gets_a_server_error_or_an_error_that_is_not_json(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM
) -> None:
    mock.latency_ms = SLOW_BACKEND_MS
    document = (await client.get("/openapi.json")).json()
    live = await create_session(client, participation="reactive")
    ended = await create_session(client, participation="reactive")
    assert (await client.delete(f"/v1/session/{ended['token']}")).status_code == 200
    tokens = [
        live["token"],
        live["observer_token"],
        f"ended:{ended['token']}",
        f"ended:{ended['observer_token']}",
    ]
    problems = await asyncio.to_thread(fuzz, document, server.base_url, tokens)
    assert problems == [], "\n".join(problems[:20])
    # The server is still well after all that.
    health = await client.get("/healthz")
    assert health.status_code == 200
