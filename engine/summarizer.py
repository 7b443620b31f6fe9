"""Summarization: compact the older history into a summary when the context nears its limit.

With `summarize_context: true` the loop enters `summarizing` once the context reaches
`summarize_threshold` of the limit and calls `summarize`. The complete messages since
the previous summary, except a recent tail, are condensed by one LLM call that also
folds the previous summary in. Bots then get system + memory + summary + tail. The
history itself is never changed: only what goes into prompts is compacted.

`condense` is the LLM step, shared with memory writing (engine/memory.py). It keeps
every prompt it sends within the session's context limit: when the messages do not
fit in one call they are folded in chunks, each call taking the previous result as
its starting point, and a single message too long for any call is cut. Its result
is capped at `SUMMARY_MAX_SHARE` of the limit. See docs/context-limits.md.

`compact` and `condense` work on a `TurnView` and change nothing; `summarize`, the
loop's step, stores the summary `compact` returns and applies it to the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import tiktoken
from pydantic import BaseModel, Field

from engine.errors import LLMError
from engine.history import Message
from engine.llm.types import ChatMessage, ChatRequest
from engine.prompts import speaker_line
from engine.session import Session
from engine.store.base import StorageFailure
from engine.tokens import TokenCounter
from engine.turn_view import TurnView

# The condensing calls try once more after a failure (an LLM error or an empty reply).
CONDENSE_ATTEMPTS: Final = 2
# Tokens added per transcript line beyond its own count: the line break and merges at joins.
_LINE_MARGIN: Final = 2
_CUT_MARK: Final = " …"
# Stands for `previous` when measuring the prompt around the lines (the tokens of
# `previous` itself are budgeted apart).
_PLACEHOLDER: Final = "."
# A starting text is cut to the cap when it leaves less room than this many caps for
# the messages of a call (otherwise they would be folded in many tiny chunks).
_MIN_LINE_BUDGET: Final = 1

SUMMARY_INSTRUCTIONS: Final = (
    "You keep the running summary of a group conversation between several named "
    "participants. Rewrite the summary so that it covers the earlier summary (if any) "
    "and the new messages: who said what that matters, positions taken, questions still "
    "open, decisions and facts agreed. Keep names exact. Write plain prose in the third "
    "person, as short as possible, with no preamble. Reply with the summary only."
)
_PREVIOUS_SUMMARY: Final = "The summary so far"


#: What a condensing call writes: a running summary, or the memory of an ending session.
CondensePurpose = Literal["summary", "memory"]


class Condensed(BaseModel):
    """What `condense` produced."""

    text: str = Field(description="The condensed text, at most the cap in tokens.")
    calls: int = Field(description="LLM calls made, retries included.")
    cut: bool = Field(False, description="Whether some input or the output had to be cut.")


class Compaction(BaseModel):
    """A new summary that `compact` wrote, for the caller to store and apply."""

    text: str = Field(description="The summary, covering everything up to `upto`.")
    upto: int = Field(ge=1, description="The last history position the summary covers.")
    compacted: int = Field(description="Messages folded into the summary by this compaction.")
    kept: int = Field(description="Recent messages left out of it (the tail).")
    calls: int = Field(description="LLM calls made, retries included.")
    cut: bool = Field(description="Whether some input or the output had to be cut.")


def text_cap(view: TurnView) -> int:
    """Most tokens a summary or a memory may take: `SUMMARY_MAX_SHARE` of the limit."""
    return max(1, int(view.context_limit * view.settings.summary_max_share))


async def condense(
    view: TurnView,
    *,
    instructions: str,
    previous: str | None,
    previous_label: str,
    messages: Sequence[Message],
    purpose: CondensePurpose,
) -> Condensed | None:
    """Fold `messages` into `previous` with as few LLM calls as the limit allows.

    Each call's prompt is: `instructions` as the system message, then one user message
    with `previous` (under `previous_label`) and the messages as `Name: text` lines; its
    tokens never exceed the session's context limit. The messages are split into
    chunks that fit (usually one), each call's result becoming the next one's
    `previous`. A failed call is tried once more; if it fails again, None is returned.
    `purpose` picks the model and names the work in log lines.
    """
    counter = view.counter
    limit = view.context_limit
    cap = text_cap(view)
    cut = False
    # Room for the lines: the limit, less the prompt around them carrying the largest
    # `previous` any call has: the input's, or an earlier chunk's result (<= cap).
    frame = counter.count_chat(_prompt(instructions, previous_label, _PLACEHOLDER, ""))
    previous_tokens = counter.count(previous) if previous else 0
    budget = limit - frame - max(previous_tokens, cap)
    if budget < _MIN_LINE_BUDGET * cap and previous is not None and previous_tokens > cap:
        # A long starting text would leave little room for the messages: cut it to the cap.
        previous, cut = clip(counter.encoding, previous, cap), True
        budget = limit - frame - cap
    if budget <= _LINE_MARGIN:
        view.log.warning("context limit %d is too small to write a %s", limit, purpose)
        return None
    chunks, clipped = _chunks(counter, messages, budget)
    cut = cut or clipped
    calls = 0
    for chunk in chunks:
        request = ChatRequest(
            model=view.model_for(purpose),
            messages=_prompt(instructions, previous_label, previous or "", "\n".join(chunk)),
            max_tokens=cap,
        )
        text, made = await _call(view, request, purpose)
        calls += made
        if text is None:
            return None
        if counter.count(text) > cap:
            text, cut = clip(counter.encoding, text, cap), True
        previous = text
    if previous is None:
        return None
    return Condensed(text=previous, calls=calls, cut=cut)


def _prompt(instructions: str, label: str, previous: str, lines: str) -> list[ChatMessage]:
    sections = []
    if previous.strip():
        sections.append(f"{label}:\n{previous.strip()}")
    sections.append(f"New messages:\n{lines}")
    return [
        ChatMessage(role="system", content=instructions),
        ChatMessage(role="user", content="\n\n".join(sections)),
    ]


def _chunks(
    counter: TokenCounter, messages: Sequence[Message], budget: int
) -> tuple[list[list[str]], bool]:
    """Transcript lines grouped so that each group's tokens fit in `budget`."""
    chunks: list[list[str]] = []
    current: list[str] = []
    used = 0
    clipped = False
    for message in messages:
        line = speaker_line(message)
        cost = counter.count(line) + _LINE_MARGIN
        if cost > budget:
            line, clipped = clip(counter.encoding, line, budget - _LINE_MARGIN), True
            cost = budget
        if current and used + cost > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(line)
        used += cost
    if current:
        chunks.append(current)
    return chunks, clipped


async def _call(
    view: TurnView, request: ChatRequest, purpose: CondensePurpose
) -> tuple[str | None, int]:
    """The reply text of `request`, tried up to CONDENSE_ATTEMPTS times; (None, calls) if none."""
    for attempt in range(1, CONDENSE_ATTEMPTS + 1):
        try:
            completion = await view.llm.chat(
                request, backend=view.backend_for(purpose), queue_key=view.session_id
            )
        except LLMError as exc:
            view.log.warning("%s call %d failed: %s (%s)", purpose, attempt, exc.code, exc.message)
            continue
        text = completion.content.strip()
        if text:
            return text, attempt
        view.log.warning("%s call %d returned no text", purpose, attempt)
    return None, CONDENSE_ATTEMPTS


def clip(encoding: tiktoken.Encoding, text: str, tokens: int) -> str:
    """`text` cut to at most `tokens` tokens of `encoding`, marked with an ellipsis when cut."""
    ids = encoding.encode_ordinary(text)
    if len(ids) <= tokens:
        return text
    mark = len(encoding.encode_ordinary(_CUT_MARK))
    kept = encoding.decode(ids[: max(0, tokens - mark)]).rstrip()
    return f"{kept}{_CUT_MARK}" if kept else ""


# --- summarization ---------------------------------------------------------------------------


async def compact(view: TurnView) -> Compaction | None:
    """A new summary of the history before the recent tail, or None.

    The tail is the last `summary_tail` (or SUMMARY_TAIL_MESSAGES) complete messages;
    it is shortened when, even with a summary of the largest allowed size, it would
    leave the context at or over the threshold. None when nothing can be compacted or
    the LLM failed twice. Changes nothing: the caller stores and applies the result.
    """
    settings, options = view.settings, view.options
    pending = view.since_summary()
    tail_size = (
        options.summary_tail
        if options.summary_tail is not None
        else (settings.summary_tail_messages)
    )
    threshold = (options.summarize_threshold or settings.summarize_threshold) * (view.context_limit)
    summary_tokens = view.counter.count(view.summary) if view.summary else 0
    base = view.context_tokens - sum(m.tokens for m in pending) - summary_tokens
    keep = min(tail_size, len(pending))
    while keep > 0 and base + text_cap(view) + _tokens(pending[-keep:]) >= threshold:
        keep -= 1
    to_compact = pending[: len(pending) - keep]
    if not to_compact:
        view.log.warning(
            "context at %d of %d tokens but nothing left to summarize",
            view.context_tokens,
            view.context_limit,
        )
        return None
    result = await condense(
        view,
        instructions=SUMMARY_INSTRUCTIONS,
        previous=view.summary,
        previous_label=_PREVIOUS_SUMMARY,
        messages=to_compact,
        purpose="summary",
    )
    if result is None:
        view.log.warning("summarization failed; the context cannot be compacted")
        return None
    return Compaction(
        text=result.text,
        upto=to_compact[-1].turn,
        compacted=len(to_compact),
        kept=keep,
        calls=result.calls,
        cut=result.cut,
    )


async def summarize(session: Session) -> bool:
    """The loop's summarizing step: `compact`, then store the summary and apply it.

    Returns False, changing nothing, when `compact` found nothing to compact or the LLM
    failed; the loop then ends the session with `max_context`. On success the session's
    counts are updated, so `context_tokens` covers system + memory + summary + tail, and
    a `memory: new`/`inherit` session stores its interim memory.
    """
    view = session.turn_view()
    result = await compact(view)
    if result is None:
        return False
    try:
        await session.deps.store.save_summary(session.id, result.upto, result.text)
    except Exception as exc:
        raise StorageFailure(f"could not store the summary: {exc}") from exc
    restore_summary(session, result.upto, result.text)
    before, after = view.context_tokens, session.context_tokens
    session.debug(
        "summarization",
        upto=result.upto,
        compacted=result.compacted,
        kept=result.kept,
        calls=result.calls,
        cut=result.cut,
        tokens_before=before,
        tokens_after=after,
        limit=session.context_limit,
    )
    session.log.info(
        "context summarized up to turn %d: %d -> %d tokens (%d messages kept)",
        result.upto,
        before,
        after,
        result.kept,
    )
    await _keep_memory_current(session)
    return True


def restore_summary(session: Session, upto: int, text: str) -> None:
    """Set the session's summary covering positions up to `upto` (also used on restart)."""
    session.summary = text
    session.summary_upto = upto
    session.summarized_tokens = sum(m.tokens for m in session.history.visible(upto))
    session.refresh_extra_tokens()


def interim_memory(memory: str | None, summary: str | None) -> str | None:
    """What a `memory: new`/`inherit` session can pass on without an LLM call.

    The inherited `memory` followed by the current `summary`. Stored after each
    summarization, so that a successor created before this session ends still
    inherits what is known so far, and used when the final memory call fails.
    """
    parts = [text.strip() for text in (memory, summary) if text and text.strip()]
    return "\n\n".join(parts) or None


async def _keep_memory_current(session: Session) -> None:
    if session.options.memory_mode == "none":
        return
    text = interim_memory(session.memory, session.summary)
    if text is None:
        return
    try:
        await session.deps.store.save_memory(session.id, text)
    except Exception:
        # The final memory is written at the end; losing this interim copy is not fatal.
        session.log.exception("could not store the interim memory")


def _tokens(messages: Sequence[Message]) -> int:
    return sum(message.tokens for message in messages)
