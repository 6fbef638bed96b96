"""``process.freeze_heap``: what a process holds at start-up leaves the garbage collector's generations (``gc.freeze``),
so full collections skip it and forked workers keep its pages shared (docs/performance.md, "Workers")."""

from __future__ import annotations

import gc

from phantom_token.process import freeze_heap


def test_freeze_heap_takes_the_live_objects_out_of_every_generation() -> None:
    held = [object()]  # a container: tracked by the collector
    assert any(candidate is held for candidate in gc.get_objects())
    try:
        freeze_heap()
        assert gc.get_freeze_count() > 0
        assert not any(candidate is held for candidate in gc.get_objects())
        later = [object()]  # objects made afterwards are collected as usual
        assert any(candidate is later for candidate in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(candidate is held for candidate in gc.get_objects())
