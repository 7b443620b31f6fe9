"""The whole HTTP API against its own OpenAPI document, with every schemathesis check.

This is `schemathesis run <server>/openapi.json --checks all` inside pytest: the same
engine and phases (examples, coverage, fuzzing, and the stateful phase that chains
create with every route through the links it infers), every check on, and the project's
`schemathesis.toml` (whose hooks accept two documented behaviours, nothing else). Real
tokens are mixed into the generated paths so that fuzzing reaches past the 404 of an
unknown token. Any finding fails the test, with the request that reproduces it.
Generation is seeded, so a run is repeatable.
"""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, StopReason, events, from_schema
from schemathesis.engine.recorder import ScenarioRecorder
from schemathesis.openapi import from_dict

from engine.llm.mock import MockLLM
from server.conversions import RESERVED_TOKENS
from tests.integration.conftest import RunningServer, create_session

CONFIG_PATH = Path(__file__).parents[2] / "schemathesis.toml"
# Cases per operation and phase (the stateful phase runs as many scenarios): 80 keeps
# the whole run under a minute on the 2-core test machine (docs/api.md, "Fuzzing").
MAX_EXAMPLES = 80
# The run takes about a minute alone; on a loaded machine it gets this much.
TEST_TIMEOUT = 300
SEED = 23
CALL_TIMEOUT = 10.0  # seconds; a request that hangs is a finding, not a slow pass
SLOW_BACKEND_MS = 1000  # sessions the fuzzer creates idle on the backend, cheaply


def schemathesis_config(base_url: str) -> SchemathesisConfig:
    """The project's config with this run's settings: what the CLI options would set."""
    config = SchemathesisConfig.from_path(CONFIG_PATH)
    config.update(seed=SEED, max_failures=None)
    project = config.projects.override
    project.update(base_url=base_url, workers=1, request_timeout=CALL_TIMEOUT)
    project.checks.update(included_check_names=["all"])
    project.generation.update(max_examples=MAX_EXAMPLES)
    return config


def token_mixer(tokens: list[str]) -> Any:
    """A `map_path_parameters` hook: most generated tokens become real ones, repeatably."""

    def map_path_parameters(
        context: Any, path_parameters: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        token = (path_parameters or {}).get("token")
        # A reserved word is a deliberate negative case: keep it.
        if isinstance(token, str) and token not in RESERVED_TOKENS:
            pick = zlib.crc32(token.encode("utf-8", "surrogatepass")) % (len(tokens) + 1)
            if pick < len(tokens):
                path_parameters = {**(path_parameters or {}), "token": tokens[pick]}
        return path_parameters

    return map_path_parameters


def findings_of(recorder: ScenarioRecorder, phase: str) -> list[str]:
    """Every failed check of one scenario, with the request that reproduces it."""
    found = []
    for checks in recorder.checks.values():
        for check in checks:
            if check.status == Status.SUCCESS:
                continue
            info = check.failure_info
            if info is None:
                found.append(f"[{phase}] {recorder.label}: check {check.name} {check.status}")
                continue
            failure = info.failure
            where = f"[{phase}] {recorder.label}"
            found.append(f"{where}: {failure.title}\n{failure.message}\n{info.code_sample}")
    return found


def run_schemathesis(document: dict[str, Any], base_url: str, tokens: list[str]) -> list[str]:
    """Run every phase with every check; return the findings (empty when all is well)."""
    schema = from_dict(document, config=schemathesis_config(base_url))
    schema.hook(token_mixer(tokens))
    found: list[str] = []
    phases: set[str] = set()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            phases.add(event.phase.value)
            found.extend(findings_of(event.recorder, event.phase.value))
        elif isinstance(event, events.NonFatalError):
            found.append(f"[{event.phase}] {event.label}: error {event.value!r}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            assert event.stop_reason is StopReason.COMPLETED, event.stop_reason
            found.extend(f"[after run] {f.title}: {f.message}" for f in event.failures)
    # Every phase of `schemathesis run` did run (the stateful one needs inferred links).
    assert {"examples", "coverage", "fuzzing", "stateful"} <= phases, phases
    return found


@pytest.mark.timeout(TEST_TIMEOUT)
async def test_every_schemathesis_check_passes_on_every_operation(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM
) -> None:
    mock.latency_ms = SLOW_BACKEND_MS
    document = (await client.get("/openapi.json")).json()
    live = await create_session(client, participation="reactive")
    ended = await create_session(client, participation="reactive")
    assert (await client.delete(f"/v1/session/{ended['token']}")).status_code == 200
    tokens = [live["token"], live["observer_token"], ended["token"], ended["observer_token"]]
    findings = await asyncio.to_thread(run_schemathesis, document, server.base_url, tokens)
    assert findings == [], f"{len(findings)} findings:\n\n" + "\n\n".join(findings[:10])
    # The server is still well after all that.
    health = await client.get("/healthz")
    assert health.status_code == 200

