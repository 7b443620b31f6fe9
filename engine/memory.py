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
raises: a failure is logged, and the interim memory is kept instead. The writer reads
the session through a `TurnView` and writes only to the store.
"""

from __future__ import annotations

from typing import Final

from engine.store.base import Store
from engine.summarizer import condense, interim_memory
from engine.turn_view import TurnView

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


async def write_memory(view: TurnView, store: Store) -> None:
    """Write the memory of an ending `memory: new`/`inherit` session into `store`.

    One LLM call in the usual case (more only when the messages since the last
    summary do not fit in the context limit). With no new messages the inherited
    memory and summary are passed on as they are. Never raises.
    """
    if view.options.memory_mode == "none":
        return
    try:
        text = await _compose(view)
    except Exception:
        view.log.exception("writing the memory failed")
        text = None
    if text is None:
        text = interim_memory(view.memory, view.summary)
        if text is None:
            return
        view.log.warning("memory call failed; keeping the memory known so far")
    try:
        await store.save_memory(view.session_id, text)
    except Exception:
        view.log.exception("could not store the memory")
        return
    view.log.info("memory written (%d tokens)", view.counter.count(text))


async def _compose(view: TurnView) -> str | None:
    """The new memory text, or None when the LLM could not write it."""
    pending = view.since_summary()
    if not pending:
        return interim_memory(view.memory, view.summary)
    result = await condense(
        view,
        instructions=MEMORY_INSTRUCTIONS,
        previous=_known_before(view),
        previous_label=_KNOWN_BEFORE,
        messages=pending,
        purpose="memory",
    )
    return result.text if result is not None else None


def _known_before(view: TurnView) -> str | None:
    sections = [
        f"{label}:\n{text.strip()}"
        for label, text in ((_INHERITED, view.memory), (_SUMMARY, view.summary))
        if text and text.strip()
    ]
    return "\n\n".join(sections) or None
