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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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

#: What an LLM call is for; each picks its backend and model in `TurnView.backend_for`
#: and `TurnView.model_for`.
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
    # The LLM_BACKENDS the spec names for a bot, the orchestrator or the summarizer (by
    # name, resolved when the session was made); `backend` serves everything else.
    backends: Mapping[str, Backend] = field(default_factory=dict)

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

    def backend_name(self, purpose: Purpose, bot: str | None = None) -> str | None:
        """The LLM_BACKENDS name the spec gives `purpose` itself, or None for the session's.

        A bot: its `backend`. The orchestrator: `llm.orchestrator_backend`. Summaries and
        memory: `llm.summarizer_backend`.
        """
        llm = self.spec.llm
        if purpose == "bot":
            return self.bot(bot).backend if bot is not None else None
        if llm is None:
            return None
        if purpose == "orchestrator":
            return llm.orchestrator_backend
        return llm.summarizer_backend

    def backend_for(self, purpose: Purpose, bot: str | None = None) -> Backend:
        """Where calls for `purpose` go (`bot` names the bot for a bot turn).

        The backend the spec names for that purpose (`backend_name`), else the session's
        own: `llm.backend`, else `llm.base_url`, else the server's LLM_BASE_URL. A name
        the server no longer has (a session restored after LLM_BACKENDS changed) falls
        back to the session's backend.
        """
        name = self.backend_name(purpose, bot)
        chosen = self.backends.get(name) if name is not None else None
        return chosen or self.backend

    def model_for(self, purpose: Purpose, bot: str | None = None) -> str:
        """The model asked for `purpose` (`bot` names the bot for a bot turn).

        The most specific setting wins:

        - a bot: its own `model`, the `model` of its own backend (LLM_BACKENDS),
          `llm.model`, the `model` of `llm.backend`, DEFAULT_BOT_MODEL;
        - the orchestrator: `llm.orchestrator_model`, the model of
          `llm.orchestrator_backend`, the model of `llm.backend`, DEFAULT_ORCHESTRATOR_MODEL;
        - summaries and memory: the model of `llm.summarizer_backend`, `llm.model`, the
          model of `llm.backend`, DEFAULT_BOT_MODEL.
        """
        llm = self.spec.llm
        own_backend = self._model_of(self.backend_name(purpose, bot))
        session_backend = self._model_of(llm.backend if llm else None)
        if purpose == "orchestrator":
            chosen = llm.orchestrator_model if llm else None
            return (
                chosen
                or own_backend
                or session_backend
                or self.settings.default_orchestrator_model
            )
        own = self.bot(bot).model if purpose == "bot" and bot is not None else None
        return (
            own
            or own_backend
            or (llm.model if llm else None)
            or session_backend
            or self.settings.default_bot_model
        )

    def _model_of(self, name: str | None) -> str | None:
        """The model LLM_BACKENDS gives the backend called `name`, if any."""
        backend = self.backends.get(name) if name is not None else None
        return backend.model if backend is not None else None
