"""The status report of a session (what `GET /v1/session/{token}` returns)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from engine.llm.types import Usage


class MemberCounts(BaseModel):
    """Who is connected."""

    talkers: list[str] = Field(description="Display names of connected talkers.")
    observers: int = Field(description="Number of connected observers.")


class TokenReport(BaseModel):
    """Token accounting: Fellowship's own count and what the backend reported."""

    context: int = Field(description="Current context size (tiktoken count).")
    limit: int = Field(description="Context token limit of the session.")
    history: int = Field(description="Tokens of all complete history messages.")
    backend_prompt: int = Field(description="Sum of prompt_tokens the backend reported.")
    backend_completion: int = Field(description="Sum of completion_tokens the backend reported.")
    by_bot: dict[str, Usage] = Field(description="Backend-reported usage per bot.")


class LimitReport(BaseModel):
    """The session's limits (null when unlimited)."""

    max_turns: int | None = Field(description="Bot turns allowed.")
    max_time: float | None = Field(description="Seconds allowed since creation.")
    max_context_tokens: int = Field(description="Context token limit.")
    ttl: int = Field(description="Idle timeout in seconds.")


class BackendReport(BaseModel):
    """Which backend each part of the session speaks through, by name only.

    A name from the server's LLM_BACKENDS, `default` for the server's own backend
    (LLM_BASE_URL), or `llm.base_url` for the URL the spec gave. Never a URL or a key.
    """

    session: str = Field(description="The session's own backend, used where nothing else is named.")
    bots: dict[str, str] = Field(description="Each bot's backend, by bot name.")
    orchestrator: str = Field(description="Where orchestrator calls go (orchestrated sessions).")
    summarizer: str = Field(description="Where summaries and memory are written.")


class SessionStatus(BaseModel):
    """State, counters, members, usage and warnings of one session."""

    id: str = Field(description="Public session id.")
    name: str | None = Field(description="The spec's label.")
    state: str = Field(description="Lifecycle state: active, paused or ended.")
    loop_state: str = Field(description="State of the loop machine.")
    participation: str = Field(description="autonomous, reactive or collaborative.")
    turn_order: str = Field(description="round_robin or orchestrated.")
    created_at: datetime = Field(description="Creation time (UTC).")
    ended_at: datetime | None = Field(description="End time, if ended.")
    end_reason: str | None = Field(description="Why it ended, if it did.")
    bot_turns: int = Field(description="Bot turns dispatched so far.")
    messages: int = Field(description="History positions taken.")
    last_seq: int = Field(description="Seq of the latest event.")
    members: MemberCounts = Field(description="Connected members.")
    tokens: TokenReport = Field(description="Token accounting.")
    limits: LimitReport = Field(description="Limits in force.")
    backends: BackendReport = Field(description="Which backend each bot and helper uses.")
    backend_outage: str | None = Field(
        None,
        description="While a turn waits for an LLM backend that cannot be reached: why "
        "(the `backend_unreachable` error event says it once; this stays until it answers).",
    )
    warnings: list[str] = Field(
        description="Warnings: from spec validation, and backend problems found while the "
        "session ran (`backend_template_mismatch: ...`)."
    )
