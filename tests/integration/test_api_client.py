"""A typed client generated from `/openapi.json` works against the real server.

openapi-python-client (pinned in requirements.lock) turns the live document into a
Python package, failing on any warning; the test then imports it and uses it as a
client author would: create a session, follow it to its end, read its history as typed
models, and get a typed `ErrorBody` for an unknown token. The generator cannot send
YAML, so the YAML body types are left out of the copy it reads; everything else is the
document as served.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from server.openapi import YAML_TYPES
from tests.integration.conftest import RunningServer, WsMember, ws_join

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "fellowship_client"
GENERATOR_CONFIG = "post_hooks: []\n"  # no formatter run: the code is only imported
GENERATE_SECONDS = 120.0  # bounds a hung generator; not a speed check
TURNS = 2


def without_yaml_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """The document with its YAML request bodies removed (the generator has no YAML)."""
    trimmed = copy.deepcopy(document)
    for item in trimmed["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                for media in YAML_TYPES:
                    operation["requestBody"]["content"].pop(media, None)
    return trimmed


async def generate_client(document: dict[str, Any], folder: Path) -> None:
    """Run the generator on `document`; any warning fails it."""
    source = folder / "openapi.json"
    source.write_text(json.dumps(document), encoding="utf-8")
    config = folder / "generator.yaml"
    config.write_text(GENERATOR_CONFIG, encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        str(GENERATOR),
        "generate",
        "--path",
        str(source),
        "--meta",
        "none",
        "--output-path",
        str(folder / PACKAGE),
        "--config",
        str(config),
        "--fail-on-warning",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), GENERATE_SECONDS)
    assert process.returncode == 0, output.decode()


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Path]:
    """A folder to generate into, importable while the test runs."""
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
        del sys.modules[name]


def module(name: str) -> ModuleType:
    """A module of the generated package."""
    return importlib.import_module(f"{PACKAGE}.{name}")


# The generator writes `version != 1and` for the spec's `const: 1`: valid, but Python warns.
@pytest.mark.filterwarnings("ignore:invalid decimal literal:SyntaxWarning")
async def test_generated_client_creates_a_session_and_reads_its_history(
    server: RunningServer,
    client: httpx.AsyncClient,
    generated: Path,
    members: list[WsMember],
) -> None:
    document = (await client.get("/openapi.json")).json()
    await generate_client(without_yaml_bodies(document), generated)
    models = module("models")
    create = module("api.sessions.post_create_session")
    history_of = module("api.sessions.get_session_history")
    api = module("client").Client(base_url=server.base_url)

    spec = models.SessionSpec(
        bots=[
            models.BotSpec(name="Alice", system_prompt="You are Alice."),
            models.BotSpec(name="Bob", system_prompt="You are Bob."),
        ],
        options=models.SessionOptions(max_turns=TURNS),
    )
    created = await create.asyncio(client=api, body=spec)
    assert isinstance(created, models.CreatedSession), created
    assert created.token.startswith("fsk_") and created.observer_token.startswith("fso_")

    watcher = await ws_join(server, created.observer_token)
    members.append(watcher)
    await watcher.wait_type("session_end")
    spoken = [event["content"] for event in watcher.of_type("bot_message")]

    history = await history_of.asyncio(token=created.observer_token, client=api)
    assert isinstance(history, models.HistoryResponse), history
    assert [m.speaker for m in history.messages] == ["Alice", "Bob"]
    assert [m.content for m in history.messages] == spoken
    assert all(m.kind == models.MessageKind.BOT for m in history.messages)
    assert all(m.status == models.MessageStatus.COMPLETE for m in history.messages)
    assert [m.turn for m in history.messages] == list(range(1, TURNS + 1))

    unknown = await history_of.asyncio_detailed(token="fsk_unknown", client=api)
    assert unknown.status_code == 404
    assert isinstance(unknown.parsed, models.ErrorBody)
    assert unknown.parsed.code == "not_found"
