"""Autonomous round robin against real servers: clean replies, coherent history.

Three bots, nine turns, a fixed sampling seed, streamed and not, on llama.cpp's `llama-server`
(with `--jinja`, so the model's own ChatML template from the GGUF) and on
llama-cpp-python's server.
"""

from __future__ import annotations

import pytest

from tests.real.conftest import (
    CAST,
    TEST_TIMEOUT,
    EngineFactory,
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
)

pytestmark = [pytest.mark.real, pytest.mark.timeout(TEST_TIMEOUT)]

TURNS = 9
ORDER = [name for name, _ in CAST]


async def _round_robin(backend: RealBackend, engine_factory: EngineFactory, stream: bool) -> None:
    engine = await engine_factory(backend)
    finished = await run_session(engine, real_spec(max_turns=TURNS, stream_tokens=stream))
    describe(finished, backend, "round_robin", stream=stream)
    assert {c.purpose for c in finished.calls} == {"bot"}
    check_calls(finished.calls, TURNS)
    check_coherent(finished, TURNS, ORDER)
    if stream:
        check_streamed_tokens(finished)
    check_clean_replies(finished)
    check_no_mismatch(finished)
    expect_every_turn_answered(finished)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_round_robin_on_llama_server_gives_nine_clean_coherent_replies(
    llama_server: RealBackend, engine_factory: EngineFactory, stream: bool
) -> None:
    await _round_robin(llama_server, engine_factory, stream)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_round_robin_on_llama_cpp_python_gives_nine_clean_coherent_replies(
    python_server: RealBackend, engine_factory: EngineFactory, stream: bool
) -> None:
    await _round_robin(python_server, engine_factory, stream)
