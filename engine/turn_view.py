"""What the parts of one turn see of a session: `TurnView`.

The turn engine, the speaker selectors, the summarizer and the memory writer each get
this narrow view, built by `Session.turn_view()` just before they run, instead of the
whole `Session`. It carries what they read (the spec, the settings, the history and
the summary over it, the token counter, the LLM client and backend) and the few sinks
they may use (events, debug events, the log, one warning). It offers no way to change
the session: a part that has something to keep returns it, and its caller applies it
(history through the Rectifier, a summary through `engine.summarizer.restore_summary`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from engine.config import Settings
from engine.errors import FellowshipError
from engine.events import BaseEvent, DebugCategory
from engine.history import History, Message
from engine.llm.client import Backend
from engine.llm.protocol import ChatClient
from engine.logs import SessionLogger
from engine.spec.models import BotSpec, SessionOptions, SessionSpec
from engine.tokens import TokenCounter

#: What an LLM call is for; each picks its model in `TurnView.model_for`.
Purpose = Literal["bot", "orchestrator", "summary", "memory"]


class DebugSink(Protocol):
    """Publishes a debug event when debug is on for the session (else does nothing)."""

    def __call__(self, category: DebugCategory, **data: Any) -> None:
        """Publish one debug event."""


@dataclass(frozen=True, slots=True)
class TurnView:
    """A session as one turn's parts see it: read-only state, the LLM, and event sinks.

    `history` is the session's own and stays live: a talker message posted during a
    call shows up in it. Everything else is as it was when the view was built.
    """

    session_id: str
    spec: SessionSpec
    settings: Settings
    history: History
    summary: str | None
    summary_upto: int  # the last position the summary covers (0: none)
    memory: str | None
    bot_turns: int  # bot turns dispatched so far
    context_tokens: int
    context_limit: int
    counter: TokenCounter
    llm: ChatClient
    backend: Backend
    participant_names: Callable[[], list[str]]  # bots, then talkers seen so far
    log: SessionLogger
    emit: Callable[[BaseEvent], None]
    debug: DebugSink
    debug_enabled: bool
    warn: Callable[[FellowshipError], None]  # a lasting warning: logged, kept, announced

    @property
    def options(self) -> SessionOptions:
        """The spec's options."""
        return self.spec.options

    @property
    def bot_names(self) -> list[str]:
        """Bot names in spec order."""
        return [bot.name for bot in self.spec.bots]

    def bot(self, name: str) -> BotSpec:
        """The bot called `name` (exact spec spelling)."""
        return next(bot for bot in self.spec.bots if bot.name == name)

    def since_summary(self, upto: int | None = None) -> list[Message]:
        """Complete messages after the summary, up to position `upto` (all when None)."""
        return self.history.visible(upto, after=self.summary_upto)

    def model_for(self, purpose: Purpose, bot: str | None = None) -> str:
        """The model asked for `purpose` (`bot` names the bot for a bot turn).

        A bot: its own `model`, else the spec's `llm.model`, else DEFAULT_BOT_MODEL. The
        orchestrator: `llm.orchestrator_model`, else DEFAULT_ORCHESTRATOR_MODEL. Summaries
        and memory: `llm.model`, else DEFAULT_BOT_MODEL.
        """
        llm = self.spec.llm
        if purpose == "orchestrator":
            chosen = llm.orchestrator_model if llm else None
            return chosen or self.settings.default_orchestrator_model
        own = self.bot(bot).model if purpose == "bot" and bot is not None else None
        return own or (llm.model if llm else None) or self.settings.default_bot_model
