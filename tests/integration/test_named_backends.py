"""Named backends (`LLM_BACKENDS`): bots, the orchestrator and the summarizer each on their own.

Three mock servers stand in for three LLM servers: the default one (`LLM_BASE_URL`) and
two named ones. Every request a mock receives is recorded, so a test reads where each
call went, with which model and which key. The keys of the named backends must never
come back in a response, an event or a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.llm.mock import MockLLM, MockReply, RecordedRequest, bot_name
from engine.manager import SessionManager
from engine.memory import MEMORY_INSTRUCTIONS
from engine.spec.models import SessionSpec
from engine.store.sqlite import SqliteStore
from engine.summarizer import SUMMARY_INSTRUCTIONS
from tests.integration.conftest import (
    RunningServer,
    ServerFactory,
    create_session,
    spec_dict,
    ws_join,
)
from tests.integration.test_api_backend import building_board, use_board
from tests.support.engine import WAIT_SECONDS, make_settings

LEFT_KEY = "sk-left-b7e1c0ffee5ecret"
RIGHT_KEY = "sk-right-9d2a7ea5ecret"
SECRETS = (LEFT_KEY, RIGHT_KEY)


@pytest.fixture
async def left() -> AsyncIterator[MockLLM]:
    async with MockLLM(model="left-served") as backend:
        yield backend


@pytest.fixture
async def right() -> AsyncIterator[MockLLM]:
    async with MockLLM(model="right-served") as backend:
        yield backend


def backends_setting(left: MockLLM, right: MockLLM) -> str:
    """LLM_BACKENDS as an operator writes it in .env: one JSON object."""
    return json.dumps(
        {
            "left": {"base_url": left.base_url, "api_key": LEFT_KEY},
            "right": {"base_url": right.base_url, "api_key": RIGHT_KEY, "model": "right-model"},
        }
    )


@pytest.fixture
async def named_server(
    server_factory: ServerFactory, left: MockLLM, right: MockLLM
) -> RunningServer:
    return await server_factory(llm_backends=backends_setting(left, right))


def bot_calls(mock: MockLLM) -> list[RecordedRequest]:
    """Bot turns only (no orchestrator, summary or memory call)."""
    return [r for r in mock.requests if not is_orchestrator(r) and not is_condensing(r)]


def is_orchestrator(request: RecordedRequest) -> bool:
    return bool(request.tools) or "response_format" in request.body or "format" in request.body


def is_condensing(request: RecordedRequest) -> bool:
    return request.system_prompt in (SUMMARY_INSTRUCTIONS, MEMORY_INSTRUCTIONS)


def bearer(request: RecordedRequest) -> str | None:
    return request.headers.get("authorization")


async def run_to_end(server: RunningServer, spec: dict[str, Any]) -> dict[str, Any]:
    """Create a session and observe it to its end (memory written); its status then."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as http:
        created = await create_session(http, spec)
        member = await ws_join(server, created["observer_token"])
        await member.wait_type("session_end")
        await member.close()
        await server.manager.settle()
        status: dict[str, Any] = (await http.get(f"/v1/session/{created['token']}")).json()
    return status


def with_backends(spec: dict[str, Any], **per_bot: str) -> dict[str, Any]:
    for bot in spec["bots"]:
        if bot["name"] in per_bot:
            bot["backend"] = per_bot[bot["name"]]
    return spec


async def test_each_bot_speaks_through_its_own_backend(
    named_server: RunningServer, mock: MockLLM, left: MockLLM, right: MockLLM
) -> None:
    spec = with_backends(spec_dict(max_turns=6), Alice="left", Bob="right")
    await run_to_end(named_server, spec)

    assert {bot_name(r) for r in left.requests} == {"Alice"}
    assert {bot_name(r) for r in right.requests} == {"Bob"}
    assert {bot_name(r) for r in mock.requests} == {"Carol"}
    assert len(left.requests) == len(right.requests) == len(mock.requests) == 2
    # Each backend gets its own key, and the default backend none of them.
    assert {bearer(r) for r in left.requests} == {f"Bearer {LEFT_KEY}"}
    assert {bearer(r) for r in right.requests} == {f"Bearer {RIGHT_KEY}"}
    assert {bearer(r) for r in mock.requests} == {None}
    # Models: LLM_BACKENDS gives `right` one; `left` has none, so the server default.
    assert {r.model for r in right.requests} == {"right-model"}
    assert {r.model for r in left.requests} == {"default"}


async def test_a_bots_own_model_wins_over_its_backends(
    named_server: RunningServer, right: MockLLM
) -> None:
    spec = spec_dict(["Alice", "Bob"], max_turns=2)
    spec["bots"][0].update(backend="right", model="alice-model")
    spec["bots"][1].update(backend="right")
    await run_to_end(named_server, spec)
    models = {bot_name(r): r.model for r in right.requests}
    assert models == {"Alice": "alice-model", "Bob": "right-model"}


async def test_llm_backend_sends_the_whole_session_to_a_named_backend(
    named_server: RunningServer, mock: MockLLM, right: MockLLM
) -> None:
    spec = spec_dict(["Alice", "Bob"], max_turns=2)
    spec["llm"] = {"backend": "right"}
    await run_to_end(named_server, spec)
    assert mock.requests == []
    assert {bot_name(r) for r in right.requests} == {"Alice", "Bob"}
    assert {r.model for r in right.requests} == {"right-model"}


async def test_orchestrator_and_summarizer_use_the_backends_the_spec_names(
    named_server: RunningServer, mock: MockLLM, left: MockLLM, right: MockLLM
) -> None:
    filler = "a long and winding remark about the office kitchen, " * 4
    for backend in (mock, left):
        backend.set_handler(lambda r: MockReply(content=f"{bot_name(r)} says {filler}"))
    spec = spec_dict(
        max_turns=12,
        turn_order="orchestrated",
        summarize_context=True,
        max_context_tokens=400,
        memory="new",
    )
    spec["llm"] = {"orchestrator_backend": "right", "summarizer_backend": "left"}
    status = await run_to_end(named_server, spec)

    orchestrations = [r for r in right.requests if is_orchestrator(r)]
    assert orchestrations and right.requests == orchestrations
    assert {r.model for r in orchestrations} == {"right-model"}
    summaries = [r for r in left.requests if r.system_prompt == SUMMARY_INSTRUCTIONS]
    memories = [r for r in left.requests if r.system_prompt == MEMORY_INSTRUCTIONS]
    assert summaries and memories
    assert left.requests == summaries + memories
    # The bots stay on the default backend, which sees no orchestrator or summary call.
    assert mock.requests and mock.requests == bot_calls(mock)
    assert status["end_reason"] == "max_turns"
    assert (status["backends"]["orchestrator"], status["backends"]["summarizer"]) == (
        "right",
        "left",
    )


async def test_status_names_each_bots_backend_and_nothing_more(
    named_server: RunningServer,
) -> None:
    spec = with_backends(spec_dict(participation="reactive"), Alice="left", Bob="right")
    spec["llm"] = {"summarizer_backend": "right"}
    async with httpx.AsyncClient(base_url=named_server.base_url) as http:
        created = await create_session(http, spec)
        status = (await http.get(f"/v1/session/{created['observer_token']}")).json()
    assert status["backends"] == {
        "session": "default",
        "bots": {"Alice": "left", "Bob": "right", "Carol": "default"},
        "orchestrator": "default",
        "summarizer": "right",
    }
    assert created["spec"]["bots"][0]["backend"] == "left"


async def test_unknown_backend_names_are_refused_with_their_paths_and_the_known_names(
    named_server: RunningServer,
) -> None:
    spec = with_backends(spec_dict(), Bob="nowhere")
    spec["llm"] = {"orchestrator_backend": "elsewhere"}
    async with httpx.AsyncClient(base_url=named_server.base_url) as http:
        response = await http.post("/v1/session/create", json=spec)
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_spec"
    problems = {d["path"]: d["message"] for d in body["details"]}
    assert problems == {
        "bots[1].backend": "unknown backend 'nowhere'; this server has: left, right (LLM_BACKENDS)",
        "llm.orchestrator_backend": (
            "unknown backend 'elsewhere'; this server has: left, right (LLM_BACKENDS)"
        ),
    }


async def test_a_named_backend_excludes_a_base_url_of_the_spec(
    named_server: RunningServer, mock: MockLLM
) -> None:
    spec = spec_dict()
    spec["llm"] = {"backend": "left", "base_url": mock.base_url}
    async with httpx.AsyncClient(base_url=named_server.base_url) as http:
        response = await http.post("/v1/session/create", json=spec)
    assert response.status_code == 422
    assert response.json()["details"] == [
        {"path": "llm.backend", "message": "name a backend or give llm.base_url, not both"}
    ]


async def test_without_llm_backends_every_backend_name_is_refused(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        response = await http.post(
            "/v1/session/create", json=with_backends(spec_dict(), Alice="left")
        )
    assert response.status_code == 422
    (detail,) = response.json()["details"]
    assert detail["path"] == "bots[0].backend"
    assert "no named backends" in detail["message"]


async def test_a_bot_whose_backend_is_down_waits_for_that_backend(
    server_factory: ServerFactory, mock: MockLLM
) -> None:
    dead = "http://127.0.0.1:9/v1"  # discard port: nothing answers
    server = await server_factory(
        llm_backends=json.dumps({"dead": dead}),
        backend_retry_seconds=30.0,
    )
    spec = with_backends(spec_dict(["Alice", "Bob"], max_turns=4), Bob="dead")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as http:
        created = await create_session(http, spec)
        member = await ws_join(server, created["observer_token"])
        errors = await member.wait_type("error")
        assert errors[0]["code"] == "backend_unreachable"
        assert "127.0.0.1:9" in errors[0]["message"]
        status = (await http.get(f"/v1/session/{created['token']}")).json()
        assert status["backend_outage"] and "127.0.0.1:9" in status["backend_outage"]
        await member.close()
    # Alice (default backend) spoke once; Bob's turn waits instead of failing.
    assert [bot_name(r) for r in mock.requests] == ["Alice"]


async def test_no_backend_key_appears_in_any_response_event_or_log(
    named_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    spec = with_backends(spec_dict(max_turns=3, debug=True), Alice="left", Bob="right")
    spec["llm"] = {"orchestrator_backend": "right"}
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=named_server.base_url, timeout=WAIT_SECONDS) as http:
        response = await http.post("/v1/session/create", json=spec)
        seen.append(response.text)
        created = response.json()
        member = await ws_join(named_server, created["observer_token"])
        await member.wait_type("session_end")
        await member.close()
        seen.append(json.dumps(member.events))
        for path in ("", "/history"):
            for token in (created["token"], created["observer_token"]):
                seen.append((await http.get(f"/v1/session/{token}{path}")).text)
        bad = with_backends(spec_dict(), Alice="wrong")
        seen.append((await http.post("/v1/session/create", json=bad)).text)
        seen.append((await http.get("/healthz")).text)
        seen.append((await http.get("/openapi.json")).text)
    seen.append(caplog.text)
    seen.append(repr(named_server.settings))
    everything = "\n".join(seen)
    assert "Alice" in everything and "left" in everything
    for key in SECRETS:
        assert key not in everything


async def test_a_backend_host_not_allowed_stops_the_server_at_start(tmp_path: Path) -> None:
    setting = json.dumps(
        {"far": {"base_url": "http://llm.example.com/v1", "api_key": "sk-far-3e1ecret"}}
    )
    environment = {
        **os.environ,
        "LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "LLM_BACKENDS": setting,
        "LOG_DIR": str(tmp_path / "logs"),
        "DATABASE_PATH": str(tmp_path / "fellowship.db"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve",
        cwd=tmp_path,
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), WAIT_SECONDS)
    message = stderr.decode()
    assert process.returncode != 0
    assert "LLM_BACKENDS" in message and "'far'" in message
    assert "'llm.example.com' is not allowed" in message and "ALLOWED_LLM_HOSTS" in message
    assert "sk-far-3e1ecret" not in message


async def test_a_session_wholly_on_named_backends_starts_while_the_embedded_one_builds(
    named_server: RunningServer,
) -> None:
    await use_board(named_server, building_board())
    async with httpx.AsyncClient(base_url=named_server.base_url) as http:
        mixed = with_backends(spec_dict(["Alice", "Bob"]), Alice="left")
        refused = await http.post("/v1/session/create", json=mixed)
        assert (refused.status_code, refused.json()["code"]) == (503, "backend_starting")
        named = with_backends(spec_dict(["Alice", "Bob"]), Alice="left", Bob="right")
        assert (await http.post("/v1/session/create", json=named)).status_code == 201


async def test_a_restored_session_keeps_its_backends_or_falls_back_when_one_is_gone(
    tmp_path: Path, mock: MockLLM, left: MockLLM, right: MockLLM, caplog: pytest.LogCaptureFixture
) -> None:
    async def start(**overrides: Any) -> SessionManager:
        settings = make_settings(tmp_path, mock.base_url, **overrides)
        manager = SessionManager(settings, store=SqliteStore.from_settings(settings))
        await manager.start()
        return manager

    first = await start(llm_backends=backends_setting(left, right))
    created = await first.create(
        SessionSpec.model_validate(
            with_backends(spec_dict(participation="reactive"), Alice="left", Bob="right")
        )
    )
    await first.close()

    second = await start(llm_backends=backends_setting(left, right))
    bots = second.status(second.open(created.token)).backends.bots
    assert bots == {"Alice": "left", "Bob": "right", "Carol": "default"}
    await second.close()

    only_right = json.dumps({"right": right.base_url})
    third = await start(llm_backends=only_right)
    try:
        handle = third.open(created.token)
        assert third.status(handle).backends.bots == {
            "Alice": "default",
            "Bob": "right",
            "Carol": "default",
        }
        assert "no longer has (bots[0].backend)" in caplog.text
    finally:
        await third.close()
