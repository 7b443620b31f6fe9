"""How the mock decides what to answer (no I/O here).

Default text reply, for a request without tools:

    <Name> answers <LastSpeaker>: <first 8 words of the last message>

- `<Name>` is taken from a line of the system message that starts `You are <Name>.`
  (the sentence may go on after the period): the first such line whose name starts
  with a capital letter, so that `You are taking part in a panel.` in a global prompt
  is passed over; else the first such line at all; else the first three words of the
  system message; else `Assistant`.
- `<LastSpeaker>` is the `Speaker` of the last line of the last user message that
  starts with `Speaker: ` (names up to 64 characters, no colon); `nobody` when no line
  does. The words are taken from the text after that prefix, or from the start of the
  message when there is no prefix.

Example: a system message with the line `You are Alice. Reply as Alice only.` and a
last user message `Bob: Tea is far better than coffee, and here is why` give
`Alice answers Bob: Tea is far better than coffee, and here`.

When the request offers a `select_speaker` tool (and `tool_choice` does not forbid
tools), the default is a call to it whose argument is the next entry of the tool's enum
property, cycling in order: the first such request for a given roster picks the first
name, the next one the second, and so on (one cycle per distinct roster, kept until
`reset()`). Other named or required tools are called with arguments made from their
schema (first enum value, "mock" for strings, 0 for numbers, false for booleans).

When the request asks for structured output, a JSON schema in `response_format`
(`{"type": "json_schema", "json_schema": {"schema": ...}}`, or `{"type":
"json_object", "schema": ...}`) or in Ollama's `format`, and the mock honours that
kind (all three by default, see `MockLLM(structured_output=...)`), the default is JSON
text that fits the schema: a `bot_name` enum takes the next roster name (the same
cycle as `select_speaker`), another enum its first value, `action` `select_speaker`
when allowed, strings "mock". A kind the mock does not honour is ignored, as
llama-cpp-python ignores `json_schema`.

`ReplyBook(style="chat")` (what `fellowship serve --mock` uses) replaces the default text
reply with a conversational one, put together from sentence patterns: see
`engine.llm.mock.chat`. Everything else (tools, faults, scripts) is the same.

The default reply honours `stop` sequences like a real server (cut at the first one),
except under the `impersonate` fault, which plays a server that ignores them; scripted
`content` is sent verbatim (text faults such as `think` still wrap it). Usage counts
words, not real tokens: prompt = words in all messages, completion = streamed pieces.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from engine.llm.mock.chat import chat_text
from engine.llm.mock.models import Fault, FaultRate, MockReply, RecordedRequest
from engine.llm.types import ToolCall, ToolDefinition, Usage

SELECT_SPEAKER: Final = "select_speaker"
BOT_NAME: Final = "bot_name"
ACTION: Final = "action"
STRUCTURED_KINDS: Final = frozenset({"json_schema", "json_object", "format"})
"""Ways a request can ask for a JSON schema: response_format's two types, Ollama's field."""
ECHO_WORDS: Final = 8
"""Words of the last message echoed in the default reply."""
NAME_FALLBACK_WORDS: Final = 3
"""Words of the system prompt used as the name when no `You are <Name>.` line exists."""
MAX_NAME_CHARS: Final = 64
"""Longest speaker name recognised in a `Speaker: ` prefix (the spec's bot-name limit)."""
NOBODY: Final = "nobody"
SOMEONE: Final = "Someone"
"""Name used for 'another participant' when the conversation names none."""

ReplyStyle = Literal["echo", "chat"]
"""`echo`: the documented `<Name> answers <LastSpeaker>: ...` (tests rely on it);
`chat`: conversational replies for demos."""

_YOU_ARE = re.compile(r"^[ \t]*You are (\S[^\n]*?)\.(?=\s|$)", re.MULTILINE)
_SPEAKER_LINE = re.compile(rf"^([^:\n]{{1,{MAX_NAME_CHARS}}}):[ \t](.*)$")


@dataclass
class ReplyPlan:
    """Everything the server needs to send one answer."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"
    fault: Fault | None = None
    status: int | None = None
    error_message: str | None = None
    retry_after: str | None = None
    usage: Usage | None = None


def bot_name(request: RecordedRequest) -> str:
    """The name of the bot the request speaks for (see the module docstring)."""
    system = request.system_prompt
    names = [match.group(1).strip() for match in _YOU_ARE.finditer(system)]
    for name in names:
        if name[0].isupper():
            return name
    if names:
        return names[0]
    words = system.split()
    return " ".join(words[:NAME_FALLBACK_WORDS]) if words else "Assistant"


def last_speaker(request: RecordedRequest) -> tuple[str, str]:
    """`(speaker, text)` of the last user message, speaker `nobody` when unnamed."""
    message = request.last_user_message
    lines = message.splitlines()
    for number in range(len(lines) - 1, -1, -1):
        match = _SPEAKER_LINE.match(lines[number])
        if match and match.group(1).strip():
            rest = "\n".join([match.group(2), *lines[number + 1 :]])
            return match.group(1).strip(), rest
    return NOBODY, message


def default_text(request: RecordedRequest) -> str:
    """The default text reply (see the module docstring)."""
    speaker, text = last_speaker(request)
    words = " ".join(text.split()[:ECHO_WORDS])
    return f"{bot_name(request)} answers {speaker}: {words}".rstrip()


def requested_schema(request: RecordedRequest) -> tuple[str, dict[str, Any]] | None:
    """`(kind, schema)` when the request asks for structured output, else None.

    Kinds: `json_schema` and `json_object` (response_format types), `format` (Ollama).
    """
    response_format = request.response_format
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_schema":
            inner = response_format.get("json_schema")
            schema = inner.get("schema") if isinstance(inner, dict) else None
            if isinstance(schema, dict):
                return "json_schema", schema
        if kind == "json_object" and isinstance(response_format.get("schema"), dict):
            return "json_object", response_format["schema"]
    if isinstance(request.format, dict):
        return "format", request.format
    return None


def tokenize(text: str, chunk_chars: int | None = None) -> list[str]:
    """Split text into stream pieces: words with their trailing space, or fixed-size chunks."""
    if not text:
        return []
    if chunk_chars:
        return [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)]
    return re.findall(r"\S+\s*|\s+", text)


def word_count(request: RecordedRequest) -> int:
    """Prompt size in words, used as the mock's prompt token count."""
    return sum(len(message.content.split()) for message in request.messages)


class ReplyBook:
    """The mock's memory: speaker cycles per roster, call ids, and the fault RNG."""

    def __init__(
        self,
        *,
        seed: int,
        faults: list[FaultRate],
        retry_after: str,
        structured_output: frozenset[str] = STRUCTURED_KINDS,
        style: ReplyStyle = "echo",
    ) -> None:
        self._rng = random.Random(seed)
        self.style: ReplyStyle = style
        self.faults = faults
        self._retry_after = retry_after
        self.structured_output = structured_output
        self._cycles: dict[tuple[str, ...], int] = {}
        self._calls = 0

    def plan(self, request: RecordedRequest, reply: MockReply | None) -> ReplyPlan:
        """Decide the answer to `request`, given a scripted reply (or None for default)."""
        reply = reply or MockReply()
        fault = reply.fault or self._roll_fault(request)
        if reply.status is not None:
            return ReplyPlan(
                status=reply.status,
                error_message=reply.error_message or f"mock error {reply.status}",
                retry_after=reply.retry_after,
            )
        http_fault = _HTTP_FAULTS.get(fault) if fault else None
        if http_fault is not None:
            status, message = http_fault
            retry_after = reply.retry_after
            if fault is Fault.HTTP_429 and retry_after is None:
                retry_after = self._retry_after
            return ReplyPlan(
                status=status,
                error_message=reply.error_message or message,
                retry_after=retry_after,
                fault=fault,
            )
        plan = self._content_plan(request, reply, fault)
        plan.fault = fault
        plan.usage = reply.usage
        if reply.reasoning_content is not None:
            plan.reasoning = reply.reasoning_content
        if reply.finish_reason is not None:
            plan.finish_reason = reply.finish_reason
        return plan

    def _roll_fault(self, request: RecordedRequest) -> Fault | None:
        chosen: Fault | None = None
        for entry in self.faults:
            # Roll every entry every time so that outcomes depend only on seed and order.
            hit = self._rng.random() < entry.rate
            applicable = (bool(request.tools) or not entry.fault.needs_tools) and (
                requested_schema(request) is not None or not entry.fault.needs_schema
            )
            if hit and applicable and chosen is None:
                chosen = entry.fault
        return chosen

    def _content_plan(
        self, request: RecordedRequest, reply: MockReply, fault: Fault | None
    ) -> ReplyPlan:
        if reply.tool_calls is not None:
            calls = reply.tool_calls
            return ReplyPlan(
                content=reply.content or "",
                tool_calls=calls,
                finish_reason="tool_calls" if calls else "stop",
            )
        if reply.content is None:
            structured = self._structured_plan(request, fault)
            if structured is not None:
                return structured
            tool_plan = self._tool_plan(request, fault)
            if tool_plan is not None:
                return tool_plan
        return self._text_plan(request, fault, reply.content)

    def _text_plan(
        self, request: RecordedRequest, fault: Fault | None, scripted: str | None
    ) -> ReplyPlan:
        name = bot_name(request)
        speaker, _ = last_speaker(request)
        other = speaker if speaker not in (NOBODY, name) else SOMEONE
        text = self._default_text(request) if scripted is None else scripted
        reasoning = ""
        if fault is Fault.IMPERSONATE:
            # Plays a server that ignores stop sequences: no cut here.
            return ReplyPlan(content=f"{text}\n{other}: I agree with {name} completely.")
        if fault is Fault.NAME_PREFIX:
            text = f"{other}: {text}"
        elif fault is Fault.OWN_NAME_PREFIX:
            text = f"{name}: {text}"
        elif fault is Fault.REASONING:
            reasoning = f"{name} weighs what {speaker} said."
        elif fault is Fault.THINK:
            text = f"<think>{name} weighs what {speaker} said.</think>\n\n{text}"
        if scripted is not None:
            return ReplyPlan(content=text, reasoning=reasoning)  # scripts are sent verbatim
        return ReplyPlan(content=_apply_stop(text, request.stop), reasoning=reasoning)

    def _default_text(self, request: RecordedRequest) -> str:
        if self.style == "echo":
            return default_text(request)
        speaker, said = last_speaker(request)
        return chat_text(request, bot_name(request), None if speaker == NOBODY else speaker, said)

    def _tool_plan(self, request: RecordedRequest, fault: Fault | None) -> ReplyPlan | None:
        tools = {tool.function.name: tool for tool in request.tools}
        choice = request.tool_choice
        if not tools or choice == "none":
            return None
        named = _named_choice(choice)
        target = named or (SELECT_SPEAKER if SELECT_SPEAKER in tools else None)
        if target is None and choice == "required":
            target = request.tools[0].function.name
        if target is None or target not in tools:
            return None
        if target != SELECT_SPEAKER:
            return self._call(target, _arguments_from_schema(tools[target]))
        key, roster = _roster(tools[SELECT_SPEAKER])
        if not roster:
            return self._call(target, _arguments_from_schema(tools[target]))
        position = self._cycles.get(tuple(roster), -1) + 1
        self._cycles[tuple(roster)] = position
        pick = roster[position % len(roster)]
        if fault is Fault.TOOL_WRONG_CASE:
            return self._call(target, {key: f"{pick.upper()}!"})
        if fault is Fault.TOOL_TEXT_NAME:
            return ReplyPlan(content=f"I think {pick} should speak next.")
        if fault is Fault.TOOL_JSON_TEXT:
            return ReplyPlan(content=json.dumps({"name": target, "arguments": {key: pick}}))
        if fault is Fault.TOOL_GARBAGE:
            plan = self._call(target, {})
            plan.tool_calls[0].arguments = "{{{ ???"
            plan.content = "~ static on the line ~"
            return plan
        return self._call(target, {key: pick})

    def _structured_plan(self, request: RecordedRequest, fault: Fault | None) -> ReplyPlan | None:
        asked = requested_schema(request)
        if asked is None or fault is Fault.STRUCTURED_IGNORED:
            return None
        kind, schema = asked
        if kind not in self.structured_output:
            return None
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return ReplyPlan(content="{}")
        answer: dict[str, Any] = {}
        for key, item in properties.items():
            item = item if isinstance(item, dict) else {}
            choices = item.get("enum")
            if key == BOT_NAME and isinstance(choices, list) and choices:
                roster = [str(value) for value in choices]
                position = self._cycles.get(tuple(roster), -1) + 1
                self._cycles[tuple(roster)] = position
                answer[key] = roster[position % len(roster)]
            elif key == ACTION and isinstance(choices, list) and SELECT_SPEAKER in choices:
                answer[key] = SELECT_SPEAKER
            elif isinstance(choices, list) and choices:
                answer[key] = choices[0]
            else:
                answer[key] = _SCHEMA_DEFAULTS.get(item.get("type"), None)
        return ReplyPlan(content=json.dumps(answer))

    def _call(self, name: str, arguments: dict[str, Any]) -> ReplyPlan:
        self._calls += 1
        call = ToolCall(id=f"call_mock_{self._calls}", name=name, arguments=json.dumps(arguments))
        return ReplyPlan(tool_calls=[call], finish_reason="tool_calls")


_HTTP_FAULTS: Final[dict[Fault, tuple[int, str]]] = {
    Fault.HTTP_500: (500, "mock: internal server error"),
    Fault.HTTP_503: (503, "mock: service unavailable, model is loading"),
    Fault.HTTP_429: (429, "mock: too many requests"),
}


def _apply_stop(text: str, stops: list[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return text[:cut] if cut >= 0 else text


def _named_choice(choice: str | dict[str, Any] | None) -> str | None:
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            return name
    return None


def _roster(tool: ToolDefinition) -> tuple[str, list[str]]:
    """The argument name and enum values of `select_speaker` ("bot_name" if none)."""
    properties = tool.function.parameters.get("properties") or {}
    for key, schema in properties.items():
        if isinstance(schema, dict) and isinstance(schema.get("enum"), list):
            return key, [str(value) for value in schema["enum"]]
    return "bot_name", []


def _arguments_from_schema(tool: ToolDefinition) -> dict[str, Any]:
    parameters = tool.function.parameters
    properties: dict[str, Any] = parameters.get("properties") or {}
    required = parameters.get("required") or list(properties)
    arguments: dict[str, Any] = {}
    for key in required:
        schema = properties.get(key) or {}
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            arguments[key] = schema["enum"][0]
        else:
            arguments[key] = _SCHEMA_DEFAULTS.get(schema.get("type"), None)
    return arguments


_SCHEMA_DEFAULTS: Final[dict[Any, Any]] = {
    "string": "mock",
    "integer": 0,
    "number": 0,
    "boolean": False,
    "array": [],
    "object": {},
}
