"""Reading a spec document: bytes in, a top-level mapping (or a refusal) out.

YAML or JSON is chosen by content type, else sniffed. The size cap applies first; YAML
anchors and aliases (alias bombs), extra documents, duplicate keys and nesting deeper
than `MAX_SPEC_DEPTH` are refused before anything is built, and syntax errors name
their line and column. For YAML the reader also records where each key sits, so that
the checks (`engine.spec.checking`) can name a line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import yaml

from engine.config import Settings
from engine.input_text import has_lone_surrogate
from engine.spec.issues import (
    InvalidSpec,
    Loc,
    MalformedSpec,
    Position,
    SpecIssue,
    SpecTooLarge,
    document_issue,
)

try:  # libyaml is much faster; the pure-Python loader has the same interface
    from yaml import CSafeLoader as _YamlLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _YamlLoader  # type: ignore[assignment]

SpecFormat = Literal["json", "yaml"]

MAX_SPEC_DEPTH: Final = 32
"""Deepest nesting of lists and mappings accepted in a spec.

Far beyond any real spec, and low enough that the recursive YAML composer and the
pydantic validators are never near Python's recursion limit.
"""

_JSON_TYPES = frozenset({"application/json", "text/json"})
_YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})


@dataclass(frozen=True)
class SpecDocument:
    """A parsed document whose top level is a mapping, not yet checked as a spec."""

    data: dict[Any, Any]
    format: SpecFormat
    # Where each key or list item starts, by path; empty for JSON.
    positions: Mapping[Loc, Position] = field(default_factory=dict)


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
                document_issue(
                    f"the spec is {len(data)} bytes; the limit is {settings.max_spec_bytes} "
                    "bytes (MAX_SPEC_BYTES)"
                )
            ]
        )
    text = _decode(data)
    if not text.strip():
        raise MalformedSpec([document_issue("the spec is empty")])
    depth = MAX_SPEC_DEPTH
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
        raise InvalidSpec([not_a_mapping(value, positions.get(()))])
    return SpecDocument(data=value, format=chosen, positions=positions)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def not_a_mapping(value: object, position: Position | None = None) -> SpecIssue:
    """The issue for a document whose top level is not a mapping."""
    return document_issue(
        f"a spec must be a mapping of keys to values (an object), not {_kind(value)}", position
    )


def _too_deep(depth: int, position: Position | None = None) -> SpecIssue:
    return document_issue(
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
                document_issue(
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
            [document_issue(f"JSON syntax error: {exc.msg}", (exc.lineno, exc.colno))]
        ) from None
    except _DuplicateKey as exc:
        raise MalformedSpec(
            [document_issue(f"duplicate key {exc.key!r} in a JSON object")]
        ) from None
    except ValueError:  # e.g. an integer beyond Python's digit limit
        raise MalformedSpec(
            [document_issue("the spec contains a number too long to read")]
        ) from None
    check_depth(value, max_depth)
    return value


def check_depth(value: object, max_depth: int = MAX_SPEC_DEPTH) -> None:
    """Raise `MalformedSpec` when `value` nests lists and mappings deeper than `max_depth`."""
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
    """Refuse keys and strings holding a lone surrogate (iterative, like `check_depth`)."""
    stack: list[object] = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, str):
            if has_lone_surrogate(current):
                message = "the spec escapes a lone surrogate (\\ud800 to \\udfff): not text"
                raise MalformedSpec([document_issue(message)])
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
                raise MalformedSpec([document_issue("the spec is empty (only comments)")])
            positions = _yaml_positions(node)
            value = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        # Built from the parts, not str(exc): that quotes document text, maybe a key.
        words = "; ".join(part for part in (exc.context, exc.problem) if part)
        mark = exc.problem_mark or exc.context_mark
        raise MalformedSpec(
            [
                document_issue(
                    f"YAML error: {words or 'cannot parse'}", _mark(mark) if mark else None
                )
            ]
        ) from None
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        position = (before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1)
        char = exc.character
        code = char if isinstance(char, int) else ord(str(char)[:1] or "\0")
        raise MalformedSpec(
            [document_issue(f"the character U+{code:04X} is not allowed in YAML", position)]
        ) from None
    except yaml.YAMLError:
        raise MalformedSpec([document_issue("YAML error: cannot parse the document")]) from None
    except ValueError:  # e.g. an integer beyond Python's digit limit
        raise MalformedSpec(
            [document_issue("the spec contains a number too long to read")]
        ) from None
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
                        document_issue(
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
                            document_issue(
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
                        [document_issue(f"duplicate key {key!r}", _mark(key_node.start_mark))]
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
