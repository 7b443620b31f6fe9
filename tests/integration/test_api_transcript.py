"""`GET /v1/session/{token}/transcript` in its three formats, against the real server."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from engine.llm.mock import MockLLM
from engine.transcript import Transcript
from tests.integration.conftest import RunningServer, WsMember, create_session
from tests.integration.conversations import SECOND, TALKER, Conversation, history, six_positions
from tests.integration.test_api_sessions import assert_error

FILENAME = re.compile(r'^attachment; filename="test-session-([0-9a-f]+)\.(md|json|html)"$')


@pytest.fixture
async def conversation(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM, members: list[WsMember]
) -> Conversation:
    return await six_positions(server, client, mock, members)


async def transcript(client: httpx.AsyncClient, token: str, format: str | None) -> httpx.Response:
    params = {"format": format} if format is not None else {}
    response = await client.get(f"/v1/session/{token}/transcript", params=params)
    assert response.status_code == 200, response.text
    return response


def download_name(response: httpx.Response, session_id: str, extension: str) -> None:
    match = FILENAME.match(response.headers["content-disposition"])
    assert match, response.headers["content-disposition"]
    assert match.groups() == (session_id, extension)


class Page(HTMLParser):
    """What an HTML page is made of: its tags, attributes and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


async def test_the_json_transcript_lists_every_position_with_its_speaker_and_time(
    client: httpx.AsyncClient, conversation: Conversation
) -> None:
    # The observer token suffices.
    response = await transcript(client, conversation.observer_token, "json")
    assert response.headers["content-type"] == "application/json"
    download_name(response, conversation.created["id"], "json")
    document = Transcript.model_validate(response.json())
    source = await history(client, conversation.token)

    assert document.session_id == conversation.created["id"]
    assert document.name == "test session"
    assert document.state == "active"
    assert [bot.name for bot in document.bots] == ["Alice", "Bob", "Carol"]
    assert [(m.turn, m.kind, m.speaker, m.status) for m in document.messages] == [
        (m["turn"], m["kind"], m["speaker"], m["status"]) for m in source
    ]
    assert [m.content for m in document.messages] == [m["content"] for m in source]
    assert [m.ts.isoformat().replace("+00:00", "Z") for m in document.messages] == [
        m["ts"] for m in source
    ]
    assert document.messages[1].status == "failed" and document.messages[1].content == ""
    assert document.messages[2].content == SECOND
    assert "system_prompt" not in response.text  # bots' prompts stay private


async def test_the_markdown_transcript_marks_talkers_and_tombstones(
    client: httpx.AsyncClient, conversation: Conversation
) -> None:
    response = await transcript(client, conversation.token, None)  # markdown by default
    assert response.headers["content-type"] == "text/markdown; charset=utf-8"
    download_name(response, conversation.created["id"], "md")
    text = response.text
    assert text.startswith("# test session\n")
    assert "- **Bots:** Alice, Bob, Carol" in text
    assert f"### 1 · {TALKER} (talker)" in text
    assert "### 2 · Alice\n" in text
    assert "> *Failed turn (tombstone): no reply was recorded.*" in text
    assert f"> {SECOND}" in text
    assert "### 6 · Carol\n" in text
    headings = re.findall(r"^### (\d+) · ", text, flags=re.MULTILINE)
    assert headings == ["1", "2", "3", "4", "5", "6"]
    source = await history(client, conversation.token)
    for message in source:
        stamp = message["ts"][:19].replace("T", " ")
        assert f"*{stamp} UTC*" in text


async def test_the_html_transcript_is_one_standalone_page_with_everything_escaped(
    client: httpx.AsyncClient, conversation: Conversation
) -> None:
    response = await transcript(client, conversation.token, "html")
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    download_name(response, conversation.created["id"], "html")
    text = response.text
    assert text.startswith("<!doctype html>")
    # The talker's markup is text, not markup.
    assert "second &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;" in text
    page = Page()
    page.feed(text)
    assert "script" not in page.tags and "b" not in page.tags
    assert not {"link", "img", "iframe", "object", "embed"} & set(page.tags)
    assert not [name for name, _ in page.attributes if name in ("src", "href") or name[:2] == "on"]
    assert "http://" not in text and "https://" not in text
    assert page.tags.count("li") == 6
    joined = "".join(page.text)
    assert SECOND in joined
    assert "this turn failed (tombstone)" in joined
    assert 'class="msg bot failed" id="turn-2"' in text
    assert 'class="msg talker complete" id="turn-1"' in text


async def test_an_unknown_format_is_a_400(client: httpx.AsyncClient, server: RunningServer) -> None:
    created = await create_session(client, participation="reactive")
    response = await client.get(
        f"/v1/session/{created['token']}/transcript", params={"format": "pdf"}
    )
    body = assert_error(response, 400, "unknown_format")
    assert "markdown, json, html" in body["error"]
    # An empty session exports too.
    empty = await transcript(client, created["observer_token"], "markdown")
    assert "*No messages yet.*" in empty.text
    unknown = await client.get("/v1/session/fso_nothing/transcript")
    assert_error(unknown, 404, "not_found")


async def test_a_transcript_of_an_ended_session_says_how_it_ended(
    client: httpx.AsyncClient, conversation: Conversation
) -> None:
    assert (await client.delete(f"/v1/session/{conversation.token}")).status_code == 200
    document: dict[str, Any] = (await transcript(client, conversation.token, "json")).json()
    assert (document["state"], document["end_reason"]) == ("ended", "client_request")
    assert document["ended_at"] is not None
    markdown = (await transcript(client, conversation.token, "markdown")).text
    assert "- **State:** ended (client_request) at " in markdown
