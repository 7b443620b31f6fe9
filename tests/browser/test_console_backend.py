"""The console's header shows the default backend, its model, whether it answers, its build."""

from __future__ import annotations

from playwright.async_api import expect

from engine.backend_status import BackendBoard, BuildProgress
from tests.browser.conftest import OpenConsole
from tests.browser.test_console import two_bot_spec
from tests.support.engine import WAIT_SECONDS
from tests.support.server import RunningServer


async def test_the_header_names_the_backend_its_model_and_that_it_answers(
    open_console: OpenConsole,
) -> None:
    tab = await open_console()
    backend = tab.page.locator("#backend")
    await expect(backend).to_have_attribute("data-state", "ready")
    await expect(tab.page.locator("#backend-text")).to_have_text("LLM server · mock · answers")
    await expect(tab.page.locator("#backend-progress")).to_be_hidden()
    await expect(tab.page.locator("#backend-detail")).to_be_hidden()


async def test_during_the_first_build_the_header_shows_progress_and_creating_says_why(
    server: RunningServer, open_console: OpenConsole
) -> None:
    await server.state.backend.stop()
    board = BackendBoard(
        "embedded", "http://127.0.0.1:9/v1", state="starting", probe_timeout=WAIT_SECONDS
    )
    board.building(
        BuildProgress(
            step="compiling llama-server", number=5, steps=6, fraction=0.45, elapsed_seconds=192
        )
    )
    server.state.backend = board
    tab = await open_console()
    page = tab.page
    await expect(page.locator("#backend")).to_have_attribute("data-state", "building")
    await expect(page.locator("#backend-text")).to_contain_text(
        "Embedded llama.cpp · building, step 5 of 6 (3:1"
    )
    await expect(page.locator("#backend-progress")).to_be_visible()
    assert await page.locator("#backend-progress").evaluate("p => p.value") == 0.45
    await expect(page.locator("#backend-detail")).to_contain_text("First start: building")

    tab.expect_http_error(503)
    await page.fill("#spec-editor", two_bot_spec(max_turns=2))
    await page.click("#create")
    await expect(page.locator("#spec-problems-title")).to_contain_text("still being built")

    board.update("ready", "llama-server answers", answers=True, model="SmolLM2-135M")
    await expect(page.locator("#backend-text")).to_have_text(
        "Embedded llama.cpp · SmolLM2-135M · answers"
    )
    await expect(page.locator("#backend-detail")).to_be_hidden()
    await page.click("#create")
    await expect(page.locator("#session")).to_be_visible()
