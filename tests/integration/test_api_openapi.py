"""`/openapi.json` documents the whole API, and `/docs` works without network access."""

from __future__ import annotations

import json
import re
from typing import Any, get_args
from urllib.parse import urljoin

import httpx

from engine.events import Event
from tests.integration.conftest import RunningServer


def walk_properties(name: str, schema: dict[str, Any]) -> list[str]:
    """`name.field` for every property (at any depth) that has no description."""
    missing = []
    for field, definition in schema.get("properties", {}).items():
        if not definition.get("description"):
            missing.append(f"{name}.{field}")
        missing.extend(walk_properties(f"{name}.{field}", definition))
    return missing


HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def operations_of(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) for every HTTP operation of the document."""
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


async def test_every_route_has_a_summary_and_a_description(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    operations = operations_of(document)
    documented = {(method, path) for method, path, _ in operations}
    assert documented == {
        ("post", "/v1/session/create"),
        ("get", "/v1/session/{token}"),
        ("delete", "/v1/session/{token}"),
        ("post", "/v1/session/{token}/pause"),
        ("post", "/v1/session/{token}/resume"),
        ("get", "/v1/session/{token}/history"),
        ("get", "/v1/session/{token}/stream"),
        ("post", "/v1/session/{token}/fork"),
        ("get", "/v1/session/{token}/transcript"),
        ("get", "/v1/specs"),
        ("get", "/v1/cluster"),
        ("get", "/healthz"),
        ("get", "/metrics"),
    }
    for method, path, operation in operations:
        assert operation.get("summary"), (method, path)
        assert operation.get("description"), (method, path)
        for parameter in operation["parameters"]:
            assert parameter.get("description"), (method, path, parameter["name"])
        for status, answer in operation["responses"].items():
            assert answer.get("description"), (method, path, status)


async def test_every_model_field_has_a_description(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    missing: list[str] = []
    for name, schema in document["components"]["schemas"].items():
        missing.extend(walk_properties(name, schema))
    for method, path, operation in operations_of(document):
        for status, answer in operation["responses"].items():
            for media in answer.get("content", {}).values():
                missing.extend(walk_properties(f"{method} {path} {status}", media["schema"]))
    assert missing == []


async def test_every_error_status_a_route_can_give_is_listed_with_the_error_body(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for method, path, operation in operations_of(document):
        statuses = {int(status) for status in operation["responses"]}
        # A bug can happen anywhere; the guard refuses any /v1 call (rate limit, shutdown).
        assert 500 in statuses, (method, path)
        if path.startswith("/v1/"):
            assert {429, 503} <= statuses, (method, path)
        for status in statuses - {200, 201, 204}:
            content = operation["responses"][str(status)]["content"]
            assert content == {"application/json": {"schema": error_body}}, (method, path, status)
    paths = document["paths"]
    assert {"400", "404", "413", "422"} <= set(paths["/v1/session/create"]["post"]["responses"])
    assert {"403", "404", "409"} <= set(paths["/v1/session/{token}/pause"]["post"]["responses"])
    # `/v1/session/create` is no token: GET or DELETE there is a 405.
    assert "405" in paths["/v1/session/{token}"]["get"]["responses"]


async def test_models_are_components_referenced_by_name(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    status = document["paths"]["/v1/session/{token}"]["get"]["responses"]["200"]
    assert status["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SessionStatus"
    }
    create = document["paths"]["/v1/session/create"]["post"]
    assert create["requestBody"]["required"] is True
    for media in ("application/json", "application/yaml", "application/x-yaml", "text/yaml"):
        body = create["requestBody"]["content"][media]["schema"]
        assert body == {"$ref": "#/components/schemas/SessionSpec"}, media
    schemas = document["components"]["schemas"]
    assert {"SessionStatus", "CreatedSession", "HistoryResponse", "SessionSpec"} <= set(schemas)


async def test_parameters_say_what_the_server_checks(
    client: httpx.AsyncClient, server: RunningServer
) -> None:
    document = (await client.get("/openapi.json")).json()
    stream = document["paths"]["/v1/session/{token}/stream"]["get"]
    parameters = {p["name"]: p for p in stream["parameters"]}
    assert parameters["Last-Event-ID"]["in"] == "header"
    assert parameters["Last-Event-ID"]["schema"] == {"type": "integer", "minimum": 0}
    assert parameters["since"]["schema"] == {"type": "integer", "minimum": 0}
    assert parameters["since"]["allowEmptyValue"] is True  # `?since=` reads as no since
    assert parameters["name"]["schema"]["maxLength"] == server.settings.max_name_chars
    token = parameters["token"]["schema"]
    assert token["not"] == {"enum": ["create"]}
    spec = document["components"]["schemas"]["SessionSpec"]
    assert spec["properties"]["bots"]["maxItems"] == server.settings.max_bots_per_session
    # No parameter admits `null`, which a query string or a header cannot carry.
    for method, path, operation in operations_of(document):
        for parameter in operation["parameters"]:
            assert "null" not in json.dumps(parameter["schema"]), (method, path, parameter)


async def test_streams_and_every_event_type_are_documented(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    event_models = get_args(get_args(Event)[0])
    for model in event_models:
        assert model.__name__ in schemas, model.__name__
    assert {"UserMessageFrame", "PingFrame", "ErrorBody", "Event", "ClientFrame"} <= set(schemas)
    assert len(schemas["Event"]["oneOf"]) == len(event_models)

    # SSE: text/event-stream whose schema is one frame, `data` holding the event's JSON.
    stream = document["paths"]["/v1/session/{token}/stream"]["get"]
    frame = stream["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert frame == {"$ref": "#/components/schemas/ServerSentEvent"}
    sse = schemas["ServerSentEvent"]
    assert sse["required"] == ["id", "event", "data"]
    assert sse["properties"]["data"]["contentMediaType"] == "application/json"
    by_type = {
        branch["properties"]["event"]["const"]: branch["properties"]["data"]["contentSchema"]
        for branch in sse["oneOf"]
    }
    assert by_type["bot_message"] == {"$ref": "#/components/schemas/BotMessage"}
    assert len(by_type) == len(event_models)

    # The WebSocket is described on its path, but is no HTTP operation.
    connect = document["paths"]["/v1/session/{token}/connect"]
    assert not set(connect) & HTTP_METHODS
    assert "4008" in connect["description"] and "1001" in connect["description"]
    websocket = connect["x-websocket"]
    assert {p["name"] for p in websocket["parameters"]} == {"token", "role", "name", "since"}
    assert websocket["serverMessages"] == {"$ref": "#/components/schemas/Event"}
    assert websocket["clientMessages"] == {"$ref": "#/components/schemas/ClientFrame"}


async def test_allow_lists_only_the_methods_of_each_path(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    for method, path, _ in operations_of(document):
        concrete = path.replace("{token}", "fsk_some-token")
        answer = await client.options(concrete)
        allowed = {m.strip().lower() for m in answer.headers["Allow"].split(",")}
        documented = {m for m in document["paths"][path] if m in HTTP_METHODS}
        assert allowed - {"head", "options"} == documented, (method, path, allowed)
    wrong = await client.get("/v1/session/create")
    assert wrong.status_code == 405
    assert wrong.json()["code"] == "method_not_allowed"
    assert {m.strip() for m in wrong.headers["Allow"].split(",")} == {"POST", "OPTIONS"}


async def test_docs_page_loads_only_local_files(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    references = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert references, page.text
    base = str(client.base_url) + "/docs"
    for reference in references:
        assert "://" not in reference and not reference.startswith("//"), reference
        asset = await client.get(urljoin(base, reference))
        assert asset.status_code == 200, reference
        assert len(asset.content) > 0
    init = await client.get(urljoin(base, "static/docs/init.js"))
    assert "openapi.json" in init.text
    assert "validatorUrl: null" in init.text
    assert "://" not in init.text


async def test_fork_and_transcript_are_documented_exactly(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    fork = document["paths"]["/v1/session/{token}/fork"]["post"]
    body = fork["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ForkRequest"}
    request = schemas["ForkRequest"]
    assert request["required"] == ["at_turn"]
    assert request["properties"]["at_turn"]["minimum"] == 1
    assert request["properties"]["start"]["enum"] == ["paused", "running"]
    assert request["properties"]["overrides"]["$ref"] == "#/components/schemas/SpecOverrides"
    overrides = schemas["SpecOverrides"]
    assert "required" not in overrides
    assert set(overrides["properties"]) == set(schemas["SessionSpec"]["properties"])
    assert fork["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreatedSession"
    }
    assert {"400", "403", "404", "409", "422", "429"} <= set(fork["responses"])

    export = document["paths"]["/v1/session/{token}/transcript"]["get"]
    ok = export["responses"]["200"]
    assert set(ok["content"]) == {"text/markdown", "application/json", "text/html"}
    assert ok["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Transcript"
    }
    assert ok["headers"]["Content-Disposition"]["required"] is True
    assert "Transcript" in schemas and "TranscriptMessage" in schemas
    (format_parameter,) = [p for p in export["parameters"] if p["name"] == "format"]
    assert format_parameter["schema"]["enum"] == ["markdown", "json", "html"]
    assert {"400", "404"} <= set(export["responses"])
