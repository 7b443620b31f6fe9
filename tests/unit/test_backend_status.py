"""The default backend's status board: what /healthz shows and when sessions are refused."""

from __future__ import annotations

from engine.backend_status import BackendBoard, BuildProgress
from engine.errors import BackendFailed, BackendStarting
from tests.support.clock import ManualClock


def embedded(clock: ManualClock | None = None) -> BackendBoard:
    return BackendBoard(
        "embedded", "http://127.0.0.1:9/v1", state="starting", probe_timeout=1.0,
        clock=(clock or ManualClock()).monotonic,
    )  # fmt: skip


def compiling(elapsed: float) -> BuildProgress:
    return BuildProgress(
        step="compiling llama-server", number=5, steps=6, fraction=0.5, elapsed_seconds=elapsed
    )


def test_building_shows_progress_with_time_counted_up_to_now() -> None:
    clock = ManualClock()
    board = embedded(clock)
    board.building(compiling(elapsed=30.0))
    clock.advance(12.0)
    status = board.snapshot()
    assert status.state == "building" and status.answers is False
    assert status.build is not None and status.build.elapsed_seconds == 42.0
    assert status.detail == "building llama.cpp's llama-server: compiling llama-server"


def test_sessions_are_refused_until_the_embedded_backend_first_answers() -> None:
    board = embedded()
    board.building(compiling(elapsed=75.0))
    refusal = board.refusal()
    assert isinstance(refusal, BackendStarting)
    assert refusal.code == "backend_starting"
    assert "still being built (compiling llama-server, step 5 of 6, 1:15 so far)" in refusal.message
    board.update("starting", "llama-server is starting")
    assert isinstance(board.refusal(), BackendStarting)
    board.update("ready", "llama-server answers", answers=True, model="SmolLM2")
    assert board.refusal() is None
    assert board.snapshot().build is None and board.snapshot().model == "SmolLM2"


def test_once_ready_an_outage_is_not_a_refusal() -> None:
    board = embedded()
    board.update("ready", "up", answers=True)
    board.update("restarting", "llama-server was killed by SIGKILL; restarting in 1 s")
    assert board.refusal() is None  # sessions ride it out (engine.outage)


def test_a_failed_build_refuses_with_its_reason() -> None:
    board = embedded()
    board.update("failed", "missing CMake (the `cmake` command)", answers=False)
    refusal = board.refusal()
    assert isinstance(refusal, BackendFailed)
    assert refusal.code == "backend_failed"
    assert "missing CMake" in refusal.message


def test_a_backend_fellowship_does_not_run_never_refuses() -> None:
    board = BackendBoard("external", "http://127.0.0.1:9/v1", probe_timeout=1.0)
    board.update("unreachable", "it does not answer", answers=False)
    assert board.refusal() is None
