"""Reading a session spec: raw bytes in, a checked `SessionSpec` (or every problem) out.

Two steps, both usable on their own:

1. `read_spec_document` turns bytes into a top-level mapping. YAML or JSON is chosen by
   content type, else sniffed. The size cap applies first; YAML anchors and aliases
   (alias bombs), extra documents, duplicate keys and deep nesting are refused before
   anything is built; syntax errors name their line and column. For YAML it also
   records where each key sits, so later errors can name a line.
2. `validate_spec_data` checks a mapping against the models and the whole-spec rules
   that depend on the server's settings. Unknown keys at any depth are dropped and
   reported as warnings; all errors are reported together.

`load_spec` chains the two and never raises: it returns a `SpecResult` whose
`status_hint` tells the server which status to answer (400, 413 or 422).
"""

from __future__ import annotations

import json
import logging
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_core import ErrorDetails

from engine.config import Settings

# The spec errors live with every other error; importable from here as before.
from engine.errors import InvalidSpec as InvalidSpec
from engine.errors import MalformedSpec as MalformedSpec
from engine.errors import SpecFailure as SpecFailure
from engine.errors import SpecIssue as SpecIssue
from engine.errors import SpecRejected as SpecRejected
from engine.errors import SpecTooLarge as SpecTooLarge
from engine.spec.models import (
    ORCHESTRATED_MIN_BOTS,
    BotSpec,
    LLMOverride,
    SessionOptions,
    SessionSpec,
)
from engine.text import has_lone_surrogate

try:  # libyaml is much faster; the pure-Python loader has the same interface
    from yaml import CSafeLoader as _YamlLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _YamlLoader  # type: ignore[assignment]

logger = logging.getLogger(__name__)

SpecFormat = Literal["json", "yaml"]
Loc = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line and column

# Option names (keys of `options`) that are accepted but do nothing yet; each one a
# spec sets is reported as a "not implemented yet" warning. Documented as planned.
NOT_IMPLEMENTED_OPTIONS: frozenset[str] = frozenset()

_JSON_TYPES = frozenset({"application/json", "text/json"})
_YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})

# How each model's unknown keys are described in warnings.
_UNKNOWN_KEY: dict[type[BaseModel], str] = {
    SessionSpec: "unknown key, ignored",
    SessionOptions: "unknown option, ignored",
    BotSpec: "unknown bot setting, ignored",
    LLMOverride: "unknown llm setting, ignored",
}


class SpecWarning(SpecIssue):
    """Something accepted but worth knowing: an ignored key, an unbuilt option."""


_IssueT = TypeVar("_IssueT", bound=SpecIssue)


class SpecResult(BaseModel):
    """The outcome of loading a spec: the spec and its warnings, or every error."""

    spec: SessionSpec | None = Field(None, description="The checked spec; None on failure.")
    warnings: list[SpecWarning] = Field(
        default_factory=list, description="Ignored keys and unbuilt options, in order."
    )
    errors: list[SpecIssue] = Field(
        default_factory=list, description="Every problem found; empty on success."
    )
    status_hint: SpecFailure | None = Field(
        None,
        description="On failure, its kind: malformed (400), too_large (413), invalid (422).",
    )

    @property
    def ok(self) -> bool:
        """True when `spec` is set."""
        return self.spec is not None

    def raise_for_errors(self) -> SessionSpec:
        """Return the spec, or raise the `SpecRejected` subclass matching `status_hint`."""
        if self.spec is not None:
            return self.spec
        kinds: dict[SpecFailure, type[SpecRejected]] = {
            "malformed": MalformedSpec,
            "too_large": SpecTooLarge,
            "invalid": InvalidSpec,
        }
        raise kinds[self.status_hint or "invalid"](self.errors)

    @classmethod
    def refused(cls, exc: SpecRejected, warnings: Sequence[SpecWarning] = ()) -> SpecResult:
        """A failed result carrying the problems of `exc`."""
        return cls(errors=exc.issues, warnings=list(warnings), status_hint=exc.failure)


@dataclass(frozen=True)
class SpecDocument:
    """A parsed document whose top level is a mapping, not yet checked as a spec."""

    data: dict[Any, Any]
    format: SpecFormat
    # Where each key or list item starts, by path; empty for JSON.
    positions: Mapping[Loc, Position] = field(default_factory=dict)


# --- public entry points -----------------------------------------------------------


def load_spec(data: bytes, *, content_type: str | None = None, settings: Settings) -> SpecResult:
    """Read and check a submitted spec. Never raises; see `SpecResult.status_hint`."""
    try:
        document = read_spec_document(data, content_type=content_type, settings=settings)
    except SpecRejected as exc:
        return SpecResult.refused(exc)
    except Exception:
        return _unexpected()
    return validate_spec_data(document.data, settings=settings, positions=document.positions)


def read_spec_document(
    data: bytes, *, content_type: str | None = None, settings: Settings
) -> SpecDocument:
    """Parse `data` as YAML or JSON into a top-level mapping.

    `content_type` picks the format (`application/json`, `application/yaml`,
    `application/x-yaml`, `text/yaml`, or any `+json`/`+yaml` type); otherwise the
    format is sniffed. Raises `SpecTooLarge`, `MalformedSpec`, or `InvalidSpec` when
    the top level is not a mapping.
    """
    if len(data) > settings.max_spec_bytes:
        raise SpecTooLarge(
            [
                _issue(
                    f"the spec is {len(data)} bytes; the limit is {settings.max_spec_bytes} "
                    "bytes (MAX_SPEC_BYTES)"
                )
            ]
        )
    text = _decode(data)
    if not text.strip():
        raise MalformedSpec([_issue("the spec is empty")])
    depth = settings.max_spec_depth
    value: object
    positions: dict[Loc, Position] = {}
    try:
        chosen = _format_from_content_type(content_type)
        if chosen == "json":
            value = _read_json(text, depth)
        elif chosen == "yaml":
            value, positions = _read_yaml(text, depth)
        elif text.lstrip()[:1] in ("{", "["):
            chosen = "json"
            try:
                value = _read_json(text, depth)
            except MalformedSpec as json_error:
                # JSON-looking text may still be flow-style YAML; if it is neither,
                # the JSON message is the helpful one.
                try:
                    value, positions = _read_yaml(text, depth)
                    chosen = "yaml"
                except MalformedSpec:
                    raise json_error from None
        else:
            chosen = "yaml"
            value, positions = _read_yaml(text, depth)
    except RecursionError:
        raise MalformedSpec([_too_deep(depth)]) from None
    _check_text(value)
    if not isinstance(value, dict):
        raise InvalidSpec([_not_a_mapping(value, positions.get(()))])
    return SpecDocument(data=value, format=chosen, positions=positions)


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
        _check_depth(data, settings.max_spec_depth)
        if not isinstance(data, Mapping):
            raise InvalidSpec([_not_a_mapping(data)])
        return _validate(data, settings, positions or {})
    except SpecRejected as exc:
        return SpecResult.refused(exc)
    except Exception:
        return _unexpected()


def format_path(loc: Loc) -> str:
    """`("bots", 1, "name")` → `bots[1].name`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _unexpected() -> SpecResult:
    # A bug, not bad input; the caller still gets an answer rather than a crash.
    logger.exception("unexpected failure while reading a session spec")
    return SpecResult.refused(MalformedSpec([_issue("the spec could not be read")]))


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
    warnings = [_located(SpecWarning, loc, message, where) for loc, message in noted]
    for warning in warnings:
        logger.warning("session spec %s: %s", warning.path, warning.message)

    spec, problems = _validate_models(clean)
    flagged = {loc for loc, _ in problems}
    problems.extend(
        (loc, message) for loc, message in _whole_spec_rules(clean, settings) if loc not in flagged
    )
    if problems:
        errors = [_located(SpecIssue, loc, message, where) for loc, message in problems]
        errors.sort(key=lambda issue: (issue.line is None, issue.line or 0))
        return SpecResult(errors=errors, warnings=warnings, status_hint="invalid")
    return SpecResult(spec=spec, warnings=warnings)


# --- reading -----------------------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _issue(message: str, position: Position | None = None) -> SpecIssue:
    line, column = position if position else (None, None)
    return SpecIssue(path="", message=message, line=line, column=column)


def _not_a_mapping(value: object, position: Position | None = None) -> SpecIssue:
    return _issue(
        f"a spec must be a mapping of keys to values (an object), not {_kind(value)}", position
    )


def _too_deep(depth: int, position: Position | None = None) -> SpecIssue:
    return _issue(
        f"the spec is nested too deeply: at most {depth} levels of lists and mappings "
        "(MAX_SPEC_DEPTH)",
        position,
    )


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise MalformedSpec(
            [
                _issue(
                    f"the spec is not UTF-8 text (byte {exc.start} cannot be decoded)",
                    (line, column),
                )
            ]
        ) from None


def _format_from_content_type(content_type: str | None) -> SpecFormat | None:
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _JSON_TYPES or media.endswith("+json"):
        return "json"
    if media in _YAML_TYPES or media.endswith("+yaml"):
        return "yaml"
    return None


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _read_json(text: str, max_depth: int) -> object:
    try:
        value = json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        raise MalformedSpec(
            [_issue(f"JSON syntax error: {exc.msg}", (exc.lineno, exc.colno))]
        ) from None
    except _DuplicateKey as exc:
        raise MalformedSpec([_issue(f"duplicate key {exc.key!r} in a JSON object")]) from None
    except ValueError:  # e.g. an integer beyond Python's digit limit
        raise MalformedSpec([_issue("the spec contains a number too long to read")]) from None
    _check_depth(value, max_depth)
    return value


def _check_depth(value: object, max_depth: int) -> None:
    # Iterative on purpose: this must not recurse on the input it guards against.
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, Mapping):
            children: Iterator[object] = iter(current.values())
        elif isinstance(current, list):
            children = iter(current)
        else:
            continue
        if depth > max_depth:
            raise MalformedSpec([_too_deep(max_depth)])
        stack.extend((child, depth + 1) for child in children)


def _check_text(value: object) -> None:
    """Refuse keys and strings holding a lone surrogate (iterative, like `_check_depth`)."""
    stack: list[object] = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, str):
            if has_lone_surrogate(current):
                message = "the spec escapes a lone surrogate (\\ud800 to \\udfff): not text"
                raise MalformedSpec([_issue(message)])
        elif isinstance(current, Mapping):
            stack.extend(current.keys())
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)


def _mark(mark: Any) -> Position:
    return (int(mark.line) + 1, int(mark.column) + 1)


def _read_yaml(text: str, max_depth: int) -> tuple[object, dict[Loc, Position]]:
    try:
        _scan_yaml(text, max_depth)
        loader = _YamlLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise MalformedSpec([_issue("the spec is empty (only comments)")])
            positions = _yaml_positions(node)
            value = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        # Built from the parts, not str(exc): that quotes document text, maybe a key.
        words = "; ".join(part for part in (exc.context, exc.problem) if part)
        mark = exc.problem_mark or exc.context_mark
        raise MalformedSpec(
            [_issue(f"YAML error: {words or 'cannot parse'}", _mark(mark) if mark else None)]
        ) from None
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        position = (before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1)
        char = exc.character
        code = char if isinstance(char, int) else ord(str(char)[:1] or "\0")
        raise MalformedSpec(
            [_issue(f"the character U+{code:04X} is not allowed in YAML", position)]
        ) from None
    except yaml.YAMLError:
        raise MalformedSpec([_issue("YAML error: cannot parse the document")]) from None
    except ValueError:  # e.g. an integer beyond Python's digit limit
        raise MalformedSpec([_issue("the spec contains a number too long to read")]) from None
    return value, positions


def _scan_yaml(text: str, max_depth: int) -> None:
    """Walk the parser events once, before any node is built.

    Refusing anchors here means an alias bomb is stopped at its first anchor, and
    refusing deep nesting here keeps the (recursive) composer safe.
    """
    loader = _YamlLoader(text)
    try:
        depth = 0
        documents = 0
        while loader.check_event():
            event = loader.get_event()
            if event is None:
                break
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise MalformedSpec(
                    [
                        _issue(
                            "YAML anchors and aliases (& and *) are not allowed in a spec",
                            _mark(event.start_mark),
                        )
                    ]
                )
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    raise MalformedSpec([_too_deep(max_depth, _mark(event.start_mark))])
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise MalformedSpec(
                        [
                            _issue(
                                "a spec is one YAML document; a second one starts here",
                                _mark(event.start_mark),
                            )
                        ]
                    )
    finally:
        loader.dispose()


def _yaml_positions(root: yaml.Node) -> dict[Loc, Position]:
    """Map every key and list item path to where it starts; refuse duplicate keys."""
    positions: dict[Loc, Position] = {(): _mark(root.start_mark)}
    stack: list[tuple[Loc, yaml.Node]] = [((), root)]
    while stack:
        loc, node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = str(key_node.value)
                if key in seen and key != "<<":
                    raise MalformedSpec(
                        [_issue(f"duplicate key {key!r}", _mark(key_node.start_mark))]
                    )
                seen.add(key)
                child: Loc = (*loc, key)
                positions[child] = _mark(key_node.start_mark)
                stack.append((child, value_node))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*loc, index)
                positions[child] = _mark(item.start_mark)
                stack.append((child, item))
    return positions


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


# --- checking ----------------------------------------------------------------------


def _located(
    kind: type[_IssueT], loc: Loc, message: str, positions: Mapping[Loc, Position]
) -> _IssueT:
    # A missing key has no position of its own; its nearest ancestor's is close enough.
    line = column = None
    for end in range(len(loc), -1, -1):
        position = positions.get(loc[:end])
        if position is not None:
            line, column = position
            break
    return kind(path=format_path(loc), message=message, line=line, column=column)


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
    limit = settings.max_prompt_chars
    for loc, text in _text_fields(clean):
        if len(text) > limit:
            problems.append(
                (loc, f"is too long: {len(text)} characters; at most {limit} (MAX_PROMPT_CHARS)")
            )
    return problems


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
