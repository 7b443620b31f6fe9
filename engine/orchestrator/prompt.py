"""The orchestrator's prompt: what it is told about the session, and the conversation.

The system prompt explains the job, lists every bot with its role and full system
prompt, the goal, and how to choose; the user message holds the summary (if any) and
the conversation since, as `Name: text` lines, newest kept when they do not all fit.
`corrected` builds the retry (rung 4) of an unusable answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final, Literal

from engine.history import Message
from engine.llm.types import ChatMessage, ChatRequest, Completion
from engine.orchestrator.tools import (
    ACTION_KEY,
    BOT_NAME_ARG,
    END_SESSION,
    HOLD,
    REASON_ARG,
    SELECT_SPEAKER,
    Menu,
)
from engine.prompts import speaker_line, speaker_prefix
from engine.structured import StructuredMode, ask_for
from engine.tokens import TokenCounter
from engine.turn_view import TurnView

#: Whether the orchestrator answers with a tool call or with a JSON object.
Answer = Literal["tools", "json"]

# Tokens added per transcript line beyond its stored content count: the `Name: ` prefix
# is counted apart; this covers the line break and merges at the joins.
# max_tokens of the structured-output call: a JSON decision needs a few dozen tokens.
ORCHESTRATOR_STRUCTURED_MAX_TOKENS: Final = 96
_LINE_MARGIN: Final = 2
_LEFT_OUT: Final = "(earlier messages left out)"
_NOTHING_YET: Final = "(nothing has been said yet)"


def orchestrator_request(
    view: TurnView, menu: Menu, *, structured: StructuredMode | None = None
) -> ChatRequest:
    """The chat request for one decision: system prompt, conversation, tools.

    The conversation is the summary (if any) and the complete messages after it, as
    `Name: text` lines. When they would not fit in the session's context limit
    together with the system prompt and the tools, the oldest lines are left out;
    the latest message is always kept. With `structured`, the request asks for the
    decision as JSON fitting `menu.decision_schema()` in that way, instead of offering tools.
    """
    answer: Answer = "json" if structured is not None else "tools"
    system = orchestrator_system_prompt(view, menu, answer=answer)
    tools = menu.tools() if structured is None else []
    schema = menu.decision_schema()
    settings = view.settings
    counter = view.counter
    head = _conversation_head(view.summary)
    tail = _QUESTION[answer]
    described = json.dumps(schema) if structured else json.dumps([t.model_dump() for t in tools])
    fixed = counter.count_chat(
        [
            ChatMessage(role="system", content=system),
            ChatMessage(role="user", content=f"{head}\n{_LEFT_OUT}\n\n{tail}"),
        ]
    ) + counter.count(described)
    messages = view.since_summary()
    lines = _fit_newest(view.counter, messages, view.context_limit - fixed)
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
            model=view.model_for("orchestrator"),
            messages=prompt,
            max_tokens=ORCHESTRATOR_STRUCTURED_MAX_TOKENS,
            response_format=ask.response_format,
            extra=ask.extra,
        )
    return ChatRequest(
        model=view.model_for("orchestrator"),
        messages=prompt,
        tools=tools,
        tool_choice=settings.orchestrator_tool_choice,
    )


def _fit_newest(counter: TokenCounter, messages: Sequence[Message], budget: int) -> list[str]:
    """`Name: text` lines of the newest messages whose tokens fit in `budget` (at least one)."""
    lines: list[str] = []
    used = 0
    for message in reversed(messages):
        cost = message.tokens + counter.count(speaker_prefix(message.speaker)) + _LINE_MARGIN
        if lines and used + cost > budget:
            break
        lines.append(speaker_line(message))
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


def orchestrator_system_prompt(view: TurnView, menu: Menu, *, answer: Answer = "tools") -> str:
    """What the orchestrator is told: its job, the bots in full, the goal, how to choose.

    `answer` says whether it answers with a tool call or with a JSON object.
    """
    spec, options = view.spec, view.options
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
        "The bots, in their listed order:\n" + "\n".join(_roster_entries(view)),
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
        humans = _talker_names(view)
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


def _roster_entries(view: TurnView) -> list[str]:
    entries = []
    for number, bot in enumerate(view.spec.bots, start=1):
        role = f" (role: {bot.role})" if bot.role else ""
        prompt = bot.system_prompt.strip() or "(no instructions)"
        entries.append(f"{number}. {bot.name}{role}\n   Instructions: {prompt}")
    return entries


def _talker_names(view: TurnView) -> list[str]:
    bots = {name.casefold() for name in view.bot_names}
    names = [name for name in view.participant_names() if name.casefold() not in bots]
    for message in view.history.visible():
        if message.kind == "talker" and message.speaker not in names:
            names.append(message.speaker)
    return names


def corrected(request: ChatRequest, completion: Completion, menu: Menu) -> ChatRequest:
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
