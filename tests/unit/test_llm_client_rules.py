"""Pure rules of the LLM client: SSRF guard, backend resolution, payload, Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from engine.config import Settings, load_settings
from engine.errors import LLM_HOST_NOT_ALLOWED, BackendNotAllowed, LLMError
from engine.llm.attempts import parse_retry_after
from engine.llm.client import Backend, LLMClient
from engine.llm.payload import build_payload
from engine.llm.types import ChatMessage, ChatRequest, ToolDefinition, ToolFunction
from engine.llm.url_guard import check_backend_url
from engine.logs import secret_filter


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "llm_base_url": "http://127.0.0.1:8080/v1/",
        "llm_api_key": "sk-default-key-123",
        "allowed_llm_hosts": "127.0.0.1,LocalHost,::1,llm.internal",
        "llm_max_tokens_field": "max_tokens",
        "llm_stream_include_usage": True,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:11434/v1",
        "https://llm.internal/v1",
        "http://LOCALHOST:1234/v1/",
        "http://[::1]:8000/v1",
        "HTTP://llm.INTERNAL:9000/v1",
    ],
)
def test_allowed_hosts_pass_the_guard_case_insensitively(url: str) -> None:
    assert check_backend_url(url, make_settings()) == url.strip().rstrip("/")


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://127.0.0.1@evil.example/v1", "evil.example"),
        ("http://llm.internal.evil.example/v1", "llm.internal.evil.example"),
        ("https://10.0.0.5:8080/v1", "10.0.0.5"),
    ],
)
def test_hosts_not_listed_are_refused_naming_the_host(url: str, named: str) -> None:
    with pytest.raises(BackendNotAllowed) as caught:
        check_backend_url(url, make_settings())

    assert caught.value.code == LLM_HOST_NOT_ALLOWED
    assert named in caught.value.message


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/v1", "127.0.0.1:8080/v1", "http:///v1", ""]
)
def test_urls_without_http_scheme_or_host_are_refused(url: str) -> None:
    with pytest.raises(BackendNotAllowed):
        check_backend_url(url, make_settings())


def test_a_malformed_port_is_refused() -> None:
    with pytest.raises(BackendNotAllowed, match="not a valid URL"):
        check_backend_url("http://127.0.0.1:99999999/v1", make_settings())


def test_refusal_never_names_a_key_put_in_the_url() -> None:
    with pytest.raises(BackendNotAllowed) as caught:
        check_backend_url("http://user:sk-secret-in-url@evil.example/v1", make_settings())

    assert "sk-secret-in-url" not in str(caught.value)


def test_default_backend_is_always_allowed_and_uses_the_default_key() -> None:
    client = LLMClient(make_settings(allowed_llm_hosts=""))

    backend = client.resolve_backend(None, None)

    assert backend.base_url == "http://127.0.0.1:8080/v1"
    assert backend.api_key is not None
    assert backend.api_key.get_secret_value() == "sk-default-key-123"


def test_a_session_key_without_a_url_replaces_the_default_key() -> None:
    client = LLMClient(make_settings())

    backend = client.resolve_backend(None, SecretStr("sk-session"))

    assert backend.api_key is not None and backend.api_key.get_secret_value() == "sk-session"


def test_an_override_url_never_receives_the_default_key() -> None:
    client = LLMClient(make_settings())

    backend = client.resolve_backend("http://llm.internal/v1", None)

    assert backend.api_key is None


def test_override_url_goes_through_the_guard() -> None:
    client = LLMClient(make_settings())

    with pytest.raises(BackendNotAllowed):
        client.resolve_backend("http://evil.example/v1", SecretStr("sk-x"))


def test_an_empty_key_means_no_key() -> None:
    client = LLMClient(make_settings(llm_api_key=""))

    assert client.default_backend.api_key is None


def test_making_a_client_leaves_the_global_log_filter_alone() -> None:
    # The server registers LLM_API_KEY when it sets up logging; a constructor must not.
    LLMClient(make_settings(llm_api_key="plain-key-only-this-test-uses"))

    assert secret_filter.redact("plain-key-only-this-test-uses") == "plain-key-only-this-test-uses"


def test_display_url_drops_credentials_and_query() -> None:
    backend = Backend(base_url="http://user:pw@127.0.0.1:8080/v1?key=sk-abc#x")

    assert backend.display_url == "http://127.0.0.1:8080/v1"


def test_backend_repr_hides_the_key() -> None:
    backend = Backend(base_url="http://127.0.0.1/v1", api_key=SecretStr("sk-very-secret"))

    assert "sk-very-secret" not in repr(backend)


def request(**fields: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=[ChatMessage(role="user", content="hello")], **fields)


def test_payload_holds_only_fields_that_are_set() -> None:
    assert build_payload(request(), make_settings()) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
    }


def test_payload_of_a_full_request() -> None:
    tool = ToolDefinition(function=ToolFunction(name="hold", description="Wait."))
    payload = build_payload(
        request(
            temperature=0.0,
            max_tokens=5,
            stop=["\nA:", "\nB:"],
            tools=[tool],
            tool_choice="auto",
            stream=True,
        ),
        make_settings(),
    )

    assert payload == {
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
        "max_tokens": 5,
        "stop": ["\nA:", "\nB:"],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "hold",
                    "description": "Wait.",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ],
        "tool_choice": "auto",
    }


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("  2.5 ", 2.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    header: str | None, seconds: float | None
) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)

    assert parse_retry_after(header, now=now) == seconds


def test_llm_error_knows_whether_its_kind_is_retryable() -> None:
    assert LLMError("x", code="llm_timeout").retryable
    assert not LLMError("x", code="llm_rejected", status=400).retryable
