"""A session whose backend is not there yet says so once in the console, then carries on."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from engine.llm.mock import MockLLM
from tests.browser.conftest import OpenConsole
from tests.browser.test_console import two_bot_spec
from tests.support.server import RunningServer, server_settings, start_server


@pytest.fixture
def backend_socket() -> Iterator[socket.socket]:
    """A loopback port where no backend listens until the test starts one there.

    The port stays bound (not listening: connections are refused) until then, so that
    no other server, the console's own included, can be given it meanwhile.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


@pytest.fixture
def backend_port(backend_socket: socket.socket) -> int:
    return int(backend_socket.getsockname()[1])


@pytest.fixture
async def server(tmp_path: Path, backend_port: int) -> AsyncIterator[RunningServer]:
    settings = server_settings(
        tmp_path,
        f"http://127.0.0.1:{backend_port}/v1",
        backend_retry_seconds=0.05,
        backend_retry_max_seconds=0.1,
    )
    running = await start_server(settings)
    yield running
    if not running.task.done():
        await running.stop()


async def test_a_session_waiting_for_its_backend_says_so_once_and_goes_on_when_it_answers(
    open_console: OpenConsole, backend_socket: socket.socket, backend_port: int
) -> None:
    tab = await open_console()
    page = tab.page
    await expect(page.locator("#backend")).to_have_attribute("data-state", "unreachable")
    await expect(page.locator("#backend-detail")).to_contain_text("it does not answer")
    await page.fill("#spec-editor", two_bot_spec(max_turns=2))
    await page.click("#create")
    await expect(page.locator("#session")).to_be_visible()
    notice = page.locator("#session-notice")
    await expect(notice).to_contain_text("Waiting for the LLM backend")
    await expect(notice).to_contain_text("cannot be reached")
    await expect(page.locator("#transcript > li[data-status='failed']")).to_have_count(0)
    backend_socket.close()  # the backend comes: it takes the port held for it
    async with MockLLM(port=backend_port):
        complete = page.locator("#transcript > li[data-status='complete']")
        await expect(complete).to_have_count(2)
        await expect(notice).not_to_contain_text("Waiting for the LLM backend")
    await expect(page.locator("#transcript > li[data-status='failed']")).to_have_count(0)
