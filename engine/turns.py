"""One bot turn: context, prompt, LLM call, reply hygiene.

The turn engine produces an outcome and never raises (except cancellation); the
loop records the outcome in history through the rectifier. A reply that is empty once
cleaned, or that repeats a recent message, is asked for again with a nudge.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.context import select_context
from engine.errors import EmptyReply, FellowshipError
from engine.events import TokenEvent, TokenReset
from engine.history import Message, add_usage
from engine.hygiene import (
    CleanReply,
    Recitals,
    StreamCleaner,
    clean_reply,
    find_repeat,
    recitals_of,
)
from engine.llm.client import RetryNotice
from engine.llm.errors import LLMError
from engine.llm.types import ChatMessage, ChatRequest, Completion, Usage
from engine.prompts import PromptParts, build_prompt, stop_sequences
from engine.rectifier import Slot
from engine.session import Session
from engine.spec.models import bot_sampling
from engine.template_watch import TemplateWatch

# The finish reason of a reply the backend stopped at max_tokens.
_CUT_SHORT = "length"


@dataclass(slots=True)
class TurnOutcome:
    """What a turn produced: a clean reply, or the error that made it fail."""

    content: str = ""
    tokens: int = 0
    usage: Usage | None = None
    error: FellowshipError | None = None
    shown: bool = False  # whether `token` events of this attempt reached members
    repeats: int | None = None  # the recent turn this reply repeats, if it does
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
    sampling = bot_sampling(bot, session.spec.sampling)
    return ChatRequest(
        model=model,
        messages=messages,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        frequency_penalty=sampling.frequency_penalty,
        presence_penalty=sampling.presence_penalty,
        seed=sampling.seed,
        extra=sampling.backend_options.payload() if sampling.backend_options else {},
        max_tokens=bot.max_tokens,
        stop=stop_sequences(
            bot.name,
            session.participant_names(),
            context=context,
            limit=settings.max_stop_sequences,
        ),
        stream=session.options.stream_tokens,
    )


async def run_turn(session: Session, slot: Slot, watch: TemplateWatch | None = None) -> TurnOutcome:
    """Generate `slot.bot`'s reply; failures come back as an outcome, not an exception.

    A reply that is empty once cleaned (typically a small model writing another
    character's line first) is asked for again, up to `EMPTY_REPLY_RETRIES` times, with
    `EMPTY_REPLY_NUDGE` added to the prompt so that the retry is not the same request.
    A reply that repeats one of the last `DUPLICATE_WINDOW` messages is asked for again
    the same way (`DUPLICATE_REPLY_RETRIES`, `DUPLICATE_REPLY_NUDGE`), with repetition
    penalties and the temperature raised (see `discouraged`); the retry's reply is kept
    even if it repeats again. `watch`, when given, sees every call and reply (see
    `engine.template_watch`).
    """
    settings = session.deps.settings
    request = bot_prompt(session, slot.bot, slot.context_upto)
    outcome = await _generate(session, slot, request, watch)
    empty_left, repeat_left = settings.empty_reply_retries, settings.duplicate_reply_retries
    while True:
        if isinstance(outcome.error, EmptyReply) and empty_left > 0:
            empty_left -= 1
            session.log.info("%s's reply was empty after cleaning; asking again", slot.bot)
            nudge = settings.empty_reply_nudge
        elif outcome.repeats is not None and repeat_left > 0:
            repeat_left -= 1
            session.log.info("%s's reply repeats turn %d; asking again", slot.bot, outcome.repeats)
            nudge = settings.duplicate_reply_nudge
            request = discouraged(request, session)
        else:
            return outcome
        if outcome.shown:
            session.emit(TokenReset(bot=slot.bot, turn=slot.turn))
        request = nudged(request, nudge.replace("{name}", slot.bot))
        spent = outcome.usage
        outcome = await _generate(session, slot, request, watch)
        outcome.usage = add_usage(spent, outcome.usage)  # the turn is charged every call


def discouraged(request: ChatRequest, session: Session) -> ChatRequest:
    """`request` made less likely to say the same again: repetition penalties and the
    temperature raised to the duplicate-retry settings, and the next seed if seeded.

    A value the bot already sets higher is kept.
    """
    settings = session.deps.settings
    frequency = settings.duplicate_retry_frequency_penalty
    presence = settings.duplicate_retry_presence_penalty
    temperature = settings.duplicate_retry_temperature
    return request.model_copy(
        update={
            "frequency_penalty": max(frequency, request.frequency_penalty or frequency),
            "presence_penalty": max(presence, request.presence_penalty or presence),
            "temperature": max(temperature, request.temperature or temperature),
            "seed": request.seed + 1 if request.seed is not None else None,
        }
    )


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


async def _generate(
    session: Session, slot: Slot, request: ChatRequest, watch: TemplateWatch | None
) -> TurnOutcome:
    """One generation of `slot.bot`'s reply for `request`, streamed as `token` events."""
    others = [n for n in session.participant_names() if n != slot.bot]
    cleaner = StreamCleaner(slot.bot, others)
    shown = False
    streamed: list[str] = []

    def show(text: str) -> None:
        nonlocal shown
        if text:
            shown = True
            streamed.append(text)
            session.emit(TokenEvent(bot=slot.bot, turn=slot.turn, token=text))

    async def on_token(delta: str) -> None:
        show(cleaner.feed(delta))

    async def on_retry(notice: RetryNotice) -> None:
        nonlocal cleaner, shown
        if notice.streamed:
            # The retried stream starts over: members drop what they were shown.
            cleaner = StreamCleaner(slot.bot, others)
            shown = False
            streamed.clear()
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
    if watch is not None:
        watch.observe_call(request, completion.usage)
    cleaned = clean_reply(
        completion.content,
        own_name=slot.bot,
        other_names=others,
        reasoning=completion.reasoning,
        recitals=_recitals(session),
        cut_short=completion.finish_reason == _CUT_SHORT and session.options.end_at_sentence,
    )
    if watch is not None:
        watch.observe_reply(empty=not cleaned.content)
    repeated = _repeated(session, slot, cleaned.content)
    _debug_hygiene(session, slot, cleaned, completion, repeated)
    if not cleaned.content:
        return TurnOutcome(
            usage=completion.usage,
            shown=shown,
            error=EmptyReply(f"{slot.bot}'s reply was empty after cleaning"),
        )
    if shown and cleaned.content != "".join(streamed):
        # A whole-reply rule changed what was streamed: members replace it.
        session.emit(TokenReset(bot=slot.bot, turn=slot.turn))
        session.emit(TokenEvent(bot=slot.bot, turn=slot.turn, token=cleaned.content))
    return TurnOutcome(
        content=cleaned.content,
        tokens=session.deps.counter.count(cleaned.content),
        usage=completion.usage,
        shown=shown,
        repeats=repeated.turn if repeated is not None else None,
    )


def _recitals(session: Session) -> Recitals:
    """What no reply may open by reciting: every bot's system message and the nudges."""
    settings = session.deps.settings
    texts = [session.system_text(bot) for bot in session.spec.bots]
    for nudge in (settings.empty_reply_nudge, settings.duplicate_reply_nudge):
        texts.extend(nudge.replace("{name}", name) for name in session.bot_names)
    return recitals_of(tuple(texts))


def _repeated(session: Session, slot: Slot, content: str) -> Message | None:
    """The recent message (of the last `DUPLICATE_WINDOW`) that `content` repeats, if any."""
    settings = session.deps.settings
    if not content or settings.duplicate_window <= 0:
        return None
    upto = slot.context_upto if slot.context_upto is not None else len(session.history)
    recent = session.history.visible(upto, after=max(0, upto - settings.duplicate_window))
    return find_repeat(content, recent)


def _debug_hygiene(
    session: Session,
    slot: Slot,
    cleaned: CleanReply,
    completion: Completion,
    repeated: Message | None,
) -> None:
    """A `hygiene` debug event when a rule changed the reply or it repeats a message."""
    rules = cleaned.rules
    if not session.debug_enabled or (not rules and repeated is None):
        return
    session.debug(
        "hygiene",
        bot=slot.bot,
        turn=slot.turn,
        rules=rules,
        finish_reason=completion.finish_reason,
        # How many lines, not the lines: they may quote another bot's system prompt.
        recited=len(cleaned.recited),
        repeated_sentences=cleaned.repeated_sentences,
        trimmed=cleaned.trimmed or None,
        repeats=repeated.turn if repeated is not None else None,
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
