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
from engine.orchestrator.reading import read_reply
from engine.orchestrator.tools import Menu

BASE_URL = "http://127.0.0.1:9/v1"
ARGUMENTS = '{"bot_name": "Alice"}'
STREAM_ARGUMENTS = '{ "bot_name": "Alice"}'
CALL_ID = "call__0_select_speaker_cmpl-09b6856e-5d7c-46f7-9bc2-9c4f3e52560a"
STREAM_CALL_ID = "call__0_select_speaker_cmpl-0445af1e-7947-4066-be07-40f413ed3f96"

# Recorded verbatim from llama-cpp-python 0.3.36 (`tool_choice: auto`), the shape quoted
# in issue 21: a correct tool call and a legacy function_call with a bogus name.
WHOLE_WITH_BOGUS_LEGACY_NAME: dict[str, Any] = json.loads(
    '{"id":"chatcmpl-a56e4e4e-3661-47ba-bc3d-c249f8e0c21d","object":"chat.completion",'
    '"created":1796015101,"model":"x","choices":[{"index":0,"message":{"content":null,'
    '"tool_calls":[{"id":"call__0_select_speaker_cmpl-09b6856e-5d7c-46f7-9bc2-9c4f3e52560a",'
    '"type":"function","function":{"name":"select_speaker","arguments":"{\\"bot_name\\": '
    '\\"Alice\\"}"}}],"role":"assistant","function_call":{"name":"end_session:",'
    '"arguments":"{\\"bot_name\\": \\"Alice\\"}"}},"logprobs":null,'
    '"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":303,"completion_tokens":10,'
    '"total_tokens":313}}'
)

# Recorded verbatim from the same server, streamed (`tool_choice` naming select_speaker):
# every delta repeats the fragment in `function_call` and in `tool_calls`.
STREAMED = [
    '{"id": "chatcmpl-0445af1e-7947-4066-be07-40f413ed3f96", "object": '
    '"chat.completion.chunk", "created": 1796015108, "model": "x", "choices": [{"index": 0, '
    '"finish_reason": null, "logprobs": null, "delta": {"role": "assistant", "content": '
    'null, "function_call": null, "tool_calls": null}}]}',
    *(
        '{"id": "chatcmpl-0445af1e-7947-4066-be07-40f413ed3f96", "object": '
        '"chat.completion.chunk", "created": 1796015108, "model": "x", "choices": [{"index": '
        '0, "finish_reason": null, "logprobs": null, "delta": {"role": null, "content": null, '
        '"function_call": {"name": "select_speaker", "arguments": ' + piece + "}, "
        '"tool_calls": [{"index": 0, "id": '
        '"call__0_select_speaker_cmpl-0445af1e-7947-4066-be07-40f413ed3f96", "type": '
        '"function", "function": {"name": "select_speaker", "arguments": ' + piece + "}}]}}]}"
        for piece in (
            '"{"',
            '" \\""',
            '"bot"',
            '"_"',
            '"name"',
            '"\\":"',
            '" "',
            '"\\""',
            '"Alice"',
            '"\\""',
            '"}"',
            '""',
        )
    ),
    '{"id": "chatcmpl-0445af1e-7947-4066-be07-40f413ed3f96", "object": '
    '"chat.completion.chunk", "created": 1796015108, "model": "x", "choices": [{"index": 0, '
    '"finish_reason": "tool_calls", "logprobs": null, "delta": {"role": null, "content": '
    'null, "function_call": null, "tool_calls": null}}]}',
]


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


def streamed_chunks() -> list[dict[str, Any]]:
    return [json.loads(chunk) for chunk in STREAMED]


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
SELECT_ALICE = [ToolCall(id=CALL_ID, name="select_speaker", arguments=ARGUMENTS)]


@pytest.mark.parametrize("legacy_name", ["end_session:", "", "select_speaker"])
async def test_a_whole_reply_is_read_from_tool_calls_alone(
    client: LLMClient, answers: list[httpx.Response], legacy_name: str
) -> None:
    answers.append(httpx.Response(200, json=whole_with_legacy_name(legacy_name)))

    calls = await ask(client)

    assert calls == SELECT_ALICE
    reading = read_reply("", calls, MENU)
    assert reading is not None
    assert (reading.bot, reading.rung) == ("Alice", "tool_call")


async def test_the_issue_answer_decides_at_the_tool_call_rung(
    client: LLMClient, answers: list[httpx.Response]
) -> None:
    answers.append(httpx.Response(200, json=WHOLE_WITH_BOGUS_LEGACY_NAME))

    reading = read_reply("", await ask(client), MENU)

    assert reading is not None
    assert (reading.action, reading.bot, reading.tool, reading.rung) == (
        "speak",
        "Alice",
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
    answers.append(
        httpx.Response(
            200, content=sse(streamed_chunks()), headers={"content-type": "text/event-stream"}
        )
    )

    calls = await ask(client, stream=True)

    assert calls == [ToolCall(id=STREAM_CALL_ID, name="select_speaker", arguments=STREAM_ARGUMENTS)]
    reading = read_reply("", calls, MENU)
    assert reading is not None and (reading.bot, reading.rung) == ("Alice", "tool_call")


async def test_a_streamed_legacy_function_call_alone_is_still_read(
    client: LLMClient, answers: list[httpx.Response]
) -> None:
    chunks = streamed_chunks()
    for chunk in chunks:
        chunk["choices"][0]["delta"]["tool_calls"] = None
    answers.append(
        httpx.Response(200, content=sse(chunks), headers={"content-type": "text/event-stream"})
    )

    calls = await ask(client, stream=True)

    assert calls == [ToolCall(id="", name="select_speaker", arguments=STREAM_ARGUMENTS)]
