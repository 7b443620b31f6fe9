"""The docs agree with the code: specs load, names exist, links resolve, examples run.

A YAML block with a top-level `bots:` is a session spec and must load without errors or
warnings; one that is wrong on purpose carries the comment `# docs-test: invalid` and
must then be refused. The JavaScript and Python clients of docs/patterns.md are
extracted and run against a real server with the mock backend.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any, get_args

import pytest

from engine.chart import LOOP_STATES
from engine.events import DebugCategory, EndReason
from tests.docs import checks
from tests.docs.markdown import DOCS, CodeBlock, code_blocks, doc_pages, label
from tests.integration.conftest import RunningServer
from tests.support.engine import WAIT_SECONDS

PATTERNS = DOCS / "patterns.md"
EVENTS = DOCS / "events.md"
PYTHON_EXAMPLE = "# fellowship_client.py"
JS_EXAMPLE = "// fellowship-client.js"


def example(lang: str, first_line: str) -> CodeBlock:
    """The code block of patterns.md in `lang` that starts with `first_line`."""
    found = [b for b in code_blocks(PATTERNS) if b.lang == lang and b.text.startswith(first_line)]
    assert len(found) == 1, f"expected one {lang} block starting {first_line!r} in patterns.md"
    return found[0]


# --- specs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    checks.spec_blocks(doc_pages()),
    ids=lambda b: label(b.path, b.line),
)
def test_spec_in_the_docs_loads_without_errors_or_warnings(block: CodeBlock) -> None:
    assert checks.spec_problems(block) == []


def test_the_docs_hold_the_pattern_specs() -> None:
    # Guards the parametrized test above against silently checking nothing.
    assert len(checks.spec_blocks([PATTERNS])) >= 5


def test_a_broken_spec_block_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```yaml\nbots:\n  - name: Ann\n  - name: ann\noptions:\n  max_turn: 3\n```\n"
        f"```yaml\n{checks.INVALID_MARKER}\nbots:\n  - name: Ann\n```\n"
    )
    broken, marked = checks.spec_blocks([page])
    problems = checks.spec_problems(broken)
    assert any("bots[1].name" in p for p in problems)  # an error
    assert any("options.max_turn" in p for p in problems)  # a warning (unknown key)
    assert checks.spec_problems(marked) == [f"{label(page, 9)}: marked invalid, but it loads"]


# --- settings, links, index, codes ----------------------------------------------------------


def test_setting_names_in_the_docs_exist() -> None:
    assert checks.setting_problems(doc_pages()) == []


def test_a_misspelt_setting_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Set `LLM_BASE_URL`, `DEBUG=true`, `POST` and `LLM_RETRY=2`.\n\n"
        "```sh\nLLM_TIMEOUTS=3 make run\n```\n"
    )
    assert checks.setting_problems([page]) == [
        f"{label(page, 1)}: `LLM_RETRY` is not a setting",
        f"{label(page, 4)}: `LLM_TIMEOUTS` is not a setting",
    ]


def test_relative_links_between_pages_resolve() -> None:
    assert checks.link_problems(doc_pages()) == []


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## The `since` option\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#the-since-option) [gone](missing.md) [bad](other.md#nope) "
        "[web](https://example.com) `[not a link](x.md)`\n"
    )
    assert checks.link_problems([page]) == [
        f"{label(page, 1)}: link to missing missing.md",
        f"{label(page, 1)}: no heading #nope in other.md",
    ]


def test_the_docs_index_lists_every_page() -> None:
    assert checks.index_problems(DOCS / "README.md", checks.docs_pages()) == []


def test_error_and_close_codes_in_tables_exist() -> None:
    assert checks.code_column_problems(doc_pages()) == []


def test_an_unknown_error_or_close_code_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "| close code | error code | meaning |\n|---|---|---|\n"
        "| 4004 | `not_found` | fine |\n| 4404 | `no_such_code` | wrong |\n"
    )
    assert checks.code_column_problems([page]) == [
        f"{label(page, 4)}: close code 4404 is never sent",
        f"{label(page, 4)}: `no_such_code` is not an error code",
    ]


# --- events -----------------------------------------------------------------------------------


def test_events_reference_has_one_section_per_event_type() -> None:
    assert checks.event_heading_problems(EVENTS) == []


def test_event_examples_are_valid_events_and_cover_every_type() -> None:
    assert checks.event_example_problems(EVENTS) == []


def test_end_reasons_debug_categories_and_loop_states_are_all_named() -> None:
    states = list(LOOP_STATES)
    names = [*get_args(EndReason), *get_args(DebugCategory), *states]
    assert checks.missing_names(EVENTS, names) == []


def test_a_wrong_event_example_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "events.md"
    page.write_text(
        "### `bot_message`\n### `bot_said`\n\n"
        '```json\n{"type": "bot_message", "seq": 3, "bot": "A", "turn": 2, "content": "x",'
        ' "colour": "red"}\n{"type": "turn_end", "seq": 4, "bot": "A"}\n```\n\n'
        "```\nhistory   seq 1\nbot_said  seq 2\n```\n"
    )
    headings = checks.event_heading_problems(page)
    assert f"{label(page, 2)}: no event type `bot_said`" in headings
    assert f"{label(page)}: no section for `turn_start`" in headings
    examples = checks.event_example_problems(page)
    assert f"{label(page, 5)}: bot_message has no fields ['colour']" in examples
    assert any(p.startswith(f"{label(page, 5)}: invalid 'turn_end' event") for p in examples)
    assert f"{label(page, 11)}: no event `bot_said  seq 2`" in examples
    assert f"{label(page)}: no example of `pong`" in examples


# --- the embedding examples, run against a real server --------------------------------------


async def _run(*command: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run a client to completion; the bound only stops a hung example from hanging CI."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), WAIT_SECONDS)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        message = f"{command[0]} did not finish:\n{out.decode()}\n{err.decode()}"
        raise AssertionError(message) from None
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_python_embedding_example_creates_listens_and_talks(
    server: RunningServer, tmp_path: Path
) -> None:
    script = tmp_path / "fellowship_client.py"
    script.write_text(example("python", PYTHON_EXAMPLE).text)

    code, out, err = await _run(
        sys.executable, str(script), env={"FELLOWSHIP_URL": server.base_url}
    )

    assert code == 0, f"{out}\n{err}"
    lines = out.splitlines()
    # The mock answers "<bot> answers <last speaker>: <words>"; both questions, both bots.
    for question in ("Which should the office buy, coffee or tea?", "And for the night shift?"):
        assert f"[Dana] heard Alice: Alice answers Dana: {question}" in lines
    assert sum(line.startswith("[Dana] heard Bob: Bob answers Alice:") for line in lines) == 2
    assert sum(line.startswith("[audience] #") for line in lines) == 4
    assert "6 messages in the history" in lines
    assert lines[-1] == "[audience] session over: client_request"


_NODE_DRIVER = """
// --- test driver: create, watch, talk, drop the socket, talk again, end ---
const base = process.argv[2];
const until = async (check) => { while (!check()) await new Promise((r) => setTimeout(r, 10)); };
const session = await createSession(base, {
  bots: [{ name: "Alice" }, { name: "Bob" }],
  options: { participation: "reactive", replies_per_message: 2 },
});
const seen = [], heard = [];
watch(base, session.observer_token, (e) => seen.push(e));
const talker = new Talker(base, session.token, "Dana", (e) => heard.push(e));
talker.say("Coffee or tea?");
const turnEnds = () => heard.filter((e) => e.type === "turn_end").length;
await until(() => turnEnds() >= 2);
const dropped = talker.socket;
dropped.close(3001, "simulated drop");
await until(() => talker.socket !== dropped && talker.socket.readyState === WebSocket.OPEN);
talker.say("And at night?");
await until(() => turnEnds() >= 4);
await fetch(`${base}/v1/session/${session.token}`, { method: "DELETE" });
await until(() => talker.done && seen.some((e) => e.type === "session_end"));
console.log(JSON.stringify({ heard, seen }));
process.exit(0);
"""


@cache
def _node_command() -> list[str] | None:
    """`node` with the flags that give it the browser's WebSocket and EventSource."""
    node = shutil.which("node")
    if node is None:
        return None
    probe = "process.exit(typeof WebSocket + typeof EventSource === 'functionfunction' ? 0 : 1)"
    for flags in (
        ["--experimental-websocket", "--experimental-eventsource"],
        ["--experimental-eventsource"],
        [],
    ):
        command = [node, "--no-warnings", *flags]
        done = subprocess.run([*command, "-e", probe], capture_output=True, check=False)
        if done.returncode == 0:
            return command
    return None


async def test_javascript_embedding_example_resumes_with_since_after_a_drop(
    server: RunningServer, tmp_path: Path
) -> None:
    node = _node_command()
    if node is None:
        pytest.skip("needs Node.js with WebSocket and EventSource to run the JavaScript example")
    script = tmp_path / "client.mjs"
    script.write_text(example("js", JS_EXAMPLE).text + _NODE_DRIVER)

    code, out, err = await _run(*node, str(script), server.base_url)

    assert code == 0, f"{out}\n{err}"
    result: dict[str, list[dict[str, Any]]] = json.loads(out)
    heard, seen = result["heard"], result["seen"]
    # One history only: the reconnect asked for the missed events with `since`.
    assert [e["type"] for e in heard].count("history") == 1
    seqs = [e["seq"] for e in heard]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap or a repeat"
    assert [e["type"] for e in heard].count("member_joined") == 2  # two connections
    said = [(e["turn"], e["content"]) for e in heard if e["type"] == "bot_message"]
    assert len(said) == 4
    assert said == [(e["turn"], e["content"]) for e in seen if e["type"] == "bot_message"]
    assert seen[-1]["type"] == "session_end"
    assert seen[-1]["reason"] == "client_request"
