"""`fellowship run`: a session in the terminal against the built-in mock backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 60


def run_cli(tmp_path: Path, spec_text: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec_text)
    env = {
        **os.environ,
        "LOG_DIR": str(tmp_path / "logs"),
        "DATABASE_PATH": str(tmp_path / "db.sqlite"),
        "SPECS_DIR": str(ROOT / "specs"),
    }
    return subprocess.run(
        [sys.executable, "-m", "server", "run", str(spec_file), "--mock", "--name", "Dana"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        cwd=tmp_path,
        env=env,
        check=False,
    )


def test_autonomous_session_prints_the_conversation_and_its_end(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "bots:\n  - name: Alice\n  - name: Bob\noptions:\n  max_turns: 4\n",
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line]
    assert [line.split(":")[0] for line in lines[:4]] == ["Alice", "Bob", "Alice", "Bob"]
    assert lines[-1] == "-- session ended: max_turns"


def test_reactive_session_answers_each_stdin_line_then_ends_at_eof(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "bots:\n  - name: Tutor\noptions:\n  participation: reactive\n",
        stdin="What is a prime?\nAnd 7?\n",
    )
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.splitlines() if line.startswith("Tutor:")]
    assert len(replies) == 2
    assert "Dana" in replies[0]
    assert "session ended: client_request" in result.stdout


def test_invalid_spec_prints_every_error_and_exits_non_zero(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "bots:\n  - name: A\n  - name: a\noptions:\n  max_turns: -1\n")
    assert result.returncode == 1
    assert "bots[1].name" in result.stderr and "options.max_turns" in result.stderr
