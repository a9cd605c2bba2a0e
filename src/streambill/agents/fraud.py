"""The ``fraud`` agent: scores every usage and payment event, learns online, raises alerts.

Inputs (checkpointed, see :mod:`streambill.agents.modelstate`): ``billing.usage.v1``,
``billing.payments.v1``, the ``topup_failed`` alerts of ``billing.alerts.v1`` (declined
charges: card testing shows there first) and ``streambill.fraud-labels.v1`` (manual flags
from the API). The accounts topic is read from its beginning at every start, for each
customer's reseller and status. The scoring is :mod:`streambill.engine.fraud`.

Outputs: one ``billing.fraud.v1`` record per scored event, ``fraud_suspected`` alerts on
``billing.alerts.v1`` (the threshold is the reseller's own ``fraud_threshold`` or the
platform's ``FRAUD_THRESHOLD``, re-read every few seconds), and, with ``FRAUD_AUTO_SUSPEND=1``,
the customer suspended through the control plane (an audited tenant change that reaches the
balances agent on the accounts topic like any other).

A record that is not a valid event is skipped here and counted: the balances agent owns
the dead letter for it (it reads the same record), so nothing is lost and nothing is
dead-lettered twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import orjson
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from streambill.agents.modelstate import ModelAgent
from streambill.agents.offsets import assigned_consumer
from streambill.agents.publisher import Publisher
from streambill.control.models import Tenant
from streambill.control.suspension import suspend_for_fraud
from streambill.domain.money import to_micros
from streambill.engine.balances import Message, partition_for
from streambill.engine.fraud import FraudBook, Label, Payment, Usage
from streambill.errors import InvalidEvent
from streambill.streams import topics

log = logging.getLogger(__name__)

THRESHOLDS_EVERY_S: Final = 5.0
ACCOUNTS_CATCH_UP_S: Final = 60.0
# Usage attributes that name where a call went, in order of preference.
DESTINATION_KEYS: Final = ("destination", "country", "to_country", "to")


def _destination(attributes: Any) -> str:
    if isinstance(attributes, dict):
        for key in DESTINATION_KEYS:
            value = attributes.get(key)
            if isinstance(value, str) and value:
                return value[:32]
    return ""


def decode_usage(raw: bytes, reseller_of: Any) -> Usage | None:
    """A usage event's fields for scoring, or None for a record that is not one.

    >>> decode_usage(b'{"event_id":"e1","customer_id":"c","quantity":"1.5",'
    ...              b'"occurred_at":"2026-11-27T10:00:00+00:00","attributes":{"country":"DE"}}',
    ...              {}.get).destination
    'DE'
    >>> decode_usage(b'{"event_id":"e1"}', {}.get) is None
    True
    """
    try:
        obj = orjson.loads(raw)
        customer_id = obj["customer_id"]
        event_id = obj["event_id"]
        if not isinstance(customer_id, str) or not isinstance(event_id, str):
            return None
        minutes = float(obj["quantity"])  # a feature, never a charge
        if not minutes >= 0 or minutes == float("inf"):
            return None
        return Usage(
            event_id,
            customer_id,
            reseller_of(customer_id),
            minutes,
            datetime.fromisoformat(obj["occurred_at"]),
            _destination(obj.get("attributes")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def decode_payment(raw: bytes, reseller_of: Any) -> Payment | None:
    try:
        obj = orjson.loads(raw)
        customer_id = obj["customer_id"]
        kind = obj["kind"]
        if kind not in ("topup", "refund", "chargeback", "adjustment"):  # reversals: not scored
            return None
        return Payment(
            str(obj["event_id"]),
            customer_id,
            reseller_of(customer_id),
            kind,
            abs(to_micros(obj["amount"])),
            datetime.fromisoformat(obj["occurred_at"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, InvalidEvent):
        return None


def decode_failed_topup(raw: bytes) -> Payment | None:
    """A declined charge, from a ``topup_failed`` alert (other alerts: None, cheaply)."""
    if b'"topup_failed"' not in raw:
        return None
    try:
        obj = orjson.loads(raw)
        if obj.get("kind") != "topup_failed":
            return None
        details = obj.get("details") or {}
        return Payment(
            obj["alert_id"],
            obj["customer_id"],
            obj.get("reseller_id"),
            "topup_failed",
            int(details.get("amount_micros") or 0),
            datetime.fromisoformat(obj["created_at"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def decode_label(raw: bytes) -> Label | None:
    try:
        obj = orjson.loads(raw)
        fraud = obj["fraud"]
        event_id = obj.get("event_id")
        if not isinstance(fraud, bool) or not (event_id is None or isinstance(event_id, str)):
            return None
        return Label(str(obj["label_id"]), str(obj["customer_id"]), fraud, event_id)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class FraudAgent(ModelAgent):
    name = "fraud"
    inputs = (topics.USAGE, topics.PAYMENTS, topics.ALERTS, topics.FRAUD_LABELS)
    reference = (topics.ACCOUNTS,)

    def __init__(
        self,
        bootstrap: str,
        sessions: async_sessionmaker[SqlSession],
        publisher: Publisher,
        *,
        partitions: int,
        fetch_wait_ms: int,
        checkpoint_ms: int,
        default_cutoff: str,
        auto_suspend: bool,
    ) -> None:
        super().__init__(
            bootstrap,
            sessions,
            publisher,
            partitions=partitions,
            fetch_wait_ms=fetch_wait_ms,
            checkpoint_ms=checkpoint_ms,
        )
        self.default_cutoff = float(default_cutoff)  # a score in [0, 1]
        self.auto_suspend = auto_suspend
        self.cutoffs: dict[str, float] = {}
        self._cutoffs_at = 0.0
        self.resellers: dict[str, str | None] = {}  # customer -> reseller (accounts topic)
        self.active: dict[str, bool] = {}
        self.skipped = 0
        self.alerts = 0
        self.suspended = 0
        self._to_suspend: list[tuple[str, str]] = []
        self._partition_of: dict[str, int] = {}

    def new_book(self) -> FraudBook:
        return FraudBook()

    def book_events(self) -> int:
        return int(self.book.events) if self.book is not None else 0

    async def prepare(self) -> None:
        if time.monotonic() - self._cutoffs_at < THRESHOLDS_EVERY_S:
            return
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Tenant.id, Tenant.fraud_threshold).where(
                        Tenant.kind == "reseller", Tenant.fraud_threshold.is_not(None)
                    )
                )
            ).all()
        self.cutoffs = {rid: float(value) for rid, value in rows if value is not None}
        self._cutoffs_at = time.monotonic()

    def _cutoff(self, reseller_id: str | None) -> float:
        if reseller_id is None:
            return self.default_cutoff
        return self.cutoffs.get(reseller_id, self.default_cutoff)

    def _account(self, raw: bytes | None, key: bytes | None) -> None:
        if raw is None:
            if key is not None:
                self.resellers.pop(key.decode(), None)
                self.active.pop(key.decode(), None)
            return
        try:
            obj = orjson.loads(raw)
            if obj.get("kind") != "customer":
                return
            self.resellers[obj["account_id"]] = obj.get("parent_id")
            self.active[obj["account_id"]] = obj.get("status") == "active"
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return

    def read_reference(self) -> dict[tuple[str, int], int]:
        """Every account as of now, before the first event is scored (a score needs the
        customer's reseller for its threshold)."""
        consumer = assigned_consumer(self._bootstrap, "ml-fraud-accounts", 100, 8192)
        try:
            ends = {}
            for p in range(self.partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topics.ACCOUNTS, p), timeout=10
                )
                if high > low:
                    ends[p] = high
            consumer.assign([TopicPartition(topics.ACCOUNTS, p, OFFSET_BEGINNING) for p in ends])
            done: dict[int, int] = {}
            deadline = time.monotonic() + ACCOUNTS_CATCH_UP_S
            while len(done) < len(ends) and time.monotonic() < deadline:
                for m in consumer.consume(5000, 0.2):
                    if m.error() is None:
                        self._account(m.value(), m.key())
                        partition, offset = int(m.partition() or 0), int(m.offset() or 0)
                        if offset + 1 >= ends[partition]:
                            done[partition] = ends[partition]
            if len(done) < len(ends):
                log.warning("fraud agent: accounts not read to their end in time; going on")
            return {(topics.ACCOUNTS, p): offset for p, offset in done.items()}
        finally:
            consumer.close()

    def handle(self, messages: Sequence[Any]) -> list[Message]:
        # Accounts first: a customer created a moment before its first usage is known to it.
        if any(m.topic() == topics.ACCOUNTS for m in messages):
            for m in messages:
                if m.topic() == topics.ACCOUNTS:
                    self._account(m.value(), m.key())
            messages = [m for m in messages if m.topic() != topics.ACCOUNTS]
        book = self.book
        reseller_of = self.resellers.get
        scored_at = self.clock().isoformat()
        out: list[Message] = []
        partitions = self.partitions
        partition_of = self._partition_of
        for m in messages:
            topic, value = m.topic(), m.value()
            if topic == topics.ACCOUNTS:
                self._account(value, m.key())
                continue
            if value is None:
                continue
            if topic == topics.USAGE:
                usage = decode_usage(value, reseller_of)
                if usage is None:
                    self.skipped += 1
                    continue
                result = book.usage(usage, self._cutoff(usage.reseller_id))
            elif topic == topics.PAYMENTS or topic == topics.ALERTS:
                payment = (
                    decode_payment(value, reseller_of)
                    if topic == topics.PAYMENTS
                    else decode_failed_topup(value)
                )
                if payment is None:
                    if topic == topics.PAYMENTS:
                        self.skipped += 1
                    continue
                result = book.payment(payment, self._cutoff(payment.reseller_id))
            elif topic == topics.FRAUD_LABELS:
                label = decode_label(value)
                if label is None:
                    self.skipped += 1
                else:
                    book.label(label)
                continue
            else:
                continue
            record, alert = result
            record["scored_at"] = scored_at
            customer_id = record["customer_id"]
            key = customer_id.encode()
            partition = partition_of.get(customer_id)
            if partition is None:  # murmur2 in Python: a few µs, once per customer
                partition = partition_of[customer_id] = partition_for(key, partitions)
            out.append(Message(topics.FRAUD, partition, key, orjson.dumps(record)))
            if alert is not None:
                alert["created_at"] = scored_at
                self.alerts += 1
                if self.auto_suspend and self.active.get(customer_id, False):
                    alert["details"]["auto_suspended"] = True
                    self._to_suspend.append((customer_id, alert["alert_id"]))
                out.append(Message(topics.ALERTS, partition, key, orjson.dumps(alert)))
        return out

    async def extra(self) -> list[Message]:
        """Suspend the customers this batch's alerts named (after the alerts were published)."""
        while self._to_suspend:
            customer_id, alert_id = self._to_suspend[0]
            if await suspend_for_fraud(self.sessions, customer_id, alert_id, self.clock()):
                self.suspended += 1
                log.warning("customer %s suspended on %s", customer_id, alert_id)
            self.active[customer_id] = False
            self._to_suspend.pop(0)
        return []
