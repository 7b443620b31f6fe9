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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from pydantic import BaseModel, Field

from engine.history import Message
from engine.llm.errors import LLMError
from engine.llm.types import ChatMessage, ChatRequest
from engine.session import Session
from engine.store.base import StorageFailure

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


class Condensed(BaseModel):
    """What `condense` produced."""

    text: str = Field(description="The condensed text, at most the cap in tokens.")
    calls: int = Field(description="LLM calls made, retries included.")
    cut: bool = Field(False, description="Whether some input or the output had to be cut.")


def text_cap(session: Session) -> int:
    """Most tokens a summary or a memory may take: `SUMMARY_MAX_SHARE` of the limit."""
    return max(1, int(session.context_limit * session.deps.settings.summary_max_share))


def utility_model(session: Session) -> str:
    """Model for summaries and memory: the session's `llm.model`, else DEFAULT_BOT_MODEL."""
    llm = session.spec.llm
    return (llm.model if llm else None) or session.deps.settings.default_bot_model


def transcript_line(message: Message) -> str:
    """A message as the condensing prompts show it: `Name: text`."""
    return f"{message.speaker}: {message.content}"


async def condense(
    session: Session,
    *,
    instructions: str,
    previous: str | None,
    previous_label: str,
    messages: Sequence[Message],
    purpose: str,
) -> Condensed | None:
    """Fold `messages` into `previous` with as few LLM calls as the limit allows.

    Each call's prompt is: `instructions` as the system message, then one user message
    with `previous` (under `previous_label`) and the messages as `Name: text` lines; its
    tokens never exceed the session's context limit. The messages are split into
    chunks that fit (usually one), each call's result becoming the next one's
    `previous`. A failed call is tried once more; if it fails again, None is returned.
    `purpose` names the work in log lines ("summary", "memory").
    """
    counter = session.deps.counter
    cap = text_cap(session)
    cut = False
    # Room for the lines: the limit, less the prompt around them carrying the largest
    # `previous` any call has: the input's, or an earlier chunk's result (<= cap).
    frame = counter.count_chat(_prompt(instructions, previous_label, _PLACEHOLDER, ""))
    previous_tokens = counter.count(previous) if previous else 0
    budget = session.context_limit - frame - max(previous_tokens, cap)
    if budget < _MIN_LINE_BUDGET * cap and previous is not None and previous_tokens > cap:
        # A long starting text would leave little room for the messages: cut it to the cap.
        previous, cut = clip(session, previous, cap), True
        budget = session.context_limit - frame - cap
    if budget <= _LINE_MARGIN:
        session.log.warning(
            "context limit %d is too small to write a %s", session.context_limit, purpose
        )
        return None
    chunks, clipped = _chunks(session, messages, budget)
    cut = cut or clipped
    calls = 0
    for chunk in chunks:
        request = ChatRequest(
            model=utility_model(session),
            messages=_prompt(instructions, previous_label, previous or "", "\n".join(chunk)),
            max_tokens=cap,
        )
        text, made = await _call(session, request, purpose)
        calls += made
        if text is None:
            return None
        if counter.count(text) > cap:
            text, cut = clip(session, text, cap), True
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
    session: Session, messages: Sequence[Message], budget: int
) -> tuple[list[list[str]], bool]:
    """Transcript lines grouped so that each group's tokens fit in `budget`."""
    counter = session.deps.counter
    chunks: list[list[str]] = []
    current: list[str] = []
    used = 0
    clipped = False
    for message in messages:
        line = transcript_line(message)
        cost = counter.count(line) + _LINE_MARGIN
        if cost > budget:
            line, clipped = clip(session, line, budget - _LINE_MARGIN), True
            cost = budget
        if current and used + cost > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(line)
        used += cost
    if current:
        chunks.append(current)
    return chunks, clipped


async def _call(session: Session, request: ChatRequest, purpose: str) -> tuple[str | None, int]:
    """The reply text of `request`, tried up to CONDENSE_ATTEMPTS times; (None, calls) if none."""
    for attempt in range(1, CONDENSE_ATTEMPTS + 1):
        try:
            completion = await session.deps.llm.chat(
                request, backend=session.backend, queue_key=session.id
            )
        except LLMError as exc:
            session.log.warning(
                "%s call %d failed: %s (%s)", purpose, attempt, exc.code, exc.message
            )
            continue
        text = completion.content.strip()
        if text:
            return text, attempt
        session.log.warning("%s call %d returned no text", purpose, attempt)
    return None, CONDENSE_ATTEMPTS


def clip(session: Session, text: str, tokens: int) -> str:
    """`text` cut to at most `tokens` tokens, marked with an ellipsis when cut."""
    encoding = session.deps.counter.encoding
    ids = encoding.encode_ordinary(text)
    if len(ids) <= tokens:
        return text
    mark = len(encoding.encode_ordinary(_CUT_MARK))
    kept = encoding.decode(ids[: max(0, tokens - mark)]).rstrip()
    return f"{kept}{_CUT_MARK}" if kept else ""


# --- summarization ---------------------------------------------------------------------------


async def summarize(session: Session) -> bool:
    """Compact the history before the recent tail into `session.summary`.

    The tail is the last `summary_tail` (or SUMMARY_TAIL_MESSAGES) complete messages;
    it is shortened when, even with a summary of the largest allowed size, it would
    leave the context at or over the threshold. Returns False, changing nothing, when
    nothing can be compacted or the LLM failed twice; the loop then ends the session
    with `max_context`. On success the summary is stored and the session's counts are
    updated, so `context_tokens` covers system + memory + summary + tail.
    """
    settings, options = session.deps.settings, session.options
    pending = [m for m in session.history.visible() if m.turn > session.summary_upto]
    tail_size = (
        options.summary_tail
        if options.summary_tail is not None
        else (settings.summary_tail_messages)
    )
    threshold = (options.summarize_threshold or settings.summarize_threshold) * (
        session.context_limit
    )
    counter = session.deps.counter
    summary_tokens = counter.count(session.summary) if session.summary else 0
    base = session.context_tokens - sum(m.tokens for m in pending) - summary_tokens
    keep = min(tail_size, len(pending))
    while keep > 0 and base + text_cap(session) + _tokens(pending[-keep:]) >= threshold:
        keep -= 1
    compact = pending[: len(pending) - keep]
    before = session.context_tokens
    if not compact:
        session.log.warning(
            "context at %d of %d tokens but nothing left to summarize",
            before,
            session.context_limit,
        )
        return False
    result = await condense(
        session,
        instructions=SUMMARY_INSTRUCTIONS,
        previous=session.summary,
        previous_label=_PREVIOUS_SUMMARY,
        messages=compact,
        purpose="summary",
    )
    if result is None:
        session.log.warning("summarization failed; the context cannot be compacted")
        return False
    upto = compact[-1].turn
    try:
        await session.deps.store.save_summary(session.id, upto, result.text)
    except Exception as exc:
        raise StorageFailure(f"could not store the summary: {exc}") from exc
    restore_summary(session, upto, result.text)
    after = session.context_tokens
    session.debug(
        "summarization",
        upto=upto,
        compacted=len(compact),
        kept=keep,
        calls=result.calls,
        cut=result.cut,
        tokens_before=before,
        tokens_after=after,
        limit=session.context_limit,
    )
    session.log.info(
        "context summarized up to turn %d: %d -> %d tokens (%d messages kept)",
        upto,
        before,
        after,
        keep,
    )
    await _keep_memory_current(session)
    return True


def restore_summary(session: Session, upto: int, text: str) -> None:
    """Set the session's summary covering positions up to `upto` (also used on restart)."""
    session.summary = text
    session.summary_upto = upto
    session.summarized_tokens = sum(m.tokens for m in session.history.visible() if m.turn <= upto)
    session.refresh_extra_tokens()


def interim_memory(session: Session) -> str | None:
    """What a `memory: new`/`inherit` session can pass on without an LLM call.

    The inherited memory followed by the current summary. Stored after each
    summarization, so that a successor created before this session ends still
    inherits what is known so far, and used when the final memory call fails.
    """
    parts = [text.strip() for text in (session.memory, session.summary) if text and text.strip()]
    return "\n\n".join(parts) or None


async def _keep_memory_current(session: Session) -> None:
    if session.options.memory_mode == "none":
        return
    text = interim_memory(session)
    if text is None:
        return
    try:
        await session.deps.store.save_memory(session.id, text)
    except Exception:
        # The final memory is written at the end; losing this interim copy is not fatal.
        session.log.exception("could not store the interim memory")


def _tokens(messages: Sequence[Message]) -> int:
    return sum(message.tokens for message in messages)
