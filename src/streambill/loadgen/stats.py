"""Percentiles, medians and the one JSON object ``streambill bench`` prints last."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks.

    >>> percentile([1, 2, 3, 4], 50)
    2.5
    >>> percentile([5], 99)
    5.0
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    """The 50th percentile.

    >>> median([3.0, 1.0, 2.0])
    2.0
    """
    return percentile(values, 50)


@dataclass(frozen=True)
class BenchFigures:
    """What the phases measured; :func:`bench_result` turns it into the printed object."""

    events: int
    rate: float
    customers: int
    partitions: int
    workers: int
    throughput_s: float
    baseline_runs_s: Sequence[float]
    latencies_ms: Sequence[float]
    worker_rss_mb: Sequence[float]
    duration_s: float
    run_id: str


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def bench_result(f: BenchFigures) -> dict[str, Any]:
    """The result object of CONTRACT section 6 (plus context), from the measured figures.

    ``baseline_events_per_s`` is the median over the baseline runs; ``worker_rss_mb`` is the
    largest worker, ``worker_rss_mb_sum`` all of them; figures that could not be measured
    are null rather than invented.
    """
    if f.events <= 0 or f.throughput_s <= 0:
        raise ValueError("throughput phase must cover > 0 events in > 0 s")
    events_per_s = f.events / f.throughput_s
    baseline = median([f.events / s for s in f.baseline_runs_s]) if f.baseline_runs_s else None
    ratio = events_per_s / baseline if baseline else None
    p50 = percentile(f.latencies_ms, 50) if f.latencies_ms else None
    p99 = percentile(f.latencies_ms, 99) if f.latencies_ms else None
    rss = max(f.worker_rss_mb) if f.worker_rss_mb else None
    return {
        "events_per_s": round(events_per_s, 1),
        "baseline_events_per_s": _round(baseline),
        "ratio": _round(ratio, 4),
        "latency_p50_ms": _round(p50, 2),
        "latency_p99_ms": _round(p99, 2),
        "worker_rss_mb": _round(rss),
        "worker_rss_mb_sum": _round(sum(f.worker_rss_mb)) if f.worker_rss_mb else None,
        "events": f.events,
        "rate": f.rate,
        "customers": f.customers,
        "workers": f.workers,
        "partitions": f.partitions,
        "duration_s": round(f.duration_s, 2),
        "throughput_s": round(f.throughput_s, 3),
        "baseline_runs": len(f.baseline_runs_s),
        "latency_samples": len(f.latencies_ms),
        "run_id": f.run_id,
    }
