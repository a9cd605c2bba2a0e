"""The worker's cap on glibc malloc arenas takes effect for threads started after it."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

_SCRIPT = """
import ctypes, sys, threading
from streambill.malloc import limit_arenas
if sys.argv[1] != "0":
    assert limit_arenas(int(sys.argv[1]))
barrier = threading.Barrier(8)
held = []
def allocate():
    barrier.wait()  # all at once: each thread finds the heaps busy
    held.extend(bytearray(3000) for _ in range(2000))
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(cap: int) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(cap)], capture_output=True, text=True, check=True
    )
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).malloc_stats  # noqa: B018 - the lookup is the check
    except AttributeError:
        return False
    return True


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")
def test_threads_share_the_capped_arenas() -> None:
    assert _arenas(0) > 2  # glibc's default gives busy threads arenas of their own
    assert _arenas(2) <= 2


def test_zero_keeps_the_default() -> None:
    from streambill.malloc import limit_arenas

    assert limit_arenas(0) is False
