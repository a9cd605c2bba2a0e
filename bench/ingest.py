"""Ingest benchmark: ``POST /v2/usage`` of a running api, over HTTP.

Usage: python bench/ingest.py [--url URL] [--key KEY] [--customers N] [--clients N] ...

Setup (not timed) creates one reseller and ``--customers`` customers under it through the
api. Then the phases run in this order: single, batch, single again ("after_flood_" keys).

1. batch: ``--clients`` closed-loop clients post ``{"events": [--batch-size events]}`` for
   ``--batch-duration-s`` (or until ``--batch-events`` are accepted), after a short warm-up.
   Accepted events/s are counted per ``--window-s`` window; the median window and the overall
   rate are reported. Then the bench waits (at most ``--drain-max-s``) until the customers'
   balances show a ledger entry for every accepted event (``drain_s``, ``drained``) and
   until the api's ClickHouse sink committed everything (``sink_quiet_s``).
2. single: one-event requests offered at ``--single-rate`` per second for
   ``--single-duration-s``, open loop (each request starts on its schedule whether or not
   the earlier ones have answered). Latency runs from the scheduled start to the answer,
   whatever it is, so a stalled api or client shows up in the figures instead of being
   paced away; answers other than 2xx also count in ``errors``. The first single phase runs
   on the quiet stack (``single_*``); the second after the flood (``after_flood_single_*``)
   shows what the embedded broker does once it holds the batch phase's million records.
   ``--batch-first`` skips the first.

Progress goes to stderr; the last line on stdout is one JSON object. The bench shares the
machine with the stack: its own CPU (JSON bodies, httpx) is part of what the figures cost.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from streambill.loadgen.kafka import group_lag
from streambill.loadgen.stats import median, percentile
from streambill.settings import load_settings
from streambill.stack import ADMIN_KEY_FILE
from streambill.streams.topics import LEDGER, SINK_GROUP, USAGE

METER = "call_minutes"
SETUP_CONCURRENCY = 8
RETRY_AFTER_MAX_S = 5.0
# The drain wait gives up when the customers' ledgers stop growing for this long.
DRAIN_STALL_S = 30.0


def log(message: str) -> None:
    print(f"[ingest-bench] {message}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default=settings.api_url, help="the api (default: settings)")
    parser.add_argument("--key", default=None, help="bearer key (default: the admin key)")
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4, help="concurrent batch clients")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--batch-duration-s", type=float, default=30.0)
    parser.add_argument("--batch-events", type=int, default=0, help="0: no cap")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--window-s", type=float, default=3.0)
    parser.add_argument("--single-rate", type=float, default=200.0, help="offered req/s")
    parser.add_argument("--single-duration-s", type=float, default=20.0)
    parser.add_argument("--max-in-flight", type=int, default=256, help="single phase cap")
    parser.add_argument(
        "--drain-max-s", type=float, default=300.0, help="wait for the ledger (0: do not)"
    )
    parser.add_argument("--settle-s", type=float, default=5.0, help="pause after the drain")
    parser.add_argument(
        "--batch-first",
        action="store_true",
        help="skip the single phase on the quiet stack (only the one after the flood)",
    )
    args = parser.parse_args()
    if args.key is None:
        args.key = settings.admin_api_key or read_admin_key(settings.data_dir)
    return args


def read_admin_key(data_dir: Path) -> str:
    path = data_dir / ADMIN_KEY_FILE
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"no --key given and no admin key at {path}: {exc}") from None


# -- setup ------------------------------------------------------------------------------------


async def create(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> str:
    response = await client.post(path, json=body)
    if response.status_code != 201:
        raise SystemExit(f"POST {path} -> {response.status_code}: {response.text[:300]}")
    return str(response.json()["id"])


async def create_customers(client: httpx.AsyncClient, run_id: str, count: int) -> list[str]:
    reseller = await create(
        client, "/v2/resellers", {"name": f"ingest bench {run_id}", "currency": "EUR"}
    )
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one(n: int) -> str:
        body = {
            "name": f"ingest bench {run_id} #{n}",
            "currency": "EUR",
            "prices": [{"meter": METER, "unit_price": "0.10"}],
            "reseller_id": reseller,
        }
        async with gate:
            return await create(client, "/v2/customers", body)

    return await asyncio.gather(*(one(n) for n in range(count)))


# -- requests ---------------------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase saw: accepted events, answers by status class, latencies."""

    accepted: int = 0
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    started_s: list[float] = field(default_factory=list)  # of each latency, from phase start
    first_error: str | None = None

    def record(self, response: httpx.Response | None, sent: int) -> None:
        self.requests += 1
        if response is None:
            self.statuses["transport"] += 1
            return
        status = response.status_code
        self.statuses["429" if status == 429 else f"{status // 100}xx"] += 1
        if 200 <= status < 300:
            self.accepted += accepted_count(response, sent)
        elif self.first_error is None:
            self.first_error = f"{status}: {response.text[:300]}"

    @property
    def errors(self) -> int:
        return sum(n for kind, n in self.statuses.items() if kind != "2xx")


def accepted_count(response: httpx.Response, sent: int) -> int:
    """``{"accepted": n}`` (CONTRACT 5); without a count, every event sent."""
    try:
        accepted = response.json().get("accepted")
    except ValueError:
        return sent
    return accepted if type(accepted) is int else sent


def usage_event(event_id: str, customer_id: str, occurred_at: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "meter": METER,
        "quantity": "1.5",
        "occurred_at": occurred_at,
        "attributes": {"bench": "ingest"},
    }


def now_text() -> str:
    return datetime.now(UTC).isoformat()


async def post_usage(client: httpx.AsyncClient, body: bytes) -> tuple[httpx.Response | None, float]:
    try:
        response = await client.post(
            "/v2/usage", content=body, headers={"content-type": "application/json"}
        )
    except httpx.HTTPError as exc:
        log(f"transport error: {exc!r}")
        return None, 0.0
    retry_after = 0.0
    if response.status_code == 429:
        try:
            retry_after = min(float(response.headers.get("retry-after", "1")), RETRY_AFTER_MAX_S)
        except ValueError:
            retry_after = 1.0
    return response, retry_after


# -- phase 1: batches -------------------------------------------------------------------------


async def batch_client(
    client: httpx.AsyncClient,
    args: argparse.Namespace,
    customers: list[str],
    prefix: str,
    phases: list[Phase],
    overall: Phase,
    stop: asyncio.Event,
) -> None:
    """Posts batches until ``stop``; each answer counts in the phase current at that time
    (none after ``stop``) and in ``overall``."""
    n = 0
    while not stop.is_set():  # bounded: the phase sets `stop` at its deadline
        occurred_at = now_text()
        events = [
            usage_event(f"{prefix}-{n + i}", customers[(n + i) % len(customers)], occurred_at)
            for i in range(args.batch_size)
        ]
        n += args.batch_size
        response, retry_after = await post_usage(client, orjson.dumps({"events": events}))
        overall.record(response, args.batch_size)
        if not stop.is_set():
            phases[-1].record(response, args.batch_size)
        if retry_after:
            await asyncio.sleep(retry_after)
        elif response is None:
            await asyncio.sleep(0.5)


async def run_batches(
    client: httpx.AsyncClient, args: argparse.Namespace, customers: list[str], run_id: str
) -> tuple[Phase, list[float], float, int]:
    """Warm-up, then the timed phase: (what it saw, events/s per window, elapsed seconds,
    events accepted in all, warm-up and stragglers included)."""
    stop = asyncio.Event()
    warmup, overall = Phase(), Phase()
    phases = [warmup]
    tasks = [
        asyncio.create_task(
            batch_client(client, args, customers, f"{run_id}-b{c}", phases, overall, stop)
        )
        for c in range(args.clients)
    ]
    await asyncio.sleep(args.warmup_s)
    log(f"warm-up: {warmup.accepted} events accepted, answers {dict(warmup.statuses)}")
    if not warmup.accepted:
        stop.set()
        await asyncio.gather(*tasks)
        raise SystemExit(f"no event accepted in the warm-up; first error {warmup.first_error}")
    phase = Phase()
    phases.append(phase)  # answers from now on are timed
    windows: list[float] = []
    started = time.monotonic()
    deadline = started + args.batch_duration_s
    last_accepted, last_time = 0, started
    while time.monotonic() < deadline:  # bounded by the duration
        await asyncio.sleep(min(args.window_s, max(0.0, deadline - time.monotonic())))
        now = time.monotonic()
        if now - last_time >= args.window_s * 0.5:
            windows.append((phase.accepted - last_accepted) / (now - last_time))
            log(f"batch window: {windows[-1]:,.0f} events/s")
        last_accepted, last_time = phase.accepted, now
        if args.batch_events and phase.accepted >= args.batch_events:
            break
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.gather(*tasks)
    return phase, windows, elapsed, overall.accepted


# -- between the phases: let the stack digest the flood --------------------------------------


async def applied_entries(client: httpx.AsyncClient, customers: list[str]) -> int:
    """Ledger entries of this run's customers (only this run's usage reaches them)."""
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def seq(customer_id: str) -> int:
        async with gate:
            try:
                response = await client.get(f"/v2/customers/{customer_id}/balance")
            except httpx.HTTPError:
                return 0
        return int(response.json().get("seq", 0)) if response.status_code == 200 else 0

    return sum(await asyncio.gather(*(seq(c) for c in customers)))


async def wait_drained(
    client: httpx.AsyncClient, customers: list[str], expected: int, max_s: float
) -> tuple[float, bool]:
    """Wait until every accepted event has its ledger entry: (seconds waited, whether all
    arrived). Single-event latency measured while the worker and the api's sink still chew
    on the batch phase's backlog would be the backlog's, not the api's."""
    started = last_change = time.monotonic()
    last_applied = -1
    while True:  # bounded by max_s and by DRAIN_STALL_S without progress
        applied = await applied_entries(client, customers)
        now = time.monotonic()
        if applied >= expected:
            return now - started, True
        if applied != last_applied:
            last_applied, last_change = applied, now
            log(f"drain: {applied:,} of {expected:,} ledger entries")
        if now - started > max_s or now - last_change > DRAIN_STALL_S:
            log(f"drain: gave up at {applied:,} of {expected:,} ledger entries")
            return now - started, False
        await asyncio.sleep(2.0)


def wait_sink_quiet(max_s: float) -> float | None:
    """Seconds until the api's ClickHouse sink committed all of usage and ledger, or None
    when it did not within ``max_s`` (or no sink runs)."""
    settings = load_settings()
    started = time.monotonic()
    while time.monotonic() - started < max_s:  # bounded by max_s
        lag = group_lag(settings, SINK_GROUP, (LEDGER, USAGE))
        if lag is None:
            log("sink: no committed offsets; not waiting")
            return None
        if lag == 0:
            waited = time.monotonic() - started
            log(f"sink: caught up after {waited:.1f} s")
            return waited
        log(f"sink: {lag:,} messages behind")
        time.sleep(2.0)
    log(f"sink: still behind after {max_s:g} s")
    return None


# -- phase 2: single events, open loop -------------------------------------------------------


async def run_singles(
    client: httpx.AsyncClient, args: argparse.Namespace, customers: list[str], run_id: str
) -> tuple[Phase, float, int]:
    """(what it saw, achieved request rate, requests skipped because too many were open)."""
    phase = Phase()
    loop = asyncio.get_running_loop()
    total = int(args.single_rate * args.single_duration_s)
    interval = 1.0 / args.single_rate
    in_flight: set[asyncio.Task[None]] = set()
    skipped = 0

    async def one(n: int, scheduled: float) -> None:
        event = usage_event(f"{run_id}-s-{n}", customers[n % len(customers)], now_text())
        response, _ = await post_usage(client, orjson.dumps(event))
        phase.latencies_ms.append((loop.time() - scheduled) * 1000)
        phase.started_s.append(scheduled - started)
        phase.record(response, 1)

    started = loop.time()
    for n in range(total):
        scheduled = started + n * interval
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= args.max_in_flight:
            skipped += 1  # the api fell this far behind: counted as an error, not queued
            continue
        task = asyncio.create_task(one(n, scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=60.0)
    # The last request starts one interval before the offered duration ends.
    elapsed = max(loop.time() - started, args.single_duration_s)
    return phase, phase.requests / elapsed, skipped


def window_p99s(phase: Phase, window_s: float) -> list[float]:
    """p99 latency of the requests scheduled in each window: a spike shows where it was."""
    by_window: dict[int, list[float]] = {}
    for started, latency in zip(phase.started_s, phase.latencies_ms, strict=True):
        by_window.setdefault(int(started // window_s), []).append(latency)
    return [round(percentile(by_window[w], 99), 1) for w in sorted(by_window)]


# -- main -------------------------------------------------------------------------------------


def client_for(args: argparse.Namespace, connections: int, timeout_s: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=args.url,
        headers={"authorization": f"Bearer {args.key}"},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=timeout_s,
    )


async def batch_phase(
    args: argparse.Namespace, customers: list[str], run_id: str, settle: bool
) -> dict[str, Any]:
    async with client_for(args, args.clients, 30.0) as client:
        log(f"batch phase: {args.clients} clients x {args.batch_size} events")
        batch, windows, batch_s, batch_total = await run_batches(client, args, customers, run_id)
        drain_s, drained = 0.0, False
        if args.drain_max_s > 0:
            log(f"waiting for the ledger entries of {batch_total:,} events")
            drain_s, drained = await wait_drained(client, customers, batch_total, args.drain_max_s)
    sink_s: float | None = None
    if settle:
        # The api's sink writes the flood into ClickHouse well after the ledger view has it;
        # single requests measured meanwhile share the broker and the api with that backlog.
        sink_s = await asyncio.to_thread(wait_sink_quiet, args.drain_max_s)
        await asyncio.sleep(args.settle_s)
    return {
        "batch_events_per_s": round(median(windows), 1) if windows else None,
        "batch_events_per_s_overall": round(batch.accepted / batch_s, 1),
        "batch_requests": batch.requests,
        "batch_statuses": dict(batch.statuses),
        "batch_windows": [round(w) for w in windows],
        "batch_events_total": batch_total,
        "drain_s": round(drain_s, 1),
        "drained": drained,
        "sink_quiet_s": None if sink_s is None else round(sink_s, 1),
        "batch_errors": batch.errors,
        "batch_first_error": batch.first_error,
    }


async def single_phase(
    args: argparse.Namespace, customers: list[str], run_id: str
) -> dict[str, Any]:
    # One connection per request in flight: httpx's pool queue costs the bench CPU when long.
    async with client_for(args, args.max_in_flight, 10.0) as client:
        log(f"single phase: {args.single_rate:g} req/s offered for {args.single_duration_s:g} s")
        single, single_rate, skipped = await run_singles(client, args, customers, run_id)
    latencies = single.latencies_ms
    windows_p99 = window_p99s(single, args.window_s)
    log(f"single p99 per {args.window_s:g} s window (ms): {windows_p99}")
    return {
        "single_rate_rps": round(single_rate, 1),
        "single_offered_rps": args.single_rate,
        "single_requests": single.requests,
        "single_p50_ms": round(percentile(latencies, 50), 2) if latencies else None,
        "single_p99_ms": round(percentile(latencies, 99), 2) if latencies else None,
        "single_max_ms": round(max(latencies), 2) if latencies else None,
        "single_windows_p99_ms": windows_p99,
        "single_statuses": dict(single.statuses),
        "single_skipped": skipped,
        "single_errors": single.errors + skipped,
        "single_first_error": single.first_error,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = f"ingest-{uuid.uuid4().hex[:8]}"
    async with client_for(args, SETUP_CONCURRENCY, 30.0) as client:
        log(f"run {run_id}: creating {args.customers} customers at {args.url}")
        customers = await create_customers(client, run_id, args.customers)
    # The single phase runs on the quiet stack (the figure the target is about), then once more
    # after the batch flood was rated and written to ClickHouse: the embedded broker then
    # holds ~1M more records and its produce latency is not what it was (docs/api.md).
    single = {} if args.batch_first else await single_phase(args, customers, run_id)
    batch = await batch_phase(args, customers, run_id, settle=True)
    after = await single_phase(args, customers, run_id)
    after = {f"after_flood_{key}": value for key, value in after.items()}
    if not single:
        single = {key.removeprefix("after_flood_"): value for key, value in after.items()}
    return {
        **batch,
        **single,
        **after,
        "errors": batch["batch_errors"] + single["single_errors"],
        "order": "batch-first" if args.batch_first else "single-batch-single",
        "customers": len(customers),
        "clients": args.clients,
        "batch_size": args.batch_size,
        "run_id": run_id,
    }


def main() -> int:
    args = parse_args()
    result = asyncio.run(run(args))
    print(orjson.dumps(result).decode(), flush=True)
    return 0 if result["batch_events_per_s_overall"] and result["single_statuses"].get("2xx") else 1


if __name__ == "__main__":
    sys.exit(main())
