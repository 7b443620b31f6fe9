"""Forking a session: a new session that starts from a copy of another one's first turns.

`plan_fork` decides everything a fork is made of, from the source session and the
client's request, and changes nothing; `SessionManager.fork` then creates the new
session from the plan as it creates any other (new id, new tokens, its own loop). The
source goes on untouched. What the fork gets:

- **History**: positions 1..`at_turn`, exactly as they are — speakers, talker ids,
  times, token counts, backend usage, and tombstones as tombstones. A position that does
  not exist is refused (`TurnNotFound`), and so is a copy that would take a reserved
  slot, a reply still being written (`TurnInFlight`): its content is not known yet.
  Ended sessions fork like live ones.
- **Spec**: the source's spec with `overrides` merged over it (`merge_fork_overrides`),
  then checked exactly like a new spec (every problem with its path, 422). The source's
  API key stays with the fork unless the override sends another one or moves the
  session to another backend (`llm.base_url`): a key never follows a fork to a server
  it was not given for.
- **Summary**: the source keeps one summary, of positions 1..`summary_upto`. The fork
  takes it when it covers nothing past `at_turn` and the fork summarizes
  (`summarize_context`); otherwise it is dropped, and the fork's loop summarizes its own
  history again when its context reaches the threshold.
- **Memory**: memory inherited by the source (`memory: inherit`) came from before its
  first position, so it is true of every fork: it is copied. The memory the source is
  writing of itself is not (it may tell of turns after `at_turn`); a `memory: new` fork
  writes its own at its end. An override of `options.memory` is resolved as at creation.
- **Counters**: the copied bot positions count as bot turns (`max_turns` counts them,
  so a fork plays out what the source had left); `max_time` and `ttl` start afresh, and
  the fork's events are numbered from 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine.config import Settings
from engine.errors import InvalidSpec, SpecIssue, TurnInFlight, TurnNotFound
from engine.history import Message
from engine.session import Session
from engine.spec.checking import validate_spec_data
from engine.spec.library import deep_merge
from engine.spec.models import MEMORY_INHERIT_PREFIX, REDACTED, SessionSpec

ForkStart = Literal["paused", "running"]
"""How a fork starts: its loop paused (resume it when ready) or running at once."""

DEFAULT_FORK_START: ForkStart = "running"


@dataclass(frozen=True, slots=True)
class ForkPlan:
    """What a fork is made of; the manager turns it into a session."""

    source_id: str
    at_turn: int
    spec: SessionSpec
    warnings: list[str]
    messages: list[Message]
    summary: tuple[int, str] | None  # (the last position it covers, text)
    memory: str | None  # the source's inherited memory, when `memory_copied`
    memory_copied: bool  # False: the fork's `options.memory` is resolved as at creation

    @property
    def bot_turns(self) -> int:
        """Bot positions copied (tombstones included: they were dispatched turns)."""
        return sum(1 for message in self.messages if message.kind == "bot")


def plan_fork(
    source: Session, at_turn: int, overrides: Mapping[str, Any], settings: Settings
) -> ForkPlan:
    """Check a fork of `source` at `at_turn` with `overrides`, and say what it is made of.

    Raises `TurnNotFound`, `TurnInFlight`, or `InvalidSpec` (every problem of the merged
    spec, with its path). Changes nothing.
    """
    messages = copy_history(source.history.messages, at_turn)
    spec, warnings = fork_spec(source, overrides, settings)
    memory_copied = not _overrides_memory(overrides)
    summary: tuple[int, str] | None = None
    if (
        source.summary is not None
        and 0 < source.summary_upto <= at_turn
        and spec.options.summarize_context
    ):
        summary = (source.summary_upto, source.summary)
    return ForkPlan(
        source_id=source.id,
        at_turn=at_turn,
        spec=spec,
        warnings=warnings,
        messages=messages,
        summary=summary,
        memory=source.memory if memory_copied and spec.options.memory_mode == "inherit" else None,
        memory_copied=memory_copied,
    )


def copy_history(messages: Sequence[Message], at_turn: int) -> list[Message]:
    """Copies of positions 1..`at_turn`; refused when one does not exist or is reserved."""
    last = len(messages)
    if not 1 <= at_turn <= last:
        where = f"positions run from 1 to {last}" if last else "the history is empty"
        raise TurnNotFound(f"there is no position {at_turn} to fork at: {where}")
    copied = [message.model_copy(deep=True) for message in messages[:at_turn]]
    for message in copied:
        if message.status == "reserved":
            raise TurnInFlight(
                f"position {message.turn} is a reply still being written; fork at an earlier "
                "position, or once it is recorded"
            )
    return copied


def fork_spec(
    source: Session, overrides: Mapping[str, Any], settings: Settings
) -> tuple[SessionSpec, list[str]]:
    """The source's spec with `overrides` merged, checked like a new spec; and its warnings."""
    base = _fork_base(source.spec, overrides)
    result = validate_spec_data(merge_fork_overrides(base, overrides), settings=settings)
    spec = result.raise_for_errors()
    llm = spec.llm
    if (
        source.backend.unreadable_key is not None
        and (llm is None or llm.api_key is None)
        and _same_backend(source.spec, spec)
    ):
        raise InvalidSpec(
            [
                SpecIssue(
                    path="llm.api_key",
                    message="the source session's API key cannot be read with this server's "
                    "SECRET_KEY; send the key again in overrides",
                )
            ]
        )
    return spec, [str(warning) for warning in result.warnings]


def merge_fork_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` (a whole spec) with `overrides` merged over it.

    Mappings (`options`, `llm`, `sampling`, ...) are merged key by key, at any depth.
    `bots` is merged by name: an override whose `name` matches a bot (ignoring case) is
    merged into that bot, which keeps its name and place; an override with a new name
    adds a bot at the end. Any other value replaces the base's.
    """
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if key == "bots" and isinstance(current, list) and isinstance(value, list):
            merged[key] = _merge_bots(current, value)
        elif isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def resume_point(messages: Sequence[Message], participation: str) -> tuple[bool, int]:
    """Whether a loop over `messages` has started, and how many talker messages await a reply.

    As for a restored session: autonomous sessions have always started, the others once a
    talker has spoken; talker messages after the last bot position are still unanswered.
    """
    talker_turns = [m.turn for m in messages if m.kind == "talker"]
    last_bot = max((m.turn for m in messages if m.kind == "bot"), default=0)
    started = participation == "autonomous" or bool(talker_turns)
    return started, sum(1 for turn in talker_turns if turn > last_bot)


def _fork_base(spec: SessionSpec, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The source spec as data to merge over: secrets kept for the backend, except a key
    that would follow the fork to another backend, and no other session's token."""
    data = spec.storage_dict()
    if spec.options.memory_mode == "inherit":
        # The token proved access once, for the source; the fork copies the memory itself.
        data["options"]["memory"] = f"{MEMORY_INHERIT_PREFIX}{REDACTED}"
    llm_data = data.get("llm")
    llm_override = overrides.get("llm")
    if (
        isinstance(llm_data, dict)
        and isinstance(llm_override, Mapping)
        and "base_url" in llm_override
        and llm_override["base_url"] != llm_data.get("base_url")
    ):
        llm_data["api_key"] = None
    return data


def _same_backend(first: SessionSpec, second: SessionSpec) -> bool:
    def url(spec: SessionSpec) -> str | None:
        return spec.llm.base_url if spec.llm else None

    return url(first) == url(second)


def _overrides_memory(overrides: Mapping[str, Any]) -> bool:
    options = overrides.get("options")
    return isinstance(options, Mapping) and "memory" in options


def _merge_bots(base: list[Any], overrides: list[Any]) -> list[Any]:
    bots = list(base)
    by_name = {_name_key(bot): i for i, bot in enumerate(bots) if _name_key(bot) is not None}
    for entry in overrides:
        key = _name_key(entry)
        index = by_name.get(key) if key is not None else None
        if index is None or not isinstance(entry, Mapping):
            # A new bot (or something that is not one: the checks say what is wrong).
            if key is not None:
                by_name[key] = len(bots)
            bots.append(entry)
            continue
        current = bots[index]
        merged = deep_merge(current, entry)
        merged["name"] = current["name"]  # history names it so
        bots[index] = merged
    return bots


def _name_key(bot: object) -> str | None:
    if isinstance(bot, Mapping):
        name = bot.get("name")
        if isinstance(name, str) and name.strip():
            return name.strip().casefold()
    return None

