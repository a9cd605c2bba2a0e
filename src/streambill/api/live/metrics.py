"""Prometheus metrics of the live streams (names with units last)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

CHANNELS: Final = frozenset({"balances", "alerts", "commissions"})

SOCKETS: Final = Gauge("streambill_live_connected_sockets", "Authenticated live sockets")
SENT: Final = Counter(
    "streambill_live_messages_sent_total", "Messages written to live sockets", ["channel"]
)
COALESCED: Final = Counter(
    "streambill_live_messages_coalesced_total",
    "Balance messages a socket did not send because a newer one of the same customer (or a"
    " newer seq, for a replayed entry) was waiting for it",
)
DROPPED: Final = Counter(
    "streambill_live_messages_dropped_total",
    "Alerts and commissions dropped from a full socket buffer",
    ["channel"],
)
CLOSED: Final = Counter(
    "streambill_live_sockets_closed_total", "Live sockets closed by the server", ["reason"]
)
INVALID: Final = Counter(
    "streambill_live_invalid_messages_total", "Consumed messages the feed skipped", ["topic"]
)
FEED_ERRORS: Final = Counter(
    "streambill_live_feed_errors_total", "Kafka errors that made the live feed reconnect"
)
LAG: Final = Gauge(
    "streambill_live_consumer_lag_messages", "Messages behind the high watermark", ["topic"]
)
DELAY: Final = Histogram(
    "streambill_live_feed_delay_seconds",
    "From a ledger entry's applied_at to its publication into the hub",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0),
)
SENT_BY_CHANNEL: Final = {c: SENT.labels(c) for c in (*CHANNELS, "control")}
