"""``streambill demo``: demo tenants and realistic synthetic usage, with a progress bar.

Resellers and customers are created through the api's control plane, as an operator would
(the api publishes them to ``billing.accounts.v1``); a rerun finds them there (409) and goes
on. Then the initial top-ups are produced (stable ids: on a rerun they are duplicates), and
usage flows at ``rate`` events/s, scaled by the customers' business hours but never below a
floor, until ``events`` are sent or SIGINT/SIGTERM arrives. The generation lives in
:mod:`streambill.loadgen` and is pure.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, Final

import httpx
from tqdm import tqdm

from streambill import demo_logins
from streambill.errors import StreambillError
from streambill.loadgen.kafka import Sender
from streambill.loadgen.population import (
    Population,
    build_population,
    customer_account,
    initial_topup,
    reseller_account,
)
from streambill.loadgen.traffic import Message, Pacer, TrafficModel
from streambill.settings import Settings
from streambill.shutdown import StopRequest, stop_on_signals
from streambill.streams.topics import PAYMENTS

log = logging.getLogger(__name__)

TICK_S: Final = 0.02
FLUSH_TIMEOUT_S: Final = 30.0
API_WAIT_S: Final = 60.0
_EPOCH: Final = datetime(2026, 1, 1, tzinfo=UTC)


def tenant_requests(population: Population) -> list[tuple[str, dict[str, Any]]]:
    """``(path, body)`` for the api: resellers first (a customer's reseller exists before it)."""
    requests: list[tuple[str, dict[str, Any]]] = []
    for reseller in population.resellers:
        account = reseller_account(reseller, _EPOCH)
        body = {k: account[k] for k in ("name", "currency")}
        requests.append(("/v2/resellers", {"id": reseller.account_id, **body}))
    for customer in population.customers:
        account = customer_account(customer, _EPOCH)
        body = {k: account[k] for k in ("name", "currency", "prices", "auto_topup")}
        body["reseller_id"] = account["parent_id"]
        requests.append(("/v2/customers", {"id": customer.account_id, **body}))
    return requests


def register_logins(settings: Settings, population: Population) -> int:
    """Brand the demo resellers and create the dashboard users (kept when they exist).
    Returns how many users were created; nothing without ``STREAMBILL_DEMO_PASSWORD``."""
    if not settings.demo_password:
        log.info("demo: no STREAMBILL_DEMO_PASSWORD; no dashboard users created")
        return 0
    created = 0
    with _admin_client(settings) as client:
        for path, body in demo_logins.branding_requests(population):
            response = client.patch(path, json=body)
            if response.status_code != 200:
                raise StreambillError(f"the api refused {path}: {response.text[:300]}")
        for body in demo_logins.user_requests(population, settings.demo_password):
            response = client.post("/v2/users", json=body)
            if response.status_code == 201:
                created += 1
            elif response.status_code != 409:
                raise StreambillError(f"the api refused a user: {response.text[:300]}")
    return created


def _admin_client(settings: Settings) -> httpx.Client:
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    headers = {"Authorization": f"Bearer {settings.admin_api_key}"}
    return httpx.Client(
        base_url=f"http://{host}:{settings.api_port}", headers=headers, timeout=30, trust_env=False
    )


def setup_messages(population: Population, now: datetime) -> list[Message]:
    """The initial top-ups (the accounts come from the control plane)."""
    return [Message(PAYMENTS, c.account_id, initial_topup(c, now)) for c in population.customers]


def register_tenants(settings: Settings, requests: list[tuple[str, dict[str, Any]]]) -> int:
    """Create the tenants through the api with the admin key; those that exist are kept.
    Returns how many were created; raises :class:`StreambillError` when the api refuses."""
    created = 0
    deadline = time.monotonic() + API_WAIT_S
    with _admin_client(settings) as client:
        for path, body in requests:
            while True:
                try:
                    response = client.post(path, json=body)
                    break
                except httpx.TransportError as exc:
                    if time.monotonic() > deadline:
                        raise StreambillError(f"the api is not reachable: {exc}") from exc
                    time.sleep(0.5)
            if response.status_code == 201:
                created += 1
            elif response.status_code != 409:
                raise StreambillError(f"the api refused {path}: {response.text[:300]}")
    return created


def session_id(started: datetime) -> str:
    """A new id per demo start, so a rerun's calls are new calls (base 36 of the second).

    >>> session_id(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))
    'tp1yg0'
    """
    value = int(started.timestamp())
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while value:
        value, rest = divmod(value, 36)
        text = digits[rest] + text
    return text or "0"


def _send_all(sender: Sender, messages: list[Message]) -> None:
    for message in messages:
        sender.send_json(message.topic, message.key, message.value)
    sender.poll(0)


def _traffic_loop(
    sender: Sender, model: TrafficModel, *, rate: float, events: int, stop: StopRequest
) -> int:
    sent = 0
    pacer = Pacer(time.monotonic())
    with tqdm(total=events or None, unit="ev", desc="demo usage", smoothing=0.1) as bar:
        while not stop.is_set() and (events == 0 or sent < events):
            now = datetime.now(UTC)
            due = pacer.due(time.monotonic(), rate * model.rate_factor(now))
            if events:
                due = min(due, events - sent)
            for _ in range(due):
                _send_all(sender, model.next_messages(now))
            sent += due
            bar.update(due)
            sender.poll(TICK_S if due == 0 else 0)
            if due == 0:
                stop.wait(TICK_S)
    return sent


def run_demo(settings: Settings, *, customers: int, rate: float, events: int, seed: int) -> int:
    """Create demo tenants, then send usage until ``events`` (0: until a signal). Exit code."""
    if customers < 1 or rate <= 0 or events < 0:
        log.error("need customers >= 1, rate > 0, events >= 0")
        return 2
    started = datetime.now(UTC)
    population = build_population(customers, seed)
    sender = Sender(settings, client_id="streambill-demo")
    stop = StopRequest()
    with stop_on_signals(stop):
        try:
            created = register_tenants(settings, tenant_requests(population))
            users = register_logins(settings, population)
        except StreambillError as exc:
            log.error("demo: creating the tenants failed: %s", exc.message)
            return 1
        _send_all(sender, setup_messages(population, started))
        log.info(
            "demo: %d customers, %d resellers (%d new), %d new dashboard users on %s",
            len(population.customers),
            len(population.resellers),
            created,
            users,
            settings.bootstrap,
        )
        showcase = demo_logins.showcase_customers(population) if settings.demo_password else []
        model = TrafficModel(population, seed=seed, session=session_id(started), showcase=showcase)
        sent = _traffic_loop(sender, model, rate=rate, events=events, stop=stop)
        remaining = sender.flush(FLUSH_TIMEOUT_S)
    stop.close()
    if stop.is_set():
        log.info("demo: %s received; stopped", stop.reason)
    log.info("demo: %d usage events sent, %d deliveries failed", sent, sender.failed)
    return 1 if remaining or sender.failed else 0
