"""Garbage-collector thresholds for the long-running processes.

The worker allocates several short-lived containers per event (the decoded event, the
customer's state, the messages it emits) and keeps large long-lived structures (the
accounts cache, Faust's tables). With CPython's default threshold of 700 allocations, a
young-generation pass ran every ~100 events and a middle-generation pass every ~1,000, each
walking whatever had survived so far; py-spy charged that time to whichever allocation
triggered it (~8% of the worker's samples landed on building a NamedTuple).
``docs/performance.md`` has the measurement: one worker alone, 10,571 -> 14,093 events/s.

Collecting less often frees cyclic garbage later, not never: the older generations keep
their own thresholds. Memory stays a measured figure (``worker_rss_mb`` in the bench).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

OLDER_GENERATIONS = (20, 100)


def apply_gc_threshold(gen0: int) -> None:
    """Collect the young generation every ``gen0`` net allocations (0: keep the default)."""
    if gen0 <= 0:
        return
    gc.set_threshold(gen0, *OLDER_GENERATIONS)
    log.debug("gc thresholds %s", gc.get_threshold())
