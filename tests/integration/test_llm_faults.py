"""The real LLM client against the real mock backend: faults, retries, typed errors."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import SecretStr

from engine.errors import (
    LLM_BAD_RESPONSE,
    LLM_CONNECTION,
    LLM_RATE_LIMITED,
    LLM_REJECTED,
    LLM_SERVER_ERROR,
    LLM_TIMEOUT,
    LLMError,
)
from engine.llm.client import LLMClient, RetryNotice
from engine.llm.mock import Fault, MockLLM, MockReply
from tests.integration.llm_fixtures import (
    EXPECTED_TEXT,
    RecordingSleep,
    TokenSink,
    chat_request,
    llm_client,
    llm_settings,
    settings,
    sleeper,
)

__all__ = ["llm_client", "settings", "sleeper"]  # fixtures used by name


SECRET = "sk-test-DO-NOT-LEAK-42"

# (fault, stream, code the call fails with when every attempt meets the fault)
RETRYABLE = [
    (Fault.HTTP_500, False, LLM_SERVER_ERROR),
    (Fault.HTTP_503, True, LLM_SERVER_ERROR),
    (Fault.HTTP_429, False, LLM_RATE_LIMITED),
    (Fault.DROP, False, LLM_CONNECTION),
    (Fault.DROP, True, LLM_CONNECTION),
    (Fault.CUT_STREAM, True, LLM_BAD_RESPONSE),
    (Fault.CUT_STREAM, False, LLM_CONNECTION),
    (Fault.MALFORMED_JSON, True, LLM_BAD_RESPONSE),
    (Fault.MALFORMED_JSON, False, LLM_BAD_RESPONSE),
    (Fault.EMPTY_CHOICES, True, LLM_BAD_RESPONSE),
    (Fault.EMPTY_CHOICES, False, LLM_BAD_RESPONSE),
    (Fault.ENDLESS_STREAM, True, LLM_TIMEOUT),
    (Fault.ENDLESS_STREAM, False, LLM_TIMEOUT),
]
IDS = [f"{fault.value}-{'stream' if stream else 'whole'}" for fault, stream, _ in RETRYABLE]


def short_timeout_client(
    mock: MockLLM, sleeper: RecordingSleep, *, timeout: float = 0.3, **overrides: object
) -> LLMClient:
    # Endless replies are only ever stopped by LLM_TIMEOUT; keep it short here.
    return LLMClient(llm_settings(mock.base_url, llm_timeout=timeout, **overrides), sleep=sleeper)


@pytest.mark.parametrize(("fault", "stream", "code"), RETRYABLE, ids=IDS)
async def test_one_faulty_attempt_is_retried_and_the_retry_succeeds(
    mock: MockLLM, sleeper: RecordingSleep, fault: Fault, stream: bool, code: str
) -> None:
    mock.enqueue(MockReply(fault=fault))
    # The retry has to succeed within LLM_TIMEOUT: room for a busy machine.
    async with short_timeout_client(mock, sleeper, timeout=1.0) as llm:
        completion = await llm.chat(chat_request(stream=stream), backend=llm.default_backend)

    assert completion.content == EXPECTED_TEXT
    assert completion.attempts == 2
    assert len(mock.requests) == 2


@pytest.mark.parametrize(("fault", "stream", "code"), RETRYABLE, ids=IDS)
async def test_a_fault_on_every_attempt_ends_in_one_typed_error(
    mock: MockLLM, sleeper: RecordingSleep, fault: Fault, stream: bool, code: str
) -> None:
    mock.set_faults([fault.value])
    async with short_timeout_client(mock, sleeper, llm_retries=2) as llm:
        with pytest.raises(LLMError) as caught:
            await llm.chat(chat_request(stream=stream), backend=llm.default_backend)

    error = caught.value
    assert error.code == code
    assert error.attempts == 3
    assert error.retryable
    assert "after 3 attempts" in error.message
    assert len(mock.requests) == 3
    assert error.__cause__ is None  # no raw httpx/json exception attached


@pytest.mark.parametrize(
    ("fault", "status"), [(Fault.HTTP_500, 500), (Fault.HTTP_503, 503), (Fault.HTTP_429, 429)]
)
async def test_http_errors_keep_status_and_the_backends_own_message(
    llm_client: LLMClient, mock: MockLLM, fault: Fault, status: int
) -> None:
    mock.set_faults([fault.value])

    with pytest.raises(LLMError) as caught:
        await llm_client.chat(chat_request(), backend=llm_client.default_backend)

    assert caught.value.status == status
    assert "mock: " in caught.value.message


async def test_retries_setting_sets_the_number_of_extra_tries(
    mock: MockLLM, sleeper: RecordingSleep
) -> None:
    mock.set_faults(["http_500"])
    async with LLMClient(llm_settings(mock.base_url, llm_retries=4), sleep=sleeper) as llm:
        with pytest.raises(LLMError) as caught:
            await llm.chat(chat_request(), backend=llm.default_backend)

    assert caught.value.attempts == 5
    assert len(mock.requests) == 5
    assert sleeper.delays == [0.25] * 4


async def test_zero_retries_means_a_single_try(mock: MockLLM, sleeper: RecordingSleep) -> None:
    mock.enqueue(MockReply(fault=Fault.HTTP_500))
    async with LLMClient(llm_settings(mock.base_url, llm_retries=0), sleep=sleeper) as llm:
        with pytest.raises(LLMError) as caught:
            await llm.chat(chat_request(), backend=llm.default_backend)

    assert caught.value.attempts == 1
    assert "after 1 attempt:" in caught.value.message
    assert sleeper.delays == []


async def test_retry_waits_the_configured_delay(
    llm_client: LLMClient, mock: MockLLM, sleeper: RecordingSleep
) -> None:
    mock.enqueue(MockReply(fault=Fault.HTTP_503))

    await llm_client.chat(chat_request(), backend=llm_client.default_backend)

    assert sleeper.delays == [0.25]


async def test_retry_after_seconds_from_the_backend_wins_over_the_delay(
    llm_client: LLMClient, mock: MockLLM, sleeper: RecordingSleep
) -> None:
    mock.enqueue(MockReply(fault=Fault.HTTP_429, retry_after="7"))

    completion = await llm_client.chat(chat_request(), backend=llm_client.default_backend)

    assert sleeper.delays == [7.0]
    assert completion.attempts == 2


async def test_http_429_fault_sends_a_retry_after_the_client_honours(
    llm_client: LLMClient, mock: MockLLM, sleeper: RecordingSleep
) -> None:
    mock.enqueue(MockReply(fault=Fault.HTTP_429))

    await llm_client.chat(chat_request(), backend=llm_client.default_backend)

    assert sleeper.delays == [1.0]


async def test_retry_after_is_capped_by_the_maximum(
    llm_client: LLMClient, mock: MockLLM, sleeper: RecordingSleep
) -> None:
    mock.enqueue(MockReply(fault=Fault.HTTP_503, retry_after="3600"))

    await llm_client.chat(chat_request(), backend=llm_client.default_backend)

    assert sleeper.delays == [30.0]


async def test_retry_after_as_http_date_is_honoured_and_capped(
    llm_client: LLMClient, mock: MockLLM, sleeper: RecordingSleep
) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    mock.enqueue(MockReply(fault=Fault.HTTP_429, retry_after=later))

    await llm_client.chat(chat_request(), backend=llm_client.default_backend)

    assert sleeper.delays == [30.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
async def test_client_errors_other_than_429_are_not_retried(
    llm_client: LLMClient, mock: MockLLM, sleeper: RecordingSleep, status: int
) -> None:
    mock.enqueue(MockReply(status=status, error_message="'foo' is not a known field"))

    with pytest.raises(LLMError) as caught:
        await llm_client.chat(chat_request(), backend=llm_client.default_backend)

    error = caught.value
    assert (error.code, error.status, error.attempts) == (LLM_REJECTED, status, 1)
    assert not error.retryable
    assert "'foo' is not a known field" in error.message
    assert len(mock.requests) == 1
    assert sleeper.delays == []


async def test_unreachable_backend_is_a_connection_error(sleeper: RecordingSleep) -> None:
    async with MockLLM() as gone:
        url = gone.base_url
    async with LLMClient(llm_settings(url), sleep=sleeper) as llm:
        with pytest.raises(LLMError) as caught:
            await llm.chat(chat_request(), backend=llm.default_backend)

    assert caught.value.code == LLM_CONNECTION
    assert caught.value.attempts == 2
    assert caught.value.status is None


async def test_slow_first_token_hits_the_read_timeout(
    mock: MockLLM, sleeper: RecordingSleep
) -> None:
    mock.set_handler(lambda request: MockReply(delay_ms=5000))
    settings = llm_settings(mock.base_url, llm_read_timeout=0.05, llm_retries=0)
    async with LLMClient(settings, sleep=sleeper) as llm:
        with pytest.raises(LLMError) as caught:
            await llm.chat(chat_request(stream=True), backend=llm.default_backend)

    assert caught.value.code == LLM_TIMEOUT
    assert "LLM_READ_TIMEOUT" in caught.value.message


async def test_silent_gap_in_a_stream_hits_the_idle_timeout(
    mock: MockLLM, sleeper: RecordingSleep
) -> None:
    mock.set_handler(lambda request: MockReply(token_ms=5000))
    settings = llm_settings(mock.base_url, llm_stream_idle_timeout=0.05, llm_retries=0)
    sink = TokenSink()
    async with LLMClient(settings, sleep=sleeper) as llm:
        with pytest.raises(LLMError) as caught:
            await llm.chat(chat_request(stream=True), backend=llm.default_backend, on_token=sink)

    assert caught.value.code == LLM_TIMEOUT
    assert "LLM_STREAM_IDLE_TIMEOUT" in caught.value.message
    assert sink.tokens == ["Alice "]  # the first token came, then silence


async def test_slow_on_token_callback_does_not_count_as_backend_silence(
    mock: MockLLM, sleeper: RecordingSleep
) -> None:
    import asyncio

    # The first token's callback takes twice the idle timeout. The idle timeout is long
    # enough that the backend's own gaps (it sends every token at once) never come near
    # it, even on a busy machine: only the callback's time could make the call fail.
    idle = 0.5
    settings = llm_settings(mock.base_url, llm_stream_idle_timeout=idle, llm_retries=0)
    tokens: list[str] = []

    async def slow_sink(token: str) -> None:
        if not tokens:
            await asyncio.sleep(2 * idle)
        tokens.append(token)

    async with LLMClient(settings, sleep=sleeper) as llm:
        completion = await llm.chat(
            chat_request(stream=True), backend=llm.default_backend, on_token=slow_sink
        )

    assert completion.content == EXPECTED_TEXT == "".join(tokens)


async def test_endless_stream_is_abandoned_and_the_mock_does_not_leak(
    mock: MockLLM, sleeper: RecordingSleep
) -> None:
    mock.set_faults(["endless_stream"])
    async with short_timeout_client(mock, sleeper, llm_retries=0) as llm:
        with pytest.raises(LLMError) as caught:
            await llm.chat(chat_request(stream=True), backend=llm.default_backend)
        assert "LLM_TIMEOUT" in caught.value.message

    await mock.wait_idle()
    assert mock.active_responses == 0


async def test_on_retry_hears_each_failed_attempt_and_whether_tokens_were_streamed(
    llm_client: LLMClient, mock: MockLLM
) -> None:
    mock.enqueue(MockReply(fault=Fault.CUT_STREAM), MockReply(fault=Fault.HTTP_503))
    notices: list[RetryNotice] = []

    async def on_retry(notice: RetryNotice) -> None:
        notices.append(notice)

    settings = llm_settings(mock.base_url, llm_retries=2)
    async with LLMClient(settings, sleep=RecordingSleep()) as llm:
        sink = TokenSink()
        completion = await llm.chat(
            chat_request(stream=True),
            backend=llm.default_backend,
            on_token=sink,
            on_retry=on_retry,
        )

    assert [(n.attempt, n.code, n.status, n.streamed) for n in notices] == [
        (1, LLM_BAD_RESPONSE, None, True),
        (2, LLM_SERVER_ERROR, 503, False),
    ]
    assert completion.attempts == 3
    assert sink.text.endswith(EXPECTED_TEXT)  # the cut attempt's tokens came first


async def test_api_key_never_appears_in_errors_or_logs(
    mock: MockLLM, sleeper: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A backend that echoes the key it was sent, as some do in auth errors.
    mock.set_handler(
        lambda request: MockReply(
            status=503, error_message=f"overloaded; your key {request.authorization} is fine"
        )
    )
    session_key = SecretStr(SECRET + "-session")
    async with LLMClient(llm_settings(mock.base_url, llm_api_key=SECRET), sleep=sleeper) as llm:
        errors = []
        for backend in (llm.default_backend, llm.resolve_backend(mock.base_url, session_key)):
            with pytest.raises(LLMError) as caught:
                await llm.chat(chat_request(), backend=backend, queue_key="session-1")
            errors.append(caught.value)
        mock.set_handler(lambda request: MockReply(status=401, error_message=f"bad key {SECRET}"))
        with pytest.raises(LLMError) as caught:
            await llm.chat(chat_request(), backend=llm.default_backend)
        errors.append(caught.value)

    assert mock.requests[0].authorization == f"Bearer {SECRET}"
    for error in errors:
        assert SECRET not in str(error)
        assert SECRET not in repr(error.args)
    assert "overloaded" in str(errors[0])
    assert any(record.levelno == logging.WARNING for record in caplog.records)
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in record.getMessage()


async def test_retry_warnings_carry_the_session_and_no_prompt_text(
    llm_client: LLMClient, mock: MockLLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    mock.enqueue(MockReply(fault=Fault.HTTP_500))

    await llm_client.chat(chat_request(), backend=llm_client.default_backend, queue_key="s-123")

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].session == "s-123"  # type: ignore[attr-defined]
    assert "espresso" not in caplog.text and "Tea is far better" not in caplog.text


async def test_global_fault_rate_is_seeded_and_repeatable(sleeper: RecordingSleep) -> None:
    outcomes = []
    for _ in range(2):
        async with MockLLM(faults=["http_500:0.5"], seed=7) as server:
            settings = llm_settings(server.base_url, llm_retries=0)
            async with LLMClient(settings, sleep=sleeper) as llm:
                run = []
                for _ in range(12):
                    try:
                        await llm.chat(chat_request(), backend=llm.default_backend)
                        run.append("ok")
                    except LLMError:
                        run.append("fail")
            outcomes.append(run)

    assert outcomes[0] == outcomes[1]
    assert "ok" in outcomes[0] and "fail" in outcomes[0]
