"""Fixtures and helpers for tests of the LLM client against the mock backend.

Import the fixtures you use into a test module
(`from tests.integration.llm_fixtures import llm_client, ...`); the `mock` backend
fixture comes from the package conftest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.config import Settings, load_settings
from engine.llm.client import LLMClient
from engine.llm.mock import MockLLM
from engine.llm.types import ChatMessage, ChatRequest, ToolDefinition, ToolFunction

SYSTEM = (
    "You are in a friendly panel. Keep it short.\n\n"
    "You are Alice. Reply as Alice only, in your own voice.\n\n"
    "You love espresso."
)
LAST = "Bob: Tea is far better than coffee, and here is why it matters"
EXPECTED_TEXT = "Alice answers Bob: Tea is far better than coffee, and here"
ROSTER = ["Alice", "Bob", "Carol"]


class RecordingSleep:
    """Stands in for asyncio.sleep: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def llm_settings(base_url: str, **overrides: Any) -> Settings:
    """Settings for a client pointed at `base_url`, with test-friendly retry values."""
    values: dict[str, Any] = {
        "llm_base_url": base_url,
        "llm_api_key": "",
        "llm_retries": 1,
        "llm_retry_delay": 0.25,
        "llm_max_retry_after": 30.0,
        "llm_max_concurrency": 4,
        "llm_timeout": 30.0,
        "llm_read_timeout": 30.0,
        "llm_stream_idle_timeout": 30.0,
        "llm_stream_include_usage": True,
        "llm_max_tokens_field": "max_tokens",
    }
    values.update(overrides)
    return load_settings(**values)


def chat_request(*, stream: bool = False, **fields: Any) -> ChatRequest:
    """A bot-turn request whose default mock reply is `EXPECTED_TEXT`."""
    messages = [ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=LAST)]
    return ChatRequest(model="test-model", messages=messages, stream=stream, **fields)


def select_speaker_tool(roster: list[str] | None = None) -> ToolDefinition:
    """The orchestrator's `select_speaker` tool over `roster`."""
    return ToolDefinition(
        function=ToolFunction(
            name="select_speaker",
            description="Choose who speaks next.",
            parameters={
                "type": "object",
                "properties": {"bot_name": {"type": "string", "enum": roster or ROSTER}},
                "required": ["bot_name"],
            },
        )
    )


class TokenSink:
    """An `on_token` callback that keeps what it receives."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def __call__(self, token: str) -> None:
        self.tokens.append(token)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@pytest.fixture
def sleeper() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def settings(mock: MockLLM) -> Settings:
    return llm_settings(mock.base_url)


@pytest.fixture
async def llm_client(settings: Settings, sleeper: RecordingSleep) -> AsyncIterator[LLMClient]:
    async with LLMClient(settings, sleep=sleeper) as llm:
        yield llm
