"""The session spec as pydantic models: the one definition of what a client may submit.

These models check everything that can be judged from a single field: types, ranges,
allowed values, bot-name shape and the `memory` syntax. Rules that need the server's
configuration or a view of the whole document (how many bots, unique names, text
length caps, `orchestrated` needing three bots) live in `engine.spec.checking`, so the
models stay importable without settings.

Unknown keys are ignored here (`extra="ignore"`); the loader reports them as warnings.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
)
from pydantic_core import PydanticCustomError

from engine.input_text import has_control_chars
from engine.structured import StructuredSetting

# Both numbers are part of the spec contract (SPEC §2), not tunable server limits.
BOT_NAME_MAX_CHARS: Final = 64
ORCHESTRATED_MIN_BOTS: Final = 3
BACKEND_NAME_MAX_CHARS: Final = 64  # as LLM_BACKENDS allows (engine.config)

Participation = Literal["autonomous", "reactive", "collaborative"]
TurnOrder = Literal["round_robin", "orchestrated"]
ContextMode = Literal["shared", "scoped"]
MemoryMode = Literal["none", "new", "inherit"]

# The bot-name rule as a JSON Schema pattern, for the schema to say exactly what the
# validators below accept: 1 to BOT_NAME_MAX_CHARS characters once the blanks around
# them are trimmed (pydantic trims Unicode White_Space), no control character in those.
_BLANKS = r"\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CONTROLS = r"\x00-\x1f\x7f"
BOT_NAME_PATTERN: Final = (
    f"^[{_BLANKS}]*[^{_BLANKS}{_CONTROLS}]"
    f"(?:[^{_CONTROLS}]{{0,{BOT_NAME_MAX_CHARS - 2}}}[^{_BLANKS}{_CONTROLS}])?[{_BLANKS}]*$"
)

MEMORY_INHERIT_PREFIX: Final = "inherit:"
MEMORY_PATTERN: Final = r"^\s*(none|new|inherit:\s*\S.*)\s*$"
# What replaces an inherited session's token wherever a spec is shown back.
REDACTED: Final = "***"
# Where a stored spec keeps secrets the server must use again: they are stored encrypted
# (engine.store.secrets). A new secret field of the spec belongs here.
SECRET_FIELDS: Final[tuple[tuple[str, ...], ...]] = (("llm", "api_key"),)


def _refuse_bool(value: object) -> object:
    # Lax pydantic turns `true` into 1; in a spec that is always a mistake.
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "must be a number, not true/false")
    return value


def _blank_to_none(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _check_bot_name(value: str) -> str:
    if has_control_chars(value):
        raise PydanticCustomError(
            "bot_name", "must not contain line breaks, tabs or other control characters"
        )
    return value


def _bot_name_schema(schema: dict[str, Any]) -> None:
    # The length counts after trimming, which only the pattern can say.
    schema.pop("minLength", None)
    schema.pop("maxLength", None)
    schema["pattern"] = BOT_NAME_PATTERN


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PydanticCustomError(
            "url", "must be an http:// or https:// URL such as http://127.0.0.1:8080/v1"
        )
    return value


def parse_memory(value: str) -> tuple[MemoryMode, str | None]:
    """Split a `memory` value into its mode and (for `inherit:`) the session token.

    Raises `ValueError` when the value is not `none`, `new` or `inherit:<token>`.
    """
    text = value.strip()
    if text == "none":
        return "none", None
    if text == "new":
        return "new", None
    if text.startswith(MEMORY_INHERIT_PREFIX):
        token = text[len(MEMORY_INHERIT_PREFIX) :].strip()
        if token:
            return "inherit", token
        raise ValueError("inherit: must be followed by the token of an earlier session")
    raise ValueError("must be none, new or inherit:<token of an earlier session>")


Number = BeforeValidator(_refuse_bool)
BotName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=BOT_NAME_MAX_CHARS),
    AfterValidator(_check_bot_name),
]
# Optional short texts: surrounding blanks trimmed, an empty value means "not set".
Label = Annotated[str | None, BeforeValidator(_blank_to_none)]
StrippedLabel = Annotated[
    Annotated[str, StringConstraints(strip_whitespace=True)] | None,
    BeforeValidator(_blank_to_none),
]
# A name from the server's LLM_BACKENDS; whether it is one is checked with the settings.
_BackendNameText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=BACKEND_NAME_MAX_CHARS)
]
BackendName = Annotated[_BackendNameText | None, BeforeValidator(_blank_to_none)]


class _SpecModel(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


Probability = Annotated[float, Field(ge=0, le=1), Number]
Penalty = Annotated[float, Field(ge=-2, le=2), Number]
Temperature = Annotated[float, Field(ge=0, le=2), Number]
Seed = Annotated[int, Field(ge=0), Number]


class BackendOptions(_SpecModel):
    """Sampling settings only some backends know, sent to the backend as they are.

    llama.cpp's `llama-server` and llama-cpp-python read all of them (vLLM reads `top_k`
    and `min_p`); OpenAI refuses unknown fields, so leave this out for OpenAI.
    """

    repeat_penalty: Annotated[float, Field(ge=0, le=10), Number] | None = Field(
        None,
        description="llama.cpp: penalty for repeating recent tokens (1 is off; 1.1 to 1.3 "
        "curbs loops).",
    )
    repeat_last_n: Annotated[int, Field(ge=-1), Number] | None = Field(
        None,
        description="llama.cpp: how many recent tokens repeat_penalty looks at (-1: the "
        "whole context, 0: off).",
    )
    top_k: Annotated[int, Field(ge=0), Number] | None = Field(
        None, description="Sample only from the k most likely tokens (0: no limit)."
    )
    min_p: Probability | None = Field(
        None, description="Drop tokens less likely than this share of the most likely one."
    )
    dry_multiplier: Annotated[float, Field(ge=0, le=10), Number] | None = Field(
        None,
        description="llama.cpp DRY (don't repeat yourself) strength; 0 is off, 0.8 a usual value.",
    )
    dry_base: Annotated[float, Field(ge=1, le=10), Number] | None = Field(
        None, description="llama.cpp DRY: how fast the penalty grows with the repeat length."
    )
    dry_allowed_length: Annotated[int, Field(ge=0), Number] | None = Field(
        None, description="llama.cpp DRY: longest repeated run of tokens left unpenalised."
    )
    dry_penalty_last_n: Annotated[int, Field(ge=-1), Number] | None = Field(
        None,
        description="llama.cpp DRY: how many recent tokens are scanned (-1: the whole "
        "context, 0: off).",
    )
    dry_sequence_breakers: list[str] | None = Field(
        None,
        description="llama.cpp DRY: strings that end a repeated run (default: newline, "
        "colon, quote, asterisk).",
    )

    def payload(self) -> dict[str, Any]:
        """The fields that are set, as sent to the backend."""
        return self.model_dump(exclude_none=True)


class Sampling(_SpecModel):
    """Sampling settings for every bot of the session (a bot's own values win)."""

    temperature: Temperature | None = Field(
        None, description="Sampling temperature, 0 to 2. Unset: the backend's default."
    )
    top_p: Probability | None = Field(
        None, description="Nucleus sampling: keep the most likely tokens up to this share, 0 to 1."
    )
    frequency_penalty: Penalty | None = Field(
        None,
        description="-2 to 2: penalise tokens by how often they already appear (against "
        "repetition).",
    )
    presence_penalty: Penalty | None = Field(
        None, description="-2 to 2: penalise tokens that already appear at all (new topics)."
    )
    seed: Seed | None = Field(
        None, description="Sampling seed, for repeatable replies where the backend honours it."
    )
    backend_options: BackendOptions | None = Field(
        None,
        description="Backend-specific settings (llama.cpp repeat_penalty, DRY, top_k, min_p), "
        "sent as they are.",
    )


class BotSpec(_SpecModel):
    """One bot: an LLM participant with its own name, prompt and model settings."""

    name: BotName = Field(
        description=(
            "Name the bot speaks under and is addressed by. Required, 1 to "
            f"{BOT_NAME_MAX_CHARS} characters, unique within the session ignoring case, "
            "no line breaks."
        ),
        examples=["Alice"],
        json_schema_extra=_bot_name_schema,
    )
    system_prompt: str = Field(
        "",
        description="The bot's own instructions, placed after the global system prompt. "
        "Other bots never see it.",
    )
    role: StrippedLabel = Field(
        None,
        description="Free-text hint about the bot's part (e.g. critic, moderator), shown to "
        "the orchestrator.",
        examples=["moderator"],
    )
    temperature: Temperature | None = Field(
        None,
        description="Sampling temperature for this bot's replies, 0 to 2. Unset: the "
        "session's sampling.temperature, else the backend's default.",
    )
    top_p: Probability | None = Field(
        None, description="Nucleus sampling share for this bot, 0 to 1. Unset: sampling.top_p."
    )
    frequency_penalty: Penalty | None = Field(
        None,
        description="Frequency penalty for this bot, -2 to 2. Unset: sampling.frequency_penalty.",
    )
    presence_penalty: Penalty | None = Field(
        None,
        description="Presence penalty for this bot, -2 to 2. Unset: sampling.presence_penalty.",
    )
    seed: Seed | None = Field(None, description="Sampling seed for this bot. Unset: sampling.seed.")
    backend_options: BackendOptions | None = Field(
        None,
        description="Backend-specific sampling settings for this bot, merged key by key over "
        "sampling.backend_options.",
    )
    model: StrippedLabel = Field(
        None,
        description="Model for this bot. Unset: llm.model of the session, else the "
        "server's DEFAULT_BOT_MODEL.",
        examples=["llama3.1:8b"],
    )
    max_tokens: Annotated[int, Field(ge=1), Number] | None = Field(
        None,
        description="Longest reply in tokens for this bot. Unset: no limit is sent to the backend.",
    )
    backend: BackendName = Field(
        None,
        description="Name of one of the server's LLM_BACKENDS this bot speaks through. "
        "Unset: the session's backend (llm.backend, llm.base_url, else LLM_BASE_URL).",
        examples=["ollama"],
    )


def bot_sampling(bot: BotSpec, session: Sampling | None) -> Sampling:
    """The sampling settings `bot` uses: its own values, else the session's, key by key.

    `backend_options` are merged key by key too, the bot's winning.
    """
    base = session or Sampling()
    values: dict[str, Any] = {}
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"):
        own = getattr(bot, name)
        values[name] = own if own is not None else getattr(base, name)
    extras = {
        **(base.backend_options.payload() if base.backend_options else {}),
        **(bot.backend_options.payload() if bot.backend_options else {}),
    }
    values["backend_options"] = BackendOptions(**extras) if extras else None
    return Sampling(**values)


class SessionOptions(_SpecModel):
    """How the conversation runs: who may speak, in what order, and when it ends."""

    participation: Participation = Field(
        "autonomous",
        description="autonomous: bots only, starts at once. reactive: bots answer each "
        "talker message, then wait. collaborative: bots converse on their own once a "
        "talker has spoken, and talker messages join in as they arrive.",
    )
    turn_order: TurnOrder = Field(
        "round_robin",
        description="round_robin: bots speak in spec order. orchestrated: a hidden LLM call "
        f"picks each next speaker (needs at least {ORCHESTRATED_MIN_BOTS} bots).",
    )
    goal: Label = Field(
        None,
        description="What the conversation should achieve. Given to the orchestrator, which "
        "may then end the session once the goal is met.",
    )
    max_talkers: Annotated[int, Number] = Field(
        1,
        ge=0,
        description="Most talkers (humans who write) connected at once. Observers are unlimited.",
    )
    rectify_history: bool = Field(
        True,
        description="Reserve a bot's history position when its call is dispatched, so talker "
        "messages sent during generation land after the reply. false: positions follow "
        "arrival order.",
    )
    max_turns: Annotated[int, Field(ge=1), Number] | None = Field(
        None, description="End the session after this many bot turns. Unset: no limit."
    )
    max_time: Annotated[float, Field(gt=0), Number] | None = Field(
        None,
        description="End the session this many seconds after creation. Unset: no limit.",
    )
    max_context_tokens: Annotated[int, Field(ge=64), Number] | None = Field(
        None,
        description="Context size limit in tokens. Unset: the server's DEFAULT_CONTEXT_LIMIT.",
    )
    summarize_context: bool = Field(
        False,
        description="true: compact older history into a summary when the context nears its "
        "limit. false: end the session (reason max_context) when the limit is reached.",
    )
    summarize_threshold: Annotated[float, Field(gt=0, lt=1), Number] | None = Field(
        None,
        description="Fraction of the context limit at which summarizing starts, between 0 "
        "and 1. Unset: the server's SUMMARIZE_THRESHOLD.",
    )
    summary_tail: Annotated[int, Field(ge=0), Number] | None = Field(
        None,
        description="Recent messages kept word for word after a summary. Unset: the server's "
        "SUMMARY_TAIL_MESSAGES.",
    )
    context: ContextMode = Field(
        "shared",
        description="shared: every bot sees the whole conversation. scoped: a bot sees only "
        "its own messages, the message just before each of them, and messages that mention "
        "its name.",
    )
    stream_tokens: bool = Field(
        False, description="Send a token event for every streamed piece of a bot's reply."
    )
    memory: str = Field(
        "none",
        repr=False,  # may carry another session's token
        description="none: no memory. new: this session writes a memory when it ends or "
        "summarizes. inherit:<token>: start from the memory of the earlier session that "
        "token opens, and continue its chain.",
        json_schema_extra={"pattern": MEMORY_PATTERN},
        examples=["none", "new", "inherit:<token of an earlier session>"],
    )
    debug: bool = Field(
        False, description="Emit debug events (LLM calls, orchestrator, loop states, tokens)."
    )
    ttl: Annotated[int, Field(ge=1), Number] | None = Field(
        None,
        description="Idle timeout in seconds: with no connected member and no API call for "
        "this long, the session ends. Unset: the server's SESSION_TTL_DEFAULT.",
    )
    replies_per_message: Annotated[int, Number] = Field(
        1,
        ge=1,
        description="reactive mode: how many bot turns follow each batch of talker messages.",
    )
    turn_delay: Annotated[float, Number] = Field(
        0,
        ge=0,
        description="collaborative mode: pause in seconds between consecutive bot turns.",
    )
    end_at_sentence: bool = Field(
        True,
        description="A reply cut short by a bot's max_tokens ends at its last whole sentence "
        "(when it has one). false: keep the cut text as it is.",
    )

    @field_validator("memory")
    @classmethod
    def _normalize_memory(cls, value: str) -> str:
        try:
            mode, token = parse_memory(value)
        except ValueError as exc:
            raise PydanticCustomError("memory", str(exc)) from None
        return f"{MEMORY_INHERIT_PREFIX}{token}" if mode == "inherit" else mode

    @property
    def memory_mode(self) -> MemoryMode:
        """`none`, `new` or `inherit`."""
        return parse_memory(self.memory)[0]

    @property
    def memory_token(self) -> str | None:
        """The earlier session's token for `inherit:<token>`, else None. A secret."""
        return parse_memory(self.memory)[1]


class LLMOverride(_SpecModel):
    """A per-session backend: where this session's LLM calls go instead of the default."""

    base_url: Annotated[str, AfterValidator(_check_url)] | None = Field(
        None,
        description="Base URL of an OpenAI-compatible backend (ends in /v1). Only hosts in "
        "the server's ALLOWED_LLM_HOSTS are accepted. Unset: the server's LLM_BASE_URL.",
        examples=["http://127.0.0.1:8080/v1"],
        json_schema_extra={"format": "uri"},
    )
    api_key: SecretStr | None = Field(
        None,
        description="API key for that backend. Stored encrypted (the server's SECRET_KEY), "
        "never logged and never returned by the API.",
    )
    model: StrippedLabel = Field(
        None,
        description="Default model of this session's bots (a bot's own model wins).",
    )
    orchestrator_model: StrippedLabel = Field(
        None,
        description="Model for orchestrator calls. Unset: the server's DEFAULT_ORCHESTRATOR_MODEL.",
    )
    structured_output: StructuredSetting | None = Field(
        None,
        description="How the orchestrator asks this backend for a JSON decision: json_schema, "
        "json_object, format (Ollama), off, or auto. Unset: the server's LLM_STRUCTURED_OUTPUT.",
    )
    backend: BackendName = Field(
        None,
        description="Name of one of the server's LLM_BACKENDS for this session's calls, "
        "instead of base_url and api_key (not together with them).",
        examples=["vllm"],
    )
    orchestrator_backend: BackendName = Field(
        None,
        description="Name of one of the server's LLM_BACKENDS for orchestrator calls. "
        "Unset: the session's backend.",
    )
    summarizer_backend: BackendName = Field(
        None,
        description="Name of one of the server's LLM_BACKENDS for summaries and memory. "
        "Unset: the session's backend.",
    )


class SessionSpec(_SpecModel):
    """A whole session spec: the bots, the options and an optional backend override."""

    model_config = ConfigDict(
        title="Fellowship session spec",
        # The one rule between two fields that a JSON Schema can say as well.
        json_schema_extra={
            "if": {
                "properties": {
                    "options": {"properties": {"turn_order": {"const": "orchestrated"}}}
                },
                "required": ["options"],
            },
            "then": {"properties": {"bots": {"minItems": ORCHESTRATED_MIN_BOTS}}},
        },
    )

    version: Literal[1] = Field(1, description="Spec format version. Only 1 exists.")
    name: StrippedLabel = Field(
        None, description="Label for the session, shown in status and the console."
    )
    system_prompt: str = Field(
        "", description="Global instructions given to every bot, before its own prompt."
    )
    bots: list[BotSpec] = Field(
        min_length=1,
        description="The bots, in speaking order for round_robin. At least one; at most the "
        "server's MAX_BOTS_PER_SESSION.",
    )
    options: SessionOptions = Field(
        default_factory=SessionOptions, description="How the session runs; every key optional."
    )
    sampling: Sampling | None = Field(
        None,
        description="Sampling settings for every bot (temperature, top_p, penalties, seed, "
        "backend options); a bot's own values win.",
    )
    llm: LLMOverride | None = Field(
        None, description="Send this session's calls to another backend or model."
    )

    def named_backends(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Every LLM_BACKENDS name the spec uses, with the path of the field that names it."""
        named: list[tuple[tuple[str | int, ...], str]] = [
            (("bots", index, "backend"), bot.backend)
            for index, bot in enumerate(self.bots)
            if bot.backend is not None
        ]
        if self.llm is not None:
            for field in ("backend", "orchestrator_backend", "summarizer_backend"):
                name = getattr(self.llm, field)
                if name is not None:
                    named.append((("llm", field), name))
        return named

    def uses_default_backend(self) -> bool:
        """Whether any call of this session may go to the server's own backend (LLM_BASE_URL).

        Not when the session names a backend of its own (`llm.backend`, `llm.base_url`),
        nor when every bot, and the orchestrator and summarizer where they run, name one.
        """
        llm = self.llm
        if llm is not None and (llm.backend is not None or llm.base_url is not None):
            return False
        if any(bot.backend is None for bot in self.bots):
            return True
        options = self.options
        if options.turn_order == "orchestrated" and (llm is None or not llm.orchestrator_backend):
            return True
        summarizes = options.summarize_context or options.memory_mode != "none"
        return summarizes and (llm is None or not llm.summarizer_backend)

    def public_copy(self) -> SessionSpec:
        """This spec with its secrets removed: no API key, inherited token masked."""
        options = self.options
        if options.memory_mode == "inherit":
            options = options.model_copy(update={"memory": f"{MEMORY_INHERIT_PREFIX}{REDACTED}"})
        llm = self.llm.model_copy(update={"api_key": None}) if self.llm else None
        return self.model_copy(update={"options": options, "llm": llm})

    def public_dict(self) -> dict[str, Any]:
        """The normalized spec as JSON-ready data, safe for API responses."""
        return self.public_copy().model_dump(mode="json")

    def storage_dict(self) -> dict[str, Any]:
        """The normalized spec as JSON-ready data *with* its secrets, for the store only.

        The secrets (`SECRET_FIELDS`) are in plain text here: they are sealed before the
        data reaches a store. `SessionSpec.model_validate` reads it back unchanged.
        """
        data = self.model_dump(mode="json")
        if self.llm is not None and self.llm.api_key is not None:
            data["llm"]["api_key"] = self.llm.api_key.get_secret_value()
        return data
