"""Child processes that die with their parent, stop in order and leave nothing behind.

Every child runs in its own session (so a Ctrl-C in the terminal reaches only the parent,
which then stops the children in order) and, on Linux, asks the kernel for a death signal
when the parent goes away (``PR_SET_PDEATHSIG``), so even a ``kill -9`` of the parent leaves
no orphan. The death signal fires when the *thread* that started the child exits: start
children from a thread that lives as long as they should (the main thread in ``up``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from streambill.broker.errors import DataDirLocked, PortInUse
from streambill.shutdown import PARENT_ENV

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Loaded once in the parent: the child after fork only calls into it.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(death_signal: int, parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (a bind succeeds).

    >>> port = free_port()
    >>> port_is_free(port)
    True
    >>> with socket.create_server(("127.0.0.1", port)):
    ...     port_is_free(port)
    False
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(port: int, what: str, host: str = "127.0.0.1") -> None:
    if not port_is_free(port, host):
        raise PortInUse(f"{what}: port {host}:{port} is already in use")


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just found free (another process may still take it: bind soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tcp_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 64 * 1024))
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class DirLock:
    """An exclusive ``flock`` on a file; the kernel drops it when the process dies."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a+")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "?"
            file.close()
            raise DataDirLocked(
                f"{self.what} in {self.path.parent} is in use by pid {holder}"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None


class ChildProcess:
    """One supervised child: output to a log file, a pid file, an orderly stop.

    Parameters
    ----------
    name
        Short name, used for the log file ``<log_dir>/<name>.log`` and ``<pid_dir>/<name>.pid``.
    argv
        The command to run.
    env
        The complete environment of the child (``None``: inherit ours).
    death_signal
        What the child receives when its parent dies (Linux only).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        pid_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        death_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.pid_path = pid_dir / f"{name}.pid" if pid_dir is not None else None
        self.env = dict(env) if env is not None else None
        self.death_signal = death_signal
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log_file.write(f"\n=== {stamp} start: {' '.join(self.argv)}\n".encode())
            log_file.flush()
            # The child's orphan watchdog (streambill.shutdown.exit_when_orphaned).
            env = dict(self.env if self.env is not None else os.environ)
            env[PARENT_ENV] = str(os.getpid())
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent(self.death_signal, os.getpid()),
            )
        if self.pid_path is not None:
            self.pid_path.parent.mkdir(parents=True, exist_ok=True)
            self.pid_path.write_text(f"{self._popen.pid}\n")
        log.info("started %s pid=%d log=%s", self.name, self._popen.pid, self.log_path)

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def poll(self) -> int | None:
        """The exit code once the child has exited, else ``None`` (also before start)."""
        return self._popen.poll() if self._popen is not None else None

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM); it shuts down in its own order."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or ``None`` when the child still runs after ``timeout_s``."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL the child's whole process group.

        Returns True when the child exited on its own after SIGTERM (a clean stop).
        """
        if self._popen is None:
            return True
        self.terminate()
        return self.finish(time.monotonic() + timeout_s)

    def finish(self, deadline: float) -> bool:
        """Wait for an already signalled child until ``deadline`` (monotonic), then kill."""
        if self._popen is None:
            return True
        code = self.wait(deadline - time.monotonic())
        clean = code is not None
        if not clean:
            log.warning("%s pid=%d ignored SIGTERM; killing it", self.name, self._popen.pid)
            self._signal_group(signal.SIGKILL)
            code = self.wait(10.0)
        self._sweep_group()
        if self.pid_path is not None:
            self.pid_path.unlink(missing_ok=True)
        log.info("stopped %s pid=%d exit=%s", self.name, self._popen.pid, code)
        return clean

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def _signal_group(self, signum: int) -> None:
        if self._popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signum)  # start_new_session: pgid == pid

    def _sweep_group(self) -> None:
        """Kill whatever the child left behind in its process group (grandchildren)."""
        if self._popen is None:
            return
        try:
            os.killpg(self._popen.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        log.warning("%s left processes behind in its group; killing them", self.name)
        self._signal_group(signal.SIGKILL)
