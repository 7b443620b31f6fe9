"""Checking a spec: a parsed mapping in, a checked `SessionSpec` (or every problem) out.

The mapping is checked against the models and against the whole-spec rules that need
the server's settings or more than one field (bot count, unique names, the orchestrated
minimum, text length). Unknown keys at any depth are dropped and reported as warnings;
all errors are reported together, each located by path and, when the reader recorded
positions, by line.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator, Mapping
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from engine.config import Settings
from engine.spec.issues import (
    InvalidSpec,
    Loc,
    Position,
    SpecIssue,
    SpecRejected,
    SpecResult,
    SpecWarning,
    located,
    unexpected_failure,
)
from engine.spec.models import (
    ORCHESTRATED_MIN_BOTS,
    BotSpec,
    LLMOverride,
    SessionOptions,
    SessionSpec,
)
from engine.spec.reading import check_depth, not_a_mapping

logger = logging.getLogger(__name__)

# Option names (keys of `options`) that are accepted but do nothing yet; each one a
# spec sets is reported as a "not implemented yet" warning. Documented as planned.
NOT_IMPLEMENTED_OPTIONS: frozenset[str] = frozenset()

# How each model's unknown keys are described in warnings.
_UNKNOWN_KEY: dict[type[BaseModel], str] = {
    SessionSpec: "unknown key, ignored",
    SessionOptions: "unknown option, ignored",
    BotSpec: "unknown bot setting, ignored",
    LLMOverride: "unknown llm setting, ignored",
}


def validate_spec_data(
    data: object,
    *,
    settings: Settings,
    positions: Mapping[Loc, Position] | None = None,
) -> SpecResult:
    """Check an already-parsed spec (e.g. a library spec with overrides merged in).

    Never raises. `positions` (from `read_spec_document`) adds line numbers to issues.
    Unknown keys are dropped, logged at WARNING and returned as warnings.
    """
    try:
        check_depth(data)
        if not isinstance(data, Mapping):
            raise InvalidSpec([not_a_mapping(data)])
        return _validate(data, settings, positions or {})
    except SpecRejected as exc:
        return SpecResult.refused(exc)
    except Exception:
        return unexpected_failure()


def _validate(
    data: Mapping[Any, Any], settings: Settings, where: Mapping[Loc, Position]
) -> SpecResult:
    noted: list[tuple[Loc, str]] = []
    clean = _drop_unknown(data, SessionSpec, (), noted)
    options = clean.get("options")
    if isinstance(options, Mapping):
        noted.extend(
            (("options", key), "not implemented yet: accepted, but it has no effect")
            for key in options
            if key in NOT_IMPLEMENTED_OPTIONS
        )
    warnings = [located(SpecWarning, loc, message, where) for loc, message in noted]
    for warning in warnings:
        logger.warning("session spec %s: %s", warning.path, warning.message)

    spec, problems = _validate_models(clean)
    flagged = {loc for loc, _ in problems}
    problems.extend(
        (loc, message) for loc, message in _whole_spec_rules(clean, settings) if loc not in flagged
    )
    if problems:
        errors = [located(SpecIssue, loc, message, where) for loc, message in problems]
        errors.sort(key=lambda issue: (issue.line is None, issue.line or 0))
        return SpecResult(errors=errors, warnings=warnings, status_hint="invalid")
    return SpecResult(spec=spec, warnings=warnings)


def _nested_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model a field holds (and whether as a list), looking through `X | None`."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
        return None
    if origin is list:
        (item,) = get_args(annotation)
        inner = _nested_model(item)
        return (inner[0], True) if inner and not inner[1] else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None


def _drop_unknown(
    data: Mapping[Any, Any], model: type[BaseModel], loc: Loc, noted: list[tuple[Loc, str]]
) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in data.items():
        info = model.model_fields.get(key) if isinstance(key, str) else None
        if info is None:
            noted.append(((*loc, str(key)), _UNKNOWN_KEY.get(model, "unknown key, ignored")))
            continue
        nested = _nested_model(info.annotation)
        if nested is None:
            clean[key] = value
            continue
        inner, many = nested
        if many and isinstance(value, list):
            clean[key] = [
                _drop_unknown(item, inner, (*loc, key, index), noted)
                if isinstance(item, Mapping)
                else item
                for index, item in enumerate(value)
            ]
        elif not many and isinstance(value, Mapping):
            clean[key] = _drop_unknown(value, inner, (*loc, key), noted)
        else:
            clean[key] = value
    return clean


def _validate_models(clean: dict[str, Any]) -> tuple[SessionSpec | None, list[tuple[Loc, str]]]:
    try:
        return SessionSpec.model_validate(clean), []
    except ValidationError as exc:
        details = exc.errors(include_url=False)
        return None, [(tuple(error["loc"]), _humanize(error)) for error in details]


def _humanize(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    loc = tuple(error["loc"])
    fixed = {
        "missing": "is required",
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "list_type": "must be a list",
        "model_type": "must be a mapping of keys to values",
        "model_attributes_type": "must be a mapping of keys to values",
        "dict_type": "must be a mapping of keys to values",
        "string_too_short": "must not be empty",
    }
    if kind in fixed:
        return fixed[kind]
    if kind == "string_type":
        if isinstance(error.get("input"), bool | int | float):
            return "must be text; put the value in quotes"
        return "must be text"
    bounds = {
        "greater_than_equal": ("must be at least", "ge"),
        "greater_than": ("must be greater than", "gt"),
        "less_than_equal": ("must be at most", "le"),
        "less_than": ("must be less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"{words} {ctx.get(key)}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        return f"must be one of {expected}" if " or " in expected else f"must be {expected}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        if loc == ("bots",):
            return "at least one bot is required"
        return f"needs at least {ctx.get('min_length')} items"
    if kind == "too_long":
        return f"may have at most {ctx.get('max_length')} items"
    return str(error["msg"])


def _whole_spec_rules(clean: Mapping[str, Any], settings: Settings) -> list[tuple[Loc, str]]:
    """Rules that need the settings or more than one field."""
    problems: list[tuple[Loc, str]] = []
    bots = clean.get("bots")
    bot_count = len(bots) if isinstance(bots, list) else None
    if bot_count is not None and bot_count > settings.max_bots_per_session:
        problems.append(
            (
                ("bots",),
                f"too many bots: {bot_count}; at most "
                f"{settings.max_bots_per_session} per session (MAX_BOTS_PER_SESSION)",
            )
        )
    if isinstance(bots, list):
        first_use: dict[str, int] = {}
        for index, bot in enumerate(bots):
            name = bot.get("name") if isinstance(bot, Mapping) else None
            if not isinstance(name, str) or not name.strip():
                continue
            folded = name.strip().casefold()
            if folded in first_use:
                problems.append(
                    (
                        ("bots", index, "name"),
                        f"must be unique: bots[{first_use[folded]}] already has this name "
                        "(names are compared ignoring case)",
                    )
                )
            else:
                first_use[folded] = index
    options = clean.get("options")
    if (
        isinstance(options, Mapping)
        and options.get("turn_order") == "orchestrated"
        and bot_count is not None
        and 0 < bot_count < ORCHESTRATED_MIN_BOTS
    ):
        problems.append(
            (
                ("options", "turn_order"),
                f"orchestrated turn order needs at least {ORCHESTRATED_MIN_BOTS} bots; this "
                f"spec has {bot_count} (use round_robin for fewer)",
            )
        )
    problems.extend(_backend_rules(clean, settings))
    limit = settings.max_prompt_chars
    for loc, text in _text_fields(clean):
        if len(text) > limit:
            problems.append(
                (loc, f"is too long: {len(text)} characters; at most {limit} (MAX_PROMPT_CHARS)")
            )
    return problems


_LLM_BACKEND_FIELDS = ("backend", "orchestrator_backend", "summarizer_backend")


def _backend_rules(clean: Mapping[str, Any], settings: Settings) -> list[tuple[Loc, str]]:
    """Backend names must be in the server's LLM_BACKENDS; `llm.backend` excludes a URL."""
    named: list[tuple[Loc, object]] = []
    bots = clean.get("bots")
    if isinstance(bots, list):
        named.extend(
            (("bots", index, "backend"), bot.get("backend"))
            for index, bot in enumerate(bots)
            if isinstance(bot, Mapping)
        )
    llm = clean.get("llm")
    if isinstance(llm, Mapping):
        named.extend((("llm", field), llm.get(field)) for field in _LLM_BACKEND_FIELDS)
    known = sorted(settings.llm_backends)
    # Names are no secret (unlike the URLs and keys behind them): saying them helps.
    offer = (
        f"this server has: {', '.join(known)} (LLM_BACKENDS)"
        if known
        else "this server has no named backends (LLM_BACKENDS is empty)"
    )
    problems: list[tuple[Loc, str]] = []
    for loc, name in named:
        if isinstance(name, str) and name.strip() and name.strip() not in settings.llm_backends:
            problems.append((loc, f"unknown backend {name.strip()!r}; {offer}"))
    if isinstance(llm, Mapping) and _is_set(llm.get("backend")):
        clashing = [key for key in ("base_url", "api_key") if _is_set(llm.get(key))]
        if clashing:
            problems.append(
                (
                    ("llm", "backend"),
                    f"name a backend or give llm.{' and llm.'.join(clashing)}, not both",
                )
            )
    return problems


def _is_set(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _text_fields(clean: Mapping[str, Any]) -> Iterator[tuple[Loc, str]]:
    """Every string value at a known field (unknown keys are already gone)."""
    sections: list[tuple[Loc, object]] = [((), clean)]
    for name in ("options", "llm"):
        sections.append(((name,), clean.get(name)))
    bots = clean.get("bots")
    if isinstance(bots, list):
        sections.extend((("bots", index), bot) for index, bot in enumerate(bots))
    for loc, section in sections:
        if isinstance(section, Mapping):
            for key, value in section.items():
                if isinstance(value, str):
                    yield (*loc, key), value
