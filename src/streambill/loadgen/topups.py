"""The bench's auto top-up phase: threshold crossing -> PaymentIntent -> balance credited.

Needs a stack whose worker talks to Stripe (a test-mode key, or localstripe through
``STREAMBILL_STRIPE_API_BASE``; ``bench/run_topups.sh`` starts one). Through the api with
the admin key it creates ``count`` customers with auto top-up (threshold 5.00, amount
20.00), saves Stripe's test card ``pm_card_visa`` for each, credits 6.00, then lets every
customer cross below 5.00 at once with one usage event. From the ledger it takes, per
customer, the crossing entry's and the credit's ``applied_at``: their difference is the
top-up latency (both stamped by the balances agent, one clock). The worker's Prometheus
histograms (``streambill_topup_intent_seconds``, ``streambill_topup_credit_seconds``) give
the same figures live; this phase reports the exact ones.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Final

import httpx
import orjson
from confluent_kafka import Consumer, TopicPartition

from streambill.loadgen.stats import percentile
from streambill.settings import Settings
from streambill.stack import ADMIN_KEY_FILE
from streambill.streams.topics import LEDGER

THRESHOLD: Final = "5.00"
AMOUNT: Final = "20.00"
OPENING: Final = "6.00"
TIMEOUT_S: Final = 120.0


class TopupBenchError(Exception):
    pass


def _admin_key(settings: Settings) -> str:
    """The admin key from settings, else the one ``streambill up`` keeps in the data dir."""
    if settings.admin_api_key:
        return settings.admin_api_key
    kept = settings.data_dir / ADMIN_KEY_FILE
    if kept.exists():
        return kept.read_text().strip()
    raise TopupBenchError("no admin key: set STREAMBILL_ADMIN_API_KEY")


def _api(settings: Settings) -> httpx.Client:
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    return httpx.Client(
        base_url=f"http://{host}:{settings.api_port}",
        headers={"Authorization": f"Bearer {_admin_key(settings)}"},
        timeout=30,
        trust_env=False,
    )


def _ok(response: httpx.Response) -> Any:
    if response.status_code >= 300:
        raise TopupBenchError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text[:300]}"
        )
    return response.json() if response.content else None


def _customer(client: httpx.Client, run_id: str, n: int) -> str:
    body = {
        "name": f"bench {run_id} top-up {n}",
        "currency": "EUR",
        "prices": [{"meter": "call_minutes", "unit_price": "1.00"}],
        "auto_topup": {"enabled": True, "threshold": THRESHOLD, "amount": AMOUNT},
    }
    cid: str = _ok(client.post("/v2/customers", json=body))["id"]
    _ok(
        client.put(
            f"/v2/customers/{cid}/payment-method", json={"payment_method_id": "pm_card_visa"}
        )
    )
    _ok(
        client.post(
            f"/v2/customers/{cid}/adjustments",
            json={"amount": OPENING, "reason": "bench opening balance"},
            headers={"Idempotency-Key": f"bench-{run_id}"},
        )
    )
    return cid


def _ledger_consumer(settings: Settings) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"streambill-bench-topups-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(LEDGER, timeout=10)
    ends = []
    for p in meta.topics[LEDGER].partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(LEDGER, p), timeout=10)
        ends.append(TopicPartition(LEDGER, p, high))
    consumer.assign(ends)
    return consumer


def run_topups(settings: Settings, run_id: str, count: int, progress: Any) -> dict[str, Any]:
    """Run the phase; the figures to merge into the bench result."""
    consumer = _ledger_consumer(settings)  # before the customers: their opening credits
    with _api(settings) as client, ThreadPoolExecutor(8) as pool:
        cids = list(pool.map(lambda n: _customer(client, run_id, n), range(count)))
    progress(f"top-ups: {count} customers with auto top-up, waiting for their opening credit")
    wanted = set(cids)
    crossing: dict[str, datetime] = {}
    credited: dict[str, datetime] = {}
    opened: set[str] = set()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        sent = False
        while len(credited) < count:
            if time.monotonic() > deadline:
                raise TopupBenchError(
                    f"{len(credited)} of {count} top-ups credited within {TIMEOUT_S:.0f} s"
                )
            if not sent and len(opened) == count:
                events = [
                    {
                        "event_id": f"bench-{run_id}-cross-{cid}",
                        "customer_id": cid,
                        "meter": "call_minutes",
                        "quantity": "2",
                        "occurred_at": datetime.now().astimezone().isoformat(),
                    }
                    for cid in cids
                ]
                with _api(settings) as client:
                    for start in range(0, count, 1000):
                        _ok(client.post("/v2/usage", json={"events": events[start : start + 1000]}))
                sent = True
                progress(f"top-ups: {count} customers crossed their threshold at once")
            for msg in consumer.consume(1000, 0.2):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                entry = orjson.loads(value)
                cid = entry["customer_id"]
                if cid not in wanted:
                    continue
                applied = datetime.fromisoformat(entry["applied_at"])
                if entry["kind"] == "adjustment":
                    opened.add(cid)
                elif entry["kind"] == "usage":
                    crossing.setdefault(cid, applied)
                elif entry["kind"] == "topup" and cid in crossing:
                    credited.setdefault(cid, applied)
    finally:
        consumer.close()
    latencies = sorted((credited[c] - crossing[c]).total_seconds() * 1000 for c in cids)
    return {
        "topups": count,
        "topup_latency_p50_ms": round(percentile(latencies, 50), 1),
        "topup_latency_p99_ms": round(percentile(latencies, 99), 1),
        "topup_latency_max_ms": round(latencies[-1], 1),
    }
