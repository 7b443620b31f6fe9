"""Fixtures for the web console's browser tests.

The whole product runs in-process — `create_app` served by Hypercorn on a random
loopback port, talking to a `MockLLM` (the fixtures of `tests.support.server`) — and a
real headless Chromium (Debian's `/usr/bin/chromium`, never a downloaded build) is
driven by Playwright's async API in the same event loop. Every page is watched for
console errors and uncaught exceptions; a test fails if any appears. Screenshots go to
`test-artifacts/` (git-ignored).

The tests skip, saying why, only when `/usr/bin/chromium` is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

from engine.llm.mock import MockLLM, MockReply, RecordedRequest
from tests.support.engine import WAIT_SECONDS
from tests.support.server import RunningServer, mock, server, server_factory

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "images" / "console.png"
UPDATE_DOCS_SCREENSHOT = os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1"
"""Set to 1 to refresh the README's screenshot (kept out of ordinary runs)."""

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_INSTALLED = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = WAIT_SECONDS * 1000
DESKTOP: ViewportSize = {"width": 1280, "height": 900}


# --- the server ---------------------------------------------------------------------------------

__all__ = ["mock", "server", "server_factory"]


@dataclass
class Gate:
    """Holds the mock backend's replies from the `after`-th request on, until opened.

    Lets a test look at the page while a reply is being generated, or make events
    happen while a page is away, with no timing involved.
    """

    after: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    seen: int = 0

    async def handle(self, request: RecordedRequest) -> MockReply | None:
        self.seen += 1
        if self.seen > self.after and not self.opened.is_set():
            self.waiting.set()
            await self.opened.wait()
        return None  # the default reply

    def open(self) -> None:
        self.opened.set()


@pytest.fixture
def gate(mock: MockLLM) -> Callable[[int], Gate]:
    """`gate(n)`: let `n` replies through, then hold the rest until `gate.open()`."""

    def install(after: int) -> Gate:
        held = Gate(after=after)
        mock.set_handler(held.handle)
        return held

    return install


# --- the browser ---------------------------------------------------------------------------------


@dataclass
class ConsolePage:
    """One browser tab on the console, with everything it reported as a problem."""

    page: Page
    problems: list[str]
    expected: list[str] = field(default_factory=list)

    @property
    def messages(self) -> Any:
        """The transcript's bubbles."""
        return self.page.locator("#transcript > li")

    async def transcript(self) -> list[dict[str, str]]:
        """Every bubble as data: turn, kind, speaker, status and text."""
        rows: list[dict[str, str]] = await self.page.eval_on_selector_all(
            "#transcript > li",
            """items => items.map(li => ({
                turn: li.dataset.turn || '', kind: li.dataset.kind || '',
                speaker: li.querySelector('.speaker').textContent,
                status: li.dataset.status || '',
                text: li.querySelector('.msg-body').textContent}))""",
        )
        return rows

    async def storage(self) -> str:
        """Everything this tab keeps in sessionStorage, as JSON text."""
        text: str = await self.page.evaluate("JSON.stringify(sessionStorage)")
        return text

    async def full_token(self) -> str:
        saved = json.loads(await self.page.evaluate(
            "sessionStorage.getItem('fellowship.console.session')"
        ))
        token: str = saved["token"]
        return token

    async def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    async def create(self, spec_text: str) -> None:
        """Type a spec into the editor and create the session."""
        await self.page.fill("#spec-editor", spec_text)
        await self.page.click("#create")
        await expect(self.page.locator("#session")).to_be_visible()

    async def create_from_library(self, name: str, edit: Callable[[str], str] | None = None) -> str:
        """Pick a library spec, optionally edit its text, create; return the text used."""
        await self.page.select_option("#library", name)
        editor = self.page.locator("#spec-editor")
        await expect(editor).not_to_have_value("")
        text = await editor.input_value()
        if edit is not None:
            text = edit(text)
        await self.create(text)
        return text

    def expect_http_error(self, status: int) -> None:
        """The test provokes this error status: Chromium logs every non-2xx answer to a
        `fetch` as a console error, which is then not a problem of the page."""
        self.expected.append(f"the server responded with a status of {status} ")

    def assert_clean(self) -> None:
        unexpected = [p for p in self.problems if not any(e in p for e in self.expected)]
        assert unexpected == [], unexpected


OpenConsole = Callable[..., Awaitable[ConsolePage]]


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    if not CHROMIUM_INSTALLED:
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=DESKTOP,
        )
        context.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def open_console(
    server: RunningServer, browser: BrowserContext
) -> AsyncIterator[OpenConsole]:
    """`await open_console(path="/")`: a new tab on the console; fails the test on errors.

    The server comes first so that it stops last, after the browser has gone.
    """
    pages: list[ConsolePage] = []

    async def open_tab(path: str = "/", *, viewport: ViewportSize | None = None) -> ConsolePage:
        page = await browser.new_page()
        if viewport is not None:
            await page.set_viewport_size(viewport)
        problems: list[str] = []

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                problems.append(f"console error: {message.text}")

        def on_page_error(error: Error) -> None:
            problems.append(f"page error: {error}")

        page.on("console", on_console)
        page.on("pageerror", on_page_error)
        await page.goto(server.base_url + path)
        tab = ConsolePage(page, problems)
        pages.append(tab)
        return tab

    yield open_tab
    for tab in pages:
        tab.assert_clean()
