"""One bot turn: context, prompt, LLM call, reply hygiene.

The turn engine produces an outcome and never raises (except cancellation); the
loop records the outcome in history through the rectifier. A reply that is empty once
cleaned, or that repeats a recent message, is asked for again with a nudge.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import Settings
from engine.context import select_context
from engine.errors import BackendTemplateMismatch, EmptyReply, FellowshipError, LLMError
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
from engine.llm.types import ChatMessage, ChatRequest, Completion, Usage
from engine.prompts import PromptParts, build_prompt, stop_sequences, system_prompt
from engine.rectifier import Slot
from engine.spec.models import BotSpec, bot_sampling
from engine.template_watch import TemplateWatch
from engine.turn_view import TurnView

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


def bot_prompt(view: TurnView, bot_name: str, context_upto: int | None) -> ChatRequest:
    """The chat request for `bot_name`, seeing the history up to `context_upto`."""
    bot = view.bot(bot_name)
    visible = view.since_summary(context_upto)
    context = select_context(visible, bot_name=bot.name, mode=view.options.context)
    settings = view.settings
    parts = _parts(view, bot, memory=view.memory, summary=view.summary)
    messages = build_prompt(
        parts, context, opening_line=settings.opening_line, continue_line=settings.continue_line
    )
    sampling = bot_sampling(bot, view.spec.sampling)
    return ChatRequest(
        model=view.model_for("bot", bot.name),
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
            view.participant_names(),
            context=context,
            limit=settings.max_stop_sequences,
        ),
        stream=view.options.stream_tokens,
    )


def _parts(
    view: TurnView, bot: BotSpec, *, memory: str | None = None, summary: str | None = None
) -> PromptParts:
    return PromptParts(
        bot_name=bot.name,
        bot_system_prompt=bot.system_prompt,
        bot_role=bot.role,
        global_system_prompt=view.spec.system_prompt,
        memory=memory,
        summary=summary,
    )


async def run_turn(view: TurnView, slot: Slot, watch: TemplateWatch | None = None) -> TurnOutcome:
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
    settings = view.settings
    request = bot_prompt(view, slot.bot, slot.context_upto)
    outcome = await _generate(view, slot, request, watch)
    empty_left, repeat_left = settings.empty_reply_retries, settings.duplicate_reply_retries
    while True:
        if isinstance(outcome.error, EmptyReply) and empty_left > 0:
            empty_left -= 1
            view.log.info("%s's reply was empty after cleaning; asking again", slot.bot)
            nudge = settings.empty_reply_nudge
        elif outcome.repeats is not None and repeat_left > 0:
            repeat_left -= 1
            view.log.info("%s's reply repeats turn %d; asking again", slot.bot, outcome.repeats)
            nudge = settings.duplicate_reply_nudge
            request = discouraged(request, settings)
        else:
            return outcome
        if outcome.shown:
            view.emit(TokenReset(bot=slot.bot, turn=slot.turn))
        request = nudged(request, nudge.replace("{name}", slot.bot))
        spent = outcome.usage
        outcome = await _generate(view, slot, request, watch)
        outcome.usage = add_usage(spent, outcome.usage)  # the turn is charged every call


def discouraged(request: ChatRequest, settings: Settings) -> ChatRequest:
    """`request` made less likely to say the same again: repetition penalties and the
    temperature raised to the duplicate-retry settings, and the next seed if seeded.

    A value the bot already sets higher is kept.
    """
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
    view: TurnView, slot: Slot, request: ChatRequest, watch: TemplateWatch | None
) -> TurnOutcome:
    """One generation of `slot.bot`'s reply for `request`, streamed as `token` events."""
    others = [n for n in view.participant_names() if n != slot.bot]
    cleaner = StreamCleaner(slot.bot, others)
    shown = False
    streamed: list[str] = []

    def show(text: str) -> None:
        nonlocal shown
        if text:
            shown = True
            streamed.append(text)
            view.emit(TokenEvent(bot=slot.bot, turn=slot.turn, token=text))

    async def on_token(delta: str) -> None:
        show(cleaner.feed(delta))

    async def on_retry(notice: RetryNotice) -> None:
        nonlocal cleaner, shown
        if notice.streamed:
            # The retried stream starts over: members drop what they were shown.
            cleaner = StreamCleaner(slot.bot, others)
            shown = False
            streamed.clear()
            view.emit(TokenReset(bot=slot.bot, turn=slot.turn))

    try:
        completion = await view.llm.chat(
            request,
            backend=view.backend_for("bot", slot.bot),
            on_token=on_token if request.stream else None,
            on_retry=on_retry,
            queue_key=view.session_id,
        )
    except LLMError as exc:
        view.log.warning("turn of %s failed: %s (%s)", slot.bot, exc.code, exc.message)
        return TurnOutcome(error=exc, shown=shown)
    if request.stream:
        show(cleaner.finish())
    _debug_call(view, slot.bot, request, completion)
    if watch is not None:
        _warn(view, watch.observe_call(request, completion.usage))
    cleaned = clean_reply(
        completion.content,
        own_name=slot.bot,
        other_names=others,
        reasoning=completion.reasoning,
        recitals=_recitals(view),
        cut_short=completion.finish_reason == _CUT_SHORT and view.options.end_at_sentence,
    )
    if watch is not None:
        _warn(view, watch.observe_reply(empty=not cleaned.content))
    repeated = _repeated(view, slot, cleaned.content)
    _debug_hygiene(view, slot, cleaned, completion, repeated)
    if not cleaned.content:
        return TurnOutcome(
            usage=completion.usage,
            shown=shown,
            error=EmptyReply(f"{slot.bot}'s reply was empty after cleaning"),
        )
    if shown and cleaned.content != "".join(streamed):
        # A whole-reply rule changed what was streamed: members replace it.
        view.emit(TokenReset(bot=slot.bot, turn=slot.turn))
        view.emit(TokenEvent(bot=slot.bot, turn=slot.turn, token=cleaned.content))
    return TurnOutcome(
        content=cleaned.content,
        tokens=view.counter.count(cleaned.content),
        usage=completion.usage,
        shown=shown,
        repeats=repeated.turn if repeated is not None else None,
    )


def _warn(view: TurnView, mismatch: BackendTemplateMismatch | None) -> None:
    if mismatch is not None:
        view.warn(mismatch)


def _recitals(view: TurnView) -> Recitals:
    """What no reply may open by reciting: every bot's system message and the nudges."""
    settings = view.settings
    # The system messages without memory and summary, as `Session.system_text` has them.
    texts = [system_prompt(_parts(view, bot)) for bot in view.spec.bots]
    for nudge in (settings.empty_reply_nudge, settings.duplicate_reply_nudge):
        texts.extend(nudge.replace("{name}", name) for name in view.bot_names)
    return recitals_of(tuple(texts))


def _repeated(view: TurnView, slot: Slot, content: str) -> Message | None:
    """The recent message (of the last `DUPLICATE_WINDOW`) that `content` repeats, if any."""
    settings = view.settings
    if not content or settings.duplicate_window <= 0:
        return None
    # Summarized messages count too: the window is about what was just said.
    upto = slot.context_upto if slot.context_upto is not None else len(view.history)
    recent = view.history.visible(upto, after=max(0, upto - settings.duplicate_window))
    return find_repeat(content, recent)


def _debug_hygiene(
    view: TurnView,
    slot: Slot,
    cleaned: CleanReply,
    completion: Completion,
    repeated: Message | None,
) -> None:
    """A `hygiene` debug event when a rule changed the reply or it repeats a message."""
    rules = cleaned.rules
    if not view.debug_enabled or (not rules and repeated is None):
        return
    view.debug(
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


def _debug_call(view: TurnView, bot: str, request: ChatRequest, completion: Completion) -> None:
    if not view.debug_enabled:
        return  # counting the whole prompt is not free: only for debug
    usage = completion.usage
    view.debug(
        "llm_call",
        bot=bot,
        model=request.model,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        estimated_prompt_tokens=view.counter.count_chat(request.messages),
        latency_ms=round(completion.latency_ms, 2),
        attempts=completion.attempts,
        finish_reason=completion.finish_reason,
        reasoning=completion.reasoning or None,
    )
