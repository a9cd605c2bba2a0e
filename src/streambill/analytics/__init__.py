"""ClickHouse: the ledger, usage, alerts and dead letters, and their rollups.

Everything goes through clickhouse-connect, so one DSN picks the engine: ``chdb:///abs/path``
opens embedded chDB inside this process (one process per data directory: the api), and
``http://host:8123`` a ClickHouse server. Nothing above this package knows which.

Opening and migrating (``client``, ``migrate``)
    :func:`client.connect` returns the blocking clickhouse-connect client.
    :class:`client.AsyncClickHouse` wraps it for asyncio: ``await AsyncClickHouse.open(dsn)``,
    then ``await ch.run(fn, *args)`` runs ``fn(client, *args)`` on one dedicated thread (chDB
    calls are blocking and are serialized there). :func:`migrate.migrate` applies the
    versioned ``migrations/NNN_name.sql`` files and refuses an applied file that changed.

Sinking (``sink``, ``rows``, ``batch``)
    :class:`sink.ClickHouseSink` consumes ``billing.ledger.v1``, ``billing.usage.v1``,
    ``billing.alerts.v1`` and ``billing.deadletter.v1`` (group ``streambill-sink``), maps each
    message to a row (:mod:`rows`), and flushes a batch at ``sink_flush_rows`` rows or
    ``sink_flush_interval_s``: insert, then commit offsets. Ledger rows are inserted once per
    ``entry_id`` so the rollup views count each entry once. Metrics are in :mod:`metrics`.

Reading (``ledger_view``, ``queries``)
    :class:`ledger_view.LedgerView` is the live, in-memory latest balance per customer plus
    the consumed-but-unflushed entries, updated by the sink before it flushes.
    :mod:`queries` reads balances, a customer's ledger (deduplicated by ``entry_id``), the
    per-minute/hour/day usage and spend rollups, and checks the ledger invariants
    (:func:`queries.ledger_invariants`).

Wiring into the api's lifespan::

    ch = await AsyncClickHouse.open(settings.clickhouse_dsn)
    await ch.run(migrate)
    sink = ClickHouseSink(settings, ch)
    await sink.start()
    ...
    await sink.stop()
    await ch.close()
"""

from __future__ import annotations

from streambill.analytics.client import AsyncClickHouse, ClickHouseUnavailable, connect
from streambill.analytics.ledger_view import Balance, LedgerView
from streambill.analytics.migrate import MigrationError, migrate
from streambill.analytics.queries import (
    Violation,
    customer_balance,
    customer_ledger,
    ledger_invariants,
    merge_pending,
)
from streambill.analytics.rows import LedgerRow, ledger_entry_json
from streambill.analytics.sink import ClickHouseSink

__all__ = [
    "AsyncClickHouse",
    "Balance",
    "ClickHouseSink",
    "ClickHouseUnavailable",
    "LedgerRow",
    "LedgerView",
    "MigrationError",
    "Violation",
    "connect",
    "customer_balance",
    "customer_ledger",
    "ledger_entry_json",
    "ledger_invariants",
    "merge_pending",
    "migrate",
]
