"""`fellowship validate` and `fellowship schema`: output and exit codes."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pytest

from engine.spec.reference import render_reference
from engine.spec.schema import render_schema
from server.cli import schema, validate

ROOT = Path(__file__).resolve().parents[2]
GOOD = "bots:\n  - name: Alice\n  - name: Bob\n"
BAD = "bots:\n  - name: Alice\n  - name: alice\noptions:\n  max_turns: -1\n"


def run(*argv: str) -> int:
    """Run one of these sub-commands exactly as `fellowship` would dispatch it."""
    parser = argparse.ArgumentParser(prog="fellowship")
    sub = parser.add_subparsers(dest="command", required=True)
    validate.register(sub)
    schema.register(sub)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_valid_file_prints_ok_and_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "good.yaml", GOOD)
    assert run("validate", path) == 0
    assert capsys.readouterr().out == f"{path}: OK\n"


def test_invalid_file_lists_every_error_with_path_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "bad.yaml", BAD)
    assert run("validate", path) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}: 2 errors"
    assert lines[1].startswith("  error: bots[1].name (line 3): must be unique")
    assert lines[2] == "  error: options.max_turns (line 5): must be at least 1"


def test_warnings_are_printed_under_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "warn.yaml", GOOD + "options:\n  colour: red\n")
    assert run("validate", path) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        f"{path}: OK (1 warning)",
        "  warning: options.colour (line 5): unknown option, ignored",
    ]
    assert "colour" not in out.err  # printed once, not echoed again by logging


def test_one_bad_file_among_good_ones_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, "good.yaml", GOOD)
    bad = write(tmp_path, "bad.json", json.dumps({"bots": []}))
    assert run("validate", good, bad) == 1
    out = capsys.readouterr().out
    assert f"{good}: OK" in out
    assert f"{bad}: 1 error\n  error: bots: at least one bot is required" in out


def test_malformed_file_shows_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "broken.yaml", "a: &x 1\nbots: *x\n")
    assert run("validate", path) == 1
    assert "error: line 1, column 4: YAML anchors" in capsys.readouterr().out


def test_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "absent.yaml")
    assert run("validate", path) == 1
    assert capsys.readouterr().out.startswith(f"{path}: cannot read")


def test_dash_reads_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(GOOD.encode())))
    assert run("validate", "-") == 0
    assert capsys.readouterr().out == "-: OK\n"


def test_shipped_examples_validate() -> None:
    examples = sorted(str(path) for path in (ROOT / "specs").glob("*.yaml"))
    assert examples and run("validate", *examples) == 0


def test_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("schema") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$schema"].endswith("2020-12/schema")
    assert "bots" in printed["properties"]


def test_committed_schema_and_reference_are_up_to_date() -> None:
    schema_path = ROOT / "specs" / "session-spec.schema.json"
    reference_path = ROOT / "docs" / "spec-reference.md"
    assert (
        run(
            "schema",
            "--check",
            "--schema-path",
            str(schema_path),
            "--reference-path",
            str(reference_path),
        )
        == 0
    )


def test_check_fails_on_stale_files_and_write_fixes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema_path = tmp_path / "specs" / "session-spec.schema.json"
    reference_path = tmp_path / "docs" / "spec-reference.md"
    paths = ("--schema-path", str(schema_path), "--reference-path", str(reference_path))
    assert run("schema", "--check", *paths) == 1
    assert "out of date" in capsys.readouterr().err
    assert run("schema", "--write", *paths) == 0
    assert schema_path.read_text(encoding="utf-8") == render_schema()
    assert reference_path.read_text(encoding="utf-8") == render_reference()
    assert run("schema", "--check", *paths) == 0
    reference_path.write_text(render_reference() + "edited\n", encoding="utf-8")
    capsys.readouterr()
    assert run("schema", "--check", *paths) == 1
    err = capsys.readouterr().err
    assert str(reference_path) in err and str(schema_path) not in err


def test_schema_output_is_stable_and_ends_with_a_newline() -> None:
    assert render_schema() == render_schema()
    assert render_schema().endswith("}\n") and render_reference().endswith("\n")
