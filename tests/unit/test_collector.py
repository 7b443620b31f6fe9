"""`fellowship serve` tunes the garbage collector once started (server/hosting.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from server.hosting import GC_THRESHOLDS, settle_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    # The settings are the process's: put them back for the tests that follow.
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
async def test_what_exists_at_start_up_is_frozen_and_collections_come_less_often() -> None:
    assert gc.get_freeze_count() == 0
    await settle_collector()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # CPython's default
