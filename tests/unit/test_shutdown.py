"""StopRequest: the stop flag that `up` and the demo set from their signal handlers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from streambill.shutdown import StopRequest, stop_on_signals

# A main loop that polls as fast as it can: the signal lands at any bytecode of wait(),
# including those where a threading.Event would hold its lock (the handler then deadlocks
# on it: with `threading.Event` in place of StopRequest most of these children never exit).
BUSY_CHILD = """
from streambill.shutdown import StopRequest, stop_on_signals
stop = StopRequest()
with stop_on_signals(stop):
    print("ready", flush=True)
    while not stop.wait(0):
        pass
print(stop.reason, flush=True)
"""


def test_a_signal_always_stops_a_busy_wait_loop() -> None:
    reasons = []
    for _ in range(25):
        child = subprocess.Popen(
            [sys.executable, "-c", BUSY_CHILD], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.005)
        child.send_signal(signal.SIGTERM)
        try:
            out, _ = child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise AssertionError("the child did not stop on SIGTERM") from None
        assert child.returncode == 0
        reasons.append(out.strip())
    assert set(reasons) == {"SIGTERM"}


def test_a_signal_wakes_a_long_wait_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    with stop_on_signals(stop):
        assert signal.getsignal(signal.SIGTERM) is not before
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        assert stop.wait(30) is True
        assert time.monotonic() - started < 10  # woken by the signal, not by the timeout
    assert signal.getsignal(signal.SIGTERM) is before
    assert stop.reason == "SIGTERM"
    stop.close()


def test_set_from_another_thread_wakes_the_waiter_and_stays_set() -> None:
    stop = StopRequest()
    threading.Timer(0.05, stop.set, ("done",)).start()
    assert stop.wait(30) is True
    stop.set("again")  # the first reason is kept
    assert stop.reason == "done"
    assert stop.wait(0) is True
    stop.close()


def test_an_ignored_sighup_stays_ignored() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        stop = StopRequest()
        with stop_on_signals(stop, (signal.SIGTERM, signal.SIGHUP)):
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
        stop.close()
    finally:
        signal.signal(signal.SIGHUP, previous)
