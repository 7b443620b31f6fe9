"""The real LLM client against the real mock backend on loopback: success paths."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from engine.llm.client import LLMClient
from engine.llm.mock import Fault, MockLLM, MockReply
from engine.llm.types import ToolCall
from tests.integration.llm_fixtures import (
    EXPECTED_TEXT,
    ROSTER,
    RecordingSleep,
    TokenSink,
    chat_request,
    llm_client,
    llm_settings,
    select_speaker_tool,
    settings,
    sleeper,
)

__all__ = ["llm_client", "settings", "sleeper"]  # fixtures used by name


async def test_whole_reply_carries_default_text_usage_model_and_one_attempt(
    llm_client: LLMClient, mock: MockLLM
) -> None:
    completion = await llm_client.chat(chat_request(), backend=llm_client.default_backend)

    assert completion.content == EXPECTED_TEXT
    assert completion.finish_reason == "stop"
    assert completion.model == "test-model"
    assert completion.attempts == 1
    assert completion.latency_ms > 0
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(EXPECTED_TEXT.split())
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert len(mock.requests) == 1


async def test_streamed_reply_hands_each_piece_to_on_token_in_order(
    llm_client: LLMClient, mock: MockLLM
) -> None:
    sink = TokenSink()

    completion = await llm_client.chat(
        chat_request(stream=True), backend=llm_client.default_backend, on_token=sink
    )

    assert completion.content == EXPECTED_TEXT
    assert sink.text == EXPECTED_TEXT
    assert len(sink.tokens) == len(EXPECTED_TEXT.split())
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert mock.requests[0].stream is True


async def test_a_server_that_ignores_stream_still_gives_the_reply_and_one_token(
    llm_client: LLMClient, mock: MockLLM
) -> None:
    mock.enqueue(MockReply(ignore_stream=True))
    sink = TokenSink()

    completion = await llm_client.chat(
        chat_request(stream=True), backend=llm_client.default_backend, on_token=sink
    )

    assert completion.content == EXPECTED_TEXT
    assert sink.tokens == [EXPECTED_TEXT]


async def test_unset_fields_are_not_sent(llm_client: LLMClient, mock: MockLLM) -> None:
    await llm_client.chat(chat_request(), backend=llm_client.default_backend)

    body = mock.requests[0].body
    assert set(body) == {"model", "messages"}
    assert mock.requests[0].authorization is None


async def test_stream_request_asks_for_usage_in_the_stream(
    llm_client: LLMClient, mock: MockLLM
) -> None:
    await llm_client.chat(chat_request(stream=True), backend=llm_client.default_backend)

    body = mock.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert mock.requests[0].headers["accept"] == "text/event-stream"


async def test_set_fields_are_sent_as_given(llm_client: LLMClient, mock: MockLLM) -> None:
    request = chat_request(
        temperature=0.0,
        max_tokens=64,
        stop=["\nBob:", "\nCarol:"],
        tools=[select_speaker_tool()],
        tool_choice="required",
    )

    await llm_client.chat(request, backend=llm_client.default_backend)

    body = mock.requests[0].body
    assert body["temperature"] == 0.0
    assert body["max_tokens"] == 64
    assert body["stop"] == ["\nBob:", "\nCarol:"]
    assert body["tool_choice"] == "required"
    assert body["tools"][0]["function"]["name"] == "select_speaker"
    assert body["tools"][0]["function"]["parameters"]["properties"]["bot_name"]["enum"] == ROSTER


async def test_max_tokens_field_is_renamed_by_settings(
    mock: MockLLM, sleeper: RecordingSleep
) -> None:
    settings = llm_settings(mock.base_url, llm_max_tokens_field="max_completion_tokens")
    async with LLMClient(settings, sleep=sleeper) as llm:
        await llm.chat(chat_request(max_tokens=10), backend=llm.default_backend)

    body = mock.requests[0].body
    assert body["max_completion_tokens"] == 10
    assert "max_tokens" not in body


async def test_tool_choice_is_left_out_when_no_tools_are_offered(
    llm_client: LLMClient, mock: MockLLM
) -> None:
    await llm_client.chat(chat_request(tool_choice="auto"), backend=llm_client.default_backend)

    assert "tool_choice" not in mock.requests[0].body


async def test_stream_without_usage_setting_does_not_ask_for_usage(
    mock: MockLLM, sleeper: RecordingSleep
) -> None:
    settings = llm_settings(mock.base_url, llm_stream_include_usage=False)
    async with LLMClient(settings, sleep=sleeper) as llm:
        completion = await llm.chat(chat_request(stream=True), backend=llm.default_backend)

    assert "stream_options" not in mock.requests[0].body
    assert completion.usage is None
    assert completion.content == EXPECTED_TEXT


async def test_bearer_key_is_sent_only_when_set(mock: MockLLM, sleeper: RecordingSleep) -> None:
    settings = llm_settings(mock.base_url, llm_api_key="sk-local-abcdef")
    async with LLMClient(settings, sleep=sleeper) as llm:
        await llm.chat(chat_request(), backend=llm.default_backend)
        other = llm.resolve_backend(mock.base_url, None)
        await llm.chat(chat_request(), backend=other)
        keyed = llm.resolve_backend(mock.base_url, SecretStr("sk-session-123456"))
        await llm.chat(chat_request(), backend=keyed)

    assert [request.authorization for request in mock.requests] == [
        "Bearer sk-local-abcdef",
        None,  # an override never receives the server's own key
        "Bearer sk-session-123456",
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_select_speaker_default_cycles_through_the_roster(
    llm_client: LLMClient, stream: bool
) -> None:
    request = chat_request(stream=stream, tools=[select_speaker_tool()], tool_choice="required")
    picks = []
    for _ in range(4):
        completion = await llm_client.chat(request, backend=llm_client.default_backend)
        assert completion.finish_reason == "tool_calls"
        assert [call.name for call in completion.tool_calls] == ["select_speaker"]
        picks.append(json.loads(completion.tool_calls[0].arguments)["bot_name"])

    assert picks == ["Alice", "Bob", "Carol", "Alice"]


@pytest.mark.parametrize("chunk_chars", [1, 3, 5])
async def test_streamed_tool_call_is_assembled_from_argument_fragments(
    llm_client: LLMClient, mock: MockLLM, chunk_chars: int
) -> None:
    calls = [
        ToolCall(id="call_a", name="select_speaker", arguments='{"bot_name": "Carol"}'),
        ToolCall(id="call_b", name="end_session", arguments='{"reason": "goal reached"}'),
    ]
    mock.enqueue(MockReply(tool_calls=calls, chunk_chars=chunk_chars))

    completion = await llm_client.chat(
        chat_request(stream=True, tools=[select_speaker_tool()]), backend=llm_client.default_backend
    )

    assert completion.tool_calls == calls
    assert completion.finish_reason == "tool_calls"


async def test_streamed_tool_call_sent_whole_in_one_delta_is_read(
    llm_client: LLMClient, mock: MockLLM
) -> None:
    mock.enqueue(
        MockReply.tool("select_speaker", bot_name="Bob").model_copy(
            update={"whole_tool_calls": True}
        )
    )

    completion = await llm_client.chat(
        chat_request(stream=True, tools=[select_speaker_tool()]), backend=llm_client.default_backend
    )

    assert len(completion.tool_calls) == 1
    assert json.loads(completion.tool_calls[0].arguments) == {"bot_name": "Bob"}


async def test_whole_reply_tool_call_is_read(llm_client: LLMClient, mock: MockLLM) -> None:
    mock.enqueue(MockReply.tool("end_session", reason="done"))

    completion = await llm_client.chat(
        chat_request(tools=[select_speaker_tool()]), backend=llm_client.default_backend
    )

    assert [(c.name, json.loads(c.arguments)) for c in completion.tool_calls] == [
        ("end_session", {"reason": "done"})
    ]
    assert completion.content == ""


@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 4, 7, 11])
async def test_think_block_never_reaches_tokens_even_when_tags_are_cut(
    llm_client: LLMClient, mock: MockLLM, chunk_chars: int
) -> None:
    mock.enqueue(MockReply(fault=Fault.THINK, chunk_chars=chunk_chars))
    sink = TokenSink()

    completion = await llm_client.chat(
        chat_request(stream=True), backend=llm_client.default_backend, on_token=sink
    )

    assert completion.content == EXPECTED_TEXT
    assert sink.text == EXPECTED_TEXT
    assert completion.reasoning == "Alice weighs what Bob said."
    assert "<" not in sink.text


async def test_think_block_is_moved_out_of_a_whole_reply(
    llm_client: LLMClient, mock: MockLLM
) -> None:
    mock.enqueue(MockReply(fault=Fault.THINK))

    completion = await llm_client.chat(chat_request(), backend=llm_client.default_backend)

    assert completion.content == EXPECTED_TEXT
    assert completion.reasoning == "Alice weighs what Bob said."


@pytest.mark.parametrize("stream", [False, True])
async def test_reasoning_content_goes_to_reasoning_and_not_to_tokens(
    llm_client: LLMClient, mock: MockLLM, stream: bool
) -> None:
    mock.enqueue(MockReply(fault=Fault.REASONING))
    sink = TokenSink()

    completion = await llm_client.chat(
        chat_request(stream=stream), backend=llm_client.default_backend, on_token=sink
    )

    assert completion.content == EXPECTED_TEXT
    assert completion.reasoning == "Alice weighs what Bob said."
    assert "weighs" not in sink.text


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.NAME_PREFIX, f"Bob: {EXPECTED_TEXT}"),
        (Fault.OWN_NAME_PREFIX, f"Alice: {EXPECTED_TEXT}"),
        (Fault.IMPERSONATE, f"{EXPECTED_TEXT}\nBob: I agree with Alice completely."),
    ],
)
async def test_text_faults_reach_the_caller_verbatim_for_reply_hygiene(
    llm_client: LLMClient, mock: MockLLM, fault: Fault, expected: str
) -> None:
    mock.enqueue(MockReply(fault=fault))

    completion = await llm_client.chat(
        chat_request(stream=True, stop=["\nBob:"]), backend=llm_client.default_backend
    )

    assert completion.content == expected


async def test_default_reply_honours_stop_sequences(llm_client: LLMClient) -> None:
    completion = await llm_client.chat(
        chat_request(stop=[" coffee"]), backend=llm_client.default_backend
    )

    assert completion.content == "Alice answers Bob: Tea is far better than"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("fault", "content", "arguments"),
    [
        (Fault.TOOL_VALID, "", {"bot_name": "Alice"}),
        (Fault.TOOL_WRONG_CASE, "", {"bot_name": "ALICE!"}),
        (Fault.TOOL_TEXT_NAME, "I think Alice should speak next.", None),
        (
            Fault.TOOL_JSON_TEXT,
            '{"name": "select_speaker", "arguments": {"bot_name": "Alice"}}',
            None,
        ),
    ],
)
async def test_tool_faults_arrive_as_the_model_wrote_them(
    llm_client: LLMClient,
    mock: MockLLM,
    stream: bool,
    fault: Fault,
    content: str,
    arguments: dict[str, str] | None,
) -> None:
    mock.enqueue(MockReply(fault=fault))

    completion = await llm_client.chat(
        chat_request(stream=stream, tools=[select_speaker_tool()]),
        backend=llm_client.default_backend,
    )

    assert completion.content == content
    if arguments is None:
        assert completion.tool_calls == []
    else:
        assert json.loads(completion.tool_calls[0].arguments) == arguments


async def test_tool_garbage_gives_unparseable_arguments_and_no_name(
    llm_client: LLMClient, mock: MockLLM
) -> None:
    mock.enqueue(MockReply(fault=Fault.TOOL_GARBAGE))

    completion = await llm_client.chat(
        chat_request(stream=True, tools=[select_speaker_tool()]), backend=llm_client.default_backend
    )

    assert completion.tool_calls[0].name == "select_speaker"
    with pytest.raises(json.JSONDecodeError):
        json.loads(completion.tool_calls[0].arguments)
    assert not any(name.lower() in completion.content.lower() for name in ROSTER)


async def test_connections_are_reused_across_calls(llm_client: LLMClient, mock: MockLLM) -> None:
    for stream in (False, True, False, True):
        await llm_client.chat(chat_request(stream=stream), backend=llm_client.default_backend)

    assert mock.open_connections == 1


async def test_models_listing_names_the_mock_model(mock: MockLLM) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        response = await http.get(mock.base_url + "/models")

    assert response.json()["data"][0]["id"] == "mock"


async def test_mock_rejects_a_body_that_is_not_a_chat_request(mock: MockLLM) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        response = await http.post(mock.base_url + "/chat/completions", content=b"{nope")

    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]
    assert mock.requests == []


async def test_mock_answers_unknown_routes_with_a_json_404(mock: MockLLM) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        missing = await http.get(mock.base_url + "/embeddings")
        health = await http.get(mock.base_url.removesuffix("/v1") + "/health")

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == 404
    assert health.json() == {"status": "ok"}
