"""Tool calls read from real backend answers: `tool_calls` win over a legacy `function_call`.

The bodies below are what llama-cpp-python 0.3.36 (`--chat_format
chatml-function-calling`) sends, replayed through the real client over an
`httpx.MockTransport`. Its whole replies carry the call twice: in `tool_calls` and in a
legacy `function_call` whose name is the text of a *second* generation (a bogus
`end_session:`, or an empty name when that generation ended the turn). Streamed, every
delta repeats the call in both fields. Merging the two gave `select_speakerend_session:`
or doubled arguments; only `tool_calls` must be read, and `function_call` only when it
is all there is.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from engine.config import load_settings
from engine.llm.client import LLMClient
from engine.llm.types import ChatMessage, ChatRequest, ToolCall
from engine.orchestrator import Menu, read_reply

BASE_URL = "http://127.0.0.1:9/v1"
ARGUMENTS = '{ "bot_name": "Bob"}'
CALL_ID = "call__0_select_speaker_cmpl-5b1f0c"

# The whole reply quoted in issue 21: a correct tool call and a bogus legacy name.
WHOLE_WITH_BOGUS_LEGACY_NAME: dict[str, Any] = {
    "id": "chatcmpl-5b1f0c",
    "object": "chat.completion",
    "created": 1763900000,
    "model": "/root/.cache/fellowship/real/model.gguf",
    "choices": [
        {
            "finish_reason": "tool_calls",
            "index": 0,
            "logprobs": None,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": CALL_ID,
                        "type": "function",
                        "function": {"name": "select_speaker", "arguments": ARGUMENTS},
                    }
                ],
                "function_call": {"name": "end_session:", "arguments": ARGUMENTS},
            },
        }
    ],
    "usage": {"completion_tokens": 9, "prompt_tokens": 412, "total_tokens": 421},
}


def whole_with_legacy_name(name: str) -> dict[str, Any]:
    body = json.loads(json.dumps(WHOLE_WITH_BOGUS_LEGACY_NAME))
    body["choices"][0]["message"]["function_call"]["name"] = name
    return body


def legacy_only() -> dict[str, Any]:
    """An older server that only knows `function_call`."""
    body = json.loads(json.dumps(WHOLE_WITH_BOGUS_LEGACY_NAME))
    message = body["choices"][0]["message"]
    del message["tool_calls"]
    message["function_call"] = {"name": "select_speaker", "arguments": ARGUMENTS}
    return body


def streamed_chunks(fragments: list[str]) -> list[dict[str, Any]]:
    """llama-cpp-python's streamed tool call: each delta repeats it in both fields."""
    head = {"id": "chatcmpl-5b1f0c", "object": "chat.completion.chunk", "created": 1763900000}
    head["model"] = "/root/.cache/fellowship/real/model.gguf"
    chunks = [
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": None,
                    "logprobs": None,
                    "delta": {
                        "role": "assistant",
                        "content": None,
                        "function_call": None,
                        "tool_calls": None,
                    },
                }
            ],
        }
    ]
    for piece in fragments:
        call = {"name": "select_speaker", "arguments": piece}
        delta = {
            "role": None,
            "content": None,
            "function_call": call,
            "tool_calls": [{"index": 0, "id": CALL_ID, "type": "function", "function": call}],
        }
        chunks.append({**head, "choices": [{"index": 0, "finish_reason": None, "delta": delta}]})
    end = {"role": None, "content": None, "function_call": None, "tool_calls": None}
    chunks.append({**head, "choices": [{"index": 0, "finish_reason": "tool_calls", "delta": end}]})
    return chunks


def sse(chunks: list[dict[str, Any]]) -> bytes:
    lines = [f"data: {json.dumps(chunk)}\r\n\r\n" for chunk in chunks]
    return ("".join(lines) + "data: [DONE]\r\n\r\n").encode()


@pytest.fixture
def answers() -> list[httpx.Response]:
    return []


@pytest.fixture
async def client(answers: list[httpx.Response]) -> AsyncIterator[LLMClient]:
    def reply(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    settings = load_settings(_env_file=None, llm_base_url=BASE_URL, llm_retries=0)
    async with LLMClient(settings, transport=httpx.MockTransport(reply)) as llm:
        yield llm


async def ask(client: LLMClient, *, stream: bool = False) -> list[ToolCall]:
    request = ChatRequest(
        model="default", messages=[ChatMessage(role="user", content="Who next?")], stream=stream
    )
    completion = await client.chat(request, backend=client.default_backend)
    return completion.tool_calls


MENU = Menu(roster=["Alice", "Bob", "Carol"], hold=False, end=True)
SELECT_BOB = [ToolCall(id=CALL_ID, name="select_speaker", arguments=ARGUMENTS)]


@pytest.mark.parametrize("legacy_name", ["end_session:", "", "select_speaker"])
async def test_a_whole_reply_is_read_from_tool_calls_alone(
    client: LLMClient, answers: list[httpx.Response], legacy_name: str
) -> None:
    answers.append(httpx.Response(200, json=whole_with_legacy_name(legacy_name)))

    calls = await ask(client)

    assert calls == SELECT_BOB
    reading = read_reply("", calls, MENU)
    assert reading is not None
    assert (reading.bot, reading.rung) == ("Bob", "tool_call")


async def test_the_issue_answer_decides_at_the_tool_call_rung(
    client: LLMClient, answers: list[httpx.Response]
) -> None:
    answers.append(httpx.Response(200, json=WHOLE_WITH_BOGUS_LEGACY_NAME))

    reading = read_reply("", await ask(client), MENU)

    assert reading is not None
    assert (reading.action, reading.bot, reading.tool, reading.rung) == (
        "speak",
        "Bob",
        "select_speaker",
        "tool_call",
    )


async def test_a_legacy_function_call_alone_is_still_read(
    client: LLMClient, answers: list[httpx.Response]
) -> None:
    answers.append(httpx.Response(200, json=legacy_only()))

    calls = await ask(client)

    assert calls == [ToolCall(id="", name="select_speaker", arguments=ARGUMENTS)]


async def test_a_streamed_call_repeated_in_function_call_is_read_once(
    client: LLMClient, answers: list[httpx.Response]
) -> None:
    fragments = ['{ "bot', '_name": ', '"Bob"}']
    answers.append(
        httpx.Response(
            200,
            content=sse(streamed_chunks(fragments)),
            headers={"content-type": "text/event-stream"},
        )
    )

    calls = await ask(client, stream=True)

    assert calls == [ToolCall(id=CALL_ID, name="select_speaker", arguments='{ "bot_name": "Bob"}')]


async def test_a_streamed_legacy_function_call_alone_is_still_read(
    client: LLMClient, answers: list[httpx.Response]
) -> None:
    chunks = streamed_chunks(['{ "bot_name"', ': "Bob"}'])
    for chunk in chunks:
        delta = chunk["choices"][0]["delta"]
        delta["tool_calls"] = None
        if delta["function_call"] is not None and chunk is not chunks[1]:
            delta["function_call"]["name"] = None  # later fragments carry no name
    answers.append(
        httpx.Response(200, content=sse(chunks), headers={"content-type": "text/event-stream"})
    )

    calls = await ask(client, stream=True)

    assert calls == [ToolCall(id="", name="select_speaker", arguments=ARGUMENTS)]
