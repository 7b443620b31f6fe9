"""Prompt assembly: one system message, then the context as user/assistant turns.

Many local chat templates (Llama 2, Mistral, Gemma, ...) reject a second system
message and insist on user/assistant alternation starting with `user`. Every prompt
built here has that shape: `system`, then `user`, `assistant`, `user`, ... A bot's own
past messages are its `assistant` turns; everyone else's are `user` turns prefixed
with the speaker's name. See docs/prompts-and-context.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from engine.history import Message
from engine.llm.types import ChatMessage, Role

# Own messages that end up adjacent (a slot between them failed) stay separate paragraphs.
_OWN_JOINER = "\n\n"
# Other speakers' lines merged into one user turn read like a chat transcript.
_OTHERS_JOINER = "\n"
_SECTION_JOINER = "\n\n"
_BLANK_RUN = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_SENTENCE_END = (".", "!", "?")


class PromptParts(BaseModel):
    """Everything that goes into one bot's system message."""

    model_config = ConfigDict(frozen=True)

    bot_name: str = Field(min_length=1, description="The bot the prompt is for.")
    bot_system_prompt: str = Field("", description="The bot's own system prompt.")
    bot_role: str | None = Field(None, description="Free-text role hint, e.g. 'critic'.")
    global_system_prompt: str = Field("", description="The spec's prompt given to every bot.")
    memory: str | None = Field(None, description="Memory carried over, if any.")
    summary: str | None = Field(None, description="Summary of compacted history, if any.")


def system_prompt(parts: PromptParts) -> str:
    """The text of the single system message.

    In order: global system prompt, identity line (`You are <Name>.`, the role, and
    how to reply), the bot's own system prompt, then the memory and summary sections.
    Empty parts are left out; there is never more than one blank line in a row.
    """
    sections = [
        parts.global_system_prompt,
        _identity(parts.bot_name, parts.bot_role),
        parts.bot_system_prompt,
        _labelled("Memory from earlier conversations", parts.memory),
        _labelled("Summary of the conversation so far", parts.summary),
    ]
    text = _SECTION_JOINER.join(section.strip() for section in sections if section.strip())
    return _BLANK_RUN.sub("\n\n", text)


def speaker_prefix(speaker: str) -> str:
    """The `Name: ` that opens another speaker's line in every prompt."""
    return f"{speaker}: "


def speaker_line(message: Message) -> str:
    """`message` as a transcript line, `Name: text`: how prompts show other speakers."""
    return speaker_prefix(message.speaker) + message.content


def context_messages(
    context: Sequence[Message], *, bot_name: str, opening_line: str, continue_line: str
) -> list[ChatMessage]:
    """The context as strictly alternating user/assistant messages, starting with user.

    Only complete, non-blank messages are shown. The bot's own messages become
    `assistant` turns as written; all others become `Name: text` lines, and
    consecutive turns of the same role are merged. `opening_line` goes first when the
    result would be empty or start with `assistant`; `continue_line` (unless empty)
    goes last when it would end with `assistant`, so the backend writes a new reply
    instead of continuing the bot's previous one.
    """
    # Runs of one role are collected first and joined once: merging turn by turn would
    # copy the growing text and build a ChatMessage for every message of a long history.
    runs: list[tuple[Role, list[str]]] = []
    for message in context:
        if not message.visible_to_bots or not message.content.strip():
            continue
        role: Role
        if message.kind == "bot" and message.speaker == bot_name:
            role, text = "assistant", message.content
        else:
            role, text = "user", speaker_line(message)
        if runs and runs[-1][0] == role:
            runs[-1][1].append(text)
        else:
            runs.append((role, [text]))
    messages = [
        ChatMessage(
            role=role, content=(_OWN_JOINER if role == "assistant" else _OTHERS_JOINER).join(texts)
        )
        for role, texts in runs
    ]

    if not messages or messages[0].role == "assistant":
        messages.insert(0, ChatMessage(role="user", content=opening_line))
    if messages[-1].role == "assistant" and continue_line.strip():
        messages.append(ChatMessage(role="user", content=continue_line))
    return messages


def build_prompt(
    parts: PromptParts,
    context: Sequence[Message],
    *,
    opening_line: str,
    continue_line: str,
) -> list[ChatMessage]:
    """The full prompt for the bot of `parts`: its system message, then `context`.

    `context` is the already selected history (see `engine.context.select_context`),
    in history order. `opening_line` and `continue_line` come from the settings.
    """
    return [
        ChatMessage(role="system", content=system_prompt(parts)),
        *context_messages(
            context,
            bot_name=parts.bot_name,
            opening_line=opening_line,
            continue_line=continue_line,
        ),
    ]


def stop_sequences(
    bot_name: str,
    participant_names: Sequence[str],
    *,
    context: Sequence[Message] = (),
    limit: int,
) -> list[str]:
    """`\\nName:` stop sequences for the other participants, most relevant first.

    A model that starts a line with someone else's name is writing their turn. The
    candidates are the speakers of `context`, most recent first (the voices the model
    just read are the ones it imitates), then the rest of `participant_names` in the
    given order; the bot itself is never included (names compared ignoring case). At
    most `limit` are returned, since backends cap them (OpenAI at 4).
    """
    recent = [message.speaker for message in reversed(context) if message.visible_to_bots]
    own = bot_name.casefold()
    chosen: list[str] = []
    for name in [*recent, *participant_names]:
        if name.strip() and name.casefold() != own and name not in chosen:
            chosen.append(name)
    return [f"\n{name}:" for name in chosen[:limit]]


def _identity(name: str, role: str | None) -> str:
    lines = [f"You are {name}."]
    if role and role.strip():
        role_text = role.strip()
        lines.append(f"Your role: {role_text}{'' if role_text.endswith(_SENTENCE_END) else '.'}")
    lines.append(f"Reply as {name} only, in your own voice, without a name prefix.")
    return " ".join(lines)


def _labelled(label: str, text: str | None) -> str:
    if text is None or not text.strip():
        return ""
    return f"{label}:\n{text.strip()}"
