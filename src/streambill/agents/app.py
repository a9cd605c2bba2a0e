"""Builds the Faust app from settings: topics, tables, agents, web pages.

Everything is created inside :func:`create_app` (nothing at import time), so tests and two
workers in one test process get separate apps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import faust
from mode.supervisors import CrashingSupervisor

from streambill.settings import Settings
from streambill.streams import topics

log = logging.getLogger(__name__)


class BytesKeyed(MutableMapping[str, Any]):
    """A table store seen with ``str`` keys.

    Faust's changelog recovery puts raw keys (bytes) into a memory store whatever the
    declared key type, so every key is kept as UTF-8 bytes and converted at this boundary.
    """

    __slots__ = ("_store",)

    def __init__(self, store: MutableMapping[Any, Any]) -> None:
        self._store = store

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._store.get(key.encode(), default)

    def __getitem__(self, key: str) -> Any:
        return self._store[key.encode()]

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[key.encode()] = value

    def __delitem__(self, key: str) -> None:
        del self._store[key.encode()]

    def __iter__(self) -> Iterator[str]:
        for key in list(self._store.keys()):
            yield key.decode() if isinstance(key, bytes) else key

    def __len__(self) -> int:
        return len(self._store)


@dataclass
class Tables:
    accounts: faust.GlobalTable
    balances: faust.Table
    dedup: faust.Table


def create_faust_app(settings: Settings) -> faust.App:
    session_s = settings.kafka_session_timeout_ms / 1000
    app = faust.App(
        topics.APP_ID,
        broker=f"kafka://{settings.bootstrap.replace(',', ';kafka://')}",
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(session_s / 6, 0.5),
        broker_commit_interval=1.0,
        producer_acks=-1,
        stream_buffer_maxsize=8192,
        stream_wait_empty=False,
        web_enabled=True,
        web_bind=settings.api_host,
        web_port=settings.worker_port,
        web_host=settings.api_host,
        # A crashed agent stops the worker with a non-zero exit instead of being restarted
        # every 5 s forever while its partitions stand still.
        agent_supervisor=CrashingSupervisor,
        datadir=str(settings.data_dir / "worker"),
    )
    return app


def create_tables(app: faust.App, settings: Settings) -> Tables:
    raw = {"schema": faust.Schema(key_serializer="raw", value_serializer="raw")}
    return Tables(
        accounts=app.GlobalTable(
            "accounts",
            partitions=settings.topic_partitions,
            changelog_topic=app.topic(
                topics.ACCOUNTS_CHANGELOG,
                partitions=settings.topic_partitions,
                key_serializer="raw",
                value_serializer="raw",
            ),
            **raw,  # type: ignore[arg-type]
        ),
        balances=app.Table(
            "balances",
            partitions=settings.topic_partitions,
            changelog_topic=app.topic(
                topics.BALANCES_CHANGELOG,
                partitions=settings.topic_partitions,
                key_serializer="raw",
                value_serializer="raw",
            ),
            **raw,  # type: ignore[arg-type]
        ),
        dedup=app.Table(
            "dedup",
            partitions=settings.topic_partitions,
            changelog_topic=app.topic(
                topics.DEDUP_CHANGELOG,
                partitions=settings.topic_partitions,
                key_serializer="raw",
                value_serializer="raw",
            ),
            **raw,  # type: ignore[arg-type]
        ),
    )
