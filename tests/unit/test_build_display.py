"""The terminal display of the embedded backend's build."""

from __future__ import annotations

import io

from engine.backend_status import BuildProgress
from server.cli.progress import BuildDisplay, render


def progress(number: int, fraction: float | None, elapsed: float = 0.0) -> BuildProgress:
    return BuildProgress(
        step=f"step {number}", number=number, steps=6, fraction=fraction, elapsed_seconds=elapsed
    )


def test_a_line_says_what_which_step_how_long_and_how_far() -> None:
    line = render(progress(5, 0.45), 192.0, bar_width=10)
    assert line == "building llama-server [5/6] step 5  3:12  [####------]  45%"


def test_without_a_known_length_there_is_no_bar() -> None:
    assert render(progress(4, None), 5.0) == "building llama-server [4/6] step 4  0:05"


def test_off_a_terminal_it_prints_a_line_per_step_and_per_tenth() -> None:
    out = io.StringIO()
    display = BuildDisplay(out)
    display(progress(4, None))
    for share in (0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 1.0):
        display(progress(5, share))
    display(None)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Building llama.cpp's llama-server from source")
    assert [line.split("]")[0] for line in lines[1:]] == ["building llama-server [4/6"] + [
        "building llama-server [5/6"
    ] * 4
    assert [line.rsplit(" ", 1)[-1] for line in lines[2:]] == ["0%", "10%", "20%", "100%"]
