"""Chat templates that refuse loose layouts: Fellowship's prompts must always pass.

Llama 2, Mistral and Gemma templates accept one system message at most and demand
user/assistant alternation starting with user. Two kinds of server are tried:

- `llama-server --jinja` with a template (tests/real/templates) that raises on any
  slip, as the Jinja templates shipped with those models do; a control test proves it
  does reject a second system message and a broken alternation;
- `llama-server --no-jinja --chat-template NAME` with llama.cpp's built-in `llama2`,
  `gemma` and `mistral-v1` layouts (those names are only known to the non-Jinja path;
  with `--jinja` the text would be taken as a template of its own).

No stored reply may hold template tokens or the role words templates write after them.
A template that does not work must be reported (`backend_template_mismatch`): with
`--jinja --chat-template gemma` the server's template is the word "gemma" and the
model sees next to nothing of the prompt; under `mistral-v1` every reply is empty.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.real.conftest import (
    CAST,
    TEMPLATE_MISMATCH,
    TEST_TIMEOUT,
    EngineFactory,
    Finished,
    RealBackend,
    check_calls,
    check_clean_replies,
    check_coherent,
    check_no_mismatch,
    check_streamed_tokens,
    describe,
    expect_every_turn_answered,
    real_spec,
    run_session,
    start_llama_server,
)

pytestmark = [pytest.mark.real, pytest.mark.timeout(TEST_TIMEOUT)]

TURNS = 9
MISMATCH_TURNS = 4
ORDER = [name for name, _ in CAST]
BUILTIN_TEMPLATES = ["llama2", "gemma", "mistral-v1"]


@pytest.fixture(scope="module", params=BUILTIN_TEMPLATES)
def builtin_template_server(request: pytest.FixtureRequest) -> Iterator[RealBackend]:
    name = str(request.param)
    backend = start_llama_server(f"llama-server-{name}", "--no-jinja", "--chat-template", name)
    yield backend
    backend.stop()


def _chat(backend: RealBackend, messages: list[dict[str, str]]) -> httpx.Response:
    return httpx.post(
        f"{backend.base_url}/chat/completions",
        json={"model": "default", "messages": messages, "max_tokens": 4, "temperature": 0},
        timeout=60,
    )


def test_the_strict_template_really_rejects_loose_layouts(strict_server: RealBackend) -> None:
    system = {"role": "system", "content": "Be brief."}
    hello = {"role": "user", "content": "Hello"}
    assert _chat(strict_server, [system, hello]).status_code == 200
    second_system = _chat(strict_server, [system, {"role": "system", "content": "More."}, hello])
    assert second_system.status_code >= 400
    two_users = _chat(strict_server, [system, hello, {"role": "user", "content": "Again"}])
    assert two_users.status_code >= 400
    # (A last assistant message would be taken as a prefix to continue, not templated.)
    assistant_first = _chat(strict_server, [system, {"role": "assistant", "content": "Hi"}, hello])
    assert assistant_first.status_code >= 400


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_round_robin_passes_a_template_that_rejects_any_layout_slip(
    strict_server: RealBackend, engine_factory: EngineFactory, stream: bool
) -> None:
    engine = await engine_factory(strict_server)
    finished = await run_session(engine, real_spec(max_turns=TURNS, stream_tokens=stream))
    describe(finished, strict_server, "strict_template", stream=stream)
    check_calls(finished.calls, TURNS)
    check_coherent(finished, TURNS, ORDER)
    if stream:
        check_streamed_tokens(finished)
    check_clean_replies(finished)
    check_no_mismatch(finished)
    expect_every_turn_answered(finished)


async def test_round_robin_passes_llama_cpp_builtin_strict_templates(
    builtin_template_server: RealBackend, engine_factory: EngineFactory
) -> None:
    engine = await engine_factory(builtin_template_server)
    finished = await run_session(engine, real_spec(max_turns=TURNS))
    describe(finished, builtin_template_server, "builtin_template", stream=False)
    check_calls(finished.calls, TURNS)
    check_coherent(finished, TURNS, ORDER)
    # The model was trained on ChatML, not these layouts: it may say nothing at all under
    # them (a tombstone, which is right), so only what was recorded is checked.
    check_clean_replies(finished)
    if builtin_template_server.name.endswith("mistral-v1"):
        # Every reply comes back empty: the user is told, once, what to try.
        check_mismatch_reported(finished, "replies in a row were empty")


@pytest.fixture(scope="module")
def literal_template_server() -> Iterator[RealBackend]:
    """`--jinja --chat-template gemma`: the word "gemma" becomes the whole template."""
    backend = start_llama_server("llama-server-jinja-gemma", "--jinja", "--chat-template", "gemma")
    yield backend
    backend.stop()


async def test_a_template_that_drops_the_prompt_is_reported_once(
    literal_template_server: RealBackend, engine_factory: EngineFactory
) -> None:
    engine = await engine_factory(literal_template_server)
    finished = await run_session(engine, real_spec(max_turns=MISMATCH_TURNS))
    describe(finished, literal_template_server, "literal_template", stream=False)
    check_calls(finished.calls, MISMATCH_TURNS)
    check_coherent(finished, MISMATCH_TURNS, ORDER)
    # The server counts a few tokens where the prompt has hundreds.
    short = [c for c in finished.calls if c.prompt_tokens is not None]
    assert short and all(c.prompt_tokens * 4 < c.estimated_prompt_tokens for c in short)
    check_mismatch_reported(finished, "prompt tokens where Fellowship estimates")


def check_mismatch_reported(finished: Finished, seen: str) -> None:
    """One `backend_template_mismatch` error, saying what was seen, also in status."""
    mismatches = [e for e in finished.of_type("error") if e.code == TEMPLATE_MISMATCH]
    assert len(mismatches) == 1, finished.of_type("error")
    assert seen in mismatches[0].message and "--jinja" in mismatches[0].message
    status = finished.watcher.manager.status(finished.handle)
    assert [w for w in status.warnings if w.startswith(TEMPLATE_MISMATCH)]
