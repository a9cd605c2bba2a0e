"""``streambill demo``: demo tenants and realistic synthetic usage, with a progress bar.

Accounts and initial top-ups are produced first (stable ids: a rerun upserts the same
accounts and its initial top-ups are duplicates); then usage flows at ``rate`` events/s,
scaled by the customers' business hours but never below a floor, until ``events`` are sent
or SIGINT/SIGTERM arrives. The generation lives in :mod:`streambill.loadgen` and is pure.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Final

from tqdm import tqdm

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
from streambill.streams.topics import ACCOUNTS, PAYMENTS

log = logging.getLogger(__name__)

TICK_S: Final = 0.02
FLUSH_TIMEOUT_S: Final = 30.0


def setup_messages(population: Population, now: datetime) -> list[Message]:
    """Resellers first (a customer's parent exists before it), customers, initial top-ups."""
    messages = [
        Message(ACCOUNTS, r.account_id, reseller_account(r, now)) for r in population.resellers
    ]
    messages += [
        Message(ACCOUNTS, c.account_id, customer_account(c, now)) for c in population.customers
    ]
    messages += [
        Message(PAYMENTS, c.account_id, initial_topup(c, now)) for c in population.customers
    ]
    return messages


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
        _send_all(sender, setup_messages(population, started))
        log.info(
            "demo: %d customers, %d resellers on %s",
            len(population.customers),
            len(population.resellers),
            settings.bootstrap,
        )
        model = TrafficModel(population, seed=seed, session=session_id(started))
        sent = _traffic_loop(sender, model, rate=rate, events=events, stop=stop)
        remaining = sender.flush(FLUSH_TIMEOUT_S)
    stop.close()
    if stop.is_set():
        log.info("demo: %s received; stopped", stop.reason)
    log.info("demo: %d usage events sent, %d deliveries failed", sent, sender.failed)
    return 1 if remaining or sender.failed else 0
