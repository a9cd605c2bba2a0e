"""Throughput of ONE worker process alone: memory broker + worker, no api, no bench consumer.

    .venv/bin/python bench/worker_throughput.py [--events 200000] [--customers 100000]
        [--partitions 8] [--runs 3] [--profile out.txt] [--env KEY=VALUE ...]

Starts a memory broker (``memory_broker(partitions)``) and a worker subprocess, produces the
accounts and one top-up per customer (not timed), waits until the worker applied every
top-up, then produces N usage events (``bench_usage`` shape, customers drawn at random) as
fast as the producer takes them and polls the worker's ``/metrics`` until
``streambill_worker_events_total`` grew by N. ``events_per_s = N / (first produce -> counter
reached N)``. With ``--runs`` the usage phase repeats on the same worker and the median is
printed. ``--profile FILE`` records the first usage run with py-spy (raw/collapsed format).

The last stdout line is a JSON object. Every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from confluent_kafka import Producer

from streambill.broker.process import free_port
from streambill.broker.testing import memory_broker
from streambill.loadgen import benchdata as data
from streambill.streams.topics import ACCOUNTS, PAYMENTS, USAGE

_COUNTER = re.compile(rb'^streambill_worker_events_total\{outcome="([a-z_]+)"\} ([0-9.e+]+)$', re.M)
_RSS = re.compile(rb"^process_resident_memory_bytes ([0-9.e+]+)$", re.M)


def handled(port: int) -> tuple[int, float]:
    """(records handled by the balances agent, RSS in MB) from the worker's /metrics."""
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).content
    # "parked" is not an end: a parked record is counted again when it is applied (or
    # dead-lettered) after its account arrived.
    total = sum(int(float(v)) for outcome, v in _COUNTER.findall(body) if outcome != b"parked")
    rss = _RSS.search(body)
    return total, (float(rss.group(1)) / 1e6 if rss else float("nan"))


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError("worker not ready")


def send(p: Producer, topic: str, value: bytes, key: bytes) -> None:
    while True:
        try:
            p.produce(topic, value, key)
            return
        except BufferError:
            p.poll(0.05)


def wait_count(port: int, target: int, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Poll /metrics until ``target`` records were handled; the monotonic ns when seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited {proc.returncode}")
        if handled(port)[0] >= target:
            return time.monotonic_ns()
        time.sleep(0.05)
    raise TimeoutError(f"worker did not reach {target} handled records")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--env", action="append", default=[], help="extra worker env KEY=VALUE")
    args = ap.parse_args()

    root = Path(__file__).resolve().parent.parent
    with (
        tempfile.TemporaryDirectory(prefix="sb-wt-") as tmp,
        memory_broker(args.partitions, data_dir=Path(tmp) / "broker") as broker,
    ):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMBILL_")}
        env |= {
            "STREAMBILL_DATA_DIR": str(Path(tmp) / "data"),
            "STREAMBILL_KAFKA_BOOTSTRAP": broker.bootstrap,
            "STREAMBILL_TOPIC_PARTITIONS": str(args.partitions),
            "STREAMBILL_KAFKA_FETCH_MAX_WAIT_MS": "20",  # the memory broker (as tests/pipeline)
            "PYTHONUNBUFFERED": "1",
        }
        env |= dict(kv.split("=", 1) for kv in args.env)
        log = (Path(tmp) / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "streambill.cli", "worker", "--web-port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
        )
        spy: subprocess.Popen[bytes] | None = None
        try:
            wait_ready(port, worker)
            p = Producer(
                {
                    "bootstrap.servers": broker.bootstrap,
                    "linger.ms": 5,
                    "acks": "all",
                    "enable.idempotence": True,
                    "partitioner": "murmur2_random",
                    "queue.buffering.max.messages": 1_000_000,
                }
            )
            now = datetime.now(UTC)
            run_id = data.new_run_id()
            for i in range(args.customers):
                doc = data.bench_account(i, now)
                send(p, ACCOUNTS, orjson.dumps(doc), doc["account_id"].encode())
            p.flush(60)
            time.sleep(1.0)
            for i in range(args.customers):
                doc = data.bench_topup(run_id, i, now)
                send(p, PAYMENTS, orjson.dumps(doc), doc["customer_id"].encode())
            p.flush(60)
            base = wait_count(port, args.customers, worker, 600)
            del base
            sys.stderr.write(
                f"[wt] setup done: {args.customers} customers, rss {handled(port)[1]:.0f} MB\n"
            )

            occurred = now.isoformat()
            rng = random.Random(7)
            rates: list[float] = []
            done = handled(port)[0]
            for run in range(args.runs):
                docs = [
                    (
                        orjson.dumps(
                            data.bench_usage(
                                run_id,
                                "t",
                                run * args.events + i,
                                c := rng.randrange(args.customers),
                                occurred,
                                None,
                            )
                        ),
                        data.customer_id(c).encode(),
                    )
                    for i in range(args.events)
                ]
                if args.profile is not None and run == 0:
                    spy = subprocess.Popen(
                        [
                            str(root / ".venv/bin/py-spy"),
                            "record",
                            "-p",
                            str(worker.pid),
                            "-f",
                            "raw",
                            "-r",
                            "200",
                            "--gil",
                            "-o",
                            str(args.profile),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1.0)
                started = time.monotonic_ns()
                for value, key in docs:
                    send(p, USAGE, value, key)
                p.flush(60)
                produced_s = (time.monotonic_ns() - started) / 1e9
                done += args.events
                finished = wait_count(port, done, worker, 600)
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(30)
                    spy = None
                seconds = (finished - started) / 1e9
                rates.append(args.events / seconds)
                sys.stderr.write(
                    f"[wt] run {run}: {args.events} events in {seconds:.2f} s "
                    f"({rates[-1]:.0f}/s; produced in {produced_s:.2f} s; "
                    f"rss {handled(port)[1]:.0f} MB)\n"
                )
            rss = handled(port)[1]
            result = {
                "events_per_s": round(statistics.median(rates)),
                "runs": [round(r) for r in rates],
                "worker_rss_mb": round(rss, 1),
                "events": args.events,
                "customers": args.customers,
                "partitions": args.partitions,
                "env": args.env,
            }
            print(orjson.dumps(result).decode())
            return 0
        finally:
            if spy is not None and spy.poll() is None:
                spy.kill()
                spy.wait()
            if worker.poll() is None:
                os.killpg(worker.pid, 15)
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, 9)
                    worker.wait()
            log.close()


if __name__ == "__main__":
    sys.exit(main())
