"""Helpers for tests that need a real broker (no mocks). Wire them into conftest fixtures.

``memory_broker()`` starts Tansu on memory storage on a free port with every topic of the
stack created; ``durable_broker(path)`` does the same on localbucket under ``path`` (start
it again on the same path and the data is still there).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from streambill.broker.admin import ensure_topics
from streambill.broker.embedded import EmbeddedBroker, Storage
from streambill.broker.process import free_port, port_is_free
from streambill.streams.topics import TopicSpec, topic_specs

DEFAULT_TEST_PARTITIONS = 4


@contextlib.contextmanager
def _broker(
    data_dir: Path | None, storage: Storage, specs: Sequence[TopicSpec] | None
) -> Iterator[EmbeddedBroker]:
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sb-broker-")))
        broker = EmbeddedBroker(data_dir, port=free_port(), storage=storage)
        stack.enter_context(broker)
        if specs:
            ensure_topics(broker.bootstrap, specs, timeout_s=30.0)
        yield broker


def memory_broker(
    partitions: int = DEFAULT_TEST_PARTITIONS,
    *,
    data_dir: Path | None = None,
    specs: Sequence[TopicSpec] | None = None,
) -> contextlib.AbstractContextManager[EmbeddedBroker]:
    """A memory broker on a free port with ``topic_specs(partitions)`` (or ``specs``) created.

    ``data_dir`` holds its logs (a temporary directory when omitted). Pass ``specs=[]`` for
    a broker without topics.
    """
    return _broker(data_dir, "memory", topic_specs(partitions) if specs is None else specs)


def durable_broker(
    data_dir: Path | None = None,
    partitions: int = DEFAULT_TEST_PARTITIONS,
    *,
    specs: Sequence[TopicSpec] | None = None,
) -> contextlib.AbstractContextManager[EmbeddedBroker]:
    """A durable broker (Tansu in memory behind the journal proxy) storing under ``data_dir``
    (a temporary directory when omitted), on a free port, with the topics created
    (idempotent)."""
    return _broker(data_dir, "durable", topic_specs(partitions) if specs is None else specs)


def producer_config(bootstrap: str) -> dict[str, Any]:
    """confluent-kafka producer settings for tests: acks=all, idempotent, bounded."""
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": 30_000,
        "linger.ms": 5,
    }


def consumer_config(bootstrap: str, group_id: str) -> dict[str, Any]:
    """confluent-kafka consumer settings for tests; a short session timeout because a group
    join on Tansu waits about the session timeout."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6_000,
        "heartbeat.interval.ms": 1_000,
    }


def process_group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group ``pgid`` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, group = fields[0], int(fields[2])  # state, ppid, pgrp
        if group == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def free_port_range(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive free ports (``up`` gives worker i port + i)."""
    for _ in range(attempts):
        first = free_port()
        if all(port_is_free(first + offset) for offset in range(count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports found")


def stack_env(data_dir: Path, *, workers: int = 1, storage: Storage = "memory") -> dict[str, str]:
    """Environment for a ``streambill up`` of its own: data dir, free ports, no demo."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("STREAMBILL_")}
    env.update(
        STREAMBILL_DATA_DIR=str(data_dir),
        STREAMBILL_BROKER_STORAGE=storage,
        STREAMBILL_BROKER_PORT=str(free_port()),
        STREAMBILL_API_PORT=str(free_port()),
        STREAMBILL_WORKER_PORT=str(free_port_range(workers)),
        STREAMBILL_ML_PORT=str(free_port()),
        STREAMBILL_DEMO="0",
        PYTHONUNBUFFERED="1",
    )
    return env


class OutputReader:
    """Collects a child's stdout lines on a thread, so tests can wait for one with a timeout.

    Start the process with ``stdout=subprocess.PIPE, text=True``.
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        if process.stdout is None:
            raise ValueError("start the process with stdout=subprocess.PIPE, text=True")
        self.lines: list[str] = []
        self._stdout = process.stdout
        self._changed = threading.Condition()
        self._ended = False
        threading.Thread(target=self._pump, name="output-reader", daemon=True).start()

    def _pump(self) -> None:
        for line in self._stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, needle: str, timeout_s: float) -> str:
        """The first line containing ``needle``; ``TimeoutError`` (with the output so far)
        when it is not printed within ``timeout_s`` or the output ends first."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = next((line for line in self.lines if needle in line), None)
                remaining = deadline - time.monotonic()
                if found is not None:
                    return found
                if self._ended or remaining <= 0:
                    output = "\n".join(self.lines)
                    raise TimeoutError(f"{needle!r} not printed in {timeout_s} s:\n{output}")
                self._changed.wait(remaining)

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


def pids_in(run_dir: Path) -> dict[str, int]:
    """The pid files of a running stack, by process name."""
    return {path.stem: int(path.read_text()) for path in run_dir.glob("*.pid")}


def stop_stack(
    up: subprocess.Popen[str],
    output: OutputReader,
    timeout_s: float,
    signum: int = signal.SIGTERM,
) -> int:
    """Send ``signum`` (SIGTERM) to a running ``up`` and return its exit code.

    When it does not exit within ``timeout_s`` it is killed and the test fails with the
    output so far, which shows the stop step it hung in."""
    up.send_signal(signum)
    try:
        return up.wait(timeout_s)
    except subprocess.TimeoutExpired:
        up.kill()
        up.wait(10)
        raise AssertionError(
            f"up did not stop within {timeout_s} s of signal {signum}; its output:\n{output.text()}"
        ) from None
