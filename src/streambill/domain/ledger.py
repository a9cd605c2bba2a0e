"""The per-customer balance state machine: events in, ledger entries and alerts out.

Pure code: the ``balances`` agent decodes, calls :meth:`CustomerState.apply`, and emits
what it returns. Everything that makes effects exactly-once lives in the state value of one
customer, so one table write persists an effect together with its dedup record
(ARCHITECTURE, correctness model):

- ``seq`` counts the customer's ledger entries from 1 without gaps;
- ``offsets`` holds the last applied offset per source topic (a customer's events always come
  from one partition of each topic, because every money topic is keyed by ``customer_id``);
  a redelivered message at or below it is skipped;
- producer duplicates (a new message with an ``event_id`` already applied) are caught by the
  agent's dedup table, whose records carry the ``seq`` they were applied at: a record is
  trusted only while ``record_seq <= state.seq`` (see :func:`is_duplicate`).

Entry and alert ids are derived from the source event, so a replay re-emits the same ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from streambill.domain.rating import price_for, rate_usage
from streambill.errors import CurrencyMismatch, InvalidEvent, check
from streambill.streams.events import AccountEvent, PaymentEvent, UsageEvent

Level = Literal["new", "ok", "low", "depleted"]
MAX_PARKED_PER_CUSTOMER: Final = 10_000


def entry_id_for(source_topic: str, customer_id: str, event_id: str) -> str:
    """Deterministic ledger entry id: the same source event always yields the same id.

    >>> entry_id_for("billing.usage.v1", "cus_1", "call-1") == entry_id_for(
    ...     "billing.usage.v1", "cus_1", "call-1")
    True
    >>> len(entry_id_for("billing.usage.v1", "cus_1", "call-1"))
    32
    """
    raw = f"{source_topic}\x1f{customer_id}\x1f{event_id}".encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def is_duplicate(record_seq: int | None, state_seq: int) -> bool:
    """Whether a dedup record proves an event was already applied.

    A record written ahead of a balance write that never landed (a crash between the two)
    points past the persisted ``seq``; it is not trusted and the event is applied again, with
    the same entry id and ``seq`` as before.

    >>> is_duplicate(None, 5)
    False
    >>> is_duplicate(5, 5)
    True
    >>> is_duplicate(6, 5)
    False
    """
    return record_seq is not None and record_seq <= state_seq


def level_for(balance_micros: int, low_threshold_micros: int) -> Level:
    """Where a balance stands: depleted at or below zero, low below the threshold.

    >>> level_for(0, 5_000_000), level_for(1, 5_000_000), level_for(5_000_000, 5_000_000)
    ('depleted', 'low', 'ok')
    """
    if balance_micros <= 0:
        return "depleted"
    if balance_micros < low_threshold_micros:
        return "low"
    return "ok"


def crossing_alert(before: Level, after: Level) -> str | None:
    """The alert kind for a level change, once per crossing (not once per event).

    >>> crossing_alert("ok", "low"), crossing_alert("low", "low"), crossing_alert("low", "ok")
    ('low_balance', None, 'recovered')
    >>> crossing_alert("new", "ok"), crossing_alert("new", "depleted")
    (None, 'depleted')
    """
    if before == after:
        return None
    if after == "depleted":
        return "depleted"
    if after == "low":
        return "low_balance"
    if before in ("low", "depleted"):
        return "recovered"
    return None


@dataclass(frozen=True, slots=True)
class Source:
    """Where an event came from: its topic, partition and offset."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Applied:
    """The outputs of one applied event."""

    entry: dict[str, Any]
    alert: dict[str, Any] | None


@dataclass(slots=True)
class CustomerState:
    """One customer's balance, its position in each source topic and its parked events."""

    balance_micros: int = 0
    seq: int = 0
    currency: str | None = None
    level: Level = "new"
    offsets: dict[str, int] = field(default_factory=dict)
    # Usage that arrived before the customer's account: (topic, partition, offset,
    # first_seen_epoch_s, raw payload). Applied in order once the account is known.
    parked: list[tuple[str, int, int, float, str]] = field(default_factory=list)

    # -- persistence ------------------------------------------------------------------------
    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "b": self.balance_micros,
                "s": self.seq,
                "c": self.currency,
                "l": self.level,
                "o": self.offsets,
                "p": self.parked,
            }
        )

    @classmethod
    def loads(cls, raw: bytes | str | None) -> CustomerState:
        if raw is None:
            return cls()
        d = orjson.loads(raw)
        return cls(
            balance_micros=d["b"],
            seq=d["s"],
            currency=d["c"],
            level=d["l"],
            offsets=d["o"],
            parked=[tuple(p) for p in d.get("p", ())],  # type: ignore[misc]
        )

    # -- transitions ------------------------------------------------------------------------
    def already_applied(self, source: Source) -> bool:
        """A redelivered message: at or below the last applied offset of its topic."""
        last = self.offsets.get(source.topic)
        return last is not None and source.offset <= last

    def mark_consumed(self, source: Source) -> None:
        """Record that ``source`` was handled (applied, dead-lettered or parked)."""
        last = self.offsets.get(source.topic, -1)
        check(source.offset > last, f"offset went backwards on {source.topic}")
        self.offsets[source.topic] = source.offset

    def apply_usage(
        self,
        account: AccountEvent,
        event: UsageEvent,
        source: Source,
        applied_at: str,
    ) -> Applied:
        """Rate a usage event with the account's price list and debit it."""
        unit_price = price_for(account.price_map, event.meter)
        charge = rate_usage(event.quantity, unit_price)
        return self._post(
            account,
            source,
            applied_at,
            event_id=event.event_id,
            kind="usage",
            amount_micros=-charge,
            occurred_at=event.occurred_at.isoformat(),
            meter=event.meter,
            quantity=str(event.quantity),
        )

    def apply_payment(
        self,
        account: AccountEvent,
        event: PaymentEvent,
        source: Source,
        applied_at: str,
    ) -> Applied:
        """Credit a top-up, debit a refund or chargeback, add an adjustment's signed amount."""
        if event.currency != account.currency:
            raise CurrencyMismatch(
                f"payment in {event.currency}, account {account.account_id} bills in "
                f"{account.currency}"
            )
        return self._post(
            account,
            source,
            applied_at,
            event_id=event.event_id,
            kind=event.kind,
            amount_micros=event.signed_micros(),
            occurred_at=event.occurred_at.isoformat(),
            meter=None,
            quantity=None,
        )

    def _post(
        self,
        account: AccountEvent,
        source: Source,
        applied_at: str,
        *,
        event_id: str,
        kind: str,
        amount_micros: int,
        occurred_at: str,
        meter: str | None,
        quantity: str | None,
    ) -> Applied:
        if account.kind != "customer":
            raise InvalidEvent(f"account {account.account_id} is a {account.kind}, not a customer")
        if self.currency is not None and self.currency != account.currency:
            raise CurrencyMismatch(
                f"account {account.account_id} changed currency from {self.currency} "
                f"to {account.currency}; its balance stays in {self.currency}"
            )
        before_balance, before_seq = self.balance_micros, self.seq
        self.balance_micros += amount_micros
        self.seq += 1
        self.currency = account.currency
        check(self.seq == before_seq + 1, "seq must grow by one")
        check(self.balance_micros == before_balance + amount_micros, "balance chain broken")
        entry_id = entry_id_for(source.topic, account.account_id, event_id)
        entry = {
            "entry_id": entry_id,
            "source_event_id": event_id,
            "source_topic": source.topic,
            "customer_id": account.account_id,
            "reseller_id": account.parent_id,
            "kind": kind,
            "meter": meter,
            "quantity": quantity,
            "amount_micros": amount_micros,
            "balance_micros": self.balance_micros,
            "currency": account.currency,
            "seq": self.seq,
            "occurred_at": occurred_at,
            "applied_at": applied_at,
        }
        return Applied(entry=entry, alert=self._alert(account, entry, applied_at))

    def _alert(
        self, account: AccountEvent, entry: dict[str, Any], applied_at: str
    ) -> dict[str, Any] | None:
        threshold = account.low_threshold_micros
        after = level_for(self.balance_micros, threshold)
        kind = crossing_alert(self.level, after)
        self.level = after
        if kind is None:
            return None
        return {
            "alert_id": f"{entry['entry_id']}:{kind}",
            "customer_id": account.account_id,
            "reseller_id": account.parent_id,
            "kind": kind,
            "details": {
                "balance_micros": self.balance_micros,
                "threshold_micros": threshold,
                "currency": account.currency,
                "seq": self.seq,
                "entry_id": entry["entry_id"],
            },
            "created_at": applied_at,
        }

    def park(self, source: Source, first_seen_s: float, raw: str) -> bool:
        """Hold usage for a customer whose account is not known yet; False when full."""
        if len(self.parked) >= MAX_PARKED_PER_CUSTOMER:
            return False
        self.parked.append((source.topic, source.partition, source.offset, first_seen_s, raw))
        return True
