from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streambill.gctune import apply_gc_threshold


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_sets_the_young_generation_threshold() -> None:
    apply_gc_threshold(50_000)
    assert gc.get_threshold()[0] == 50_000


def test_zero_keeps_the_interpreters_thresholds() -> None:
    gc.set_threshold(700, 10, 10)
    apply_gc_threshold(0)
    assert gc.get_threshold() == (700, 10, 10)
