"""A stop request that signal handlers can make safely.

A Python signal handler runs in the main thread between two bytecodes, wherever that thread
happens to be. ``threading.Event.set`` takes the event's lock; when the handler runs while
the main thread itself holds that lock (inside ``Event.wait``, between waking up and
returning), the handler waits for itself forever. The Python documentation warns against
locks in signal handlers; ``streambill up`` hit it in CI (a SIGTERM that never stopped the
stack). :class:`StopRequest` sets a plain attribute and writes one byte to a pipe, neither
of which takes a lock; waiting is a ``select`` on that pipe, so a signal wakes it at once.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """A one-way flag: once set it stays set. Safe to set from signal handlers and threads.

    >>> stop = StopRequest()
    >>> stop.is_set(), stop.wait(0.01)
    (False, False)
    >>> stop.set("SIGTERM")
    >>> stop.is_set(), stop.wait(5), stop.reason
    (True, True, 'SIGTERM')
    >>> stop.close()
    """

    def __init__(self) -> None:
        self._set = False
        self.reason: str | None = None
        self._read, self._write = os.pipe()  # not inherited by children (PEP 446)
        os.set_blocking(self._write, False)

    def set(self, reason: str = "requested") -> None:
        """Request the stop. Takes no lock, so a signal handler may call it."""
        if not self._set:
            self.reason = reason
            self._set = True
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"\0")  # wakes every wait(); a full pipe already does

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout_s: float) -> bool:
        """Sleep until the stop is requested or ``timeout_s`` passed; True when requested."""
        if self._set:
            return True
        # A signal during select runs its handler, which writes to the pipe, and select
        # (retried after the handler, PEP 475) returns at once.
        select.select([self._read], [], [], max(0.0, timeout_s))
        return self._set

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def stop_on_signals(
    stop: StopRequest, signals: tuple[signal.Signals, ...] = STOP_SIGNALS
) -> Iterator[None]:
    """While inside, ``signals`` set ``stop`` (with the signal's name as its reason).

    Handlers exist only in the main thread; elsewhere this does nothing and the caller stops
    by other means. SIGHUP ignored at entry (started under nohup) stays ignored, so the
    process outlives its terminal. The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set(signal.Signals(signum).name)  # nothing else here: no locks, no logging

    previous: dict[int, object] = {}
    for signum in signals:
        if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for restored, old in previous.items():
            signal.signal(restored, old)  # type: ignore[arg-type]
