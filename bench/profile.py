"""Sampling profiles of the server during a benchmark (py-spy), summarised as text.

`profiled(pid, path)` attaches py-spy to a running server for the duration of a `with`
block and writes its collapsed stacks (`frame;frame;... count`). `summarise(path)`
turns them into the functions that held the CPU most: by self time (the frame on top
of the stack) and by total time (anywhere on the stack). py-spy is a development tool
(see docs/performance.md); without it, profiling is simply unavailable.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from pydantic import BaseModel, Field

SAMPLE_RATE: Final = 200
"""Samples per second: fine enough for functions of a few microseconds over a long run."""
STOP_SECONDS: Final = 30.0
TOP: Final = 25


class ProfileUnavailable(RuntimeError):
    """py-spy is not installed (it is a development tool, not a dependency)."""


class Hotspot(BaseModel):
    """One function's share of the samples."""

    function: str = Field(description="`name (file:line)` as py-spy reports it.")
    self_percent: float = Field(description="Share of samples with this frame on top.")
    total_percent: float = Field(description="Share of samples with this frame anywhere.")


class ProfileSummary(BaseModel):
    """The hottest functions of one profile."""

    samples: int = Field(description="Samples taken.")
    by_self: list[Hotspot] = Field(description="Highest self time first.")
    by_total: list[Hotspot] = Field(description="Highest total time first.")


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise ProfileUnavailable("py-spy is not installed: pip install py-spy")
    return found


@contextlib.contextmanager
def profiled(pid: int, path: Path) -> Iterator[None]:
    """Sample process `pid` with py-spy while the block runs; collapsed stacks to `path`."""
    recorder = subprocess.Popen(
        [
            _py_spy(),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--output",
            str(path),
            "--rate",
            str(SAMPLE_RATE),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            recorder.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()


def summarise(path: Path, top: int = TOP) -> ProfileSummary:
    """The `top` functions by self and by total samples in a collapsed-stacks file."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count

    def spots(counter: Counter[str]) -> list[Hotspot]:
        return [
            Hotspot(
                function=name,
                self_percent=100.0 * own[name] / samples,
                total_percent=100.0 * anywhere[name] / samples,
            )
            for name, _ in counter.most_common(top)
        ]

    if samples == 0:
        return ProfileSummary(samples=0, by_self=[], by_total=[])
    return ProfileSummary(samples=samples, by_self=spots(own), by_total=spots(anywhere))


def render(summary: ProfileSummary) -> str:
    """The summary as two plain-text tables."""
    lines = [f"{summary.samples} samples", "", "self%  total%  function (by self time)"]
    lines += [_row(h) for h in summary.by_self]
    lines += ["", "self%  total%  function (by total time)"]
    lines += [_row(h) for h in summary.by_total]
    return "\n".join(lines)


def _row(spot: Hotspot) -> str:
    return f"{spot.self_percent:5.1f}  {spot.total_percent:6.1f}  {spot.function}"


def main() -> None:
    """`python -m bench.profile FILE`: print the summary of a collapsed-stacks file."""
    print(render(summarise(Path(sys.argv[1]))))


if __name__ == "__main__":
    main()
