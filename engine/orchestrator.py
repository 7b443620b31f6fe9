"""The orchestrator: a hidden LLM call that picks who speaks next (`turn_order: orchestrated`).

Each decision is a fresh, stateless call that is never part of the history. The
orchestrator sees its own system prompt (what Fellowship is, every bot's name, role
and full system prompt, the goal) and the conversation so far, and answers with a
tool call: `select_speaker(bot_name)`, `hold()` (only when talkers can take part) or
`end_session(reason)` (only when a goal is set).

Where the backend takes a JSON schema (see `engine.structured`), the decision is first
asked for as structured output: a JSON object whose `bot_name` is an enum of the
roster. Models get that and tool calls wrong in many ways, so the replies are read down
a ladder and the rung that worked is reported in the `orchestrator` debug event:

0. `structured_output` the structured call's JSON answer names a bot (or holds, or
                     ends); otherwise the tool-call request below is made;
1. `tool_call`       a valid call of an offered tool;
2. `fuzzy_tool_call` a call whose tool or bot name is off by case, surrounding
                     punctuation or whitespace, or whose arguments are oddly shaped;
3. `text`            no usable call, but the reply text holds a JSON tool call, a
                     `select_speaker("Bob")`-style call, or names exactly one bot;
4. `retry`           one more call with a short correction appended (an LLM error on
                     the first call also leads here, with the original prompt);
5. `round_robin`     the next bot in spec order, with a warning in the log.

`select` never raises and never waits longer than three calls of the LLM client
(structured output, tool call, retry), whose own timeouts bound each call. See
docs/orchestrator.md.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.context import mentions
from engine.history import Message
from engine.llm.errors import LLM_REJECTED, LLMError
from engine.llm.types import (
    ChatMessage,
    ChatRequest,
    Completion,
    ToolCall,
    ToolDefinition,
    ToolFunction,
)
from engine.session import Session
from engine.speakers import Decision, round_robin_next
from engine.structured import StructuredMode, StructuredOutputProbe, ask_for

SELECT_SPEAKER: Final = "select_speaker"
HOLD: Final = "hold"
END_SESSION: Final = "end_session"
BOT_NAME_ARG: Final = "bot_name"
REASON_ARG: Final = "reason"
# max_tokens of the structured-output call: a JSON decision needs a few dozen tokens.
ORCHESTRATOR_STRUCTURED_MAX_TOKENS: Final = 96

ACTION_KEY: Final = "action"

Rung = Literal["structured_output", "tool_call", "fuzzy_tool_call", "text", "retry", "round_robin"]
Answer = Literal["tools", "json"]
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
_NAMES_THE_FIELD: Final = re.compile(r"response_format|json_schema|\bformat\b", re.IGNORECASE)
_KEYWORD_ARG: Final = re.compile(r"""^\s*\w+\s*[=:]\s*(.+?)\s*$""", re.DOTALL)
# A default reason when a model ends the session without giving one.
_NO_REASON: Final = "the orchestrator judged the goal reached"
# Tokens added per transcript line beyond its stored content count: the `Name: ` prefix
# is counted apart; this covers the line break and merges at the joins.
_LINE_MARGIN: Final = 2
_LEFT_OUT: Final = "(earlier messages left out)"
_NOTHING_YET: Final = "(nothing has been said yet)"


class Menu(BaseModel):
    """What the orchestrator may answer in one session: the roster and the tools offered."""

    model_config = ConfigDict(frozen=True)

    roster: list[str] = Field(min_length=1, description="Bot names in spec order.")
    hold: bool = Field(description="Whether hold() is offered (talkers can take part).")
    end: bool = Field(description="Whether end_session(reason) is offered (a goal is set).")

    @property
    def tool_names(self) -> list[str]:
        """Names of the offered tools."""
        names = [SELECT_SPEAKER]
        if self.hold:
            names.append(HOLD)
        if self.end:
            names.append(END_SESSION)
        return names

    def tools(self) -> list[ToolDefinition]:
        """The offered tools in OpenAI function-calling form."""
        tools = [
            ToolDefinition(
                function=ToolFunction(
                    name=SELECT_SPEAKER,
                    description="Choose the bot that speaks next.",
                    parameters={
                        "type": "object",
                        "properties": {
                            BOT_NAME_ARG: {
                                "type": "string",
                                "enum": list(self.roster),
                                "description": "Exact name of the bot that speaks next.",
                            }
                        },
                        "required": [BOT_NAME_ARG],
                    },
                )
            )
        ]
        if self.hold:
            tools.append(
                ToolDefinition(
                    function=ToolFunction(
                        name=HOLD,
                        description="No bot speaks now; wait for the next message of a human.",
                    )
                )
            )
        if self.end:
            tools.append(
                ToolDefinition(
                    function=ToolFunction(
                        name=END_SESSION,
                        description="End the conversation because its goal has been reached.",
                        parameters={
                            "type": "object",
                            "properties": {
                                REASON_ARG: {
                                    "type": "string",
                                    "description": "One sentence on why the goal is reached.",
                                }
                            },
                            "required": [REASON_ARG],
                        },
                    )
                )
            )
        return tools

    def decision_schema(self) -> dict[str, Any]:
        """The JSON schema of a decision given as structured output.

        With only select_speaker offered it is `{"bot_name": <enum of the roster>}`;
        otherwise `action` (an enum of the offered tools) comes first, and `reason` last
        when end_session is offered. Every property is required and no other is allowed,
        which OpenAI's strict mode demands.
        """
        name = {
            "type": "string",
            "enum": list(self.roster),
            "description": "Exact name of the bot that speaks next.",
        }
        properties: dict[str, Any] = {}
        if self.hold or self.end:
            properties[ACTION_KEY] = {
                "type": "string",
                "enum": self.tool_names,
                "description": "What happens next.",
            }
        properties[BOT_NAME_ARG] = name
        if self.end:
            properties[REASON_ARG] = {
                "type": "string",
                "description": f"For {END_SESSION}: one sentence on why the goal is reached.",
            }
        return {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }


class Reading(BaseModel):
    """A usable answer read from an orchestrator reply."""

    model_config = ConfigDict(frozen=True)

    action: Action = Field(description="speak, hold or end.")
    bot: str | None = Field(None, description="The roster name chosen, for speak.")
    reason: str | None = Field(None, description="Why the session ends, for end.")
    tool: str = Field(description="The tool the answer amounts to.")
    rung: Rung = Field(description="How the answer was read (see the module docstring).")


class Routing(BaseModel):
    """One decision of the orchestrator, as reported in its debug event."""

    action: Action = Field(description="speak, hold or end.")
    bot: str | None = Field(None, description="The bot that speaks next, for speak.")
    reason: str | None = Field(None, description="Why the session ends, for end.")
    tool: str | None = Field(None, description="The tool the answer amounts to (none on fallback).")
    rung: Rung = Field(description="The rung of the robustness ladder that gave the answer.")
    attempts: int = Field(description="Orchestrator calls made for this decision (1 to 3).")
    structured_output: StructuredMode | None = Field(
        None, description="How structured output was asked for, if it was."
    )
    errors: list[str] = Field(default_factory=list, description="LLM error codes met, if any.")
    model: str = Field(description="The model asked.")


def menu_for(session: Session) -> Menu:
    """The roster and tools for `session`: hold only with talkers, end only with a goal."""
    options = session.options
    return Menu(
        roster=session.bot_names,
        hold=options.participation != "autonomous",
        end=options.goal is not None,
    )


class Orchestrator:
    """Picks the next speaker with a hidden LLM call (a `SpeakerSelector`)."""

    deliberates = True

    async def select(self, session: Session) -> Decision:
        """Ask the model who speaks next; never raises, falls back to round robin."""
        try:
            routing = await self._route(session)
        except Exception:
            # A bug here must not stop the conversation: fall back like any failed reply.
            session.log.exception("orchestrator failed unexpectedly; falling back to round robin")
            routing = Routing(
                action="speak",
                bot=round_robin_next(session),
                rung="round_robin",
                attempts=0,
                model=orchestrator_model(session),
            )
        session.log.debug(
            "orchestrator: %s %s (rung %s, %d call(s))",
            routing.action,
            routing.bot or routing.reason or "",
            routing.rung,
            routing.attempts,
        )
        session.debug("orchestrator", **routing.model_dump())
        return Decision(routing.action, bot=routing.bot, reason=routing.reason)

    async def _route(self, session: Session) -> Routing:
        menu = menu_for(session)
        errors: list[str] = []
        attempts = 0
        way = structured_way(session)
        mode = way[0] if way is not None else None
        if way is not None:
            attempts += 1
            reading = await _ask_structured(session, menu, way, errors)
            if reading is not None:
                return _routed(reading, attempts, errors, orchestrator_model(session), mode)
        request = orchestrator_request(session, menu)
        completion = await _ask(session, request, errors)
        reading = _read(completion, menu)
        attempts += 1
        if reading is None:
            attempts += 1
            retry = request if completion is None else _corrected(request, completion, menu)
            completion = await _ask(session, retry, errors)
            again = _read(completion, menu)
            if again is not None:
                reading = again.model_copy(update={"rung": "retry"})
        if reading is None:
            bot = round_robin_next(session)
            session.log.warning(
                "orchestrator gave no usable answer in %d calls; round robin picks %s",
                attempts,
                bot,
            )
            return Routing(
                action="speak",
                bot=bot,
                rung="round_robin",
                attempts=attempts,
                errors=errors,
                model=request.model,
                structured_output=mode,
            )
        return _routed(reading, attempts, errors, request.model, mode)


async def _ask(session: Session, request: ChatRequest, errors: list[str]) -> Completion | None:
    try:
        return await session.deps.llm.chat(request, backend=session.backend, queue_key=session.id)
    except LLMError as exc:
        session.log.warning("orchestrator call failed: %s (%s)", exc.code, exc.message)
        errors.append(exc.code)
        return None


def _routed(
    reading: Reading,
    attempts: int,
    errors: list[str],
    model: str,
    mode: StructuredMode | None,
) -> Routing:
    """The decision a usable reading amounts to."""
    return Routing(
        **reading.model_dump(),
        attempts=attempts,
        errors=errors,
        model=model,
        structured_output=mode,
    )


def _read(completion: Completion | None, menu: Menu) -> Reading | None:
    if completion is None:
        return None
    return read_reply(completion.content, completion.tool_calls, menu)


def structured_way(
    session: Session,
) -> tuple[StructuredMode, StructuredOutputProbe | None] | None:
    """How to ask this session's backend for structured output now, or None for not at all.

    The spec's `llm.structured_output` wins over `LLM_STRUCTURED_OUTPUT`. A fixed way
    comes without a probe; `auto` comes with the backend's probe, which may have given up.
    """
    llm = session.spec.llm
    setting = (llm.structured_output if llm else None) or (
        session.deps.settings.llm_structured_output
    )
    if setting == "off":
        return None
    if setting != "auto":
        return setting, None
    probe = session.deps.llm.state_for(session.backend, StructuredOutputProbe)
    mode = probe.mode()
    return (mode, probe) if mode is not None else None


async def _ask_structured(
    session: Session,
    menu: Menu,
    way: tuple[StructuredMode, StructuredOutputProbe | None],
    errors: list[str],
) -> Reading | None:
    """Rung 0: the decision asked for as JSON; None when the answer is not usable."""
    mode, probe = way
    request = orchestrator_request(session, menu, structured=mode)
    refused = False
    reading = None
    try:
        completion = await session.deps.llm.chat(
            request, backend=session.backend, queue_key=session.id
        )
    except LLMError as exc:
        session.log.warning("structured orchestrator call failed: %s (%s)", exc.code, exc.message)
        errors.append(exc.code)
        # A 4xx, or a server that chokes on the field (llama-cpp-python answers an unknown
        # response_format type with a 500 naming it): this way is not understood.
        refused = exc.code == LLM_REJECTED or _NAMES_THE_FIELD.search(exc.message) is not None
    else:
        reading = read_structured(completion.content, menu)
    if probe is not None:
        probe.note(
            usable=reading is not None,
            refused=refused,
            backend=session.backend.display_url,
        )
    return reading


# --- the prompt ------------------------------------------------------------------------------


def orchestrator_model(session: Session) -> str:
    """`llm.orchestrator_model` of the spec, else the server's DEFAULT_ORCHESTRATOR_MODEL."""
    llm = session.spec.llm
    return (llm.orchestrator_model if llm else None) or (
        session.deps.settings.default_orchestrator_model
    )


def orchestrator_request(
    session: Session, menu: Menu, *, structured: StructuredMode | None = None
) -> ChatRequest:
    """The chat request for one decision: system prompt, conversation, tools.

    The conversation is the summary (if any) and the complete messages after it, as
    `Name: text` lines. When they would not fit in the session's context limit
    together with the system prompt and the tools, the oldest lines are left out;
    the latest message is always kept. With `structured`, the request asks for the
    decision as JSON fitting `menu.decision_schema()` in that way, instead of offering tools.
    """
    answer: Answer = "json" if structured is not None else "tools"
    system = orchestrator_system_prompt(session, menu, answer=answer)
    tools = menu.tools() if structured is None else []
    schema = menu.decision_schema()
    settings = session.deps.settings
    counter = session.deps.counter
    head = _conversation_head(session.summary)
    tail = _QUESTION[answer]
    described = json.dumps(schema) if structured else json.dumps([t.model_dump() for t in tools])
    fixed = counter.count_chat(
        [
            ChatMessage(role="system", content=system),
            ChatMessage(role="user", content=f"{head}\n{_LEFT_OUT}\n\n{tail}"),
        ]
    ) + counter.count(described)
    messages = [m for m in session.history.visible() if m.turn > session.summary_upto]
    lines = _fit_newest(session, messages, session.context_limit - fixed)
    if len(lines) < len(messages):
        lines.insert(0, _LEFT_OUT)
    body = "\n".join(lines) if lines else _NOTHING_YET
    prompt = [
        ChatMessage(role="system", content=system),
        ChatMessage(role="user", content=f"{head}\n{body}\n\n{tail}"),
    ]
    if structured is not None:
        ask = ask_for(structured, schema)
        return ChatRequest(
            model=orchestrator_model(session),
            messages=prompt,
            max_tokens=ORCHESTRATOR_STRUCTURED_MAX_TOKENS,
            response_format=ask.response_format,
            extra=ask.extra,
        )
    return ChatRequest(
        model=orchestrator_model(session),
        messages=prompt,
        tools=tools,
        tool_choice=settings.orchestrator_tool_choice,
    )


def _fit_newest(session: Session, messages: Sequence[Message], budget: int) -> list[str]:
    """`Name: text` lines of the newest messages whose tokens fit in `budget` (at least one)."""
    counter = session.deps.counter
    lines: list[str] = []
    used = 0
    for message in reversed(messages):
        cost = message.tokens + counter.count(f"{message.speaker}: ") + _LINE_MARGIN
        if lines and used + cost > budget:
            break
        lines.append(f"{message.speaker}: {message.content}")
        used += cost
    lines.reverse()
    return lines


_QUESTION: Final[dict[Answer, str]] = {
    "tools": "Who speaks next? Answer with one tool call.",
    "json": "Who speaks next? Answer with the JSON object only.",
}


def _conversation_head(summary: str | None) -> str:
    if summary and summary.strip():
        return (
            f"Summary of the earlier conversation:\n{summary.strip()}\n\n"
            "The conversation since then:"
        )
    return "The conversation so far:"


def orchestrator_system_prompt(session: Session, menu: Menu, *, answer: Answer = "tools") -> str:
    """What the orchestrator is told: its job, the bots in full, the goal, how to choose.

    `answer` says whether it answers with a tool call or with a JSON object.
    """
    spec, options = session.spec, session.options
    json_answer = answer == "json"
    how = (
        "by answering with one JSON object"
        if json_answer
        else "by calling exactly one of the tools you are given"
    )
    parts = [
        "You are the orchestrator of a Fellowship session: a conversation between several "
        "AI characters (the bots)"
        + (" and the humans who join in (the talkers)" if menu.hold else "")
        + ". You never speak in the conversation yourself, and nobody sees your answer. "
        f"Your only job is to decide what happens next, {how}.",
        "The bots, in their listed order:\n" + "\n".join(_roster_entries(session)),
    ]
    if spec.system_prompt.strip():
        parts.append(f"Instructions every bot was given:\n{spec.system_prompt.strip()}")
    if options.goal:
        end = (
            f'answer with "{ACTION_KEY}": "{END_SESSION}" and a one-sentence "{REASON_ARG}"'
            if json_answer
            else f"call {END_SESSION} with a one-sentence reason"
        )
        parts.append(
            f"The goal of the conversation: {options.goal}\n"
            f"Once the goal has clearly been reached, {end} instead of choosing a bot."
        )
    if menu.hold:
        humans = _talker_names(session)
        known = f" Talkers so far: {', '.join(humans)}." if humans else ""
        hold = f'answer with "{ACTION_KEY}": "{HOLD}"' if json_answer else f"call {HOLD}"
        parts.append(
            "Lines from names that are not in the list of bots were written by talkers."
            f"{known} If the latest talker message asks the bots to stop, be quiet, wait or "
            f"stay silent, or if it is a talker's turn to answer, {hold}: no bot "
            "speaks until a talker writes again."
        )
    pick = (
        f'Put the bot\'s exact name in "{BOT_NAME_ARG}"'
        if json_answer
        else f"Call {SELECT_SPEAKER} with the bot's exact name"
    )
    parts.append(
        "How to choose: pick the bot whose turn it most naturally is: one who was just "
        "addressed or asked something, whose role fits what the conversation needs now, "
        "or who has not spoken for a while. Do not pick the bot that spoke last unless it "
        f"was addressed directly. {pick} ({', '.join(menu.roster)})."
    )
    return "\n\n".join(parts)


def _roster_entries(session: Session) -> list[str]:
    entries = []
    for number, bot in enumerate(session.spec.bots, start=1):
        role = f" (role: {bot.role})" if bot.role else ""
        prompt = bot.system_prompt.strip() or "(no instructions)"
        entries.append(f"{number}. {bot.name}{role}\n   Instructions: {prompt}")
    return entries


def _talker_names(session: Session) -> list[str]:
    bots = {name.casefold() for name in session.bot_names}
    names = [name for name in session.participant_names() if name.casefold() not in bots]
    for message in session.history.visible():
        if message.kind == "talker" and message.speaker not in names:
            names.append(message.speaker)
    return names


def _corrected(request: ChatRequest, completion: Completion, menu: Menu) -> ChatRequest:
    """The request again, with the unusable answer and a short correction appended."""
    said = completion.content.strip() or "; ".join(
        f"{call.name}({call.arguments})" for call in completion.tool_calls
    )
    options = [f"{SELECT_SPEAKER} with one of: {', '.join(menu.roster)}"]
    if menu.hold:
        options.append(f"{HOLD}()")
    if menu.end:
        options.append(f"{END_SESSION}(reason)")
    correction = (
        "That answer could not be used. Call "
        + " or ".join(options)
        + ". Answer with the tool call only. If you cannot call tools, answer with the "
        "bot's name and nothing else."
    )
    return request.model_copy(
        update={
            "messages": [
                *request.messages,
                ChatMessage(role="assistant", content=said or "(no answer)"),
                ChatMessage(role="user", content=correction),
            ]
        }
    )


# --- reading replies (pure) ------------------------------------------------------------------


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
