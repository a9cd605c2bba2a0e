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
import time
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


PARENT_ENV = "STREAMBILL_PARENT_PID"
ORPHAN_GRACE_S = 40.0


def exit_when_orphaned(grace_s: float = ORPHAN_GRACE_S, every_s: float = 1.0) -> bool:
    """In a process that ``streambill up`` started: once ``up`` is gone, give the process
    ``grace_s`` to stop by itself, then end it with SIGKILL.

    ``up`` asks the kernel to send its children SIGTERM when it dies (``PR_SET_PDEATHSIG``),
    and each stops cleanly from there. But a child whose stop hangs (a worker's Kafka client
    that waits for a broker that died with ``up``) has nobody left to kill it and would run
    on as an orphan, holding its port and its data. A daemon thread watches the parent pid
    given in :data:`PARENT_ENV`; nothing runs without it. Returns whether it watches.
    """
    expected = os.environ.get(PARENT_ENV, "")
    if not expected.isdigit():
        return False
    parent = int(expected)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        time.sleep(grace_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
    return True
