"""The console's own routes, through Quart's test client (no browser needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from quart.typing import TestClientProtocol as QuartClient

from engine.diagrams import graphviz_available
from engine.errors import SpecTooLarge
from engine.spec.library import read_library_spec
from server import console
from server.app import create_app
from server.console import DiagramUnavailable, diagram_svg
from tests.browser.conftest import ROOT
from tests.support.engine import make_settings


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[QuartClient]:
    settings = make_settings(
        tmp_path, "http://127.0.0.1:9/v1", specs_dir=ROOT / "specs", console_poll_seconds=2.5
    )
    app = create_app(settings)
    if "console" not in app.blueprints:
        app.register_blueprint(console.blueprint)
    async with app.test_app() as running:
        yield running.test_client()


async def test_the_page_is_served_at_the_root_with_a_strict_policy(
    client: QuartClient,
) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert "text/html" in response.content_type
    page = await response.get_data(as_text=True)
    assert '<script src="/console/console.js"' in page
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["Referrer-Policy"] == "no-referrer"


async def test_the_page_loads_nothing_from_another_host(client: QuartClient) -> None:
    for path in ("/", "/console/console.js", "/console/console.css"):
        text = await (await client.get(path)).get_data(as_text=True)
        assert "http://" not in text.replace("http://www.w3.org", "")
        assert "https://" not in text


async def test_scripts_and_styles_are_served_and_other_files_are_not(
    client: QuartClient,
) -> None:
    script = await client.get("/console/console.js")
    assert script.status_code == 200
    assert "javascript" in script.content_type
    assert (await client.get("/console/console.css")).status_code == 200
    for path in ("/console/missing.js", "/console/../app.py", "/console/%2e%2e/app.py"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert (await response.get_json())["code"] == "not_found"


async def test_config_comes_from_the_settings(client: QuartClient) -> None:
    config = await (await client.get("/console/config")).get_json()
    assert config["poll_seconds"] == 2.5
    assert config["observer_token_prefix"] == "fso_"
    assert "loop" in config["machines"]


async def test_the_library_lists_every_spec_file(client: QuartClient) -> None:
    body = await (await client.get("/console/specs")).get_json()
    names = [entry["name"] for entry in body["specs"]]
    assert names == sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))
    debate = next(entry for entry in body["specs"] if entry["name"] == "debate")
    assert debate["title"] == "Four-day work week debate"


async def test_a_library_spec_comes_back_as_its_exact_yaml_text(
    client: QuartClient,
) -> None:
    response = await client.get("/console/specs/debate")
    assert response.status_code == 200
    assert response.content_type.startswith("application/yaml")
    text = await response.get_data(as_text=True)
    assert text == (ROOT / "specs" / "debate.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["nope", "session-spec.schema", "..", ".hidden", "x" * 300])
async def test_only_listed_library_names_can_be_read(
    client: QuartClient, name: str
) -> None:
    response = await client.get(f"/console/specs/{name}")
    assert response.status_code == 404
    body = await response.get_json()
    assert body["code"] in ("spec_not_found", "not_found")
    assert name not in body["error"]


async def test_an_oversized_library_spec_is_refused(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "huge.yaml").write_text("# big\n" + "#" * 2000 + "\n", encoding="utf-8")
    settings = make_settings(
        tmp_path, "http://127.0.0.1:9/v1", specs_dir=specs, max_spec_bytes=1024
    )
    with pytest.raises(SpecTooLarge):
        read_library_spec("huge", settings)


async def test_the_loop_diagram_is_the_generated_file(client: QuartClient) -> None:
    response = await client.get("/console/diagram/loop.svg")
    assert response.status_code == 200
    assert response.content_type.startswith("image/svg+xml")
    svg = await response.get_data(as_text=True)
    assert svg == (ROOT / "docs" / "diagrams" / "loop.svg").read_text(encoding="utf-8")
    for state in ("idle", "dispatching", "awaiting_talker", "paused", "ended"):
        assert f"<title>{state}</title>" in svg


async def test_an_unknown_diagram_is_a_json_404(client: QuartClient) -> None:
    response = await client.get("/console/diagram/secret.svg")
    assert response.status_code == 404
    assert (await response.get_json())["code"] == "diagram_unavailable"


def test_without_the_docs_folder_the_diagram_is_drawn_or_reported_missing(
    tmp_path: Path,
) -> None:
    if graphviz_available():
        assert "<title>awaiting_talker</title>" in diagram_svg("loop", tmp_path)
    else:
        with pytest.raises(DiagramUnavailable):
            diagram_svg("loop", tmp_path)
