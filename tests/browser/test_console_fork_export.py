"""Forks and transcripts in a real browser: the HTML export renders, the console's buttons work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from playwright.async_api import BrowserContext, ConsoleMessage, Error, Request, expect

from engine.llm.mock import MockLLM
from tests.browser.conftest import OpenConsole
from tests.browser.test_console import two_bot_spec
from tests.integration.conftest import WsMember
from tests.integration.conversations import SECOND, six_positions
from tests.support.engine import WAIT_SECONDS
from tests.support.server import RunningServer


async def test_the_html_transcript_renders_as_a_standalone_page(
    server: RunningServer, mock: MockLLM, browser: BrowserContext, tmp_path: Path
) -> None:
    members: list[WsMember] = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
        conversation = await six_positions(server, client, mock, members)
        response = await client.get(
            f"/v1/session/{conversation.observer_token}/transcript", params={"format": "html"}
        )
    for member in members:
        await member.close()
    saved = tmp_path / "transcript.html"
    saved.write_bytes(response.content)

    page = await browser.new_page()
    problems: list[str] = []
    requests: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(message.text)

    def on_page_error(error: Error) -> None:
        problems.append(str(error))

    def on_request(request: Request) -> None:
        requests.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("request", on_request)
    await page.goto(saved.as_uri())

    assert await page.title() == "test session — transcript"
    await expect(page.locator("h1")).to_have_text("test session")
    items = page.locator("li.msg")
    await expect(items).to_have_count(6)
    await expect(page.locator("#turn-2")).to_have_class(re.compile(r"\bfailed\b"))
    await expect(page.locator("#turn-2 .msg-body")).to_contain_text("this turn failed")
    await expect(page.locator("#turn-1 .tag")).to_have_text("talker")
    # The talker's markup is shown as text: no element was made of it.
    await expect(page.locator("#turn-3 .msg-body")).to_have_text(SECOND)
    assert await page.locator("#turn-3 b").count() == 0
    assert await page.locator("script").count() == 0
    # The inline style applies (the page's own policy allows it, and only it).
    border = await page.eval_on_selector("#turn-4", "li => getComputedStyle(li).borderLeftWidth")
    assert border == "4px"
    assert requests == [saved.as_uri()]
    assert problems == []
    await page.screenshot(path=str(tmp_path / "transcript.png"), full_page=True)
    await page.close()


async def test_the_console_forks_from_a_message_into_a_new_tab(
    open_console: OpenConsole, browser: BrowserContext
) -> None:
    tab = await open_console()
    await tab.create(two_bot_spec(max_turns=4))
    await expect(tab.page.locator("#connection")).to_have_text("Session ended")
    await expect(tab.messages).to_have_count(4)
    source_token = await tab.full_token()

    await tab.page.click("#msg-2 .fork-here")
    dialog = tab.page.locator("#fork-dialog")
    await expect(dialog).to_be_visible()
    await expect(tab.page.locator("#fork-turn")).to_have_text("#2")

    # A bad change is explained with its path, and nothing opens.
    await tab.page.fill("#fork-overrides", json.dumps({"options": {"max_turns": 0}}))
    tab.expect_http_error(422)
    await tab.page.click("#fork-create")
    await expect(tab.page.locator("#fork-problem-list")).to_contain_text("options.max_turns")

    await tab.page.fill("#fork-overrides", json.dumps({"options": {"max_turns": 3}}))
    async with browser.expect_page() as opened:
        await tab.page.click("#fork-create")
    fork_page = await opened.value
    problems: list[str] = []
    fork_page.on("pageerror", lambda error: problems.append(str(error)))
    await expect(dialog).to_be_hidden()
    await expect(tab.page.locator("#session-notice")).to_contain_text("opened in a new tab")

    # The fork: messages 1 and 2 copied, one more turn (max_turns counts the copied ones).
    await expect(fork_page.locator("#connection")).to_have_text("Session ended")
    await expect(fork_page.locator("#transcript > li")).to_have_count(3)
    assert "#fork=" not in fork_page.url  # the one-time key leaves the address at once
    saved = json.loads(
        await fork_page.evaluate("sessionStorage.getItem('fellowship.console.session')")
    )
    assert saved["token"] and saved["token"] != source_token
    leftovers = await fork_page.evaluate(
        "Object.keys(localStorage).filter(k => k.startsWith('fellowship.console.handoff.'))"
    )
    assert leftovers == []
    source_texts = await tab.page.locator("#transcript .msg-body").all_text_contents()
    fork_texts = await fork_page.locator("#transcript .msg-body").all_text_contents()
    assert fork_texts[:2] == source_texts[:2]
    # The source is untouched.
    await expect(tab.messages).to_have_count(4)
    assert problems == []
    await fork_page.close()


async def test_observers_get_no_fork_button_but_can_download(
    open_console: OpenConsole, tmp_path: Path
) -> None:
    owner = await open_console()
    await owner.create(two_bot_spec(max_turns=2))
    await expect(owner.page.locator("#connection")).to_have_text("Session ended")
    await expect(owner.page.locator("#msg-1 .fork-here")).to_be_visible()

    share = await owner.page.locator("#share-link").input_value()
    observer = await open_console("/" + share.split("/", 3)[3])  # "/#observe=..."
    await expect(observer.messages).to_have_count(2)
    await expect(observer.page.locator("#msg-1 .fork-here")).to_be_hidden()

    for format_, extension, expected in (
        ("html", "html", "<!doctype html>"),
        ("markdown", "md", "# Console test"),
        ("json", "json", '"session_id"'),
    ):
        await observer.page.select_option("#export-format", format_)
        async with observer.page.expect_download() as started:
            await observer.page.click("#download")
        download = await started.value
        assert re.fullmatch(rf"console-test-[0-9a-f]+\.{extension}", download.suggested_filename)
        path = tmp_path / download.suggested_filename
        await download.save_as(path)
        text = path.read_text(encoding="utf-8")
        assert text.startswith(expected) or expected in text
        assert "Ann" in text and "Ben" in text
