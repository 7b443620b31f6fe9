"""Memory carried across sessions (`options.memory`).

- `none`: nothing is written or read.
- `new`: when the session ends, one LLM call writes its memory — what happened and
  who said what that matters — and the store keeps it under the session's id.
- `inherit:<token>`: the manager loads the memory of the session that token opens
  (full token only) into `session.memory` at creation; prompts carry it in every
  bot's system message. At the end the session writes its own memory with the
  inherited one folded in, so a chain of sessions carries its whole story forward.

Between those points, each summarization stores an interim memory (inherited memory
+ summary, no LLM call; see `engine.summarizer.interim_memory`), so a successor made
before this session ends inherits what is known so far. Writing memory never
raises: a failure is logged, and the interim memory is kept instead.
"""

from __future__ import annotations

from typing import Final

from engine.session import Session
from engine.summarizer import condense, interim_memory

MEMORY_INSTRUCTIONS: Final = (
    "You write the memory a group conversation leaves for the next conversation with "
    "the same participants. Combine what was remembered before (if anything) with the "
    "new messages into one text: what happened, who said what that matters, positions "
    "taken, decisions, promises and open questions. Keep names exact. Write plain prose "
    "in the third person, as short as possible, with no preamble. Reply with the memory "
    "only."
)
_KNOWN_BEFORE: Final = "What was remembered before"
_INHERITED: Final = "Memory from earlier conversations"
_SUMMARY: Final = "Summary of the earlier part of this conversation"


async def write_memory(session: Session) -> None:
    """Write and store the memory of an ending `memory: new`/`inherit` session.

    One LLM call in the usual case (more only when the messages since the last
    summary do not fit in the context limit). With no new messages the inherited
    memory and summary are passed on as they are. Never raises.
    """
    if session.options.memory_mode == "none":
        return
    try:
        text = await _compose(session)
    except Exception:
        session.log.exception("writing the memory failed")
        text = None
    if text is None:
        text = interim_memory(session)
        if text is None:
            return
        session.log.warning("memory call failed; keeping the memory known so far")
    try:
        await session.deps.store.save_memory(session.id, text)
    except Exception:
        session.log.exception("could not store the memory")
        return
    session.log.info("memory written (%d tokens)", session.deps.counter.count(text))


async def _compose(session: Session) -> str | None:
    """The new memory text, or None when the LLM could not write it."""
    pending = [m for m in session.history.visible() if m.turn > session.summary_upto]
    if not pending:
        return interim_memory(session)
    result = await condense(
        session,
        instructions=MEMORY_INSTRUCTIONS,
        previous=_known_before(session),
        previous_label=_KNOWN_BEFORE,
        messages=pending,
        purpose="memory",
    )
    return result.text if result is not None else None


def _known_before(session: Session) -> str | None:
    sections = [
        f"{label}:\n{text.strip()}"
        for label, text in ((_INHERITED, session.memory), (_SUMMARY, session.summary))
        if text and text.strip()
    ]
    return "\n\n".join(sections) or None
