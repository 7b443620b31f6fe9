"""docs/reliability.md names, for each promise, the test that proves it: those tests exist."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reliability.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """Names of the module-level test functions (sync or async) defined in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    )


def missing(page: Path) -> list[str]:
    """Every `file::function` reference of `page` that names no existing test."""
    problems = []
    for file, name in REFERENCE.findall(page.read_text(encoding="utf-8")):
        path = ROOT / file
        if not path.is_file():
            problems.append(f"{file}::{name}: no such file")
        elif name not in defined_tests(path):
            problems.append(f"{file}::{name}: no such test")
    return problems


def test_every_test_named_as_proof_exists() -> None:
    assert len(REFERENCE.findall(PAGE.read_text(encoding="utf-8"))) >= 30
    assert missing(PAGE) == []


def test_every_reliability_test_is_named_as_proof() -> None:
    named = set(REFERENCE.findall(PAGE.read_text(encoding="utf-8")))
    unnamed = [
        f"{path.relative_to(ROOT)}::{name}"
        for path in sorted((ROOT / "tests" / "reliability").glob("test_*.py"))
        if path.name != Path(__file__).name
        for name in sorted(defined_tests(path))
        if (str(path.relative_to(ROOT)), name) not in named
    ]
    assert unnamed == []


def test_a_wrong_reference_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "| a | `tests/reliability/test_faults.py::test_every_fault_mode_is_covered_by_a_test` |\n"
        "| b | `tests/reliability/test_faults.py::test_that_was_renamed` |\n"
        "| c | `tests/nowhere.py::test_x` |\n"
    )
    assert missing(page) == [
        "tests/reliability/test_faults.py::test_that_was_renamed: no such test",
        "tests/nowhere.py::test_x: no such file",
    ]
