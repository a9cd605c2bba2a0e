"""Prometheus metrics of the ClickHouse sink (default registry; the api serves /metrics)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

ROWS_INSERTED: Final = Counter(
    "streambill_sink_rows_inserted_total", "Rows inserted into ClickHouse", ["table"]
)
DUPLICATES_SKIPPED: Final = Counter(
    "streambill_sink_duplicates_skipped_total",
    "Rows not inserted because their id was already in the batch or in ClickHouse",
    ["table"],
)
INVALID_MESSAGES: Final = Counter(
    "streambill_sink_invalid_messages_total",
    "Consumed messages that could not be mapped",
    ["topic"],
)
FLUSH_FAILURES: Final = Counter(
    "streambill_sink_flush_failures_total", "Flushes that failed and will be retried"
)
FLUSH_DURATION: Final = Histogram(
    "streambill_sink_flush_duration_seconds",
    "Time to insert one batch and commit its offsets",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
FLUSH_ROWS: Final = Histogram(
    "streambill_sink_flush_rows",
    "Rows per flushed batch",
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000),
)
LAG: Final = Gauge(
    "streambill_sink_lag_messages", "Messages behind the high watermark, per topic", ["topic"]
)
BUFFERED_ROWS: Final = Gauge("streambill_sink_buffered_rows", "Rows waiting for the next flush")
PAUSED: Final = Gauge("streambill_sink_paused", "1 while fetching is paused by a full buffer")
