"""``streambill bench``: throughput, baseline and latency of the running stack (CONTRACT 6).

Phases, all against the broker at ``settings.bootstrap`` with the worker(s) already running:

1. setup -- upsert ``customers`` accounts (one price list), top each up, and wait until the
   worker has applied every top-up (which proves it knows every account);
2. throughput -- produce N usage events as fast as the producer takes them; the clock runs
   from the first produce to the N-th distinct ledger entry of this run consumed;
3. baseline -- once the api's ClickHouse sink has caught up with the ledger and the usage
   (at most :data:`QUIET_TIMEOUT_S`), raw aiokafka reads the same N usage messages and
   decodes each (median of 3). Measured while the sink still digested the throughput
   phase, the baseline came out lower and the ratio flattered the pipeline (see
   docs/performance.md, step 13);
4. latency -- offer ``rate`` events/s for ~10 s; produced -> ledger entry consumed, p50/p99.

Progress goes to stderr; the last line on stdout is the result object.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import httpx
import orjson
from confluent_kafka import KafkaError, KafkaException, Message

from streambill.loadgen import benchdata as data
from streambill.loadgen.baseline import baseline_seconds
from streambill.loadgen.kafka import (
    LedgerHit,
    LedgerWatcher,
    Sender,
    group_lag,
    usage_offsets,
)
from streambill.loadgen.stats import BenchFigures, bench_result
from streambill.loadgen.topups import TopupBenchError, run_topups
from streambill.loadgen.traffic import Pacer
from streambill.loadgen.workers import (
    cpu_seconds,
    metrics_urls,
    proc_cpu_seconds,
    support_pids,
    worker_memory,
)
from streambill.settings import Settings
from streambill.streams.topics import ACCOUNTS, LEDGER, PAYMENTS, SINK_GROUP, USAGE

log = logging.getLogger(__name__)

FIRST_ENTRY_TIMEOUT_S: Final = 180.0  # the worker may still be joining its group
STALL_TIMEOUT_S: Final = 30.0  # no new ledger entry of this run for this long: give up
LATENCY_PHASE_S: Final = 10.0
BASELINE_RUNS: Final = 3
POLL_EVERY: Final = 5_000
QUIET_TIMEOUT_S: Final = 60.0
QUIET_STALLED_S: Final = 10.0
# CPU per event: idle rates sampled over this long; a process counts as idle again when its
# rate is within the margin (cores) of its idle rate; the phase is given up to this long.
CPU_IDLE_SAMPLE_S: Final = 1.0
CPU_IDLE_MARGIN: Final = 0.05
CPU_SETTLE_TIMEOUT_S: Final = 180.0


class BenchError(Exception):
    """A phase could not finish (ledger entries stopped arriving, broker unreachable)."""


def _progress(text: str) -> None:
    sys.stderr.write(f"[bench] {text}\n")
    sys.stderr.flush()


def _await(
    watcher: LedgerWatcher,
    sender: Sender,
    pending: set[str],
    *,
    what: str,
    first_timeout_s: float = STALL_TIMEOUT_S,
    on_hit: Callable[[LedgerHit], None] | None = None,
) -> int:
    """Consume the ledger until every id in ``pending`` has an entry; the last hit's time.

    Bounded: fails when no pending id arrives for ``first_timeout_s`` before the first hit,
    or for :data:`STALL_TIMEOUT_S` after it.
    """
    last_ns = time.monotonic_ns()
    last_progress = time.monotonic()
    limit_s, total = first_timeout_s, len(pending)
    while pending:
        sender.poll(0)
        for hit in watcher.poll(0.05):
            if hit.source_event_id in pending:
                pending.discard(hit.source_event_id)
                last_ns, last_progress, limit_s = hit.consumed_ns, time.monotonic(), STALL_TIMEOUT_S
                if on_hit is not None:
                    on_hit(hit)
        if time.monotonic() - last_progress > limit_s:
            raise BenchError(
                f"{what}: {len(pending)} of {total} ledger entries missing; none arrived for "
                f"{limit_s:.0f} s (is the worker running on {LEDGER}?)"
            )
    return last_ns


def _setup(sender: Sender, watcher: LedgerWatcher, run_id: str, customers: int) -> None:
    now = datetime.now(UTC)
    last_by_partition: dict[int, int] = {}

    def on_account(index: int) -> Callable[[KafkaError | None, Message], None]:
        def record(err: KafkaError | None, msg: Message) -> None:
            sender.record(err, msg)
            if err is None:
                last_by_partition[msg.partition() or 0] = index

        return record

    for n in range(data.BENCH_RESELLERS):
        account = data.bench_reseller(n, now)
        sender.send(ACCOUNTS, account["account_id"], orjson.dumps(account))
    for index in range(1, customers + 1):
        value = orjson.dumps(data.bench_account(index, now))
        sender.send(ACCOUNTS, data.customer_id(index), value, on_account(index))
    if sender.flush() or sender.failed:
        raise BenchError(f"{sender.failed} account(s) could not be produced to {ACCOUNTS}")
    # The last account of every accounts partition goes first: once those are applied, the
    # worker has read every partition of the accounts topic up to its end.
    probes = sorted(set(last_by_partition.values()))
    probe_set = set(probes)
    rest = [i for i in range(1, customers + 1) if i not in probe_set]
    for batch, what, timeout_s in (
        (probes, "account probes", FIRST_ENTRY_TIMEOUT_S),
        (rest, "top-ups", STALL_TIMEOUT_S),
    ):
        for index in batch:
            sender.send_json(
                PAYMENTS, data.customer_id(index), data.bench_topup(run_id, index, now)
            )
        _progress(f"setup: waiting for {len(batch)} {what}")
        pending = {data.event_id(run_id, "p", i) for i in batch}
        _await(watcher, sender, pending, what=what, first_timeout_s=timeout_s)


def _throughput(
    sender: Sender, watcher: LedgerWatcher, run_id: str, events: int, customers: int
) -> float:
    rng = random.Random(run_id)
    pending = {data.event_id(run_id, "t", i) for i in range(events)}
    started_ns = time.monotonic_ns()
    occurred_at = datetime.now(UTC).isoformat()
    early: list[LedgerHit] = []
    for index in range(events):
        customer = rng.randrange(customers) + 1
        value = data.bench_usage(run_id, "t", index, customer, occurred_at, None)
        sender.send(USAGE, data.customer_id(customer), orjson.dumps(value))
        if index % POLL_EVERY == POLL_EVERY - 1:
            sender.poll(0)
            early.extend(watcher.poll(0))
    _progress(f"throughput: {events} produced in {(time.monotonic_ns() - started_ns) / 1e9:.2f} s")
    last_ns = started_ns
    for hit in early:
        if hit.source_event_id in pending:
            pending.discard(hit.source_event_id)
            last_ns = hit.consumed_ns
    if pending:
        last_ns = _await(watcher, sender, pending, what="throughput")
    return (last_ns - started_ns) / 1e9


def _latency(
    sender: Sender, watcher: LedgerWatcher, run_id: str, rate: float, customers: int
) -> list[float]:
    count = max(1, int(rate * LATENCY_PHASE_S))
    rng = random.Random(f"{run_id}-latency")
    sent_ns: dict[str, int] = {}
    latencies_ms: list[float] = []

    def on_hit(hit: LedgerHit) -> None:
        started = sent_ns.pop(hit.source_event_id, None)
        if started is not None:
            latencies_ms.append((hit.consumed_ns - started) / 1e6)

    pacer, index = Pacer(time.monotonic()), 0
    while index < count:
        due = min(pacer.due(time.monotonic(), rate), count - index)
        occurred_at = datetime.now(UTC).isoformat()
        for _ in range(due):
            customer = rng.randrange(customers) + 1
            value = data.bench_usage(run_id, "l", index, customer, occurred_at, time.time_ns())
            sent_ns[data.event_id(run_id, "l", index)] = time.monotonic_ns()
            sender.send(USAGE, data.customer_id(customer), orjson.dumps(value))
            index += 1
        sender.poll(0)
        for hit in watcher.poll(0.001):
            on_hit(hit)
    if sent_ns:
        _await(watcher, sender, set(sent_ns), what="latency", on_hit=on_hit)
    return latencies_ms


def _quiesce(settings: Settings, timeout_s: float = QUIET_TIMEOUT_S) -> None:
    """Wait until the sink has committed everything on the ledger and usage topics; give up
    after ``timeout_s``, or when its commits stop moving (no api runs, only its old offsets
    remain): a running sink commits at least every second while it has rows."""
    started = last_move = time.monotonic()
    lag = group_lag(settings, SINK_GROUP, (LEDGER, USAGE))
    while lag and time.monotonic() - started < timeout_s:
        if time.monotonic() - last_move > QUIET_STALLED_S:
            break
        time.sleep(0.5)
        previous, lag = lag, group_lag(settings, SINK_GROUP, (LEDGER, USAGE))
        if lag != previous:
            last_move = time.monotonic()
    waited = time.monotonic() - started
    if lag is None:
        _progress("baseline: no sink has committed offsets; not waiting for it")
    elif lag:
        _progress(f"baseline: the sink is still {lag:,} messages behind after {waited:.0f} s")
    else:
        _progress(f"baseline: the sink caught up in {waited:.1f} s")


class CpuMeter:
    """CPU time the workers, the api, the ml process and the embedded broker spend on a
    phase, past what they use idle.

    Throughput alone hides work that runs behind the ledger (the commissions agent, the
    sink, the models): the phase counts until every process is idle again, and the idle rate
    measured before it (polling loops) is taken off. A sample that fails (a /metrics answer
    slower than its timeout on a saturated machine) is taken again: giving up there ended the
    phase early, left the CPU figures out and started the latency phase while the models
    were still catching up.
    """

    def __init__(self, settings: Settings) -> None:
        self.groups = {
            "worker": metrics_urls(settings.worker_port),
            "api": [f"{settings.api_url}/metrics"],
        }
        # The online-ML process (fraud scores, forecasts), when the stack runs one.
        ml = f"http://127.0.0.1:{settings.ml_port}/metrics"
        if cpu_seconds([ml]) is not None:
            self.groups["ml"] = [ml]
        # The embedded broker's processes, from the stack's pid files (none with an external
        # Kafka). Read again at every sample: a journal rotation replaces the data broker.
        self.run_dir = settings.data_dir / "run"
        self.metered_broker = bool(support_pids(self.run_dir))
        self.proc_cpu: dict[int, float] = {}  # pid -> CPU seconds when last seen
        self.idle: dict[str, float] = {}
        self.start: dict[str, float] = {}
        self.started = 0.0

    def _broker_seconds(self) -> float | None:
        """CPU seconds of every broker process seen so far: one that exited keeps what it
        had used when last seen; one that started since counts from zero."""
        pids = support_pids(self.run_dir)
        if not pids:
            return None
        for pid in pids:
            used = proc_cpu_seconds([pid])
            if used is not None:
                self.proc_cpu[pid] = used
        return sum(self.proc_cpu.values())

    def _now(self) -> dict[str, float] | None:
        out = {}
        for name, urls in self.groups.items():
            value = cpu_seconds(urls) if urls else None
            if value is None:
                return None
            out[name] = value
        if self.metered_broker:
            broker = self._broker_seconds()
            if broker is None:
                return None
            out["broker"] = broker
        return out

    def _sample(self, deadline: float) -> dict[str, float] | None:
        """The next sample, taken again (each second) while one fails, until ``deadline``."""
        while True:
            time.sleep(CPU_IDLE_SAMPLE_S)
            now = self._now()
            if now is not None or time.monotonic() > deadline:
                return now

    def begin(self) -> bool:
        """Wait until the processes settle (what the setup started has finished: two
        one-second CPU rates in a row within the margin), then take those as the idle rates."""
        if not all(self.groups.values()):
            _progress("cpu: no /metrics from the workers or the api; cpu figures left out")
            return False
        deadline = time.monotonic() + CPU_SETTLE_TIMEOUT_S
        before = self._sample(deadline)
        usage: dict[str, float] | None = None
        at = time.monotonic()
        while before is not None:
            now = self._sample(deadline)
            if now is None:
                before = None
                break
            elapsed, at = time.monotonic() - at, time.monotonic()
            new = {k: (now[k] - before[k]) / elapsed for k in now}
            settled = usage is not None and all(
                abs(new[k] - usage[k]) <= CPU_IDLE_MARGIN for k in new
            )
            before, usage = now, new
            if settled or time.monotonic() > deadline:
                break
        if before is None or usage is None:
            _progress("cpu: the processes' /metrics did not answer; cpu figures left out")
            return False
        self.idle = usage
        self.start, self.started = before, time.monotonic()
        _progress("cpu: idle " + ", ".join(f"{k} {v:.2f} cores" for k, v in usage.items()))
        return True

    def end(self, events: int) -> dict[str, float]:
        """Wait until every process is back to its idle rate; µs of CPU per event each."""
        deadline = time.monotonic() + CPU_SETTLE_TIMEOUT_S
        last = self._sample(deadline)
        at = time.monotonic()
        settled = False
        while last is not None and time.monotonic() < deadline:
            now = self._sample(deadline)
            if now is None:
                break
            elapsed, at = time.monotonic() - at, time.monotonic()
            busy = any((now[k] - last[k]) / elapsed > self.idle[k] + CPU_IDLE_MARGIN for k in now)
            last = now
            if not busy:
                settled = True
                break
        if last is None:
            _progress("cpu: the processes' /metrics stopped answering; cpu figures left out")
            return {}
        if not settled:
            _progress(f"cpu: still busy after {CPU_SETTLE_TIMEOUT_S:.0f} s; counted until now")
        elapsed = time.monotonic() - self.started
        figures: dict[str, float] = {"busy_s": round(elapsed, 2)}
        total = 0.0
        for k in last:
            used = max(last[k] - self.start[k] - self.idle[k] * elapsed, 0.0)
            figures[f"{k}_cpu_us_per_event"] = round(used / events * 1e6, 2)
            total += used
        figures["pipeline_cpu_us_per_event"] = round(total / events * 1e6, 2)
        return figures


def _baseline(settings: Settings, start: dict[int, int], events: int) -> list[float]:
    runs = []
    for attempt in range(BASELINE_RUNS):
        seconds = baseline_seconds(settings.bootstrap, USAGE, start, events)
        _progress(f"baseline {attempt + 1}/{BASELINE_RUNS}: {events / seconds:,.0f} events/s")
        runs.append(seconds)
    return runs


def _measure(
    settings: Settings,
    run_id: str,
    *,
    events: int,
    rate: float,
    customers: int,
    cpu: dict[str, float],
) -> tuple[int, float, list[float], list[float]]:
    sender = Sender(settings, client_id=f"streambill-{run_id}")
    partitions = sender.partitions(USAGE)
    watcher = LedgerWatcher(settings, LEDGER, prefix=run_id, group_id=f"streambill-{run_id}")
    try:
        _progress(f"run {run_id}: {customers} customers, {partitions} partitions")
        _setup(sender, watcher, run_id, customers)
        start = usage_offsets(settings, USAGE)
        meter = CpuMeter(settings)
        metered = meter.begin()
        throughput_s = _throughput(sender, watcher, run_id, events, customers)
        _progress(f"throughput: {events / throughput_s:,.0f} events/s ({throughput_s:.2f} s)")
        if metered:
            cpu.update(meter.end(events))
            _progress(f"cpu per event: {cpu}")
        _quiesce(settings)
        baseline_runs = _baseline(settings, start, events)
        _progress(f"latency: offering {rate:,.0f} events/s for {LATENCY_PHASE_S:.0f} s")
        latencies_ms = _latency(sender, watcher, run_id, rate, customers)
    finally:
        watcher.close()
        sender.flush(10)
    return partitions, throughput_s, baseline_runs, latencies_ms


def run_bench(
    settings: Settings, *, events: int, rate: float, customers: int, topups: int = 0
) -> int:
    """Run every phase against the running stack; print the result as the last stdout line."""
    if events < 1 or rate <= 0 or customers < 1:
        _progress("need --events >= 1, --rate > 0 and --customers >= 1")
        return 2
    started = time.monotonic()
    run_id = data.new_run_id()
    cpu: dict[str, float] = {}
    try:
        partitions, throughput_s, baseline_runs, latencies_ms = _measure(
            settings, run_id, events=events, rate=rate, customers=customers, cpu=cpu
        )
    except (BenchError, KafkaException, TimeoutError, RuntimeError) as exc:
        _progress(f"FAILED: {exc}")
        log.error("bench %s failed: %s", run_id, exc)
        return 1
    topup_figures: dict[str, object] = {}
    if topups > 0:
        try:
            topup_figures = run_topups(settings, run_id, topups, _progress)
        except (TopupBenchError, KafkaException, httpx.HTTPError) as exc:
            _progress(f"FAILED (top-ups): {exc}")
            return 1
        _progress(
            f"top-ups: crossing -> credited p50 {topup_figures['topup_latency_p50_ms']} ms, "
            f"p99 {topup_figures['topup_latency_p99_ms']} ms"
        )
    memory = worker_memory(settings.worker_port, settings.data_dir)
    figures = BenchFigures(
        events=events,
        rate=rate,
        customers=customers,
        partitions=partitions,
        workers=len(memory.rss_mb),
        throughput_s=throughput_s,
        baseline_runs_s=baseline_runs,
        latencies_ms=latencies_ms,
        worker_rss_mb=memory.rss_mb,
        duration_s=time.monotonic() - started,
        run_id=run_id,
    )
    result = {**bench_result(figures), **cpu, **topup_figures}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    return 0
