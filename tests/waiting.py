"""Waiting in tests: poll a condition until a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NotYet(AssertionError):
    """A condition polled by :func:`eventually` did not come true in time."""


def eventually(fn: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.1) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` at the deadline.

    >>> eventually(lambda: 3, 1.0, "three")
    3
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise NotYet(f"{what}: not within {timeout_s:.0f} s (last: {value!r})")
        time.sleep(every_s)
