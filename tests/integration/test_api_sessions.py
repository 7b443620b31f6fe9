"""The REST routes under /v1 against the real server: every success and error path."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import yaml

from engine.llm.mock import MockLLM, MockReply
from tests.integration.conftest import (
    RunningServer,
    ServerFactory,
    create_session,
    spec_dict,
    ws_join,
)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An error answer: the status, JSON `{"error", "code"}`, never HTML."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in response.text and "<html" not in response.text.lower()
    return body


def server_lines(caplog: pytest.LogCaptureFixture) -> str:
    """What the server logged (the test's own httpx client logs its URLs too)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))


# --- health ------------------------------------------------------------------------------------


async def test_healthz_answers_ok_with_version_and_live_sessions(
    client: httpx.AsyncClient,
) -> None:
    await create_session(client, participation="reactive")
    response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["live_sessions"] == 1
    assert body["version"]


# --- create ------------------------------------------------------------------------------------


async def test_create_from_json_answers_201_with_both_tokens_and_the_public_spec(
    client: httpx.AsyncClient,
) -> None:
    spec = spec_dict(participation="reactive")
    spec["llm"] = {"api_key": "sk-do-not-echo-this", "model": "m1"}
    response = await client.post("/v1/session/create", json=spec)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) >= {"id", "token", "observer_token", "spec", "warnings"}
    assert body["token"] != body["observer_token"]
    assert [b["name"] for b in body["spec"]["bots"]] == ["Alice", "Bob", "Carol"]
    assert "sk-do-not-echo-this" not in response.text
    assert body["spec"]["llm"]["api_key"] is None


async def test_create_from_yaml_by_content_type(client: httpx.AsyncClient) -> None:
    text = yaml.safe_dump(spec_dict(["Ann", "Ben"], participation="reactive"))
    response = await client.post(
        "/v1/session/create", content=text, headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 201, response.text
    assert [b["name"] for b in response.json()["spec"]["bots"]] == ["Ann", "Ben"]


async def test_unknown_keys_are_accepted_and_listed_as_warnings(
    client: httpx.AsyncClient,
) -> None:
    spec = spec_dict(participation="reactive", sparkle=True)
    spec["future_feature"] = 1
    body = await create_session(client, spec)
    assert any("future_feature" in w for w in body["warnings"])
    assert any("options.sparkle" in w for w in body["warnings"])
    status = (await client.get(f"/v1/session/{body['token']}")).json()
    assert status["warnings"] == body["warnings"]


async def test_create_from_the_library_by_name_with_overrides(
    client: httpx.AsyncClient,
) -> None:
    listing = (await client.get("/v1/specs")).json()["specs"]
    assert "debate" in [entry["name"] for entry in listing]
    response = await client.post(
        "/v1/session/create?library=debate",
        json={"options": {"participation": "reactive", "max_turns": 3}},
    )
    assert response.status_code == 201, response.text
    spec = response.json()["spec"]
    assert spec["name"] == "Four-day work week debate"
    assert spec["options"]["participation"] == "reactive"
    assert spec["options"]["max_turns"] == 3
    assert spec["options"]["max_time"] == 600  # kept from the library file


async def test_create_from_the_library_without_a_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/session/create?library=debate")
    assert response.status_code == 201, response.text


async def test_unknown_library_name_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/session/create?library=no-such-spec")
    assert_error(response, 404, "spec_not_found")


async def test_malformed_yaml_is_400_naming_line_and_column(client: httpx.AsyncClient) -> None:
    text = "bots:\n  - name: Ann\n    system_prompt: [unclosed\n"
    response = await client.post(
        "/v1/session/create", content=text, headers={"Content-Type": "application/yaml"}
    )
    body = assert_error(response, 400, "malformed_spec")
    assert body["details"][0]["line"] is not None


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/session/create", content=b'{"bots": [', headers={"Content-Type": "application/json"}
    )
    body = assert_error(response, 400, "malformed_spec")
    assert body["details"][0]["line"] == 1


async def test_yaml_alias_bomb_is_refused_with_400(client: httpx.AsyncClient) -> None:
    text = 'a: &a ["x","x"]\nb: &b [*a,*a]\nc: [*b,*b]\nbots: []\n'
    response = await client.post(
        "/v1/session/create", content=text, headers={"Content-Type": "application/yaml"}
    )
    assert_error(response, 400, "malformed_spec")


async def test_invalid_spec_is_422_with_every_error_and_its_path(
    client: httpx.AsyncClient,
) -> None:
    spec = {
        "bots": [{"name": "Ann", "system_prompt": "x"}, {"name": "ann", "system_prompt": "y"}],
        "options": {"turn_order": "orchestrated", "max_turns": 0},
    }
    body = assert_error(await client.post("/v1/session/create", json=spec), 422, "invalid_spec")
    paths = {detail["path"] for detail in body["details"]}
    assert {"bots[1].name", "options.max_turns"} <= paths


async def test_orchestrated_with_two_bots_is_422_saying_why(client: httpx.AsyncClient) -> None:
    spec = spec_dict(["Ann", "Ben"], turn_order="orchestrated")
    body = assert_error(await client.post("/v1/session/create", json=spec), 422, "invalid_spec")
    [detail] = body["details"]
    assert detail["path"] == "options.turn_order"
    assert "3" in detail["message"]


async def test_backend_outside_allowed_hosts_is_422_on_llm_base_url(
    client: httpx.AsyncClient,
) -> None:
    spec = spec_dict(participation="reactive")
    spec["llm"] = {"base_url": "http://169.254.169.254/v1"}
    body = assert_error(await client.post("/v1/session/create", json=spec), 422, "invalid_spec")
    assert body["details"][0]["path"] == "llm.base_url"


async def test_body_over_max_spec_bytes_is_413_before_it_is_read(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(max_spec_bytes=2048)
    big = json.dumps(spec_dict(participation="reactive", padding="x" * 5000)).encode()
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        # Known length: refused from the Content-Length header.
        response = await http.post(
            "/v1/session/create", content=big, headers={"Content-Type": "application/json"}
        )
        assert_error(response, 413, "spec_too_large")

        # Unknown length (chunked): refused once the streamed bytes pass the limit.
        async def chunks() -> Any:
            for start in range(0, len(big), 512):
                yield big[start : start + 512]

        response = await http.post(
            "/v1/session/create", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert_error(response, 413, "spec_too_large")


async def test_too_many_sessions_is_429(server_factory: ServerFactory) -> None:
    server = await server_factory(max_sessions=1)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        await create_session(http, participation="reactive")
        response = await http.post("/v1/session/create", json=spec_dict(participation="reactive"))
        assert_error(response, 429, "too_many_sessions")


# --- status and history ------------------------------------------------------------------------


async def test_status_answers_to_both_tokens(client: httpx.AsyncClient) -> None:
    created = await create_session(client, participation="reactive")
    for token in (created["token"], created["observer_token"]):
        response = await client.get(f"/v1/session/{token}")
        assert response.status_code == 200
        status = response.json()
        assert status["id"] == created["id"]
        assert status["state"] == "active"
        assert status["participation"] == "reactive"
        assert created["token"] not in response.text
        assert created["observer_token"] not in response.text


async def test_unknown_token_is_the_same_404_on_every_route(client: httpx.AsyncClient) -> None:
    created = await create_session(client, participation="reactive")
    await client.delete(f"/v1/session/{created['token']}")
    answers = []
    for token in ("fsk_doesnotexist", "nonsense", created["token"] + "x"):
        for method, path in (
            ("GET", ""),
            ("DELETE", ""),
            ("POST", "/pause"),
            ("POST", "/resume"),
            ("GET", "/history"),
            ("GET", "/stream"),
        ):
            response = await client.request(method, f"/v1/session/{token}{path}")
            answers.append(assert_error(response, 404, "not_found"))
    assert len({json.dumps(a, sort_keys=True) for a in answers}) == 1


async def test_history_lists_every_position_in_order(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    created = await create_session(client, participation="autonomous", max_turns=3)
    observer = await ws_join(server, created["observer_token"])
    await observer.wait_type("session_end")
    response = await client.get(f"/v1/session/{created['observer_token']}/history")
    assert response.status_code == 200
    messages = response.json()["messages"]
    assert [m["turn"] for m in messages] == [1, 2, 3]
    assert [m["speaker"] for m in messages] == ["Alice", "Bob", "Carol"]
    assert all(m["status"] == "complete" for m in messages)


# --- control -----------------------------------------------------------------------------------


async def test_pause_resume_and_end_change_state_and_refuse_wrong_states(
    client: httpx.AsyncClient,
) -> None:
    token = (await create_session(client, participation="reactive"))["token"]
    assert_error(await client.post(f"/v1/session/{token}/resume"), 409, "invalid_state")
    paused = await client.post(f"/v1/session/{token}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert_error(await client.post(f"/v1/session/{token}/pause"), 409, "invalid_state")
    resumed = await client.post(f"/v1/session/{token}/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] == "active"
    ended = await client.delete(f"/v1/session/{token}")
    assert ended.status_code == 200
    assert ended.json()["state"] == "ended"
    assert ended.json()["end_reason"] == "client_request"
    assert_error(await client.delete(f"/v1/session/{token}"), 409, "session_ended")
    # Ended sessions stay readable.
    assert (await client.get(f"/v1/session/{token}")).json()["state"] == "ended"


async def test_observer_token_is_403_on_control_routes(client: httpx.AsyncClient) -> None:
    created = await create_session(client, participation="reactive")
    observer = created["observer_token"]
    for method, path in (("POST", "/pause"), ("POST", "/resume"), ("DELETE", "")):
        response = await client.request(method, f"/v1/session/{observer}{path}")
        assert_error(response, 403, "observer_token")
    status = (await client.get(f"/v1/session/{created['token']}")).json()
    assert status["state"] == "active"


async def test_pause_stops_new_llm_calls_until_resume(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM
) -> None:
    created = await create_session(client, participation="reactive")
    token = created["token"]
    talker = await ws_join(server, token, role="talker", name="Dana")
    await talker.wait_type("history")
    await client.post(f"/v1/session/{token}/pause")
    await talker.wait_type("session_paused")
    await talker.say("anyone there?")
    await talker.wait_type("talker_message")
    calls_while_paused = len(mock.requests)
    await client.post(f"/v1/session/{token}/resume")
    await talker.wait_type("bot_message")
    assert calls_while_paused == 0
    assert len(mock.requests) == 1
    await talker.close()


# --- plumbing: unknown routes, methods, failures, CORS, rate limit, logs --------------------------


async def test_unknown_route_and_wrong_method_answer_json(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/nothing-here"), 404, "not_found")
    response = await client.put("/v1/session/create")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


async def test_an_unexpected_failure_is_a_json_500_and_the_log_names_no_token(
    server: RunningServer,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created = await create_session(client, participation="reactive")

    def broken(handle: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(server.manager, "status", broken)
    caplog.set_level(logging.INFO)
    response = await client.get(f"/v1/session/{created['token']}")
    assert_error(response, 500, "internal")
    assert "boom" not in response.text
    server_log = server_lines(caplog)
    assert created["token"] not in server_log
    assert "unhandled error in request GET /v1/session/***" in server_log


async def test_request_paths_in_the_access_log_never_show_a_token(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    created = await create_session(client, participation="reactive")
    await client.get(f"/v1/session/{created['token']}")
    await client.get(f"/v1/session/{created['observer_token']}/history")
    await client.get("/v1/session/guessed-token-1234567890/history")
    access = [r.getMessage() for r in caplog.records if r.name == "fellowship.access"]
    assert any("/v1/session/***/history" in line for line in access), access
    assert any("/v1/session/create" in line for line in access), access
    server_log = server_lines(caplog)
    for secret in (created["token"], created["observer_token"], "guessed-token-1234567890"):
        assert secret not in server_log


async def test_cors_headers_for_allowed_origins_only(server_factory: ServerFactory) -> None:
    server = await server_factory(cors_origins=["https://app.example"])
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        allowed = await http.get("/healthz", headers={"Origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = await http.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = await http.options(
            "/v1/session/create",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-headers"] == "content-type"


async def test_rate_limit_answers_429_with_retry_after(server_factory: ServerFactory) -> None:
    server = await server_factory(rate_limit_per_minute=3)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        statuses = [(await http.get("/v1/session/whatever")).status_code for _ in range(4)]
        assert statuses[:3] == [404, 404, 404]
        response = await http.get("/v1/session/whatever")
        assert_error(response, 429, "rate_limited")
        assert int(response.headers["retry-after"]) >= 1
        # Health checks are never limited.
        assert (await http.get("/healthz")).status_code == 200


async def test_failed_turn_is_reported_and_the_session_goes_on(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM
) -> None:
    mock.enqueue(MockReply(status=400, error_message="bad model"))
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name="Dana")
    await talker.say("first")
    errors = await talker.wait_type("error")
    assert errors[0]["turn"] == 2
    await talker.say("second")
    await talker.wait_type("bot_message")
    history = (await client.get(f"/v1/session/{created['token']}/history")).json()["messages"]
    assert [m["status"] for m in history] == ["complete", "failed", "complete", "complete"]
    await talker.close()
