"""`/healthz` shows the default backend; sessions wait for an embedded backend to come up."""

from __future__ import annotations

import socket

import httpx

from engine.backend_status import BackendBoard, BuildProgress
from engine.llm.mock import MockLLM
from tests.integration.conftest import RunningServer, ServerFactory, spec_dict
from tests.support.engine import WAIT_SECONDS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def building_board() -> BackendBoard:
    board = BackendBoard(
        "embedded", "http://127.0.0.1:9/v1", state="starting", probe_timeout=WAIT_SECONDS
    )
    board.building(
        BuildProgress(
            step="compiling llama-server", number=5, steps=6, fraction=0.4, elapsed_seconds=90
        )
    )
    return board


async def use_board(server: RunningServer, board: BackendBoard) -> None:
    """Make `board` the server's view of its default backend (the old one stops probing)."""
    await server.state.backend.stop()
    server.state.backend = board


async def health(server: RunningServer) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


async def test_healthz_names_the_backend_its_model_and_that_it_answers(
    server: RunningServer, mock: MockLLM
) -> None:
    await server.state.backend.settled()
    backend = (await health(server))["backend"]
    assert backend == {
        "kind": "external",
        "base_url": mock.base_url,
        "model": "mock",
        "state": "ready",
        "answers": True,
        "detail": None,
        "build": None,
    }


async def test_healthz_says_when_the_backend_does_not_answer(
    server_factory: ServerFactory,
) -> None:
    port = free_port()
    server = await server_factory(llm_base_url=f"http://127.0.0.1:{port}/v1")
    await server.state.backend.check()
    backend = (await health(server))["backend"]
    assert isinstance(backend, dict)
    assert (backend["state"], backend["answers"]) == ("unreachable", False)
    assert backend["detail"] == "it does not answer: nothing accepts connections there"


async def test_healthz_shows_the_build_while_the_embedded_backend_builds(
    server: RunningServer,
) -> None:
    await use_board(server, building_board())
    backend = (await health(server))["backend"]
    assert isinstance(backend, dict)
    assert (backend["kind"], backend["state"]) == ("embedded", "building")
    assert backend["answers"] is False
    build = backend["build"]
    assert isinstance(build, dict)
    assert (build["step"], build["number"], build["steps"], build["fraction"]) == (
        "compiling llama-server",
        5,
        6,
        0.4,
    )
    assert isinstance(build["elapsed_seconds"], float) and build["elapsed_seconds"] >= 90


async def test_sessions_on_the_default_backend_are_refused_until_it_is_up(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM
) -> None:
    board = building_board()
    await use_board(server, board)
    refused = await client.post("/v1/session/create", json=spec_dict())
    assert refused.status_code == 503
    assert refused.json()["code"] == "backend_starting"
    assert "still being built (compiling llama-server, step 5 of 6" in refused.json()["error"]
    from_library = await client.post("/v1/session/create?library=debate")
    assert (from_library.status_code, from_library.json()["code"]) == (503, "backend_starting")
    # A spec that brings its own backend does not wait for the embedded one.
    own = {**spec_dict(), "llm": {"base_url": mock.base_url}}
    assert (await client.post("/v1/session/create", json=own)).status_code == 201
    board.update("ready", "llama-server answers", answers=True)
    assert (await client.post("/v1/session/create", json=spec_dict())).status_code == 201


async def test_a_failed_build_refuses_sessions_with_its_reason(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    board = building_board()
    board.update("failed", "missing CMake (the `cmake` command)", answers=False)
    await use_board(server, board)
    refused = await client.post("/v1/session/create", json=spec_dict())
    assert refused.status_code == 503
    assert refused.json() == {
        "error": "the embedded LLM backend is not available: missing CMake (the `cmake` command)",
        "code": "backend_failed",
    }
