"""The bench's pure parts: percentiles, the result object, payloads, worker memory parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from streambill.loadgen import benchdata
from streambill.loadgen.stats import BenchFigures, bench_result, median, percentile
from streambill.loadgen.workers import rss_from_metrics, rss_from_proc_status
from streambill.streams.events import decode_account, decode_payment, decode_usage

CONTRACT_KEYS = {
    "events_per_s",
    "baseline_events_per_s",
    "ratio",
    "latency_p50_ms",
    "latency_p99_ms",
    "worker_rss_mb",
}


def _figures(**overrides: object) -> BenchFigures:
    values: dict[str, object] = {
        "events": 200_000,
        "rate": 2000.0,
        "customers": 1000,
        "partitions": 8,
        "workers": 2,
        "throughput_s": 20.0,
        "baseline_runs_s": [1.0, 2.0, 1.25],
        "latencies_ms": [float(i) for i in range(1, 101)],
        "worker_rss_mb": [310.0, 290.5],
        "duration_s": 61.234,
        "run_id": "bench-0001",
    }
    values.update(overrides)
    return BenchFigures(**values)  # type: ignore[arg-type]


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([10.0, 0.0], 25) == pytest.approx(2.5)  # unsorted input
    assert median([4.0, 1.0, 3.0, 2.0]) == pytest.approx(2.5)


@pytest.mark.parametrize("bad", [-1, 100.5])
def test_percentile_rejects_bad_q(bad: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], bad)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_result_has_the_contract_fields_and_consistent_figures() -> None:
    result = bench_result(_figures())
    assert set(result) >= CONTRACT_KEYS
    assert result["events_per_s"] == 10_000.0
    # Median of 200k/1.0, 200k/2.0, 200k/1.25 = 160,000.
    assert result["baseline_events_per_s"] == 160_000.0
    assert result["ratio"] == pytest.approx(10_000 / 160_000, abs=1e-4)
    assert result["latency_p50_ms"] == 50.5
    assert result["latency_p99_ms"] == 99.01
    assert result["worker_rss_mb"] == 310.0
    assert result["worker_rss_mb_sum"] == 600.5
    assert (result["events"], result["workers"], result["partitions"]) == (200_000, 2, 8)
    assert result["duration_s"] == 61.23
    orjson.dumps(result)  # one JSON object, printable as the last line


def test_result_reports_unmeasured_figures_as_null() -> None:
    result = bench_result(_figures(baseline_runs_s=[], latencies_ms=[], worker_rss_mb=[]))
    assert result["baseline_events_per_s"] is None
    assert result["ratio"] is None
    assert result["latency_p50_ms"] is None and result["latency_p99_ms"] is None
    assert result["worker_rss_mb"] is None


def test_result_rejects_an_empty_throughput_phase() -> None:
    with pytest.raises(ValueError):
        bench_result(_figures(throughput_s=0.0))


def test_bench_payloads_decode_and_carry_the_run_id() -> None:
    run_id = benchdata.new_run_id()
    now = datetime(2026, 11, 25, 10, tzinfo=UTC)
    account = decode_account(orjson.dumps(benchdata.bench_account(5, now)))
    assert account.account_id == benchdata.customer_id(5)
    assert [(p.meter, str(p.unit_price)) for p in account.prices] == [("call_minutes", "0.10")]
    topup = decode_payment(orjson.dumps(benchdata.bench_topup(run_id, 5, now)))
    assert topup.event_id.startswith(run_id) and topup.customer_id == account.account_id
    raw = orjson.dumps(benchdata.bench_usage(run_id, "l", 9, 5, now.isoformat(), 123))
    usage = decode_usage(raw)
    assert usage.event_id == f"{run_id}-l-9"
    assert usage.attributes["bench_sent_ns"] == 123
    assert benchdata.new_run_id() != run_id


def test_worker_memory_parsers() -> None:
    metrics = (
        "# TYPE process_resident_memory_bytes gauge\n"
        "process_resident_memory_bytes_total 1\n"
        "process_resident_memory_bytes 3.145728e+08\n"
    )
    assert rss_from_metrics(metrics) == pytest.approx(300.0)
    assert rss_from_metrics("up 1\n") is None
    assert rss_from_proc_status("VmPeak:\t 9 kB\nVmRSS:\t  102400 kB\n") == 100.0
