"""glibc's malloc arenas in the worker and the broker's journal proxy.

glibc gives a thread that finds the main heap locked an arena of its own, up to eight per
core, and memory freed into an arena stays with it. The worker's threads (librdkafka's
broker threads, the reader and flush threads, Faust's consumer thread) each allocate and
free message buffers, so every one of them ends up holding its own high-water mark of
freed memory. Two arenas measured 12-59 MB less worker RSS in ``streambill bench`` (three
pairs) at the same throughput (docs/performance.md, step 16).

``mallopt(M_ARENA_MAX)`` only caps arenas created after the call: call :func:`limit_arenas`
before the process starts its threads. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

log = logging.getLogger(__name__)

M_ARENA_MAX: Final = -8  # glibc's malloc.h


def limit_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at ``count`` (0: keep glibc's default). True if applied."""
    if count <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to cap
        log.debug("mallopt not available; malloc arenas left as they are")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_ARENA_MAX, count))
    log.debug("malloc arenas capped at %d: %s", count, applied)
    return applied


def trim_heap() -> bool:
    """Give freed heap memory back to the system (``malloc_trim``). True if glibc did.

    The journal proxy calls it after a compaction and a replay, which allocate and free the
    retained records in a thread: its RSS otherwise kept each replay's high-water mark."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim.restype = ctypes.c_int
    return bool(malloc_trim(0))
