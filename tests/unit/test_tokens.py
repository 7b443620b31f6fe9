"""Offline token counting: shipped files, no network, tiktoken-identical results."""

from __future__ import annotations

import hashlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken

from engine import tokens
from engine.errors import TokenizerError
from engine.llm.types import ChatMessage
from engine.tokens import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    get_counter,
)

SAMPLES = [
    "",
    "hello world",
    "Alice: I'd argue espresso wins, hands down!\n\nBob: tea.",
    "Zoë's café — naïve façade, 東京, emoji 🎉 and numbers 1234567",
    "   leading and trailing spaces   \n\n\t",
    "<|endoftext|> typed by a user is plain text",
]

DOWNLOAD_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No sockets, an empty tiktoken cache and no cached counters."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError("network access attempted during an offline test")

    cache_dir = tmp_path / "tiktoken-cache"
    cache_dir.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    get_counter.cache_clear()
    yield cache_dir
    get_counter.cache_clear()


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_counting_works_with_no_network_and_an_empty_cache(offline: Path, name: str) -> None:
    counter = get_counter(name)

    assert counter.name == name
    assert counter.count("hello world") == 2
    # Nothing was written to tiktoken's cache either: the shipped file is read in place.
    assert list(offline.iterdir()) == []


def test_known_token_ids_match_the_published_encodings(offline: Path) -> None:
    # Reference ids of "hello world" as published for each encoding.
    assert get_counter("cl100k_base").encoding.encode("hello world") == [15339, 1917]
    assert get_counter("o200k_base").encoding.encode("hello world") == [24912, 2375]


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_encoding_is_identical_to_tiktokens_own(offline: Path, name: str) -> None:
    # tiktoken reads a cached file named by the sha1 of its download URL instead of
    # downloading: seed the empty cache with the shipped file to get tiktoken's encoding.
    cache_key = hashlib.sha1(DOWNLOAD_URLS[name].encode()).hexdigest()
    shutil.copyfile(tokens.TOKENIZER_DIR / f"{name}.tiktoken", offline / cache_key)
    reference = tiktoken.get_encoding(name)
    ours = get_counter(name).encoding

    assert ours._pat_str == reference._pat_str
    assert ours._special_tokens == reference._special_tokens
    for text in SAMPLES:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text)


def test_counting_is_deterministic_across_rebuilds(offline: Path) -> None:
    first = [get_counter("cl100k_base").count(text) for text in SAMPLES]
    get_counter.cache_clear()
    second = [get_counter("cl100k_base").count(text) for text in SAMPLES]

    assert first == second


def test_counter_is_built_once_per_encoding(offline: Path) -> None:
    assert get_counter("o200k_base") is get_counter("o200k_base")
    assert get_counter("o200k_base") is not get_counter("cl100k_base")


def test_the_two_encodings_count_differently(offline: Path) -> None:
    text = "東京の天気はどうですか? Zoë's naïve café."

    assert get_counter("cl100k_base").count(text) != get_counter("o200k_base").count(text)


def test_special_token_text_is_counted_as_plain_text(offline: Path) -> None:
    counter = get_counter("cl100k_base")

    assert counter.count("<|endoftext|>") > 1


def test_chat_count_adds_per_message_overhead_and_reply_priming(offline: Path) -> None:
    counter = get_counter("cl100k_base")
    messages = [
        ChatMessage(role="system", content="You are Alice."),
        ChatMessage(role="user", content="Bob: hello world"),
    ]
    content_and_roles = sum(counter.count(m.role) + counter.count(m.content) for m in messages)

    assert counter.count_chat(messages) == (
        content_and_roles + TOKENS_PER_MESSAGE * len(messages) + REPLY_PRIMING_TOKENS
    )
    assert counter.count_chat([]) == REPLY_PRIMING_TOKENS


def test_unknown_encoding_is_a_clear_error(offline: Path) -> None:
    with pytest.raises(TokenizerError, match="unknown tokenizer 'p50k_base'") as info:
        get_counter("p50k_base")

    assert info.value.code == "tokenizer_error"


def test_corrupt_tokenizer_file_is_refused(
    offline: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad_dir = tmp_path / "tokenizers"
    bad_dir.mkdir()
    original = (tokens.TOKENIZER_DIR / "cl100k_base.tiktoken").read_bytes()
    (bad_dir / "cl100k_base.tiktoken").write_bytes(original[:-10] + b"0000000000")
    monkeypatch.setattr(tokens, "TOKENIZER_DIR", bad_dir)

    with pytest.raises(TokenizerError, match="corrupt"):
        get_counter("cl100k_base")


def test_missing_tokenizer_file_is_a_clear_error(
    offline: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tokens, "TOKENIZER_DIR", tmp_path / "nowhere")

    with pytest.raises(TokenizerError, match="cannot be read"):
        get_counter("o200k_base")
