"""One bot turn: context, prompt, LLM call, reply hygiene.

The turn engine produces an outcome and never raises (except cancellation); the
loop records the outcome in history through the rectifier.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.context import select_context
from engine.errors import EmptyReply, FellowshipError
from engine.events import TokenEvent, TokenReset
from engine.hygiene import StreamCleaner, clean_reply
from engine.llm.client import RetryNotice
from engine.llm.errors import LLMError
from engine.llm.types import ChatMessage, ChatRequest, Completion, Usage
from engine.prompts import PromptParts, build_prompt, stop_sequences
from engine.rectifier import Slot
from engine.session import Session


@dataclass(slots=True)
class TurnOutcome:
    """What a turn produced: a clean reply, or the error that made it fail."""

    content: str = ""
    tokens: int = 0
    usage: Usage | None = None
    error: FellowshipError | None = None
    shown: bool = False  # whether `token` events of this attempt reached members
    reported: bool = False  # whether members were already told of `error` (an outage)

    @property
    def ok(self) -> bool:
        """Whether the turn produced a reply."""
        return self.error is None


def bot_prompt(session: Session, bot_name: str, context_upto: int | None) -> ChatRequest:
    """The chat request for `bot_name`, seeing the history up to `context_upto`."""
    bot = session.bot(bot_name)
    visible = session.history.visible(context_upto, after=session.summary_upto)
    context = select_context(visible, bot_name=bot.name, mode=session.options.context)
    settings = session.deps.settings
    parts = PromptParts(
        bot_name=bot.name,
        bot_system_prompt=bot.system_prompt,
        bot_role=bot.role,
        global_system_prompt=session.spec.system_prompt,
        memory=session.memory,
        summary=session.summary,
    )
    messages = build_prompt(
        parts, context, opening_line=settings.opening_line, continue_line=settings.continue_line
    )
    llm = session.spec.llm
    model = bot.model or (llm.model if llm else None) or settings.default_bot_model
    return ChatRequest(
        model=model,
        messages=messages,
        temperature=bot.temperature,
        max_tokens=bot.max_tokens,
        stop=stop_sequences(
            bot.name,
            session.participant_names(),
            context=context,
            limit=settings.max_stop_sequences,
        ),
        stream=session.options.stream_tokens,
    )


async def run_turn(session: Session, slot: Slot) -> TurnOutcome:
    """Generate `slot.bot`'s reply; failures come back as an outcome, not an exception.

    A reply that is empty once cleaned (typically a small model writing another
    character's line first) is asked for again, up to `EMPTY_REPLY_RETRIES` times, with
    `EMPTY_REPLY_NUDGE` added to the prompt so that the retry is not the same request.
    """
    settings = session.deps.settings
    request = bot_prompt(session, slot.bot, slot.context_upto)
    outcome = await _generate(session, slot, request)
    for _ in range(settings.empty_reply_retries):
        if not isinstance(outcome.error, EmptyReply):
            break
        session.log.info("%s's reply was empty after cleaning; asking again", slot.bot)
        if outcome.shown:
            session.emit(TokenReset(bot=slot.bot, turn=slot.turn))
        request = nudged(request, settings.empty_reply_nudge.replace("{name}", slot.bot))
        outcome = await _generate(session, slot, request)
    return outcome


def nudged(request: ChatRequest, nudge: str) -> ChatRequest:
    """`request` with `nudge` added to its last user message (or as one, if none ends it).

    Appending rather than adding a message keeps strict user/assistant alternation.
    """
    if not nudge:
        return request
    messages = list(request.messages)
    last = messages[-1] if messages else None
    if last is not None and last.role == "user":
        messages[-1] = last.model_copy(update={"content": f"{last.content}\n\n{nudge}"})
    else:
        messages.append(ChatMessage(role="user", content=nudge))
    return request.model_copy(update={"messages": messages})


async def _generate(session: Session, slot: Slot, request: ChatRequest) -> TurnOutcome:
    """One generation of `slot.bot`'s reply for `request`, streamed as `token` events."""
    others = [n for n in session.participant_names() if n != slot.bot]
    cleaner = StreamCleaner(slot.bot, others)
    shown = False

    def show(text: str) -> None:
        nonlocal shown
        if text:
            shown = True
            session.emit(TokenEvent(bot=slot.bot, turn=slot.turn, token=text))

    async def on_token(delta: str) -> None:
        show(cleaner.feed(delta))

    async def on_retry(notice: RetryNotice) -> None:
        nonlocal cleaner, shown
        if notice.streamed:
            # The retried stream starts over: members drop what they were shown.
            cleaner = StreamCleaner(slot.bot, others)
            shown = False
            session.emit(TokenReset(bot=slot.bot, turn=slot.turn))

    try:
        completion = await session.deps.llm.chat(
            request,
            backend=session.backend,
            on_token=on_token if request.stream else None,
            on_retry=on_retry,
            queue_key=session.id,
        )
    except LLMError as exc:
        session.log.warning("turn of %s failed: %s (%s)", slot.bot, exc.code, exc.message)
        return TurnOutcome(error=exc, shown=shown)
    if request.stream:
        show(cleaner.finish())
    _debug_call(session, slot.bot, request, completion)
    if completion.usage is not None:
        session.usage.add(slot.bot, completion.usage)
    cleaned = clean_reply(
        completion.content, own_name=slot.bot, other_names=others, reasoning=completion.reasoning
    )
    if not cleaned.content:
        return TurnOutcome(
            usage=completion.usage,
            shown=shown,
            error=EmptyReply(f"{slot.bot}'s reply was empty after cleaning"),
        )
    return TurnOutcome(
        content=cleaned.content,
        tokens=session.deps.counter.count(cleaned.content),
        usage=completion.usage,
        shown=shown,
    )


def _debug_call(session: Session, bot: str, request: ChatRequest, completion: Completion) -> None:
    if not session.debug_enabled:
        return  # counting the whole prompt is not free: only for debug
    usage = completion.usage
    session.debug(
        "llm_call",
        bot=bot,
        model=request.model,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        estimated_prompt_tokens=session.deps.counter.count_chat(request.messages),
        latency_ms=round(completion.latency_ms, 2),
        attempts=completion.attempts,
        finish_reason=completion.finish_reason,
        reasoning=completion.reasoning or None,
    )
