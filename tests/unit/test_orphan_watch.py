"""A process that `streambill up` started ends when `up` is gone, even if it ignores SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from streambill.shutdown import PARENT_ENV
from waiting import eventually

# The child: ignores SIGTERM (as a stop that hangs would), watches its parent, sleeps.
CHILD = textwrap.dedent(
    """
    import signal, time
    from streambill.shutdown import exit_when_orphaned
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    assert exit_when_orphaned(grace_s=0.5, every_s=0.05)
    print("watching", flush=True)
    time.sleep(120)
    """
)
# The parent: starts the child with its own pid in the environment, says the child's pid
# once the child watches, and exits (the child is an orphan from then on).
PARENT = textwrap.dedent(
    f"""
    import os, subprocess, sys
    env = dict(os.environ, {PARENT_ENV}=str(os.getpid()))
    child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], env=env,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "watching"
    print(child.pid, flush=True)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_orphan_that_ignores_sigterm_is_ended_after_its_grace() -> None:
    parent = subprocess.run(
        [sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=60, check=True
    )
    child = int(parent.stdout.strip())
    try:
        eventually(lambda: not _alive(child), 20, f"the orphaned child {child} ended")
    finally:
        if _alive(child):
            os.kill(child, 9)


def test_nothing_watches_without_a_parent_pid() -> None:
    env = dict(os.environ)
    env.pop(PARENT_ENV, None)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from streambill.shutdown import exit_when_orphaned as w; print(w())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "False"
