"""Pieces of reply decoding shared by the streaming and non-streaming paths.

- `ThinkSplitter` separates `<think>…</think>` reasoning from reply text incrementally,
  so that a streamed reply can be passed on token by token without ever leaking
  reasoning, even when a tag is cut across chunks (`<thi` + `nk>`).
- `split_think` does the same for a whole text.
- `ToolCallAssembler` rebuilds tool calls from streamed fragments (by index) or from
  whole calls.
- `sse_data` extracts the payload of one Server-Sent Events line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.llm.backend_replies import WireToolCall
from engine.llm.types import ToolCall

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def _partial_tag_suffix(text: str) -> int:
    """Length of the longest suffix of `text` that could be the start of a think tag."""
    longest = max(len(THINK_OPEN), len(THINK_CLOSE)) - 1
    for size in range(min(longest, len(text)), 0, -1):
        tail = text[-size:]
        if THINK_OPEN.startswith(tail) or THINK_CLOSE.startswith(tail):
            return size
    return 0


class ThinkSplitter:
    """Splits a stream of text into reply content and `<think>` reasoning.

    Feed chunks in order with `feed`; each call returns the `(content, reasoning)` that
    can be released now. Text that might be the start of a tag is held back until the
    next chunk decides it. Call `flush` at the end. Whitespace before the first visible
    content is dropped (models put a blank line after `</think>`). A stray `</think>`
    with no opening tag is dropped too.
    """

    def __init__(self) -> None:
        self._in_think = False
        self._thought = False
        self._held = ""
        self._content_started = False

    def feed(self, text: str) -> tuple[str, str]:
        """Consume one chunk; return the content and reasoning it releases."""
        buffer = self._held + text
        self._held = ""
        content: list[str] = []
        reasoning: list[str] = []
        while buffer:
            if self._in_think:
                end = buffer.find(THINK_CLOSE)
                if end >= 0:
                    reasoning.append(buffer[:end])
                    buffer = buffer[end + len(THINK_CLOSE) :]
                    self._in_think = False
                    continue
            else:
                start, close = buffer.find(THINK_OPEN), buffer.find(THINK_CLOSE)
                if close >= 0 and (start < 0 or close < start):
                    # A stray closing tag becomes a space, so that the text on its two
                    # sides can never join into a new tag ("<" + "</think>" + "think>").
                    content.append(buffer[:close] + " ")
                    buffer = buffer[close + len(THINK_CLOSE) :]
                    continue
                if start >= 0:
                    content.append(buffer[:start])
                    buffer = buffer[start + len(THINK_OPEN) :]
                    if self._thought:
                        reasoning.append("\n")  # keep separate blocks apart
                    self._in_think = self._thought = True
                    continue
            held = _partial_tag_suffix(buffer)
            released = buffer[: len(buffer) - held]
            self._held = buffer[len(buffer) - held :]
            (reasoning if self._in_think else content).append(released)
            break
        return self._visible("".join(content)), "".join(reasoning)

    def flush(self) -> tuple[str, str]:
        """Release whatever is held back at the end of the stream."""
        held, self._held = self._held, ""
        if self._in_think:
            return "", held
        return self._visible(held), ""

    def _visible(self, content: str) -> str:
        if not self._content_started:
            content = content.lstrip()
            self._content_started = bool(content)
        return content


def split_think(text: str) -> tuple[str, str]:
    """Split a whole reply into `(content, reasoning)`.

    Besides `<think>…</think>` blocks anywhere, a reply that starts with reasoning whose
    opening tag was put in the prompt by the chat template (`…</think>answer`) is
    recognised: everything before that first closing tag is reasoning.
    """
    close, start = text.find(THINK_CLOSE), text.find(THINK_OPEN)
    leading = ""
    if close >= 0 and (start < 0 or close < start):
        leading, text = text[:close], text[close + len(THINK_CLOSE) :]
    splitter = ThinkSplitter()
    content, reasoning = splitter.feed(text)
    tail_content, tail_reasoning = splitter.flush()
    reasoning_parts = [part.strip() for part in (leading, reasoning + tail_reasoning) if part]
    return content + tail_content, "\n".join(part for part in reasoning_parts if part)


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Rebuilds tool calls from streamed deltas, whole calls, or a mix of both.

    Fragments are matched by `index`; a backend that omits the index gets one call per
    new `id` (fragments without either continue the last call).

    A legacy `function_call` is collected apart and used only when the reply carries no
    `tool_calls` at all: some servers send both, the legacy one with a different (even
    bogus) name, and merging the two would corrupt the real call (llama-cpp-python's
    `chatml-function-calling` answered `select_speaker` in `tool_calls` beside a
    `function_call` named `end_session:`).
    """

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}
        self._last: int | None = None
        self._legacy: _PartialCall | None = None

    def add(self, fragment: WireToolCall) -> None:
        """Merge one fragment (or whole call) into the calls being built."""
        slot = self._slot_for(fragment)
        call = self._calls.setdefault(slot, _PartialCall())
        self._last = slot
        if fragment.id:
            call.id = fragment.id
        function = fragment.function
        if function is None:
            return
        _extend(call, function.name, function.arguments_text())

    def add_legacy(self, name: str | None, arguments: str) -> None:
        """Merge a legacy `function_call` (one call, no index; see the class docstring)."""
        if self._legacy is None:
            self._legacy = _PartialCall()
        _extend(self._legacy, name, arguments)

    def calls(self) -> list[ToolCall]:
        """The assembled calls in index order (calls without a name are dropped).

        `tool_calls` win whenever the reply had any; the legacy `function_call` is the
        answer only when it is all there is.
        """
        partials = [call for _, call in sorted(self._calls.items())]
        if not partials and self._legacy is not None:
            partials = [self._legacy]
        return [
            ToolCall(id=call.id, name=call.name, arguments="".join(call.arguments))
            for call in partials
            if call.name
        ]

    def _slot_for(self, fragment: WireToolCall) -> int:
        if fragment.index is not None:
            return fragment.index
        if self._last is None:
            return 0
        if fragment.id and fragment.id != self._calls[self._last].id:
            return max(self._calls) + 1
        return self._last


def _extend(call: _PartialCall, name: str | None, arguments: str) -> None:
    # Some servers repeat the full name in every delta; others split it.
    if name and name != call.name:
        call.name += name
    call.arguments.append(arguments)


def sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line, or None for any other line.

    Every OpenAI-compatible server sends one JSON document per `data:` line, so each
    line is treated as a whole event (comments, `event:` and `id:` lines are ignored).
    """
    if not line.startswith("data:"):
        return None
    data = line[5:]
    return data[1:] if data.startswith(" ") else data
