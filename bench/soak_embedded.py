"""Soak: the embedded stack after the equivalent of 30 days of demo traffic.

How the 30 days are simulated. Time is compressed uniformly: the run ages the stack by
``--days`` simulated days in ``--minutes`` real minutes, so one simulated day lasts
``minutes * 60 / days`` real seconds, and the broker's retention is scaled the same way
(``STREAMBILL_BROKER_RETENTION_HOURS`` = 24 h of simulated time). Traffic comes as the demo
sends it, in small batches (``--batch`` events per produce request, flushed each time), to
``--customers`` customers, as fast as the stack takes it. The volume is what the machine
manages in that time (the demo's 20 events/s for 30 days would be 52 M events), so the
run shows whether cost grows with age: the figures are taken fresh, at each quarter of the
run and after a restart, and must stay flat.

Figures: p50/p99 from usage produced to its ledger entry consumed at ``--rate`` events/s
(200), the broker's memory (proxy, groups' Tansu, data Tansu, from /proc), the journal's
size on disk, rotations and compactions so far, a clean stop's and a start's duration.
The last line printed is one JSON object.

    .venv/bin/python bench/soak_embedded.py [--minutes 12] [--days 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from free_ports import is_free  # noqa: E402

READY = "streambill is ready"
LEDGER = "billing.ledger.v1"
USAGE = "billing.usage.v1"


def ports(count: int) -> list[int]:
    import random

    out: list[int] = []
    while len(out) < count:
        port = random.randrange(20_000, 60_000)
        if port not in out and is_free(port):
            out.append(port)
    return out


class Stack:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self) -> float:
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streambill.cli", "up"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if READY in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        while not ready.wait(0.2):
            if self.proc.poll() is not None:
                raise SystemExit("".join(self.output[-40:]))
            if time.monotonic() - started > 300:
                raise SystemExit("not ready in 300 s")
        return time.monotonic() - started

    def stop(self) -> float:
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(300)
        return time.monotonic() - started

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['STREAMBILL_API_PORT']}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['STREAMBILL_BROKER_PORT']}"

    def key(self) -> str:
        return (self.data_dir / "admin_api_key").read_text().strip()


def rss_mb(pid_file: Path) -> float:
    try:
        pid = int(pid_file.read_text().strip())
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return 0.0
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


def journal_mb(data_dir: Path) -> float:
    return sum(p.stat().st_size for p in (data_dir / "broker-journal").glob("*")) / 2**20


def customers_setup(stack: Stack, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {stack.key()}"}
    ids = []
    with httpx.Client(base_url=stack.api, headers=headers, timeout=30) as client:
        for i in range(count):
            r = client.post(
                "/v2/customers",
                json={
                    "name": f"Soak {i}",
                    "currency": "EUR",
                    "prices": [{"meter": "call_minutes", "unit_price": "0.01"}],
                },
            )
            r.raise_for_status()
            cid = r.json()["id"]
            ids.append(cid)
            client.post(
                f"/v2/customers/{cid}/adjustments",
                json={"amount": "1000000.00", "reason": "soak"},
                headers={"Idempotency-Key": f"soak-{cid}"},
            ).raise_for_status()
    return ids


def usage(cid: str, event_id: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "customer_id": cid,
            "meter": "call_minutes",
            "quantity": "1",
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        }
    )


def latency(stack: Stack, customers: list[str], rate: float, seconds: float) -> dict[str, float]:
    """p50/p99 from produce to the ledger entry read back, at ``rate`` events/s."""
    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": f"soak-{uuid.uuid4()}",
            "fetch.wait.max.ms": 10,
        }
    )
    meta = consumer.list_topics(LEDGER, timeout=10)
    consumer.assign([TopicPartition(LEDGER, p, OFFSET_END) for p in meta.topics[LEDGER].partitions])
    consumer.consume(1, 1.0)  # the assignment takes effect
    producer = Producer(
        {"bootstrap.servers": stack.bootstrap, "linger.ms": 0, "partitioner": "murmur2_random"}
    )
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set() or len(done) < len(sent):
            for m in consumer.consume(1000, 0.05):
                if m.error() is None and m.value():
                    source = orjson.loads(m.value() or b"{}").get("source_event_id", "")
                    if source in sent and source not in done:
                        done[source] = time.monotonic()
            if stop.is_set() and time.monotonic() - stopped[0] > 30:
                return

    stopped = [0.0]
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    interval = 1.0 / rate
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        due = start + n * interval
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        cid = customers[n % len(customers)]
        event_id = f"lat-{uuid.uuid4().hex}"
        sent[event_id] = time.monotonic()
        producer.produce(USAGE, usage(cid, event_id), cid.encode())
        producer.poll(0)
        n += 1
    producer.flush(30)
    stopped[0] = time.monotonic()
    stop.set()
    reader.join(60)
    consumer.close()
    samples = sorted((done[e] - sent[e]) * 1000 for e in done)
    if not samples:
        return {"latency_p50_ms": -1.0, "latency_p99_ms": -1.0, "latency_samples": 0}
    return {
        "latency_p50_ms": round(samples[len(samples) // 2], 1),
        "latency_p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 1),
        "latency_samples": len(samples),
        "latency_lost": len(sent) - len(done),
    }


def figures(
    stack: Stack, customers: list[str], rate: float, label: str, elapsed_s: float
) -> dict[str, Any]:
    run = stack.data_dir / "run"
    logs = (stack.data_dir / "logs" / "journal.log").read_text(errors="replace")
    out: dict[str, Any] = {
        "at": label,
        "elapsed_s": round(elapsed_s, 1),
        **latency(stack, customers, rate, 20.0),
        "proxy_rss_mb": round(rss_mb(run / "journal.pid"), 1),
        "groups_tansu_rss_mb": round(rss_mb(run / "broker.pid"), 1),
        "data_tansu_rss_mb": round(rss_mb(run / "broker-data.pid"), 1),
        "worker_rss_mb": round(rss_mb(run / "worker-0.pid"), 1),
        "journal_mb": round(journal_mb(stack.data_dir), 1),
        "rotations": logs.count("data broker rotated"),
        "compactions": logs.count("broker journal compacted"),
    }
    out["broker_rss_mb"] = round(
        out["proxy_rss_mb"] + out["groups_tansu_rss_mb"] + out["data_tansu_rss_mb"], 1
    )
    print(json.dumps(out), flush=True)
    return out


def age(stack: Stack, customers: list[str], seconds: float, batch: int, counter: list[int]) -> None:
    """Demo-shaped traffic in small batches, as fast as the stack takes it."""
    producer = Producer(
        {"bootstrap.servers": stack.bootstrap, "linger.ms": 0, "partitioner": "murmur2_random"}
    )
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(batch):
            n = counter[0]
            cid = customers[n % len(customers)]
            producer.produce(USAGE, usage(cid, f"soak-{n}"), cid.encode())
            counter[0] += 1
        producer.flush(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    day_s = args.minutes * 60 / args.days
    data_dir = Path(tempfile.mkdtemp(prefix="streambill-soak-"))
    broker, api, worker, ml = ports(4)
    env = dict(os.environ)
    env.update(
        STREAMBILL_DATA_DIR=str(data_dir),
        STREAMBILL_DEMO="0",
        STREAMBILL_BROKER_STORAGE="durable",
        STREAMBILL_BROKER_PORT=str(broker),
        STREAMBILL_API_PORT=str(api),
        STREAMBILL_WORKER_PORT=str(worker),
        STREAMBILL_ML_PORT=str(ml),
        STREAMBILL_BROKER_RETENTION_HOURS=str(day_s / 3600),
        PYTHONUNBUFFERED="1",
    )
    stack = Stack(data_dir, env)
    result: dict[str, Any] = {"data_dir": str(data_dir), "simulated_day_s": round(day_s, 1)}
    result["start_fresh_s"] = round(stack.start(), 1)
    try:
        customers = customers_setup(stack, args.customers)
        began = time.monotonic()
        points = [figures(stack, customers, args.rate, "fresh", 0.0)]
        counter = [0]
        quarter = args.minutes * 60 / 4
        for q in range(1, 5):
            age(stack, customers, quarter, args.batch, counter)
            points.append(
                figures(stack, customers, args.rate, f"{q * 25}%", time.monotonic() - began)
            )
        result["events_aged"] = counter[0]
        result["stop_s"] = round(stack.stop(), 1)
        result["start_s"] = round(stack.start(), 1)
        points.append(figures(stack, customers, args.rate, "restarted", time.monotonic() - began))
        result["points"] = points
        fresh, last = points[0], points[-2]
        result["p99_ratio_aged_to_fresh"] = round(
            last["latency_p99_ms"] / max(fresh["latency_p99_ms"], 0.1), 2
        )
    finally:
        if stack.proc is not None and stack.proc.poll() is None:
            result["final_stop_s"] = round(stack.stop(), 1)
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
