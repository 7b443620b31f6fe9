"""`/openapi.json` documents the whole API, and `/docs` works without network access."""

from __future__ import annotations

import re
from typing import Any, get_args
from urllib.parse import urljoin

import httpx

from engine.events import Event


def walk_properties(name: str, schema: dict[str, Any]) -> list[str]:
    """`name.field` for every property (at any depth) that has no description."""
    missing = []
    for field, definition in schema.get("properties", {}).items():
        if not definition.get("description"):
            missing.append(f"{name}.{field}")
        missing.extend(walk_properties(f"{name}.{field}", definition))
    return missing


async def test_every_route_has_a_summary_and_a_description(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    operations = [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    documented = {(method, path) for method, path, _ in operations}
    assert {
        ("post", "/v1/session/create"),
        ("get", "/v1/session/{token}"),
        ("delete", "/v1/session/{token}"),
        ("post", "/v1/session/{token}/pause"),
        ("post", "/v1/session/{token}/resume"),
        ("get", "/v1/session/{token}/history"),
        ("get", "/v1/session/{token}/connect"),
        ("get", "/v1/session/{token}/stream"),
        ("get", "/v1/specs"),
        ("get", "/healthz"),
    } <= documented
    for method, path, operation in operations:
        assert operation.get("summary"), (method, path)
        assert operation.get("description"), (method, path)
        for parameter in operation["parameters"]:
            assert parameter.get("description"), (method, path, parameter["name"])


async def test_every_model_field_has_a_description(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    missing: list[str] = []
    for name, schema in document["components"]["schemas"].items():
        missing.extend(walk_properties(name, schema))
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, answer in operation["responses"].items():
                for media in answer.get("content", {}).values():
                    missing.extend(walk_properties(f"{method} {path} {status}", media["schema"]))
    assert missing == []


async def test_streams_and_every_event_type_are_documented(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    event_models = get_args(get_args(Event)[0])
    for model in event_models:
        assert model.__name__ in schemas, model.__name__
    assert {"UserMessageFrame", "PingFrame", "ErrorBody"} <= set(schemas)
    connect = document["paths"]["/v1/session/{token}/connect"]["get"]
    assert "101" in connect["responses"]
    assert {p["name"] for p in connect["parameters"]} >= {"token", "role", "name", "since"}
    assert "4008" in connect["description"] and "1001" in connect["description"]
    stream = document["paths"]["/v1/session/{token}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert "last-event-id" in {p["name"].lower() for p in stream["parameters"]}
    create = document["paths"]["/v1/session/create"]["post"]
    assert {"application/json", "application/yaml"} <= set(create["requestBody"]["content"])


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
