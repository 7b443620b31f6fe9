"""`fellowship mock-llm` as a separate process, spoken to over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
PROMPT = {
    "model": "demo",
    "messages": [
        {"role": "system", "content": "You are Carol."},
        {"role": "user", "content": "Dana: shall we start the debate now"},
    ],
}


def start_mock(*options: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "mock-llm", "--port", "0", *options],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first_line = process.stdout.readline()
    assert first_line.startswith("mock LLM listening on "), process.stderr and process.stderr.read()
    return process, first_line.rsplit(" ", 1)[1].strip()


@pytest.fixture
def mock_process() -> Iterator[str]:
    process, url = start_mock()
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_cli_mock_answers_a_whole_chat_completion(mock_process: str) -> None:
    response = httpx.post(mock_process + "/chat/completions", json=PROMPT)

    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == (
        "Carol answers Dana: shall we start the debate now"
    )
    assert body["usage"]["prompt_tokens"] == 10  # words in all messages


def test_cli_mock_streams_a_chat_completion(mock_process: str) -> None:
    request = {**PROMPT, "stream": True, "stream_options": {"include_usage": True}}
    events = []
    with httpx.stream("POST", mock_process + "/chat/completions", json=request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])

    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )
    assert text == "Carol answers Dana: shall we start the debate now"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_cli_mock_lists_its_model(mock_process: str) -> None:
    assert httpx.get(mock_process + "/models").json()["data"][0]["id"] == "mock"


def test_cli_fault_option_injects_the_fault() -> None:
    process, url = start_mock("--fault", "http_503:1", "--seed", "1")
    try:
        response = httpx.post(url + "/chat/completions", json=PROMPT)
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"


def test_cli_refuses_an_unknown_fault_with_the_known_ones() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "mock-llm", "--fault", "gremlins"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "unknown fault 'gremlins'" in result.stderr
    assert "endless_stream" in result.stderr
