"""Offline token counting with tiktoken.

tiktoken normally downloads its BPE files on first use. Fellowship ships the two
files it supports in `engine/tokenizers/` and builds the encodings from them, so
counting never touches the network (air-gapped hosts, local backends). Each file is
checked against the SHA-256 that tiktoken itself pins before it is trusted.
"""

from __future__ import annotations

import base64
import hashlib
import types
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args

import tiktoken
from tiktoken_ext import openai_public

from engine.errors import TokenizerError
from engine.llm.types import ChatMessage

EncodingName = Literal["cl100k_base", "o200k_base"]

TOKENIZER_DIR = Path(__file__).parent / "tokenizers"

# Pinned by tiktoken_ext.openai_public for the same files; a mismatch means a corrupt or
# substituted file, which would silently miscount every message.
ENCODING_SHA256: dict[str, str] = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}

# OpenAI's cookbook ("How to count tokens with tiktoken") counts chat prompts this way:
# each message is wrapped as <|start|>{role}<|message|>{content}<|end|>, which costs three
# tokens besides the role and the content ...
TOKENS_PER_MESSAGE = 3
# ... and every reply is primed with <|start|>assistant<|message|>, three more tokens.
REPLY_PRIMING_TOKENS = 3


class TokenCounter:
    """Counts tokens of text and of chat prompts for one encoding."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._encoding = encoding

    @property
    def name(self) -> str:
        """The encoding's name, e.g. `cl100k_base`."""
        return str(self._encoding.name)

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The underlying tiktoken encoding (for callers that need token ids)."""
        return self._encoding

    def count(self, text: str) -> int:
        """Number of tokens in `text`.

        Special-token spellings such as `<|endoftext|>` in user text are counted as
        ordinary text: a message must never be able to make counting fail.
        """
        return len(self._encoding.encode_ordinary(text))

    def count_chat(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens a chat-completions prompt costs, wrapper and reply priming included."""
        total = REPLY_PRIMING_TOKENS
        for message in messages:
            total += TOKENS_PER_MESSAGE + self.count(message.role) + self.count(message.content)
        return total


@cache
def get_counter(name: str) -> TokenCounter:
    """The counter for encoding `name` (`cl100k_base` or `o200k_base`), built once.

    Raises `TokenizerError` for an unknown name or a missing or corrupt file.
    """
    if name not in get_args(EncodingName):
        known = ", ".join(get_args(EncodingName))
        raise TokenizerError(f"unknown tokenizer {name!r} (known: {known})")
    ranks = _load_ranks(name)
    return TokenCounter(tiktoken.Encoding(**_encoding_params(name, ranks)))


def _load_ranks(name: str) -> dict[bytes, int]:
    """Read and verify the shipped BPE file of `name`.

    Parsed here rather than by `tiktoken.load.load_tiktoken_bpe`, which would also copy
    the file into tiktoken's cache directory (and fail if that directory is read-only).
    """
    path = TOKENIZER_DIR / f"{name}.tiktoken"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"tokenizer file {path} cannot be read: {exc.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != ENCODING_SHA256[name]:
        raise TokenizerError(
            f"tokenizer file {path} is corrupt: sha256 {digest}, expected {ENCODING_SHA256[name]}"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _encoding_params(name: str, ranks: dict[bytes, int]) -> dict[str, Any]:
    """tiktoken's own constructor output for `name` (pattern, special tokens), offline.

    The constructors in `tiktoken_ext.openai_public` fetch their file through the module
    global `load_tiktoken_bpe`. Calling a copy of the constructor whose globals map that
    name to the verified local ranks keeps tiktoken's exact pattern and special tokens
    without a download, and without patching the shared module.
    """

    def local_ranks(_url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        if expected_hash != ENCODING_SHA256[name]:
            raise TokenizerError(
                f"installed tiktoken pins a different {name} file ({expected_hash}) "
                "than the one Fellowship ships"
            )
        return ranks

    constructor = openai_public.ENCODING_CONSTRUCTORS[name]
    offline: Callable[[], dict[str, Any]] = types.FunctionType(
        constructor.__code__, {**constructor.__globals__, "load_tiktoken_bpe": local_ranks}
    )
    return offline()
