"""How an orchestrator reply is read: pure functions from reply text and tool calls to a
`Reading`, with no I/O, so that every rung of the ladder can be tested on its own.

The rungs (see `engine.orchestrator`): `read_structured` reads a structured-output
answer (rung 0); `read_reply` reads tool calls, exact (rung 1) or fuzzy (rung 2), then
falls back to `read_text` (rung 3).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.context import mentions
from engine.llm.types import ToolCall
from engine.orchestrator.tools import (
    ACTION_KEY,
    BOT_NAME_ARG,
    END_SESSION,
    HOLD,
    REASON_ARG,
    SELECT_SPEAKER,
    Menu,
)

Rung = Literal["structured_output", "tool_call", "fuzzy_tool_call", "text", "retry", "round_robin"]
Action = Literal["speak", "hold", "end"]

# Argument keys models use instead of `bot_name` (rung 2).
_NAME_KEYS: Final = (BOT_NAME_ARG, "name", "bot", "speaker", "next_speaker", "botname")
# Keys a JSON tool call written as text may use for the tool's name and its arguments.
_TOOL_KEYS: Final = ("name", "tool", "function", "tool_name", "action")
_ARGUMENT_KEYS: Final = ("arguments", "parameters", "args", "input", "params")
# Quotes models wrap names in, beyond ASCII punctuation.
_QUOTES: Final = "\u201c\u201d\u2018\u2019\u00ab\u00bb"
_STRIP: Final = string.whitespace + string.punctuation + _QUOTES
_CALL_SYNTAX: Final = re.compile(
    rf"\b({SELECT_SPEAKER}|{HOLD}|{END_SESSION})\s*\(([^()]*)\)", re.IGNORECASE
)
_KEYWORD_ARG: Final = re.compile(r"""^\s*\w+\s*[=:]\s*(.+?)\s*$""", re.DOTALL)
# A default reason when a model ends the session without giving one.
_NO_REASON: Final = "the orchestrator judged the goal reached"


class Reading(BaseModel):
    """A usable answer read from an orchestrator reply."""

    model_config = ConfigDict(frozen=True)

    action: Action = Field(description="speak, hold or end.")
    bot: str | None = Field(None, description="The roster name chosen, for speak.")
    reason: str | None = Field(None, description="Why the session ends, for end.")
    tool: str = Field(description="The tool the answer amounts to.")
    rung: Rung = Field(description="How the answer was read (see the module docstring).")


def read_structured(content: str, menu: Menu) -> Reading | None:
    """Read a decision given as structured output (rung 0), or None.

    The reply must hold a JSON object (the first one in the text counts, so a code fence
    around it does no harm) whose `action` is an offered tool (select_speaker when
    absent) and whose `bot_name` or `reason` fits it.
    """
    objects = [found for found in _json_objects(content) if isinstance(found, dict)]
    if not objects:
        return None
    answer = objects[0]
    action = answer.get(ACTION_KEY, SELECT_SPEAKER)
    if not isinstance(action, str):
        return None
    found = interpret_call(action, {k: v for k, v in answer.items() if k != ACTION_KEY}, menu)
    if found is None:
        return None
    return found[0].model_copy(update={"rung": "structured_output"})


def read_reply(content: str, calls: Sequence[ToolCall], menu: Menu) -> Reading | None:
    """Read a usable answer from an orchestrator reply, or None (rungs 1 to 3).

    Tool calls are read first, in order; the first usable one wins, at rung
    `tool_call` when it is exactly right and `fuzzy_tool_call` otherwise. Without a
    usable call the text is read (rung `text`): a JSON tool call, a
    `select_speaker("Bob")`-style call, a bare `hold`, or exactly one bot name.
    """
    for call in calls:
        found = interpret_call(call.name, call.arguments, menu)
        if found is not None:
            reading, exact = found
            return reading.model_copy(update={"rung": "tool_call" if exact else "fuzzy_tool_call"})
    return read_text(content, menu)


def interpret_call(name: str, arguments: Any, menu: Menu) -> tuple[Reading, bool] | None:
    """Turn one tool call into an answer and whether it was exactly right, or None.

    `arguments` is the raw JSON text of a real call or an already parsed value from
    text. Unknown or not offered tools are unusable.
    """
    tool = _match_tool(name, menu)
    if tool is None:
        return None
    exact_tool = name == tool
    parsed, exact_shape = _parse_arguments(arguments)
    if tool == HOLD:
        return Reading(action="hold", tool=HOLD, rung="tool_call"), exact_tool
    if tool == END_SESSION:
        reason = parsed.get(REASON_ARG) if isinstance(parsed, dict) else parsed
        text = reason.strip() if isinstance(reason, str) else ""
        reading = Reading(
            action="end", reason=text or _NO_REASON, tool=END_SESSION, rung="tool_call"
        )
        return reading, exact_tool and exact_shape and bool(text)
    value, exact_key = _name_argument(parsed)
    if value is None:
        return None
    match = match_bot(value, menu.roster)
    if match is None:
        return None
    bot, exact_name = match
    exact = exact_tool and exact_shape and exact_key and exact_name
    return Reading(action="speak", bot=bot, tool=SELECT_SPEAKER, rung="tool_call"), exact


def match_bot(value: str, roster: Sequence[str]) -> tuple[str, bool] | None:
    """The roster name `value` means and whether it was spelled exactly, or None.

    Case is ignored, and so are whitespace, punctuation and quotes around the name
    (`ALICE!`, ` bob.`, `"Carol"`); the name itself may contain punctuation (`Dr. Who`).
    """
    if value in roster:
        return value, True
    wanted = value.strip(_STRIP).casefold()
    if not wanted:
        return None
    for name in roster:
        if name.strip(_STRIP).casefold() == wanted:
            return name, False
    return None


def read_text(content: str, menu: Menu) -> Reading | None:
    """Read an answer from reply text (rung 3), or None."""
    text = content.strip()
    if not text:
        return None
    for candidate in _json_objects(text):
        reading = _from_json(candidate, menu)
        if reading is not None:
            return reading
    for match in _CALL_SYNTAX.finditer(text):
        found = interpret_call(match.group(1), _call_syntax_arguments(match.group(2)), menu)
        if found is not None:
            return found[0].model_copy(update={"rung": "text"})
    keyword = text.strip(_STRIP).casefold()
    if keyword in (HOLD, END_SESSION) and keyword in menu.tool_names:
        found = interpret_call(keyword, {}, menu)
        if found is not None:
            return found[0].model_copy(update={"rung": "text"})
    named = [name for name in menu.roster if mentions(text, name)]
    if len(named) == 1:
        return Reading(action="speak", bot=named[0], tool=SELECT_SPEAKER, rung="text")
    exact = match_bot(text, menu.roster)
    if exact is not None:
        return Reading(action="speak", bot=exact[0], tool=SELECT_SPEAKER, rung="text")
    return None


def _match_tool(name: str, menu: Menu) -> str | None:
    wanted = re.sub(r"[\s\-]+", "_", name.strip(_STRIP)).casefold()
    for tool in menu.tool_names:
        if tool == wanted:
            return tool
    return None


def _parse_arguments(arguments: Any) -> tuple[Any, bool]:
    """Arguments as a dict or a string, and whether they were a plain JSON object."""
    if isinstance(arguments, dict):
        return arguments, True
    if not isinstance(arguments, str):
        return arguments, False
    text = arguments.strip()
    if not text:
        return {}, True
    try:
        value = json.loads(text)
    except ValueError:
        # Some servers repeat the arguments (`{"bot_name": "A"}{"bot_name": "A"}`, seen
        # with llama-cpp-python's function calling): the first object is the answer.
        objects = [found for found in _json_objects(text) if isinstance(found, dict)]
        return (objects[0], False) if objects else (text, False)
    if isinstance(value, str):
        # Double-encoded arguments: a JSON string holding the JSON object.
        try:
            inner = json.loads(value)
        except ValueError:
            return value, False
        return inner, False
    return value, isinstance(value, dict)


def _name_argument(parsed: Any) -> tuple[str | None, bool]:
    """The bot name in parsed arguments and whether it sat under `bot_name`."""
    if isinstance(parsed, str):
        return parsed, False
    if not isinstance(parsed, dict):
        return None, False
    value = parsed.get(BOT_NAME_ARG)
    if isinstance(value, str):
        return value, True
    lowered = {str(key).casefold(): item for key, item in parsed.items()}
    for key in _NAME_KEYS:
        value = lowered.get(key)
        if isinstance(value, str):
            return value, False
    strings = [item for item in parsed.values() if isinstance(item, str)]
    if len(strings) == 1:
        return strings[0], False
    return None, False


def _json_objects(text: str) -> list[Any]:
    """Every top-level JSON value that starts with `{` or `[` in `text`, in order."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    index = 0
    while index < len(text):
        starts = [i for i in (text.find("{", index), text.find("[", index)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            index = start + 1
            continue
        found.append(value)
        index = end
    return found


def _from_json(value: Any, menu: Menu) -> Reading | None:
    """A tool call written as JSON text, in the shapes models commonly use."""
    if isinstance(value, list):
        for item in value:
            reading = _from_json(item, menu)
            if reading is not None:
                return reading
        return None
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("tool_calls"), list):
        return _from_json(value["tool_calls"], menu)
    function = value.get("function")
    if isinstance(function, dict):
        return _from_json(function, menu)
    name = next((value[key] for key in _TOOL_KEYS if isinstance(value.get(key), str)), None)
    arguments = next((value[key] for key in _ARGUMENT_KEYS if key in value), None)
    if name is not None and _match_tool(name, menu) is None:
        # {"name": "Bob"}: the name key held a bot, not a tool.
        match = match_bot(name, menu.roster)
        if match is None:
            return None
        return Reading(action="speak", bot=match[0], tool=SELECT_SPEAKER, rung="text")
    if name is None:
        name = SELECT_SPEAKER
    if arguments is None:
        arguments = {k: v for k, v in value.items() if k not in _TOOL_KEYS}
    found = interpret_call(name, arguments, menu)
    return found[0].model_copy(update={"rung": "text"}) if found is not None else None


def _call_syntax_arguments(text: str) -> Any:
    """`bot_name="Bob"`, `"Bob"` or `Bob` inside `select_speaker(...)`."""
    text = text.strip()
    if not text:
        return {}
    keyword = _KEYWORD_ARG.match(text)
    value = keyword.group(1) if keyword else text
    return value.strip().strip("'\"")
