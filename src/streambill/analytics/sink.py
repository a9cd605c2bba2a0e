"""The ClickHouse sink: ledger, usage, alerts, dead letters, commission entries and fraud
scores, in batches, then offsets.

It runs in the api process (the one process that may open chDB). One loop consumes the six
topics with aiokafka, maps each message to a row (:mod:`rows`), buffers (:class:`Batch`), and
flushes when the batch holds ``sink_flush_rows`` rows or its first message is
``sink_flush_interval_s`` old: insert each table, then commit the offsets. Delivery into
ClickHouse is at-least-once; the tables collapse replays by id.

The rollup views count every INSERT, so the ledger is inserted once per ``entry_id``: repeats
within a batch are dropped, and before inserting, the sink asks ``ledger`` which ids of the
batch it already holds (a replay after a crash between insert and commit, a re-emitted entry
from the worker, a retried flush). See migrations/004_usage_rollups.sql for what remains.

A failed flush keeps the batch and is retried with backoff; consumption continues until the
buffer holds ``max_buffer_rows``, then the assigned partitions are paused (the consumer keeps
polling, so it stays in its group). Nothing is committed that is not in ClickHouse.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from streambill.analytics import metrics, queries
from streambill.analytics.batch import Batch
from streambill.analytics.client import AsyncClickHouse
from streambill.analytics.ledger_view import LedgerView
from streambill.analytics.rows import TABLE_SPECS, LedgerRow, TableSpec
from streambill.errors import InvalidEvent
from streambill.settings import Settings
from streambill.streams import topics

logger = logging.getLogger(__name__)

GROUP_ID: Final = topics.SINK_GROUP
SINK_TOPICS: Final = (
    topics.LEDGER,
    topics.USAGE,
    topics.ALERTS,
    topics.DEADLETTER,
    topics.COMMISSIONS,
    topics.FRAUD,
)
# Insert order: the ledger first, so a flush that fails later leaves the rest to the retry.
# Commission entries have no rollup view: a replayed one is collapsed by ReplacingMergeTree
# (and by FINAL / LIMIT 1 BY entry_id in the reads), so they need no existence check; fraud
# scores likewise (LIMIT 1 BY score_id).
_TABLE_ORDER: Final = ("ledger", "usage", "alerts", "deadletters", "commissions", "fraud_scores")
BACKOFF_S_MIN: Final = 0.5
BACKOFF_S_MAX: Final = 30.0
POLL_IDLE_MS: Final = 500
STOP_TIMEOUT_S: Final = 15.0
YIELD_EVERY: Final = 500
_TABLE_COLUMNS: Final = {spec.table: spec.columns for spec in TABLE_SPECS.values()}
_POSITION_COLUMNS: Final = ("topic", "partition", "next_offset", "updated_at")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: ClickHouseSink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._sink.flush_or_discard()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        # Another sink may have flushed these partitions' entries before handing them over:
        # re-seed so that the view knows them and their replays are checked (see _add).
        seeded = await self._sink.seed_view()
        logger.info(
            "sink partitions assigned",
            extra={"partitions": len(list(assigned)), "seeded_customers": seeded},
        )


class ClickHouseSink:
    """Consume the billing topics into ClickHouse and keep the live :class:`LedgerView`.

    Lifecycle: ``await start()`` (seeds the view, joins the group, starts the loop),
    ``await stop()`` (stops the loop, flushes what is buffered, commits, leaves the group).
    """

    def __init__(
        self,
        settings: Settings,
        clickhouse: AsyncClickHouse,
        view: LedgerView | None = None,
        *,
        max_buffer_rows: int | None = None,
        max_poll_records: int = 10_000,
    ) -> None:
        self._settings = settings
        self._ch = clickhouse
        self.view = view if view is not None else LedgerView()
        self._flush_rows = settings.sink_flush_rows
        self._interval_s = settings.sink_flush_interval_s
        self._max_buffer_rows = max_buffer_rows or max(10 * self._flush_rows, 10_000)
        self._max_poll_records = max_poll_records
        self._batch = Batch()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._last_lag_at = 0.0
        self._positions: dict[tuple[str, int], int] = {}
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        """True while the loop runs (readiness: a crashed sink must be visible)."""
        return self._task is not None and not self._task.done()

    async def seed_view(self) -> int:
        """Load every customer's latest entry from ClickHouse into the view."""
        return self.view.seed(await self._ch.run(queries.latest_balances))

    async def start(self) -> None:
        seeded = await self.seed_view()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap,
            group_id=GROUP_ID,
            client_id=f"{GROUP_ID}-{self._settings.api_port}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(100, self._settings.kafka_session_timeout_ms // 3),
            max_poll_records=self._max_poll_records,
            fetch_max_wait_ms=self._settings.sink_fetch_wait_ms,
            request_timeout_ms=30_000,
        )
        consumer.subscribe(list(SINK_TOPICS), listener=_Rebalance(self))
        await consumer.start()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="clickhouse-sink")
        logger.info("sink started", extra={"seeded_customers": seeded, "group": GROUP_ID})

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop consuming, flush and commit what is buffered, leave the group. Idempotent."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=timeout_s)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception:
                logger.exception("sink loop had failed")
            self._task = None
        if self._consumer is not None:
            try:
                await asyncio.wait_for(self.flush(), timeout=timeout_s)
            except Exception:
                logger.exception("final sink flush failed; the buffer will be re-read")
            await self._consumer.stop()
            self._consumer = None
        logger.info("sink stopped")

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while not self._stopping.is_set():
                await self._poll(consumer)
                due = self._batch.due(self._flush_rows, self._interval_s)
                if due and time.monotonic() >= self._retry_at:
                    await self._flush_with_backoff()
                self._report_lag(consumer)
        except Exception as exc:
            self.last_error = f"sink loop crashed: {exc!r}"
            logger.exception("sink loop crashed")
            raise

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        self._apply_backpressure(consumer)
        wait_s = self._batch.seconds_until_due(self._interval_s)
        timeout_ms = POLL_IDLE_MS if wait_s is None else min(POLL_IDLE_MS, int(wait_s * 1000))
        records = await consumer.getmany(
            timeout_ms=max(timeout_ms, 1), max_records=self._max_poll_records
        )
        mapped = 0
        for tp, messages in records.items():
            spec = TABLE_SPECS[tp.topic]
            for message in messages:
                self._add(spec, tp.partition, message.offset, message.value)
                mapped += 1
                if mapped % YIELD_EVERY == 0:
                    # Mapping a full poll takes ~100 ms of this event loop, which the api's
                    # requests share: let them run between slices.
                    await asyncio.sleep(0)
        metrics.BUFFERED_ROWS.set(self._batch.row_count)

    def _add(self, spec: TableSpec, partition: int, offset: int, value: bytes | None) -> None:
        row = map_message(spec, partition, offset, value)
        self._positions[(spec.topic, partition)] = offset + 1
        self._batch.add(spec.topic, partition, offset, spec, row)
        if isinstance(row, LedgerRow):
            if self.view.may_be_stored(row.customer_id, row.seq):
                self._batch.maybe_stored.add(row.entry_id)
            self.view.apply(row)

    def _apply_backpressure(self, consumer: AIOKafkaConsumer) -> None:
        full = self._batch.row_count >= self._max_buffer_rows
        if full and not self._paused:
            consumer.pause(*consumer.assignment())
            logger.warning(
                "sink buffer full; fetching paused", extra={"rows": self._batch.row_count}
            )
        elif not full and self._paused:
            consumer.resume(*consumer.paused())
        self._paused = full
        metrics.PAUSED.set(1 if full else 0)

    async def _flush_with_backoff(self) -> None:
        try:
            await self.flush()
        except Exception as exc:
            self._backoff_s = min(BACKOFF_S_MAX, max(BACKOFF_S_MIN, self._backoff_s * 2))
            self._retry_at = time.monotonic() + self._backoff_s
            self.last_error = f"flush failed: {exc!r}"
            metrics.FLUSH_FAILURES.inc()
            logger.warning(
                "sink flush failed; retrying",
                extra={"retry_in_s": self._backoff_s, "rows": self._batch.row_count},
                exc_info=True,
            )
        else:
            self._backoff_s = 0.0
            self._retry_at = 0.0
            self.last_error = None

    async def flush(self) -> None:
        """Insert the buffered rows, then commit their offsets. On failure the rows stay."""
        async with self._lock:
            batch, self._batch = self._batch, Batch()
            if not batch:
                return
            started = time.perf_counter()
            try:
                inserted = await self._insert(batch)
            except BaseException:
                # The ledger insert may have gone through: check every entry on the retry.
                batch.maybe_stored.update(r.entry_id for r in batch.tables().get("ledger", ()))
                batch.absorb(self._batch)
                self._batch = batch
                raise
            await self._commit(batch.next_offsets())
            metrics.FLUSH_DURATION.observe(time.perf_counter() - started)
            metrics.FLUSH_ROWS.observe(inserted)
            metrics.BUFFERED_ROWS.set(self._batch.row_count)

    async def _insert(self, batch: Batch) -> int:
        tables = batch.tables()
        ledger: list[LedgerRow] = tables.get("ledger", [])
        suspects = [r for r in ledger if r.entry_id in batch.maybe_stored]
        if suspects:
            known = await self._ch.run(queries.existing_entry_ids, suspects)
            if known:
                tables["ledger"] = [r for r in ledger if r.entry_id not in known]
                metrics.DUPLICATES_SKIPPED.labels("ledger").inc(len(ledger) - len(tables["ledger"]))
        for table, count in batch.duplicates.items():
            metrics.DUPLICATES_SKIPPED.labels(table).inc(count)
        batch.duplicates.clear()
        # Where this flush's rows end, before the rows themselves: ClickHouse never holds a
        # row from beyond its recorded position (the start-up check relies on it).
        now = datetime.now(UTC)
        positions = [(t, p, o, now) for (t, p), o in sorted(batch.next_offsets().items())]
        await self._ch.insert("sink_positions", positions, _POSITION_COLUMNS)
        inserted = 0
        for table in _TABLE_ORDER:
            rows = tables.get(table)
            if rows:
                await self._ch.insert(table, rows, _TABLE_COLUMNS[table])
                metrics.ROWS_INSERTED.labels(table).inc(len(rows))
                inserted += len(rows)
        self.view.flushed(ledger)
        return inserted

    async def _commit(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """Commit offsets of partitions still assigned. A failure here loses nothing: the
        rows are in ClickHouse, and re-reading them is deduplicated."""
        if self._consumer is None:
            return
        assigned = self._consumer.assignment()
        offsets = {
            tp: offset
            for (topic, partition), offset in next_offsets.items()
            if (tp := TopicPartition(topic, partition)) in assigned
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            logger.warning(
                "sink offset commit failed; rows will be re-read", extra={"error": repr(exc)}
            )

    async def flush_or_discard(self) -> None:
        """Before partitions are revoked: flush; if that fails, drop the buffer, because the
        partitions' next owner (maybe this consumer again) re-reads from the committed offsets."""
        try:
            await asyncio.wait_for(self.flush(), timeout=STOP_TIMEOUT_S)
        except Exception:
            logger.warning("flush on rebalance failed; buffer discarded", exc_info=True)
            self._batch = Batch()
            self.view.drop_pending()

    def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Lag per topic: the fetch high watermark minus the next offset this sink will read."""
        now = time.monotonic()
        if now - self._last_lag_at < 1.0:
            return
        self._last_lag_at = now
        lag: dict[str, int] = dict.fromkeys(SINK_TOPICS, 0)
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = self._positions.get((tp.topic, tp.partition))
            if highwater is not None and position is not None:
                lag[tp.topic] += max(0, highwater - position)
        for topic, value in lag.items():
            metrics.LAG.labels(topic).set(value)


def map_message(spec: TableSpec, partition: int, offset: int, value: bytes | None) -> Any:
    """The row for a message, or None (logged and counted) when it cannot be mapped."""
    try:
        if value is None:
            raise InvalidEvent("empty message")
        return spec.mapper(value, partition, offset)
    except InvalidEvent as exc:
        metrics.INVALID_MESSAGES.labels(spec.topic).inc()
        # Raw usage is expected to hold bad input (the worker dead-letters it); elsewhere a
        # bad message is an upstream bug.
        level = logging.DEBUG if spec.topic == topics.USAGE else logging.WARNING
        logger.log(
            level,
            "sink skipped a message it cannot map",
            extra={
                "topic": spec.topic,
                "partition": partition,
                "offset": offset,
                "error_code": exc.code,
                "reason": exc.message,
            },
        )
        return None
