"""Test support for Stripe: localstripe started by the test, and a proxy that makes calls
time out after they took effect.

localstripe (a stateful Stripe stand-in) runs as a subprocess on a free port; the official
``stripe`` library talks to it through ``base_addresses``. It does not honour idempotency
keys and has no Checkout Sessions, which is why streambill's own idempotency is tested here.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from apiworld import Api
from pipeline import read_topic
from streambill.domain.money import to_micros
from streambill.streams.topics import ALERTS

API_KEY = "sk_test_streambill"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def localstripe(log_dir: Path) -> Iterator[str]:
    """A fresh localstripe; yields its base URL. Skips the test if it is not installed."""
    try:
        import localstripe  # noqa: F401
    except ImportError:
        pytest.skip("localstripe is not installed (pip install -e '.[test]')")
    port = free_port()
    log = (log_dir / f"localstripe-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "localstripe_server.py"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/v1/customers", auth=(API_KEY, ""), timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("localstripe did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        proc.kill()
        log.close()


def client(base_url: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        API_KEY,
        base_addresses={"api": base_url},
        http_client=stripe.HTTPXClient(timeout=10, allow_sync_methods=True),
    )


def saved_card(sc: stripe.StripeClient, number: str, customer_id: str) -> tuple[str, str]:
    """A Stripe customer for ``customer_id`` with the card ``number`` attached:
    (Stripe customer id, payment method id)."""
    customer = sc.v1.customers.create(params={"metadata": {"customer_id": customer_id}})
    card: Any = {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}
    pm = sc.v1.payment_methods.create(params={"type": "card", "card": card})
    sc.v1.payment_methods.attach(pm.id, params={"customer": customer.id})
    return customer.id, pm.id


def all_intents(base_url: str) -> list[dict[str, Any]]:
    """Every PaymentIntent localstripe holds (it lists them unfiltered only)."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if after:
            params["starting_after"] = after
        page = httpx.get(
            f"{base_url}/v1/payment_intents", params=params, auth=(API_KEY, ""), timeout=30
        ).json()
        out.extend(page["data"])
        if not page.get("has_more") or not page["data"]:
            return out
        after = page["data"][-1]["id"]


class ChaosProxy:
    """Forwards to ``upstream``; a share of calls is forwarded, answered by upstream, and
    then held past the client's timeout: the call took effect, the caller never hears.

    ``timeouts`` counts the calls held back; ``calls`` every call seen."""

    def __init__(self, upstream: str, *, share: float, hold_s: float, seed: int = 4) -> None:
        self.upstream = upstream
        self.share = share
        self.hold_s = hold_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.calls = 0
        self.timeouts = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                answer = httpx.request(
                    self.command,
                    proxy.upstream + self.path,
                    content=body,
                    headers=headers,
                    timeout=30,
                )
                with proxy.lock:
                    proxy.calls += 1
                    hold = proxy.rng.random() < proxy.share
                    proxy.timeouts += hold
                if hold:
                    time.sleep(proxy.hold_s)
                    self.close_connection = True
                    return  # the caller gave up long ago; it never gets the answer
                try:
                    self.send_response(answer.status_code)
                    content_type = answer.headers.get("content-type", "text/plain")
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the caller timed out on its own meanwhile

            do_GET = _forward
            do_POST = _forward
            do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                return

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # a burst of calls must reach the proxy, not a full backlog

        self.server = Server(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ChaosProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# Customers with auto top-up, through the api
def new_customer(api: Api, stripe_url: str, name: str, card: str, opening: str = "6.00") -> str:
    customer = api.ok(
        "POST",
        "/v2/customers",
        {
            "name": name,
            "currency": "EUR",
            "prices": [{"meter": "call_minutes", "unit_price": "1.00"}],
            "auto_topup": {"enabled": True, "threshold": "5.00", "amount": "20.00"},
        },
    )
    cid: str = customer["id"]
    sc = client(stripe_url)
    pm = sc.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": card, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    saved = api.ok("PUT", f"/v2/customers/{cid}/payment-method", {"payment_method_id": pm.id})
    assert saved["payment_method"]["label"].endswith(card[-4:])
    api.ok(
        "POST",
        f"/v2/customers/{cid}/adjustments",
        {"amount": opening, "reason": "opening balance"},
    )
    wait_balance(api, cid, to_micros(opening))
    return cid


def use(api: Api, cid: str, event_id: str, minutes: str) -> None:
    api.ok(
        "POST",
        "/v2/usage",
        {
            "event_id": event_id,
            "customer_id": cid,
            "meter": "call_minutes",
            "quantity": minutes,
            "occurred_at": "2026-11-27T10:00:00+00:00",
        },
    )


def balance(api: Api, cid: str) -> dict[str, Any]:
    found: dict[str, Any] = api.ok("GET", f"/v2/customers/{cid}/balance")
    return found


def wait_balance(api: Api, cid: str, micros: int, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        b = balance(api, cid)
        if b["balance_micros"] == micros or time.monotonic() > deadline:
            assert b["balance_micros"] == micros, b
            return b
        time.sleep(0.1)


def attempts(api: Api, cid: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.ok("GET", f"/v2/customers/{cid}/topups")["items"]
    return found


def alerts_of(api: Api, cid: str, kinds: set[str], until: int) -> list[dict[str, Any]]:
    found = read_topic(api.bootstrap, ALERTS, until=10**9, timeout_s=3, quiet_s=1)
    wanted = [a for a in found if a["customer_id"] == cid and a["kind"] in kinds]
    deadline = time.monotonic() + 20
    while len({a["alert_id"] for a in wanted}) < until and time.monotonic() < deadline:
        time.sleep(0.5)
        found = read_topic(api.bootstrap, ALERTS, until=10**9, timeout_s=2, quiet_s=1)
        wanted = [a for a in found if a["customer_id"] == cid and a["kind"] in kinds]
    return wanted
