"""The names the docs may use, read from the code itself.

Settings, event types and their fields come from the pydantic models. Error codes and
constants are collected by reading the source (`ast`), because they are spread over
the engine and the server as class attributes, `code=` arguments and module constants;
reading them from the source keeps this list from going stale.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import get_args

from engine.config import Settings
from engine.events import BaseEvent, Event
from tests.docs.markdown import ROOT

SOURCE_DIRS = (ROOT / "engine", ROOT / "server")


def _sources() -> list[Path]:
    return sorted(p for folder in SOURCE_DIRS for p in folder.rglob("*.py"))


def _str_constant(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _assigned_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _assigned_value(node: ast.stmt) -> ast.expr | None:
    if isinstance(node, ast.Assign | ast.AnnAssign):
        return node.value
    return None


@cache
def setting_names() -> frozenset[str]:
    """Every environment variable `Settings` reads (field names, upper case)."""
    return frozenset(name.upper() for name in Settings.model_fields)


@cache
def module_constants() -> frozenset[str]:
    """UPPER_CASE names assigned at the top level of any engine or server module."""
    names: set[str] = set()
    for path in _sources():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names.update(n for n in _assigned_names(node) if n.isupper())
    return frozenset(names)


@cache
def error_codes() -> frozenset[str]:
    """Every machine `code` an error can carry.

    Found as `code = "..."` in class bodies, `code="..."` arguments, the `LLM_*`
    constants of the LLM client and the server's codes for Quart's own failures.
    """
    codes: set[str] = set()
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for statement in node.body:
                    attribute = _str_constant(_assigned_value(statement))
                    if "code" in _assigned_names(statement) and attribute is not None:
                        codes.add(attribute)
            elif isinstance(node, ast.keyword) and node.arg == "code":
                argument = _str_constant(node.value)
                if argument is not None:
                    codes.add(argument)
        for statement in tree.body:
            names, value = _assigned_names(statement), _assigned_value(statement)
            constant = _str_constant(value)
            llm_code = path.name == "errors.py" and any(n.startswith("LLM_") for n in names)
            if llm_code and constant is not None:
                codes.add(constant)
            if "_HTTP_CODES" in names and isinstance(value, ast.Dict):
                for entry in value.values:
                    first = _str_constant(entry.elts[0]) if isinstance(entry, ast.Tuple) else None
                    if first is not None:
                        codes.add(first)
    return frozenset(codes)


@cache
def close_codes() -> frozenset[int]:
    """The WebSocket close codes the server sends (`WS_*` in server/errors.py)."""
    tree = ast.parse((ROOT / "server" / "errors.py").read_text(encoding="utf-8"))
    codes: set[int] = set()
    for statement in tree.body:
        value = _assigned_value(statement)
        if any(n.startswith("WS_") for n in _assigned_names(statement)) and (
            isinstance(value, ast.Constant) and isinstance(value.value, int)
        ):
            codes.add(value.value)
    return frozenset(codes)


@cache
def event_models() -> dict[str, type[BaseEvent]]:
    """Event type -> its model, for every member of the `Event` union."""
    union = get_args(Event)[0]
    models: dict[str, type[BaseEvent]] = {}
    for model in get_args(union):
        type_name = get_args(model.model_fields["type"].annotation)[0]
        models[type_name] = model
    return models
