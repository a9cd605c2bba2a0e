"""Builds the Faust app from settings: topics, tables, agents, web pages.

Everything is created inside :func:`create_app` (nothing at import time), so tests and two
workers in one test process get separate apps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.types.tables import GlobalTableT, TableT
from mode.supervisors import CrashingSupervisor

from streambill.agents import snapshots
from streambill.settings import Settings
from streambill.streams import topics

log = logging.getLogger(__name__)


class BytesKeyed(MutableMapping[str, Any]):
    """A table store seen with ``str`` keys.

    Faust's changelog recovery puts raw keys (bytes) into a memory store whatever the
    declared key type, so every key is kept as UTF-8 bytes and converted at this boundary.
    Reads and writes go to the store's plain ``dict`` (``store.data``): the store's own
    mapping methods go through ``Mapping.get`` -> ``__getitem__`` -> ``KeyError`` for a
    missing key, which was a fifth of a busy worker's time.
    """

    __slots__ = ("_store",)

    def __init__(self, store: Any) -> None:
        self._store = store

    @property
    def _data(self) -> dict[Any, Any]:
        data = getattr(self._store, "data", None)
        return data if isinstance(data, dict) else self._store

    @property
    def raw(self) -> dict[bytes, Any]:
        """The store's dict itself, bytes keys and all."""
        return self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key.encode(), default)

    def __getitem__(self, key: str) -> Any:
        return self._data[key.encode()]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key.encode()] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key.encode()]

    def __iter__(self) -> Iterator[str]:
        for key in list(self._data.keys()):
            yield key.decode() if isinstance(key, bytes) else key

    def items(self) -> Any:
        return [(k.decode() if isinstance(k, bytes) else k, v) for k, v in self._data.items()]

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class Tables:
    accounts: GlobalTableT
    balances: TableT[Any, Any]
    dedup: TableT[Any, Any]


def _use_fetch_wait(fetch_max_wait_ms: int) -> None:
    """Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. Tansu answers a
    fetch only when that wait runs out (measured: ~450 ms per hop at 1500, ~6 ms at 50), so
    the worker sets its own before the consumer starts."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = getattr(AIOKafkaConsumerThread, "_streambill_original", None)
    if original is None:
        original = AIOKafkaConsumerThread._create_worker_consumer
        AIOKafkaConsumerThread._streambill_original = original  # type: ignore[attr-defined]

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


def create_faust_app(settings: Settings) -> faust.App:
    session_s = settings.kafka_session_timeout_ms / 1000
    _use_fetch_wait(settings.fetch_max_wait_ms)
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
        web_bind=settings.internal_host,
        web_port=settings.worker_port,
        web_host=settings.internal_host,
        # Faust's own pages would show any table's values (/table) and which worker holds a
        # key (/router): off. The worker serves only /healthz, /readyz and /metrics.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        # A crashed agent stops the worker with a non-zero exit instead of being restarted
        # every 5 s forever while its partitions stand still.
        agent_supervisor=CrashingSupervisor,
        datadir=str(settings.data_dir / "worker"),
    )
    # The transport is created lazily (no event loop needed here); its consumer is created
    # at start-up from this class. Both commit source offsets from the agents' positions.
    if settings.worker_fast_drain:
        from streambill.agents.fastdrain import FastDrainConsumer

        app.transport.Consumer = FastDrainConsumer  # type: ignore[misc]
    else:
        from streambill.agents.consumer import StreambillConsumer

        app.transport.Consumer = StreambillConsumer  # type: ignore[misc]
    return app


def tables_dir(settings: Settings) -> Path:
    """Where this worker keeps its table snapshots (one directory per worker port, so
    workers sharing a data dir never share a snapshot)."""
    return settings.data_dir.resolve() / "worker" / "tables" / str(settings.worker_port)


def create_tables(app: faust.App, settings: Settings) -> Tables:
    """The three tables: raw bytes keys and values, snapshot stores, explicit changelogs
    with the source topics' partition count."""
    snapshots.register()
    n = settings.topic_partitions
    schema: faust.Schema = faust.Schema(key_serializer="raw", value_serializer="raw")
    store = f"{snapshots.SCHEME}://{tables_dir(settings)}"

    def changelog(name: str) -> faust.TopicT:
        return app.topic(name, partitions=n, key_serializer="raw", value_serializer="raw")

    def options(name: str) -> dict[str, Any]:
        return {
            "partitions": n,
            "changelog_topic": changelog(name),
            "schema": schema,
            "store": store,
        }

    return Tables(
        accounts=app.GlobalTable("accounts", **options(topics.ACCOUNTS_CHANGELOG)),
        balances=app.Table("balances", **options(topics.BALANCES_CHANGELOG)),
        dedup=app.Table("dedup", **options(topics.DEDUP_CHANGELOG)),
    )
