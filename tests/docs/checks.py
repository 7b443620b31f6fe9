"""Checks of doc pages against the code; each returns the problems it finds as text.

The tests run them over the real docs and expect no problems, and run them over small
broken pages to prove that each one can fail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.config import load_settings
from engine.events import parse_event
from engine.history import Message
from engine.spec.loader import load_spec
from tests.docs import code_names
from tests.docs.markdown import (
    DOCS,
    CodeBlock,
    anchors,
    code_blocks,
    label,
    links,
    prose_inline_code,
    prose_lines,
    tables,
)

INVALID_MARKER = "# docs-test: invalid"
"""Put this comment in a YAML spec block that is wrong on purpose (e.g. to show an error)."""

# Upper-case words in backticks that are not settings: HTTP methods, SQLite modes.
NOT_SETTINGS = frozenset(
    {"GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "WS", "FULL", "NORMAL", "OFF"}
)
# Names the docs use that belong elsewhere: other programs' variables and keywords
# (Ollama), the test suite's switch, and the shell variables the examples set.
FOREIGN_NAMES = frozenset(
    {"OLLAMA_NUM_PARALLEL", "TEMPLATE", "UPDATE_DOCS_SCREENSHOT", "TOKEN", "OBSERVER"}
)

_UPPER_SPAN = re.compile(r"^([A-Z][A-Z0-9_]*)(=.*)?$")
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Z][A-Z0-9_]*)=")
_SHELL_LANGS = frozenset({"", "sh", "bash", "shell", "ini", "env", "dotenv"})
_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
_EXCHANGE_LINE = re.compile(r"^(\w+)\s+seq \d+")


# --- specs ------------------------------------------------------------------------------------


# The named backends the docs' examples pick (docs/backends.md declares them the same way).
DOC_BACKENDS = '{"ollama": "http://127.0.0.1:11434/v1", "vllm": "http://127.0.0.1:8001/v1"}'


def spec_blocks(pages: Iterable[Path]) -> list[CodeBlock]:
    """YAML blocks that look like a whole session spec (they have a top-level `bots:`)."""
    return [
        block
        for page in pages
        for block in code_blocks(page)
        if block.lang in ("yaml", "yml") and re.search(r"^bots:", block.text, re.MULTILINE)
    ]


def spec_problems(block: CodeBlock) -> list[str]:
    """Why a spec block does not load cleanly (errors and warnings), or why an
    example marked invalid loads after all."""
    settings = load_settings(_env_file=None, llm_backends=DOC_BACKENDS)
    result = load_spec(block.text.encode(), content_type="application/yaml", settings=settings)
    where = label(block.path, block.line)
    if INVALID_MARKER in block.text:
        return [] if result.errors else [f"{where}: marked invalid, but it loads"]
    return [f"{where}: {issue}" for issue in [*result.errors, *result.warnings]]


# --- settings ---------------------------------------------------------------------------------


def setting_problems(pages: Iterable[Path]) -> list[str]:
    """Upper-case names in backticks (and `NAME=` lines in shell blocks) that are neither a
    setting, a constant of the code, nor a known variable of another program."""
    problems: list[str] = []
    known = code_names.setting_names() | code_names.module_constants() | FOREIGN_NAMES
    for page in pages:
        found: list[tuple[int, str]] = []
        for number, span in prose_inline_code(page):
            match = _UPPER_SPAN.match(span.strip())
            if match is None:
                continue
            name, assigned = match.group(1), match.group(2) is not None
            if not assigned and "_" not in name and name in NOT_SETTINGS:
                continue
            found.append((number, name))
        for block in code_blocks(page):
            if block.lang in _SHELL_LANGS:
                for offset, line in enumerate(block.text.splitlines()):
                    if env := _ENV_LINE.match(line):
                        found.append((block.line + offset, env.group(1)))
        problems.extend(
            f"{label(page, n)}: `{name}` is not a setting" for n, name in found if name not in known
        )
    return problems


# --- links ------------------------------------------------------------------------------------


def link_problems(pages: Iterable[Path]) -> list[str]:
    """Relative links whose file is missing, or whose `#anchor` names no heading there."""
    problems: list[str] = []
    for page in pages:
        for number, target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
                continue  # absolute URLs and server routes are not files in the repo
            path_part, _, anchor = target.partition("#")
            destination = (page.parent / path_part).resolve() if path_part else page
            where = label(page, number)
            if not destination.exists():
                problems.append(f"{where}: link to missing {target}")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                problems.append(f"{where}: no heading #{anchor} in {destination.name}")
    return problems


def index_problems(index: Path, pages: Iterable[Path]) -> list[str]:
    """Pages of docs/ that the index does not link to."""
    linked = {(index.parent / t.partition("#")[0]).resolve() for _, t in links(index)}
    return [
        f"{label(index)}: {page.name} is not listed"
        for page in pages
        if page.resolve() != index.resolve() and page.resolve() not in linked
    ]


# --- error and close codes --------------------------------------------------------------------


def code_column_problems(pages: Iterable[Path]) -> list[str]:
    """In table columns headed "code" (error code, close code, ...), every `snake_case`
    entry must be an error code of the code, and every bare number a close code."""
    problems: list[str] = []
    errors, closes = code_names.error_codes(), code_names.close_codes()
    for page in pages:
        for table in tables(page):
            for index, head in enumerate(table.header):
                if "code" not in head.lower():
                    continue
                for offset, cell in enumerate(table.column(index), start=2):
                    where = label(page, table.line + offset)
                    if cell.isdigit() and int(cell) not in closes:
                        problems.append(f"{where}: close code {cell} is never sent")
                    for span in re.findall(r"`([^`]+)`", cell):
                        if _SNAKE.match(span) and span not in errors:
                            problems.append(f"{where}: `{span}` is not an error code")
    return problems


# --- events -----------------------------------------------------------------------------------


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in a block that holds one object, or one per line."""
    decoder, objects, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        value, index = decoder.raw_decode(text, index)
        if isinstance(value, dict):
            objects.append(value)
    return objects


def _unknown_keys(data: dict[str, Any], model: type[BaseModel]) -> set[str]:
    return set(data) - set(model.model_fields)


def event_heading_problems(page: Path) -> list[str]:
    """Section headings naming event types that do not exist, and event types with none."""
    names: set[str] = set()
    problems: list[str] = []
    known = set(code_names.event_models())
    for number, line in prose_lines(page):
        if line.startswith("### "):
            for name in re.findall(r"`([^`]+)`", line):
                names.add(name)
                if name not in known:
                    problems.append(f"{label(page, number)}: no event type `{name}`")
    problems.extend(f"{label(page)}: no section for `{t}`" for t in sorted(known - names))
    return problems


def event_example_problems(page: Path) -> list[str]:
    """JSON examples that are not valid events or carry fields the events do not have,
    event types without an example, and unknown types in plain-text event sequences."""
    problems: list[str] = []
    models = code_names.event_models()
    shown: set[str] = set()
    for block in code_blocks(page):
        where = label(page, block.line)
        if block.lang == "json":
            for data in _json_objects(block.text):
                if "type" not in data or "seq" not in data:
                    continue  # a client frame or an excerpt, not an event
                try:
                    event = parse_event(json.dumps(data))
                except ValidationError as exc:
                    problems.append(f"{where}: invalid {data.get('type')!r} event: {exc}")
                    continue
                shown.add(event.type)
                extra = _unknown_keys(data, type(event))
                for message in data.get("messages", []):
                    extra |= {f"messages[].{k}" for k in _unknown_keys(message, Message)}
                if extra:
                    problems.append(f"{where}: {event.type} has no fields {sorted(extra)}")
        elif block.lang == "":
            for offset, line in enumerate(block.text.splitlines()):
                match = _EXCHANGE_LINE.match(line)
                if match and match.group(1) not in models:
                    problems.append(f"{label(page, block.line + offset)}: no event `{line}`")
    problems.extend(f"{label(page)}: no example of `{t}`" for t in sorted(set(models) - shown))
    return problems


def missing_names(page: Path, names: Iterable[str]) -> list[str]:
    """Names that never appear in backticks on the page."""
    spans = {span for _, span in prose_inline_code(page)}
    return [f"{label(page)}: `{name}` is not mentioned" for name in names if name not in spans]


def docs_pages() -> list[Path]:
    """The pages under docs/ (without the top-level README)."""
    return sorted(DOCS.glob("*.md"))
