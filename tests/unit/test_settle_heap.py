"""The worker settles its startup heap: startup objects leave the collector's view, garbage
does not stay."""

from __future__ import annotations

import gc
import weakref

from cartback.worker import settle_startup_heap


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_startup_objects_are_frozen_and_earlier_garbage_is_collected_first() -> None:
    cycle = _Node()
    gone = weakref.ref(cycle)
    del cycle  # unreachable, but only a collection can free a cycle
    try:
        settle_startup_heap()
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
