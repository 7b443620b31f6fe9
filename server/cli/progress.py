"""The terminal display of the embedded backend's build: what, which step, how long, how far.

On a terminal it is one line, redrawn in place every second:

    building llama-server [5/6] compiling llama-server  3:12  [#########-----------]  45%

Log lines printed meanwhile (the server's own, on the same stream) first clear that line,
so they never end up glued to it; the next redraw puts it back below them. Anywhere
else (a pipe, CI) it prints one line per step, and one per tenth of a step whose length
is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Final, TextIO

from engine.backend_status import BuildProgress

BAR_WIDTH: Final = 20
REDRAW_SECONDS: Final = 1.0
"""How often the elapsed time is redrawn on a terminal."""
TENTHS: Final = 10
_CLEAR_LINE: Final = "\r\033[K"
_PERCENT: Final = 100


def render(progress: BuildProgress, elapsed: float, *, bar_width: int = BAR_WIDTH) -> str:
    """One line describing `progress`, `elapsed` seconds into the build."""
    minutes, seconds = divmod(int(elapsed), 60)
    text = (
        f"building llama-server [{progress.number}/{progress.steps}] {progress.step}  "
        f"{minutes}:{seconds:02d}"
    )
    if progress.fraction is not None:
        share = min(max(progress.fraction, 0.0), 1.0)
        filled = round(share * bar_width)
        text += f"  [{'#' * filled}{'-' * (bar_width - filled)}] {round(share * _PERCENT):3d}%"
    return text


class BuildDisplay:
    """Shows build progress on `out`; call it with each `BuildProgress`, then with None."""

    def __init__(self, out: TextIO, *, cache: Path | None = None, note: str = "") -> None:
        self._out = out
        self._note = note
        self._tty = out.isatty()
        self._cache = cache
        self._progress: BuildProgress | None = None
        self._started = 0.0
        self._drawn = False
        self._shown: tuple[int, int] | None = None  # (step, tenth) last printed off a terminal
        self._ticker: asyncio.Task[None] | None = None
        self._filter: _ClearLineFilter | None = None

    def __call__(self, progress: BuildProgress | None) -> None:
        if progress is None:
            self._finish()
            return
        if self._progress is None:
            self._begin(progress)
        self._progress = progress
        if self._tty:
            self._draw()
        else:
            self._print_milestone(progress)

    def _begin(self, progress: BuildProgress) -> None:
        self._started = time.monotonic() - progress.elapsed_seconds
        where = f" into {self._cache}" if self._cache is not None else ""
        note = f" {self._note}" if self._note else ""
        self._out.write(
            f"Building llama.cpp's llama-server from source{where}. This happens once and "
            f"takes a few minutes (about 5-10 on two cores).{note}\n"
        )
        self._out.flush()
        if self._tty:
            self._filter = _ClearLineFilter(self)
            for handler in _handlers_on(self._out):
                handler.addFilter(self._filter)
            with contextlib.suppress(RuntimeError):  # no running loop: redraw on updates only
                self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def _draw(self) -> None:
        if self._progress is None:
            return
        line = render(self._progress, time.monotonic() - self._started)
        self._out.write(_CLEAR_LINE + line)
        self._out.flush()
        self._drawn = True

    def clear(self) -> None:
        """Take the progress line off the screen (a log line is about to be printed)."""
        if self._drawn:
            self._out.write(_CLEAR_LINE)
            self._out.flush()
            self._drawn = False

    def _print_milestone(self, progress: BuildProgress) -> None:
        tenth = int((progress.fraction or 0.0) * TENTHS)
        key = (progress.number, tenth)
        if key == self._shown:
            return
        self._shown = key
        print(render(progress, progress.elapsed_seconds), file=self._out, flush=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(REDRAW_SECONDS)
            self._draw()

    def _finish(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._filter is not None:
            for handler in _handlers_on(self._out):
                handler.removeFilter(self._filter)
            self._filter = None
        if self._drawn:
            self._out.write("\n")
            self._out.flush()
            self._drawn = False
        self._progress = None


class _ClearLineFilter(logging.Filter):
    """Clears the progress line before a log record is written to the same terminal."""

    def __init__(self, display: BuildDisplay) -> None:
        super().__init__()
        self._display = display

    def filter(self, record: logging.LogRecord) -> bool:
        self._display.clear()
        return True


def _handlers_on(stream: TextIO) -> list[logging.Handler]:
    return [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is stream
    ]
