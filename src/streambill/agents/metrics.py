"""Prometheus metrics of the worker (units last in every name)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "streambill_worker_events_total",
    "Source records handled by the balances agent, by outcome.",
    ["outcome"],
)
BATCH_SECONDS = Histogram(
    "streambill_worker_batch_seconds",
    "Time from a batch's admission to the end of its publish (waits for the batch before).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PUBLISH_SECONDS = Histogram(
    "streambill_worker_publish_seconds",
    "Time to publish one phase of a batch and have every message acknowledged.",
    ["phase"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
COMPUTE_SECONDS = Histogram(
    "streambill_worker_compute_seconds",
    "Time to rate and apply one batch in memory (no I/O).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_EVENTS = Histogram(
    "streambill_worker_batch_events",
    "Records per batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
ACCOUNTS_KNOWN = Gauge("streambill_worker_accounts", "Accounts in the global accounts table.")
PARKED_CUSTOMERS = Gauge(
    "streambill_worker_parked_customers", "Customers with usage waiting for their account."
)
AGENT_CRASHES = Counter(
    "streambill_worker_agent_crashes_total", "Agent crashes (the worker stops on a crash)."
)


def count_outputs(out: object) -> None:
    for outcome in ("applied", "duplicates", "redelivered", "dead_letters", "parked", "rerouted"):
        n = getattr(out, outcome)
        if n:
            EVENTS.labels(outcome).inc(n)
