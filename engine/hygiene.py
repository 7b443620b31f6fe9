"""Reply hygiene: turn a model's raw reply into the bot's message.

Models in a multi-character chat slip in predictable ways: they prefix their reply
with their own name (`Alice: ...`), carry on and write the next speaker's turn
(`...\nBob: ...`, or an invented `Dave: ...`), leak reasoning (`<think>...</think>`),
chat-template tokens (`<|im_end|>`) and the role words that follow them
(`<start_of_turn>model`), recite a system prompt, or repeat a sentence over and over.

Two layers:

- **Line rules**, applied the same way to a whole reply and to a stream (so `token`
  events never show what the stored message will not hold): reasoning and template
  tokens, role-word lines at the start, the own-name prefix, and the cut where
  someone else's turn begins. `StreamCleaner` applies them on the fly.
- **Whole-reply rules**, which need the complete text: a leading line that recites a
  system prompt is dropped, a sentence repeated inside the reply is kept once, and a
  reply cut short by `max_tokens` ends at its last whole sentence. `clean_reply`
  applies both layers; its `live` field is what the stream showed.

`find_repeat` tells whether a reply repeats a recent message. The rules are listed in
docs/prompts-and-context.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache
from typing import Final, Literal

from pydantic import BaseModel, Field

from engine.history import Message

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Template tokens that open a turn: they become a line break, so that the role word a
# template writes after them (`<|im_start|>user`) stands on a line of its own.
TURN_OPENERS = ("<|im_start|>", "<start_of_turn>", "<|start_header_id|>")

# Template tokens that leak as text when a backend's chat template or stop tokens are
# misconfigured. They are never part of what a bot meant to say.
TEMPLATE_ARTEFACTS = (
    "<|im_end|>",
    *TURN_OPENERS,
    "<|eot_id|>",
    "<|end_header_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
    "</s>",
    "<end_of_turn>",
    # Llama 2 / Mistral markup is plain text to their tokenizers, so no server strips it
    # when a model echoes it back (seen with small models behind `--chat-template llama2`).
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
)

# Role words chat templates put after a turn opener. At the start of a reply a line
# holding only one of them is the template's header for this very reply and is dropped;
# later it starts another turn and the reply is cut there. As a `Role:` prefix, the
# model's own roles are stripped like the bot's own name; the others are someone else.
ROLE_WORDS: Final = ("assistant", "model", "user", "system", "human")
SELF_ROLES: Final = ("assistant", "model")
OTHER_ROLES: Final = ("user", "system", "human")

# Capitalised words that often stand before a colon at a line start without naming a
# speaker; a `Name:` prefix made of one of them never cuts a reply (compared ignoring
# case, the whole name).
NOT_SPEAKERS: Final = frozenset((
    "a", "q", "note", "notes", "example", "examples", "answer", "question", "step", "tip",
    "tips", "summary", "update", "edit", "warning", "caution", "reason", "reasons",
    "option", "options", "pros", "cons", "ps", "p.s.", "important", "conclusion", "result",
    "results", "source", "sources", "hint", "fact", "idea", "problem", "solution",
    "response", "title", "topic", "goal", "plan", "task", "quote", "remember", "disclaimer",
    "bonus", "reminder", "recipe", "ingredients", "instructions", "definition", "context",
    "yes", "no", "sure", "well", "okay", "ok", "so", "also", "and", "but", "or", "first",
    "second", "third", "finally", "next", "then", "now", "today", "tomorrow", "yesterday",
    "breaking", "verdict", "translation", "meaning", "correction", "fun fact",
    "bottom line", "my take", "key point",
))  # fmt: skip

_TAGS = (THINK_OPEN, THINK_CLOSE, *TEMPLATE_ARTEFACTS)
# Characters a name prefix may carry around the name itself (spaces, markdown emphasis);
# ignored when deciding whether a line could still turn into a prefix.
_PREFIX_NOISE = re.compile(r"[\s*_]")
# Distinct (own, others) name sets compiled at once; the bound only stops growth.
_SPEAKER_CACHE_SIZE = 256
_RECITAL_CACHE_SIZE = 64

RECITAL_SIMILARITY = 0.8
"""Share of a line's words (in order) that must come from one sentence of a system prompt
for the line to be dropped as a recital."""
RECITAL_MIN_WORDS = 3
"""Shortest leading line, in words, that can count as a recital."""
DUPLICATE_SIMILARITY = 0.9
"""Similarity (difflib's ratio over words) from which a reply repeats a recent message."""
# A speaker's name, when nobody listed it: one to three words, each starting with a
# capital letter (checked in code, so that any alphabet works), at most this long.
_NAME_WORD = r"[^\W\d_][\w'\u2019.\-]*"
_ANY_NAME = rf"{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,2}}"
_MAX_NAME_WORDS = 3
_MAX_NAME_CHARS = 64
_NAME_CHARS = re.compile(r"[\w'\u2019.\-*_ \t]*")
_EMPHASIS = "*_"
# Where sentences end: punctuation, then closing quotes or brackets, then a blank.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]*_]*(?=\s|$)")
_SENTENCE_BREAK = re.compile(r"((?<=[.!?\u2026\"'\u201d\u2019)\]*_])[ \t]+|[ \t]*\n\s*)")
_WORD = re.compile(r"\w+")

Verdict = Literal["undecided", "keep", "cut", "strip", "drop"]
Prefix = Literal["yes", "no", "maybe"]


class CleanReply(BaseModel):
    """A model reply after hygiene."""

    content: str = Field(description="What the bot said, ready for the history.")
    reasoning: str = Field("", description="Reasoning text collected, for debug events only.")
    cut: bool = Field(False, description="Cut where the model began to speak as someone else.")
    stripped_prefix: bool = Field(False, description="A leading own-name prefix was removed.")
    live: str = Field(
        "", description="The content after the line rules only: what a stream showed."
    )
    role_lines: int = Field(0, description="Role-word lines dropped from the start.")
    recited: list[str] = Field(
        default_factory=list, description="Leading lines dropped as recitals of a system prompt."
    )
    repeated_sentences: int = Field(0, description="Repeats of a sentence removed.")
    trimmed: str = Field(
        "", description="Text after the last whole sentence, removed from a cut-short reply."
    )

    @property
    def rules(self) -> list[str]:
        """Names of the rules that changed the reply (for debug events)."""
        found = [
            ("role_lines", self.role_lines > 0),
            ("own_prefix", self.stripped_prefix),
            ("speaker_cut", self.cut),
            ("recital", bool(self.recited)),
            ("repeated_sentence", self.repeated_sentences > 0),
            ("sentence_end", bool(self.trimmed)),
        ]
        return [name for name, applied in found if applied]


@dataclass(frozen=True)
class Recitals:
    """The sentences of every system prompt a reply must not recite, ready to compare."""

    sentences: tuple[tuple[str, ...], ...]
    similarity: float
    min_words: int

    def recites(self, line: str) -> bool:
        """Whether `line` is a recital: every sentence of it nearly one of the prompts'.

        A sentence counts when at least `similarity` of its words appear, in order, in
        one prompt sentence; the line needs `min_words` words in all.
        """
        if len(_words(line)) < self.min_words:
            return False
        pieces = [_words(piece) for piece in _SENTENCE_BREAK.split(line)]
        sentences = [piece for piece in pieces if piece]
        return bool(sentences) and all(self._matches(words) for words in sentences)

    def _matches(self, words: list[str]) -> bool:
        for known in self.sentences:
            matcher = SequenceMatcher(None, words, known, autojunk=False)
            shared = sum(block.size for block in matcher.get_matching_blocks())
            if shared >= self.similarity * len(words):
                return True
        return False


@lru_cache(maxsize=_RECITAL_CACHE_SIZE)
def recitals_of(
    texts: tuple[str, ...],
    *,
    similarity: float = RECITAL_SIMILARITY,
    min_words: int = RECITAL_MIN_WORDS,
) -> Recitals:
    """`Recitals` for the given prompt texts (split into sentences once, then cached)."""
    sentences: list[tuple[str, ...]] = []
    for text in texts:
        for piece in _SENTENCE_BREAK.split(text):
            words = tuple(_words(piece))
            if words and words not in sentences:
                sentences.append(words)
    return Recitals(tuple(sentences), similarity, min_words)


def clean_reply(
    text: str,
    *,
    own_name: str,
    other_names: Sequence[str],
    reasoning: str = "",
    recitals: Recitals | None = None,
    cut_short: bool = False,
) -> CleanReply:
    """Clean one complete reply written by bot `own_name`.

    Line rules, in order: `<think>` blocks are moved to `reasoning` (an unclosed
    `<think>` runs to the end; a `</think>` with no opening makes everything before it
    reasoning); template artefacts are removed (turn openers become a line break); at
    the start, lines holding only a role word and `OwnName:` / `Assistant:` prefixes
    (any case, optional markdown emphasis) are stripped, repeatedly; the reply is cut
    before the first line that starts with someone else's `Name:` prefix (another
    participant, a role such as `User:`, or any capitalised name nobody listed) or that
    holds only a role word — when that is the first line, the content is empty.

    Whole-reply rules, when asked for: leading lines that recite one of `recitals` are
    dropped (and the line rules applied again to what follows); a sentence that comes
    again in the same reply is kept once; with `cut_short` (the backend stopped at
    `max_tokens`) and no cut, the reply ends at its last whole sentence, if it has one.
    Whitespace is trimmed. `reasoning` (the backend's `reasoning_content`) is kept in
    front of the collected think text.
    """
    scanner = _TagScanner()
    visible = scanner.feed(text) + scanner.finish()
    thoughts = [reasoning]
    if scanner.last_stray_close is not None:
        thoughts.append(visible[: scanner.last_stray_close])
        visible = visible[scanner.last_stray_close :]
    thoughts.extend(scanner.think_blocks)

    lines = _LineRules(own_name, other_names)
    live = lines.release(visible, final=True)
    content, recited, role_lines, stripped = live, [], lines.role_lines, lines.stripped
    cut = lines.cut
    while recitals is not None and content:
        first, newline, rest = content.partition("\n")
        if not recitals.recites(first):
            break
        recited.append(first.strip())
        again = _LineRules(own_name, other_names)
        content = again.release(rest, final=True) if newline else ""
        role_lines += again.role_lines
        stripped = stripped or again.stripped
        cut = cut or again.cut
    content, repeats = collapse_repeats(content)
    trimmed = ""
    if cut_short and not cut:
        content, trimmed = end_at_sentence(content)

    return CleanReply(
        content=content.strip(),
        reasoning="\n\n".join(part.strip() for part in thoughts if part.strip()),
        cut=cut,
        stripped_prefix=stripped,
        live=live,
        role_lines=role_lines,
        recited=recited,
        repeated_sentences=repeats,
        trimmed=trimmed,
    )


def collapse_repeats(text: str) -> tuple[str, int]:
    """`text` with every sentence that already came earlier in it removed; how many were.

    Sentences are compared by their words, ignoring case and punctuation; the first
    occurrence stays, with the text around it.
    """
    parts = _SENTENCE_BREAK.split(text)
    seen: set[tuple[str, ...]] = set()
    kept: list[str] = []
    removed = 0
    # parts alternate: sentence, separator, sentence, ...
    for index in range(0, len(parts), 2):
        sentence = parts[index]
        key = tuple(_words(sentence))
        if key and key in seen:
            removed += 1
            continue
        if key:
            seen.add(key)
        if kept and index > 0:
            kept.append(parts[index - 1])
        kept.append(sentence)
    if not removed:
        return text, 0
    return "".join(kept), removed


def end_at_sentence(text: str) -> tuple[str, str]:
    """`text` up to its last whole sentence, and what was cut off after it.

    Unchanged (nothing cut) when the text ends a sentence already or has no sentence
    end at all.
    """
    stripped = text.rstrip()
    ends = [match.end() for match in _SENTENCE_END.finditer(stripped)]
    if not ends or ends[-1] >= len(stripped):
        return text, ""
    return stripped[: ends[-1]], stripped[ends[-1] :].strip()


def find_repeat(
    content: str, recent: Sequence[Message], similarity: float = DUPLICATE_SIMILARITY
) -> Message | None:
    """The latest of `recent` that `content` repeats or nearly repeats, or None.

    Compared by words, ignoring case and punctuation; `similarity` (0 to 1) is the
    share of matching words (difflib's ratio) from which two texts count as the same.
    """
    words = _words(content)
    if not words:
        return None
    for message in reversed(recent):
        other = _words(message.content)
        if not other:
            continue
        if words == other:
            return message
        if SequenceMatcher(None, words, other, autojunk=False).ratio() >= similarity:
            return message
    return None


class StreamCleaner:
    """Streaming counterpart of the line rules of `clean_reply`, for `token` events.

    Feed the deltas in order; each call returns the text that is now safe to show.
    Text that might still turn out to be a name prefix, a role word, a tag or trailing
    whitespace is held back until the next delta decides it. The concatenation of every
    `feed` and the final `finish` equals `clean_reply(full).live`, with one exception: a
    stray `</think>` (no opening tag) cannot take back text already shown. The
    whole-reply rules may change the stored content further (the turn engine then
    tells members to replace what they were shown).
    """

    def __init__(self, own_name: str, other_names: Sequence[str]) -> None:
        self._tags = _TagScanner()
        self._lines = _LineRules(own_name, other_names)
        self._finished = False

    @property
    def cut(self) -> bool:
        """Whether the reply was cut where the model began to speak as someone else."""
        return self._lines.cut

    def feed(self, delta: str) -> str:
        """Take the next piece of the reply; return the text now safe to show."""
        if self._lines.cut or self._finished:
            return ""
        return self._lines.release(self._tags.feed(delta), final=False)

    def finish(self) -> str:
        """Signal the end of the reply; return whatever held-back text is content."""
        if self._lines.cut or self._finished:
            return ""
        self._finished = True
        return self._lines.release(self._tags.finish(), final=True)


class _LineRules:
    """The line rules over visible text (tags already removed), whole or in pieces."""

    def __init__(self, own_name: str, other_names: Sequence[str]) -> None:
        self._speakers = _speakers(own_name, tuple(other_names))
        self._pending = ""  # visible text not yet decided
        self._space = ""  # whitespace shown only once non-space text follows it
        self._leading = True  # still at the reply's start, where own prefixes are stripped
        self._line_start = False  # `_pending` begins a line (a later line may be a cut)
        self.cut = False
        self.stripped = False
        self.role_lines = 0

    def release(self, visible: str, *, final: bool) -> str:
        """Add `visible`; return the text now decided to be content."""
        if self.cut:
            return ""
        self._pending += visible
        shown: list[str] = []
        while self._pending and not self.cut:
            if self._leading:
                self._pending = self._pending.lstrip()
                if not self._pending:
                    break
                verdict, length = self._judge(final=final, leading=True)
                if verdict == "undecided":
                    break
                if verdict == "strip":
                    self._pending = self._pending[length:]
                    self.stripped = True
                    continue
                if verdict == "drop":
                    self._pending = self._pending[length:]
                    self.role_lines += 1
                    continue
                if verdict == "cut":
                    self._stop()
                    break
                self._leading = False
                continue
            if self._line_start:
                verdict, _ = self._judge(final=final, leading=False)
                if verdict == "undecided":
                    break
                if verdict == "cut":
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

    def _judge(self, *, final: bool, leading: bool) -> tuple[Verdict, int]:
        """What the line at the start of `_pending` is, and how much of it a verdict takes.

        Only decides once more text could not change the answer, so that any chunking
        of a stream gives the same result as the whole reply.
        """
        speakers, text = self._speakers, self._pending
        line, newline, _ = text.partition("\n")
        complete = final or bool(newline)
        keys = speakers.start_keys if leading else speakers.line_keys
        if not _decided(text, keys, final=final):
            return "undecided", 0
        if leading:
            if speakers.own is not None and (match := speakers.own.match(text)):
                return "strip", match.end()
            if speakers.others_start is not None and speakers.others_start.match(text):
                return "cut", 0
        elif speakers.others_line.match(text):
            return "cut", 0
        role = _role_line(line, complete=complete)
        if role == "maybe":
            return "undecided", 0
        if role == "yes":
            return ("drop", len(line) + len(newline)) if leading else ("cut", 0)
        prefix = _any_speaker_prefix(line, complete=complete, own=speakers.own_folded)
        if prefix == "maybe":
            return "undecided", 0
        if prefix == "yes":
            return "cut", 0
        return "keep", 0

    def _hold_space(self, chunk: str) -> str:
        text = self._space + chunk
        body = text.rstrip()
        self._space = text[len(body) :]
        return body

    def _stop(self) -> None:
        self.cut = True
        self._pending = ""
        self._space = ""


@dataclass(frozen=True)
class _Speakers:
    """Compiled name-prefix patterns for one bot and the others in its conversation."""

    own: re.Pattern[str] | None  # `OwnName:` or `Assistant:` at the start of the text
    others_start: re.Pattern[str] | None  # `OtherName:` or `User:` at the start
    others_line: re.Pattern[str]  # `OtherName:` or any role at the start of a later line
    start_keys: tuple[str, ...]  # squashed `name:` of everyone, for `_decided`
    line_keys: tuple[str, ...]  # squashed `name:` of the others and the roles
    own_folded: str  # the bot's own name, case-folded


@lru_cache(maxsize=_SPEAKER_CACHE_SIZE)
def _speakers(own_name: str, other_names: tuple[str, ...]) -> _Speakers:
    own = own_name.strip()
    # Longest first, so that "Al" never shadows "Alice" in an alternation.
    stripped = (name.strip() for name in other_names)
    others = sorted(
        {name for name in stripped if name and name.casefold() != own.casefold()},
        key=lambda name: (-len(name), name),
    )
    own_start = [own, *SELF_ROLES] if own else list(SELF_ROLES)
    others_start = _longest_first([*others, *OTHER_ROLES])
    others_line = _longest_first([*others, *ROLE_WORDS])
    return _Speakers(
        own=re.compile(_prefix_body(_longest_first(own_start)), re.IGNORECASE),
        others_start=re.compile(_prefix_body(others_start), re.IGNORECASE),
        others_line=re.compile(_prefix_body(others_line), re.IGNORECASE),
        start_keys=tuple(_squash(name) + ":" for name in [*own_start, *others_start]),
        line_keys=tuple(_squash(name) + ":" for name in others_line),
        own_folded=own.casefold(),
    )


def _longest_first(names: Sequence[str]) -> list[str]:
    return sorted(set(names), key=lambda name: (-len(name), name))


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


# The same shapes as `_prefix_body`, for a name nobody listed.
_ANY_PREFIX = re.compile(
    rf"^[ \t]*(?:(?P<em>\*{{1,2}}|_{{1,2}})[ \t]*(?P<inner>{_ANY_NAME})[ \t]*"
    rf"(?:(?P=em)[ \t]*:|:[ \t]*(?P=em))|(?P<plain>{_ANY_NAME})[ \t]*:)"
)


def _any_speaker_prefix(line: str, *, complete: bool, own: str) -> Prefix:
    """Whether `line` (one line, without its break) opens with an unlisted speaker's name.

    `Dave: text`: one to three capitalised words, a colon, and text after it on the same
    line. Not the bot's own name and not a word of `NOT_SPEAKERS`. "maybe" while the
    line could still become one (only when it is not `complete`).
    """
    match = _ANY_PREFIX.match(line)
    if match is not None:
        name = match.group("inner") or match.group("plain")
        if not _speaker_name(name, own):
            return "no"
        if line[match.end() :].strip():
            return "yes"
        return "no" if complete else "maybe"
    if complete:
        return "no"
    return "maybe" if _could_become_prefix(line) else "no"


def _speaker_name(name: str, own: str) -> bool:
    words = name.split()
    return (
        len(name) <= _MAX_NAME_CHARS
        and all(word[0].isupper() for word in words)
        and " ".join(words).casefold() not in NOT_SPEAKERS
        and " ".join(words).casefold() != own
    )


def _could_become_prefix(line: str) -> bool:
    """Whether more text could make `line` match `_ANY_PREFIX` with a speaker's name.

    An over-approximation is safe (the line is only held back a little longer); it must
    never say no to the beginning of a real prefix.
    """
    before, colon, after = line.partition(":")
    if colon and after.strip(" \t" + _EMPHASIS):
        return False  # text after the colon: `_ANY_PREFIX` has already decided
    if not _NAME_CHARS.fullmatch(before):
        return False
    words = [word.strip(_EMPHASIS) for word in before.split()]
    words = [word for word in words if word]
    return (
        len(words) <= _MAX_NAME_WORDS
        and len(" ".join(words)) <= _MAX_NAME_CHARS
        and all(word[0].isalpha() and word[0].isupper() for word in words)
    )


def _role_line(line: str, *, complete: bool) -> Prefix:
    """Whether `line` holds nothing but a role word ("maybe" while it could still)."""
    word = line.strip(" \t").casefold()
    if complete:
        return "yes" if word in ROLE_WORDS else "no"
    if any(role.startswith(word) for role in ROLE_WORDS):
        return "maybe"
    return "no"


def _squash(text: str) -> str:
    return _PREFIX_NOISE.sub("", text).lower()


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


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
            elif tag in TURN_OPENERS:
                visible.append("\n")
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
