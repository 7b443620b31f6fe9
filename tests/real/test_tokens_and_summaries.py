"""Token accounting against a real tokenizer, and summarization within a small limit.

Fellowship counts tokens offline with tiktoken; the model's own tokenizer and chat
template differ. The servers' `usage` is the ground truth here: a summarizing session
must never send a prompt longer than its `max_context_tokens` as the server counts it,
and the ratio between the two counts is logged for the docs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from engine.llm.client import LLMClient
from engine.llm.types import ChatMessage, ChatRequest
from engine.tokens import get_counter
from tests.real.conftest import (
    REPORT,
    TEST_TIMEOUT,
    EngineFactory,
    RealBackend,
    check_clean_replies,
    describe,
    real_settings,
    real_spec,
    run_session,
)

pytestmark = [pytest.mark.real, pytest.mark.timeout(TEST_TIMEOUT)]

CONTEXT_LIMIT = 400
SUMMARY_TURNS = 15
# Beyond this factor the two counts disagree too much for the docs' advice to hold.
RATIO_BOUNDS = (0.5, 2.0)


class Sample(BaseModel):
    """One prompt counted both ways."""

    estimate: int = Field(description="tiktoken's count of the whole chat prompt.")
    server: int | None = Field(description="The server's usage.prompt_tokens, if reported.")
    content_only: int = Field(description="tiktoken's count of the user text alone.")


SAMPLES = {
    "chat": "Alice: I'm baking sourdough on Saturday morning, then a walk by the harbour.",
    "prose": (
        "The committee met on Tuesday to review the budget. After a long discussion, "
        "members agreed to postpone the decision until the auditors had reported."
    ),
    "code": "def area(r: float) -> float:\n    return 3.14159 * r ** 2  # circle\n",
    "numbers": "Order 4471-B: 12 x 0.75 kg at 3.20 EUR/kg, total 28.80 EUR, due 2026-11-30.",
    "german": "Am Samstag backe ich Brot und gehe danach mit dem Hund am Hafen spazieren.",
}


async def test_summarizing_session_never_sends_a_prompt_over_its_limit_by_the_servers_count(
    llama_server: RealBackend, engine_factory: EngineFactory
) -> None:
    engine = await engine_factory(llama_server)
    finished = await run_session(
        engine,
        real_spec(
            max_turns=SUMMARY_TURNS, max_context_tokens=CONTEXT_LIMIT, summarize_context=True
        ),
    )
    summaries = [e.data for e in finished.of_type("debug") if e.category == "summarization"]
    over = [c for c in finished.calls if (c.prompt_tokens or 0) > CONTEXT_LIMIT]
    describe(
        finished,
        llama_server,
        "summarization",
        stream=False,
        limit=CONTEXT_LIMIT,
        summarizations=len(summaries),
        largest_prompt=max((c.prompt_tokens or 0) for c in finished.calls),
        largest_estimate=max(c.estimated_prompt_tokens for c in finished.calls),
        over_limit=[(c.purpose, c.prompt_tokens, c.estimated_prompt_tokens) for c in over],
    )
    assert summaries, "the context never reached the summarizing threshold"
    assert [e.reason for e in finished.of_type("session_end")] == ["max_turns"]
    assert {c.purpose for c in finished.calls} == {"bot", "summary"}
    assert all(c.prompt_tokens is not None for c in finished.calls)
    assert over == []
    check_clean_replies(finished)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_tiktoken_estimate_and_server_usage_agree_within_a_factor_of_two(
    llama_server: RealBackend, python_server: RealBackend, tmp_path: Path, stream: bool
) -> None:
    results: dict[str, Sample] = {}
    for backend in (llama_server, python_server):
        settings = real_settings(tmp_path, backend)
        counter = get_counter(settings.tokenizer)
        async with LLMClient(settings) as client:
            for label, text in SAMPLES.items():
                messages = [
                    ChatMessage(role="system", content="You are Bob. Be brief."),
                    ChatMessage(role="user", content=text),
                ]
                request = ChatRequest(
                    model="default", messages=messages, max_tokens=8, temperature=0, stream=stream
                )
                completion = await client.chat(request, backend=client.default_backend)
                usage = completion.usage
                estimate = counter.count_chat(messages)
                results[f"{backend.name}/{label}"] = Sample(
                    estimate=estimate,
                    server=usage.prompt_tokens if usage else None,
                    content_only=counter.count(text),
                )
    REPORT.add_session(
        test="token_counts",
        stream=stream,
        samples={key: sample.model_dump() for key, sample in results.items()},
    )
    missing = [key for key, sample in results.items() if sample.server is None]
    if stream:
        # Not every server reports usage in a stream; record which did.
        REPORT.add_session(test="stream_usage", missing=missing)
        assert not [key for key in missing if key.startswith(llama_server.name)]
    else:
        assert missing == []
    for key, sample in results.items():
        if sample.server is not None:
            ratio = sample.server / sample.estimate
            assert RATIO_BOUNDS[0] < ratio < RATIO_BOUNDS[1], (key, sample)
