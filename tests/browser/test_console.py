"""The web console in a real browser, against the real server and the mock backend."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from playwright.async_api import Dialog, ViewportSize, WebSocketRoute, expect

from engine.hub import CLOSE_TOO_SLOW
from engine.llm.mock import MockLLM, MockReply
from engine.llm.types import Usage
from tests.browser.conftest import (
    DOCS_SCREENSHOT,
    UPDATE_DOCS_SCREENSHOT,
    ConsolePage,
    Gate,
    OpenConsole,
)
from tests.support.engine import WAIT_SECONDS
from tests.support.server import RunningServer

PHONE: ViewportSize = {"width": 390, "height": 844}


def max_turns(count: int) -> Callable[[str], str]:
    """An edit of a library spec's text that sets `options.max_turns`."""

    def edit(text: str) -> str:
        edited, found = re.subn(r"(?m)^  max_turns: \d+$", f"  max_turns: {count}", text)
        assert found == 1, "the library spec should set max_turns"
        return edited

    return edit


def two_bot_spec(**options: object) -> str:
    """A small autonomous JSON spec (the editor accepts JSON as well as YAML)."""
    return json.dumps(
        {
            "name": "Console test",
            "bots": [
                {"name": "Ann", "system_prompt": "You are Ann. Be brief."},
                {"name": "Ben", "system_prompt": "You are Ben. Be brief."},
            ],
            "options": {"participation": "autonomous", **options},
        },
        indent=2,
    )


async def current_diagram_state(tab: ConsolePage) -> str:
    text = await tab.page.locator("#diagram g.node.current title").text_content()
    return (text or "").strip()


def turns_of(rows: list[dict[str, str]]) -> list[int]:
    return [int(row["turn"]) for row in rows]


# --- creating and watching ----------------------------------------------------------------------


async def test_a_library_debate_plays_its_six_turns_in_order_then_ends(
    open_console: OpenConsole, gate: Callable[[int], Gate]
) -> None:
    held = gate(0)
    tab = await open_console()
    await tab.create_from_library("debate", max_turns(6))

    # The first reply is held: its slot shows who is thinking.
    await expect(tab.page.locator("#msg-1.thinking .speaker")).to_have_text("Priya")
    await expect(tab.page.locator("#diagram g.node.current title")).to_have_text("dispatching")
    held.open()

    await expect(tab.page.locator("#connection")).to_have_text("Session ended")
    await expect(tab.messages).to_have_count(6)
    rows = await tab.transcript()
    assert turns_of(rows) == [1, 2, 3, 4, 5, 6]
    assert [row["speaker"] for row in rows] == ["Priya", "Marcus", "Chair"] * 2
    assert all(row["status"] == "complete" and row["text"] for row in rows)
    await expect(tab.page.locator("#st-turns")).to_have_text("6 / 6")
    await expect(tab.page.locator("#session-notice")).to_contain_text("max turns")
    assert await current_diagram_state(tab) == "ended"
    await tab.screenshot("debate-ended")


async def test_each_bot_keeps_one_colour(
    open_console: OpenConsole, server: RunningServer
) -> None:
    tab = await open_console()
    await tab.create_from_library("debate", max_turns(6))
    await expect(tab.page.locator("#connection")).to_have_text("Session ended")
    hues = await tab.page.eval_on_selector_all(
        "#transcript > li",
        "items => items.map(li => [li.dataset.speaker, li.style.getPropertyValue('--hue')])",
    )
    by_bot: dict[str, set[str]] = {}
    for speaker, hue in hues:
        by_bot.setdefault(speaker, set()).add(hue)
    assert all(len(values) == 1 for values in by_bot.values()), by_bot
    assert len({next(iter(values)) for values in by_bot.values()}) == len(by_bot)


async def test_without_rectification_a_reply_shows_as_thinking_until_it_takes_its_place(
    open_console: OpenConsole, gate: Callable[[int], Gate]
) -> None:
    tab = await open_console()
    await tab.create(two_bot_spec(participation="reactive", rectify_history=False))
    await tab.page.fill("#talker-name", "Dana")
    await tab.page.click("#join")
    held = gate(0)
    await tab.page.fill("#message", "First question")
    await tab.page.press("#message", "Enter")
    # No position is reserved: the bubble waits below the numbered ones...
    thinking = tab.page.locator("#transcript > li.pending.thinking")
    await expect(thinking.locator(".speaker")).to_have_text("Ann")
    await tab.page.fill("#message", "And a second one")
    await tab.page.press("#message", "Enter")
    await expect(tab.page.locator("#msg-2")).to_have_text(re.compile("And a second one"))
    rows = await tab.transcript()
    assert [row["turn"] for row in rows] == ["1", "2", ""]
    # ...and takes the next free position when the reply lands.
    held.open()
    await expect(tab.page.locator("#msg-3 .speaker")).to_have_text("Ann")
    await expect(tab.page.locator("#transcript > li.pending")).to_have_count(0)


async def test_joining_mid_reply_without_rectification_says_a_bot_is_writing(
    open_console: OpenConsole, gate: Callable[[int], Gate]
) -> None:
    held = gate(0)
    tab = await open_console()
    await tab.create(two_bot_spec(max_turns=1, rectify_history=False))
    await expect(tab.page.locator("#activity")).to_have_text("A bot is writing…")
    held.open()
    await expect(tab.page.locator("#msg-1")).to_be_visible()
    await expect(tab.page.locator("#activity")).to_be_hidden()


async def test_failed_turns_stay_visible_as_tombstones(
    open_console: OpenConsole, mock: MockLLM
) -> None:
    mock.set_faults(["http_500"])
    tab = await open_console()
    await tab.create(two_bot_spec(max_turns=2))
    await expect(tab.page.locator("#connection")).to_have_text("Session ended")
    failed = tab.page.locator("#transcript > li.failed")
    await expect(failed).to_have_count(2)
    await expect(failed.first.locator(".msg-meta")).to_have_text("#1 · failed turn")
    await expect(failed.first.locator(".msg-body")).to_contain_text("No reply")
    await tab.screenshot("tombstones")


async def test_spec_errors_are_listed_with_their_paths_and_lead_to_their_line(
    open_console: OpenConsole,
) -> None:
    tab = await open_console()
    tab.expect_http_error(422)
    await tab.page.fill(
        "#spec-editor",
        "name: bad\nbots:\n  - name: Ann\n    system_prompt: hi\n  - name: ann\n"
        "    system_prompt: hi\noptions:\n  turn_order: orchestrated\n",
    )
    await tab.page.click("#create")
    problems = tab.page.locator("#spec-problem-list li")
    await expect(problems).to_have_count(2)
    await expect(problems.nth(0)).to_contain_text("bots[1].name")
    await expect(problems.nth(0)).to_contain_text("line 5")
    await expect(problems.nth(1)).to_contain_text("options.turn_order")
    await expect(tab.page.locator("#session")).to_be_hidden()

    await problems.nth(0).locator("button").click()
    selected = await tab.page.evaluate(
        "(() => { const e = document.getElementById('spec-editor');"
        " return e.value.slice(e.selectionStart, e.selectionEnd); })()"
    )
    assert selected == "name: ann"
    await tab.screenshot("spec-errors")


async def test_unknown_options_are_shown_as_warnings(open_console: OpenConsole) -> None:
    tab = await open_console()
    await tab.create(two_bot_spec(max_turns=1, colour="blue"))
    await expect(tab.page.locator("#session-warnings")).to_contain_text("options.colour")


async def test_a_backend_template_mismatch_is_shown_among_the_warnings(
    open_console: OpenConsole, mock: MockLLM
) -> None:
    # A server whose chat template drops the conversation counts a 3-token prompt.
    mock.set_handler(
        lambda request: MockReply(
            content="def main(): pass",
            usage=Usage(prompt_tokens=3, completion_tokens=5, total_tokens=8),
        )
    )
    spec = json.loads(two_bot_spec(max_turns=3))
    spec["system_prompt"] = " ".join(["Two neighbours talk about the weekend."] * 12)
    tab = await open_console()
    await tab.create(json.dumps(spec))
    await expect(tab.page.locator("#connection")).to_have_text("Session ended")
    warnings = tab.page.locator("#session-warnings")
    await expect(warnings).to_be_visible()
    await expect(warnings).to_contain_text("backend_template_mismatch")
    await expect(warnings).to_contain_text("--jinja")


# --- talking --------------------------------------------------------------------------------


async def test_a_talker_sends_with_enter_and_sees_the_bots_reply(
    open_console: OpenConsole,
) -> None:
    tab = await open_console()
    await tab.create_from_library("tutor")
    await expect(tab.page.locator("#composer")).to_be_hidden()
    await tab.page.fill("#talker-name", "Dana")
    await tab.page.press("#talker-name", "Enter")
    await expect(tab.page.locator("#connection")).to_have_text("Connected as talker Dana")

    await tab.page.fill("#message", "What is a prime number?")
    await tab.page.press("#message", "Enter")

    await expect(tab.messages).to_have_count(3)  # the question and two replies
    await expect(tab.page.locator("#transcript > li.msg:not(.thinking)")).to_have_count(3)
    rows = await tab.transcript()
    assert rows[0] == {
        "turn": "1",
        "kind": "talker",
        "speaker": "Dana",
        "status": "complete",
        "text": "What is a prime number?",
    }
    assert [row["kind"] for row in rows[1:]] == ["bot", "bot"]
    assert await tab.page.input_value("#message") == ""
    await expect(tab.page.locator("#st-members")).to_contain_text("Dana")
    await tab.screenshot("talker")


async def test_a_talker_without_a_seat_is_told_why_and_keeps_watching(
    open_console: OpenConsole,
) -> None:
    owner = await open_console()
    await owner.create_from_library("tutor")  # max_talkers: 1
    await owner.page.fill("#talker-name", "Dana")
    await owner.page.click("#join")
    await expect(owner.page.locator("#connection")).to_have_text("Connected as talker Dana")

    other = await open_console()
    await other.page.click(".open-existing summary")
    await other.page.fill("#open-token", await owner.full_token())
    await other.page.press("#open-token", "Enter")
    await other.page.fill("#talker-name", "Eve")
    await other.page.click("#join")
    await expect(other.page.locator("#composer-note")).to_contain_text("already has its 1 talker")
    await expect(other.page.locator("#connection")).to_have_text("Connected as observer")
    await expect(other.page.locator("#join-form")).to_be_visible()
    await expect(other.page.locator("#composer")).to_be_hidden()


async def test_message_text_is_shown_as_text_never_as_markup(open_console: OpenConsole) -> None:
    tab = await open_console()
    await tab.create_from_library("tutor")
    await tab.page.fill("#talker-name", "<b>Eve</b>")
    await tab.page.click("#join")
    payload = '<img src=x onerror="window.pwned=1">'
    await tab.page.fill("#message", payload)
    await tab.page.click("#send")
    await expect(tab.page.locator("#msg-1 .msg-body")).to_have_text(payload)
    await expect(tab.page.locator("#msg-1 .speaker")).to_have_text("<b>Eve</b>")
    assert await tab.page.locator("#transcript img, #transcript b").count() == 0
    assert await tab.page.evaluate("window.pwned === undefined")


async def test_streamed_tokens_fill_the_bubble_before_the_message_lands(
    open_console: OpenConsole, mock: MockLLM
) -> None:
    mock.token_ms = 400  # slow enough to be seen streaming; the test waits on what it sees
    tab = await open_console()
    await tab.create_from_library("writers-room")
    await tab.page.fill("#talker-name", "Sam")
    await tab.page.click("#join")
    await tab.page.fill("#message", "Open on a lighthouse keeper who hears a knock at night.")
    await tab.page.press("#message", "Enter")

    streaming = tab.page.locator("#transcript > li.streaming").first
    await expect(streaming).to_be_visible()
    turn = await streaming.get_attribute("data-turn")
    partial = await streaming.locator(".msg-body").inner_text()
    assert partial
    landed = tab.page.locator(f"#msg-{turn}[data-status='complete']")
    await expect(landed).to_be_visible()
    final = await landed.locator(".msg-body").inner_text()
    assert final.startswith(partial.strip().split()[0])
    await tab.screenshot("streaming")
    if UPDATE_DOCS_SCREENSHOT:  # the README's picture: a few turns, one still streaming
        await expect(tab.page.locator("#msg-4.streaming")).to_be_visible()
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await tab.page.screenshot(path=str(DOCS_SCREENSHOT))


# --- controlling ------------------------------------------------------------------------------


async def test_pause_stops_new_turns_and_resume_goes_on_then_end(
    open_console: OpenConsole, gate: Callable[[int], Gate], mock: MockLLM
) -> None:
    held = gate(0)
    tab = await open_console()
    await tab.create(two_bot_spec(max_turns=50))
    await expect(tab.page.locator("#msg-1.thinking")).to_be_visible()

    await tab.page.click("#pause")
    await expect(tab.page.locator("#st-state")).to_have_text("paused")
    await expect(tab.page.locator("#resume")).to_be_enabled()
    await expect(tab.page.locator("#pause")).to_be_disabled()
    held.open()  # the reply in flight is still recorded...
    await expect(tab.page.locator("#msg-1[data-status='complete']")).to_be_visible()
    await expect(tab.page.locator("#diagram g.node.current title")).to_have_text("paused")
    # ...and once the loop sits in `paused` it has asked for nothing more.
    assert len(mock.requests) == 1
    await expect(tab.messages).to_have_count(1)
    await tab.screenshot("paused")

    held = gate(2)  # after resuming, two more replies, then one held in flight
    await tab.page.click("#resume")
    await expect(tab.page.locator("#st-state")).to_have_text("active")
    await expect(tab.page.locator("#msg-4.thinking")).to_be_visible()

    async def accept(dialog: Dialog) -> None:
        assert "End this session" in dialog.message
        await dialog.accept()

    tab.page.once("dialog", accept)
    await tab.page.click("#end")
    await expect(tab.page.locator("#connection")).to_have_text("Session ended")
    await expect(tab.page.locator("#session-notice")).to_contain_text("client request")
    await expect(tab.page.locator("#end")).to_be_disabled()
    # Ending dropped the reply being generated: its slot is a visible failed turn.
    await expect(tab.page.locator("#msg-4.failed")).to_contain_text("No reply")
    await tab.screenshot("ended-by-client")
    held.open()


# --- sharing, reloading, reconnecting ------------------------------------------------------------


async def test_the_observer_link_shows_the_same_history_and_no_controls(
    open_console: OpenConsole, gate: Callable[[int], Gate]
) -> None:
    held = gate(3)
    owner = await open_console()
    await owner.create_from_library("debate", max_turns(6))
    await expect(owner.page.locator("#msg-4.thinking")).to_be_visible()

    link = await owner.page.input_value("#share-link")
    full_token = await owner.full_token()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/#observe=fso_[\w-]+", link), link
    assert full_token not in link
    assert full_token not in owner.page.url

    observer = await open_console(f"/#{urlsplit(link).fragment}")
    await expect(observer.messages).to_have_count(4)
    assert await observer.transcript() == await owner.transcript()
    await expect(observer.page.locator("#owner-controls")).to_be_hidden()
    await expect(observer.page.locator("#join-form")).to_be_hidden()
    await expect(observer.page.locator("#owner-token-box")).to_be_hidden()
    assert "fsk_" not in await observer.storage()
    # Both tabs watch: the newcomer counts itself from its history, the owner from presence.
    for tab in (owner, observer):
        await expect(tab.page.locator("#st-members")).to_have_text("2 observers")

    held.open()
    for tab in (owner, observer):
        await expect(tab.page.locator("#connection")).to_have_text("Session ended")
        await expect(tab.messages).to_have_count(6)
    assert await observer.transcript() == await owner.transcript()
    await observer.screenshot("observer")


async def test_a_reload_mid_session_shows_every_message_once(
    open_console: OpenConsole, gate: Callable[[int], Gate]
) -> None:
    held = gate(2)
    tab = await open_console()
    await tab.create_from_library("debate", max_turns(6))
    await expect(tab.page.locator("#msg-3.thinking")).to_be_visible()
    before = await tab.transcript()

    await tab.page.reload()
    await expect(tab.page.locator("#msg-3.thinking")).to_be_visible()
    assert await tab.transcript() == before

    held.open()
    await expect(tab.page.locator("#connection")).to_have_text("Session ended")
    rows = await tab.transcript()
    assert turns_of(rows) == [1, 2, 3, 4, 5, 6]
    assert rows[:2] == before[:2]


async def test_a_talker_who_reloads_is_a_talker_again(open_console: OpenConsole) -> None:
    tab = await open_console()
    await tab.create_from_library("tutor")  # one talker seat
    await tab.page.fill("#talker-name", "Dana")
    await tab.page.click("#join")
    await tab.page.fill("#message", "First")
    await tab.page.press("#message", "Enter")
    await expect(tab.page.locator("#msg-3")).to_be_visible()

    await tab.page.reload()
    await expect(tab.page.locator("#connection")).to_have_text("Connected as talker Dana")
    await tab.page.fill("#message", "Second")
    await tab.page.press("#message", "Enter")
    await expect(tab.page.locator("#msg-6")).to_be_visible()
    rows = await tab.transcript()
    assert turns_of(rows) == [1, 2, 3, 4, 5, 6]
    assert [row["text"] for row in rows if row["kind"] == "talker"] == ["First", "Second"]


async def test_after_a_dropped_connection_it_resumes_from_the_last_seq_seen(
    open_console: OpenConsole, gate: Callable[[int], Gate], server: RunningServer
) -> None:
    held = gate(2)
    tab = await open_console()
    await tab.create_from_library("debate", max_turns(6))
    await expect(tab.page.locator("#msg-3.thinking")).to_be_visible()
    before = await tab.transcript()

    # From now on the page's sockets pass through the test, which holds the reconnect
    # until the session is over: the page must catch up on everything it missed.
    handle = server.manager.open(await tab.full_token())
    urls: list[str] = []

    async def reconnect(route: WebSocketRoute) -> None:
        urls.append(route.url)
        held.open()
        await asyncio.wait_for(handle.loop.ended.wait(), WAIT_SECONDS)
        route.connect_to_server()

    await tab.page.route_web_socket(re.compile(r".*/connect\?.*"), reconnect)
    # The server drops the page, as it does a client that fell behind.
    for member in list(handle.session.members.values()):
        member.subscription.close(CLOSE_TOO_SLOW, drain=False)

    await expect(tab.page.locator("#connection")).to_have_text("Session ended")
    assert len(urls) == 1 and "since=" in urls[0], urls
    rows = await tab.transcript()
    assert turns_of(rows) == [1, 2, 3, 4, 5, 6]
    assert rows[:2] == before[:2]
    assert all(row["status"] == "complete" for row in rows)


# --- layout and accessibility ---------------------------------------------------------------


async def test_every_control_has_a_label_and_the_page_fits_a_phone(
    open_console: OpenConsole,
) -> None:
    tab = await open_console(viewport=PHONE)
    await tab.create_from_library("tutor")
    await tab.page.fill("#talker-name", "Dana")
    await tab.page.click("#join")
    await tab.page.fill("#message", "Hello there")
    await tab.page.press("#message", "Enter")
    await expect(tab.messages).to_have_count(3)

    unlabelled = await tab.page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')]
            .filter(e => !e.closest('[hidden]') && e.labels.length === 0).map(e => e.id)"""
    )
    assert unlabelled == []
    overflow = await tab.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    await tab.screenshot("phone")


async def test_the_console_can_be_driven_from_the_keyboard(open_console: OpenConsole) -> None:
    tab = await open_console()
    await tab.page.focus("#library")
    await tab.page.keyboard.press("ArrowDown")  # the first library spec
    editor = tab.page.locator("#spec-editor")
    await expect(editor).not_to_have_value("")
    await tab.page.keyboard.press("Tab")
    await expect(editor).to_be_focused()
    await tab.page.keyboard.press("Tab")
    await expect(tab.page.locator("#create")).to_be_focused()
    await tab.page.keyboard.press("Enter")
    await expect(tab.page.locator("#session")).to_be_visible()
