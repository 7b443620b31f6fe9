"""Reply hygiene: turn a model's raw reply into the bot's message.

Models in a multi-character chat slip in predictable ways: they prefix their reply
with their own name (`Alice: ...`), carry on and write the next speaker's turn
(`...\\nBob: ...`), leak reasoning (`<think>...</think>`) or chat-template tokens
(`<|im_end|>`). `clean_reply` repairs a whole reply; `StreamCleaner` does the same on
the fly for `token` events. The rules are listed in docs/prompts-and-context.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from pydantic import BaseModel, Field

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Template tokens that leak as text when a backend's chat template or stop tokens are
# misconfigured. They are never part of what a bot meant to say.
TEMPLATE_ARTEFACTS = (
    "<|im_end|>",
    "<|im_start|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
    "</s>",
    "<end_of_turn>",
    "<start_of_turn>",
    # Llama 2 / Mistral markup is plain text to their tokenizers, so no server strips it
    # when a model echoes it back (seen with small models behind `--chat-template llama2`).
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
)

_TAGS = (THINK_OPEN, THINK_CLOSE, *TEMPLATE_ARTEFACTS)
# Characters a name prefix may carry around the name itself (spaces, markdown emphasis);
# ignored when deciding whether a line could still turn into a prefix.
_PREFIX_NOISE = re.compile(r"[\s*_]")
# Distinct (own, others) name sets compiled at once; the bound only stops growth.
_SPEAKER_CACHE_SIZE = 256


class CleanReply(BaseModel):
    """A model reply after hygiene."""

    content: str = Field(description="What the bot said, ready for the history.")
    reasoning: str = Field("", description="Reasoning text collected, for debug events only.")
    cut: bool = Field(False, description="Cut where the model began to speak as someone else.")
    stripped_prefix: bool = Field(False, description="A leading own-name prefix was removed.")


def clean_reply(
    text: str, *, own_name: str, other_names: Sequence[str], reasoning: str = ""
) -> CleanReply:
    """Clean one complete reply written by bot `own_name`.

    In order: `<think>` blocks are moved to `reasoning` (an unclosed `<think>` runs to
    the end; a `</think>` with no opening makes everything before it reasoning);
    template artefacts are removed; leading `OwnName:` prefixes (any case, optional
    markdown emphasis) are stripped, repeatedly; the reply is cut before the first line
    that starts with another participant's `Name:` prefix — when that is the very first
    line, the model is impersonating from the start and the content is empty; finally
    whitespace is trimmed. `reasoning` (the backend's `reasoning_content`) is kept in
    front of the collected think text.
    """
    speakers = _speakers(own_name, tuple(other_names))
    scanner = _TagScanner()
    visible = scanner.feed(text) + scanner.finish()
    thoughts = [reasoning]
    if scanner.last_stray_close is not None:
        thoughts.append(visible[: scanner.last_stray_close])
        visible = visible[scanner.last_stray_close :]
    thoughts.extend(scanner.think_blocks)

    content = visible.lstrip()
    stripped = False
    while speakers.own is not None and (match := speakers.own.match(content)):
        content = content[match.end() :].lstrip()
        stripped = True

    cut = False
    if speakers.others_line is not None and (match := speakers.others_line.search(content)):
        content = content[: match.start()]
        cut = True

    return CleanReply(
        content=content.strip(),
        reasoning="\n\n".join(part.strip() for part in thoughts if part.strip()),
        cut=cut,
        stripped_prefix=stripped,
    )


class StreamCleaner:
    """Streaming counterpart of `clean_reply`, for `token` events.

    Feed the deltas in order; each call returns the text that is now safe to show.
    Text that might still turn out to be a name prefix, a tag or trailing whitespace is
    held back until the next delta decides it. The concatenation of every `feed` and the
    final `finish` equals `clean_reply(full).content`, with one exception: a stray
    `</think>` (no opening tag) cannot take back text already shown.
    """

    def __init__(self, own_name: str, other_names: Sequence[str]) -> None:
        self._speakers = _speakers(own_name, tuple(other_names))
        self._tags = _TagScanner()
        self._pending = ""  # visible text not yet decided
        self._space = ""  # whitespace shown only once non-space text follows it
        self._leading = True  # still at the reply's start, where own prefixes are stripped
        self._line_start = False  # `_pending` begins a line (a later line may be a cut)
        self._cut = False
        self._finished = False

    @property
    def cut(self) -> bool:
        """Whether the reply was cut where the model began to speak as someone else."""
        return self._cut

    def feed(self, delta: str) -> str:
        """Take the next piece of the reply; return the text now safe to show."""
        if self._cut or self._finished:
            return ""
        return self._release(self._tags.feed(delta), final=False)

    def finish(self) -> str:
        """Signal the end of the reply; return whatever held-back text is content."""
        if self._cut or self._finished:
            return ""
        self._finished = True
        return self._release(self._tags.finish(), final=True)

    def _release(self, visible: str, *, final: bool) -> str:
        self._pending += visible
        shown: list[str] = []
        speakers = self._speakers
        while self._pending and not self._cut:
            if self._leading:
                self._pending = self._pending.lstrip()
                if not self._pending or not _decided(self._pending, speakers.all_keys, final=final):
                    break
                if speakers.own is not None and (match := speakers.own.match(self._pending)):
                    self._pending = self._pending[match.end() :]
                    continue
                if speakers.others_start is not None and speakers.others_start.match(self._pending):
                    self._stop()
                    break
                self._leading = False
                continue
            if self._line_start:
                if not _decided(self._pending, speakers.other_keys, final=final):
                    break
                if speakers.others_start is not None and speakers.others_start.match(self._pending):
                    self._stop()
                    break
                self._line_start = False
            newline = self._pending.find("\n")
            if newline < 0:
                chunk, self._pending = self._pending, ""
            else:
                chunk, self._pending = self._pending[: newline + 1], self._pending[newline + 1 :]
                self._line_start = True
            shown.append(self._hold_space(chunk))
        return "".join(shown)

    def _hold_space(self, chunk: str) -> str:
        text = self._space + chunk
        body = text.rstrip()
        self._space = text[len(body) :]
        return body

    def _stop(self) -> None:
        self._cut = True
        self._pending = ""
        self._space = ""


@dataclass(frozen=True)
class _Speakers:
    """Compiled name-prefix patterns for one bot and the others in its conversation."""

    own: re.Pattern[str] | None  # `OwnName:` at the start of the text
    others_start: re.Pattern[str] | None  # `OtherName:` at the start of the text
    others_line: re.Pattern[str] | None  # `OtherName:` at the start of any line
    all_keys: tuple[str, ...]  # squashed `name:` of everyone, for `_decided`
    other_keys: tuple[str, ...]  # squashed `name:` of the others


@lru_cache(maxsize=_SPEAKER_CACHE_SIZE)
def _speakers(own_name: str, other_names: tuple[str, ...]) -> _Speakers:
    own = own_name.strip()
    # Longest first, so that "Al" never shadows "Alice" in an alternation.
    stripped = (name.strip() for name in other_names)
    others = sorted(
        {name for name in stripped if name and name.casefold() != own.casefold()},
        key=lambda name: (-len(name), name),
    )
    own_keys = (_squash(own) + ":",) if own else ()
    other_keys = tuple(_squash(name) + ":" for name in others)
    other_body = _prefix_body(others) if others else None
    return _Speakers(
        own=re.compile(_prefix_body([own]), re.IGNORECASE) if own else None,
        others_start=re.compile(other_body, re.IGNORECASE) if other_body else None,
        others_line=re.compile(other_body, re.IGNORECASE | re.MULTILINE) if other_body else None,
        all_keys=own_keys + other_keys,
        other_keys=other_keys,
    )


def _prefix_body(names: Sequence[str]) -> str:
    """Regex for `Name:` at a line start, optionally in markdown emphasis.

    Accepts `Name:`, `**Name:**`, `**Name**:`, `*Name*:`, `__Name:__`, with spaces or
    tabs around the parts; never spans a line break.
    """
    alternatives = "|".join(re.escape(name) for name in names)
    return (
        rf"^[ \t]*(?:"
        rf"(?P<em>\*{{1,2}}|_{{1,2}})[ \t]*(?:{alternatives})[ \t]*"
        rf"(?:(?P=em)[ \t]*:|:[ \t]*(?P=em))"
        rf"|(?:{alternatives})[ \t]*:)"
    )


def _squash(text: str) -> str:
    return _PREFIX_NOISE.sub("", text).lower()


def _decided(text: str, keys: tuple[str, ...], *, final: bool) -> bool:
    """Whether the line at the start of `text` can no longer grow into a name prefix.

    True at the end of the reply, once the line is complete, or once its squashed form
    (no spaces or emphasis marks, lower case) is neither a prefix of any `name:` key nor
    equal to one: then a character after the colon is present and a prefix regex sees
    everything that can belong to the prefix.
    """
    if final:
        return True
    line, newline, _ = text.partition("\n")
    if newline:
        return True
    squashed = _squash(line)
    return not any(key.startswith(squashed) for key in keys)


class _TagScanner:
    """Splits raw model text into visible text and think blocks, dropping artefacts.

    Incremental: a possible partial tag at the end of the input is held back until the
    next piece (or `finish`) decides it, so any chunking gives the same result.
    """

    def __init__(self) -> None:
        self.think_blocks: list[str] = []
        # Offset in the visible output of the last `</think>` that had no opening tag.
        self.last_stray_close: int | None = None
        self._buffer = ""
        self._in_think = False
        self._thought: list[str] = []
        self._shown = 0

    def feed(self, text: str) -> str:
        """Take more raw text; return the visible text it completes."""
        self._buffer += text
        visible: list[str] = []
        while True:
            if self._in_think:
                end = self._buffer.find(THINK_CLOSE)
                if end < 0:
                    keep = _partial_tag_length(self._buffer, (THINK_CLOSE,))
                    self._thought.append(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                self._thought.append(self._buffer[:end])
                self._buffer = self._buffer[end + len(THINK_CLOSE) :]
                self._close_think()
                continue
            index, tag = _first_tag(self._buffer)
            if tag is None:
                keep = _partial_tag_length(self._buffer, _TAGS)
                visible.append(self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                break
            visible.append(self._buffer[:index])
            self._buffer = self._buffer[index + len(tag) :]
            if tag == THINK_OPEN:
                self._in_think = True
            elif tag == THINK_CLOSE:
                self.last_stray_close = self._shown + sum(len(piece) for piece in visible)
        shown = "".join(visible)
        self._shown += len(shown)
        return shown

    def finish(self) -> str:
        """End of input: an unclosed think block is reasoning; a partial tag is text."""
        rest, self._buffer = self._buffer, ""
        if self._in_think:
            self._thought.append(rest)
            self._close_think()
            return ""
        self._shown += len(rest)
        return rest

    def _close_think(self) -> None:
        self.think_blocks.append("".join(self._thought))
        self._thought = []
        self._in_think = False


def _first_tag(text: str) -> tuple[int, str | None]:
    """Index and text of the earliest tag in `text` (the longest one on a tie)."""
    best_index, best_tag = len(text), None
    for tag in _TAGS:
        index = text.find(tag)
        if index >= 0 and (
            index < best_index
            or (index == best_index and best_tag is not None and len(tag) > len(best_tag))
        ):
            best_index, best_tag = index, tag
    return best_index, best_tag


def _partial_tag_length(text: str, tags: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of one of `tags`."""
    longest = max(len(tag) for tag in tags) - 1
    firsts = {tag[0] for tag in tags}
    for start in range(max(0, len(text) - longest), len(text)):
        if text[start] not in firsts:
            continue
        tail = text[start:]
        if any(tag.startswith(tail) and tag != tail for tag in tags):
            return len(tail)
    return 0
