"""Batch processing of the ``balances`` agent, without Kafka.

The agent hands a batch of raw records to :meth:`BalanceEngine.process`; the engine reads
and updates two key-value stores (the agent passes its Faust tables' storage) and returns
everything to emit. The agent then publishes in two phases, which is what makes effects
exactly-once under at-least-once delivery:

1. ledger entries, alerts, dead letters, re-routed records and dedup records, awaited;
2. the customers' state values (balance, seq, source offsets), awaited;

and only then acknowledges the source offsets. A crash before (2) replays the batch from the
old state: the same entries come out with the same ids and ``seq`` (sinks upsert by id), and
dedup records written in (1) are ignored because they point past the persisted ``seq``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import orjson
from aiokafka.partitioner import murmur2

from streambill.domain.ledger import CustomerState, Source, is_duplicate
from streambill.errors import StreambillError
from streambill.streams import topics
from streambill.streams.events import (
    AccountEvent,
    PaymentEvent,
    UsageEvent,
    decode_object,
    payment_from_obj,
    usage_from_obj,
)

log = logging.getLogger(__name__)
_PARTITION_CACHE_MAX = 1_000_000


class Record(NamedTuple):
    """One consumed message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Message(NamedTuple):
    """One message to produce, to an explicit partition."""

    topic: str
    partition: int
    key: bytes
    value: bytes | None


class AccountLookup(Protocol):
    def get(self, account_id: str) -> AccountEvent | None: ...


@dataclass(slots=True)
class Outputs:
    """What one batch emits. ``first`` is published (and acknowledged) before ``state``."""

    first: list[Message] = field(default_factory=list)
    state: list[Message] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    redelivered: int = 0
    dead_letters: int = 0
    parked: int = 0
    rerouted: int = 0

    def extend(self, other: Outputs) -> None:
        self.first.extend(other.first)
        self.state.extend(other.state)
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.redelivered += other.redelivered
        self.dead_letters += other.dead_letters
        self.parked += other.parked
        self.rerouted += other.rerouted


def partition_for(key: bytes, partitions: int) -> int:
    """The canonical partition of a key: Kafka's Java-default murmur2 (aiokafka's default).

    Producers with another partitioner (librdkafka's default crc32, kcat) are re-routed.

    >>> partition_for(b"cus_1", 8) == partition_for(b"cus_1", 8)
    True
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


class _Batch:
    """Mutable working set of one batch: loaded states and the outputs so far."""

    def __init__(self, engine: BalanceEngine, now_s: float) -> None:
        self.engine = engine
        self.now_s = now_s
        self.applied_at = datetime.fromtimestamp(now_s, UTC).isoformat()
        self.states: dict[str, tuple[int, CustomerState]] = {}
        # Customers whose state changed in this batch: only these are written back.
        self.dirty: set[str] = set()
        self.dedup: dict[str, tuple[int, bytes | None]] = {}
        self.out = Outputs()

    def state(self, customer_id: str, partition: int, *, change: bool = True) -> CustomerState:
        """The customer's state, loaded once per batch; ``change`` marks it to be written."""
        held = self.states.get(customer_id)
        if held is None:
            held = (partition, CustomerState.loads(self.engine.balances.get(customer_id)))
            self.states[customer_id] = held
        if change:
            self.dirty.add(customer_id)
        return held[1]

    def dedup_seq(self, dedup_key: str) -> int | None:
        held = self.dedup.get(dedup_key)
        raw = held[1] if held is not None else self.engine.dedup.get(dedup_key)
        return None if raw is None else int(orjson.loads(raw)[0])

    def remember(self, dedup_key: str, partition: int, seq: int) -> None:
        self.dedup[dedup_key] = (partition, orjson.dumps([seq, int(self.now_s)]))

    def dead_letter(self, rec: Record, code: str, reason: str) -> None:
        value = rec.value or b""
        text = value.decode("utf-8", errors="replace")
        letter = {
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "key": rec.key.decode("utf-8", errors="replace") if rec.key is not None else None,
            "value": text,
            "error_code": code,
            "reason": reason[:1000],
            "failed_at": self.applied_at,
        }
        key = rec.key or f"{rec.topic}:{rec.partition}:{rec.offset}".encode()
        self.out.first.append(Message(topics.DEADLETTER, rec.partition, key, orjson.dumps(letter)))
        self.out.dead_letters += 1
        log.info(
            "dead letter %s topic=%s partition=%d offset=%d: %s",
            code,
            rec.topic,
            rec.partition,
            rec.offset,
            reason,
        )

    def finish(self) -> Outputs:
        engine = self.engine
        for dedup_key, (partition, raw) in self.dedup.items():
            engine.dedup[dedup_key] = raw  # type: ignore[assignment]
            self.out.first.append(
                Message(topics.DEDUP_CHANGELOG, partition, dedup_key.encode(), raw)
            )
        for customer_id in self.dirty:
            partition, state = self.states[customer_id]
            raw = state.dumps()
            engine.balances[customer_id] = raw
            if state.parked:
                engine.parked_customers[customer_id] = partition
            else:
                engine.parked_customers.pop(customer_id, None)
            self.out.state.append(
                Message(topics.BALANCES_CHANGELOG, partition, customer_id.encode(), raw)
            )
        return self.out


class BalanceEngine:
    """Rates and applies usage and payments for the partitions this worker owns."""

    def __init__(
        self,
        *,
        partitions: int,
        accounts: AccountLookup,
        balances: MutableMapping[str, Any],
        dedup: MutableMapping[str, Any],
        unknown_customer_retry_s: float,
        dedup_window_s: int,
    ) -> None:
        self.partitions = partitions
        self.accounts = accounts
        self.balances = balances
        self.dedup = dedup
        self.unknown_customer_retry_s = unknown_customer_retry_s
        self.dedup_window_s = dedup_window_s
        # customer id -> partition, for customers with usage parked before their account.
        self.parked_customers: dict[str, int] = {}
        self._partition_cache: dict[str, int] = {}

    # -- public API -----------------------------------------------------------------------
    def process(self, records: Iterable[Record], now_s: float) -> Outputs:
        """Apply one batch of usage and payment records (in consumption order)."""
        batch = _Batch(self, now_s)
        for rec in records:
            self._one(batch, rec)
        return batch.finish()

    def sweep_parked(self, owned: set[int], now_s: float) -> Outputs:
        """Apply parked usage whose account arrived; dead-letter what waited too long."""
        batch = _Batch(self, now_s)
        for customer_id, partition in list(self.parked_customers.items()):
            if partition not in owned:
                continue
            state = batch.state(customer_id, partition, change=False)
            account = self.accounts.get(customer_id)
            if account is not None:
                batch.dirty.add(customer_id)
                self._drain(batch, state, account)
            elif self._expire_parked(batch, state, customer_id):
                batch.dirty.add(customer_id)
        return batch.finish()

    def expire_dedup(self, owned: set[int], now_s: float, limit: int = 50_000) -> list[Message]:
        """Tombstones for dedup records older than the window, at most ``limit`` a call."""
        cutoff = now_s - self.dedup_window_s
        out: list[Message] = []
        for key, raw in list(self.dedup.items()):
            if len(out) >= limit:
                break
            if raw is None or orjson.loads(raw)[1] >= cutoff:
                continue
            partition = self.partition_of(key.split("\x1f", 1)[0])
            if partition in owned:
                del self.dedup[key]
                out.append(Message(topics.DEDUP_CHANGELOG, partition, key.encode(), None))
        return out

    def rebuild_parked_index(self) -> None:
        """After recovery: find the customers whose stored state holds parked usage."""
        self.parked_customers.clear()
        for customer_id, raw in self.balances.items():
            if raw and b'"p":[[' in raw:
                self.parked_customers[customer_id] = self.partition_of(customer_id)

    def partition_of(self, customer_id: str) -> int:
        cached = self._partition_cache.get(customer_id)
        if cached is None:
            if len(self._partition_cache) >= _PARTITION_CACHE_MAX:
                self._partition_cache.clear()
            cached = partition_for(customer_id.encode(), self.partitions)
            self._partition_cache[customer_id] = cached
        return cached

    # -- one record -----------------------------------------------------------------------
    def _one(self, batch: _Batch, rec: Record) -> None:
        try:
            event = decode_event(rec.topic, rec.value)
        except StreambillError as exc:
            batch.dead_letter(rec, exc.code, exc.message)
            return
        customer_id = event.customer_id
        partition = self.partition_of(customer_id)
        if rec.partition != partition or rec.key != customer_id.encode():
            # Wrong key or another partitioner: forward to the customer's own partition,
            # where it is applied in order with the rest; the event_id dedups a repeat.
            batch.out.first.append(Message(rec.topic, partition, customer_id.encode(), rec.value))
            batch.out.rerouted += 1
            return
        source = Source(rec.topic, rec.partition, rec.offset)
        state = batch.state(customer_id, partition)
        if state.already_applied(source):
            batch.out.redelivered += 1
            return
        state.mark_consumed(source)
        account = self.accounts.get(customer_id)
        if account is None:
            self._park(batch, state, rec, source)
            return
        if state.parked:
            self._drain(batch, state, account)
        self._apply(batch, state, account, event, rec)

    def _apply(
        self,
        batch: _Batch,
        state: CustomerState,
        account: AccountEvent,
        event: UsageEvent | PaymentEvent,
        rec: Record,
    ) -> None:
        source = Source(rec.topic, rec.partition, rec.offset)
        short = "u" if rec.topic == topics.USAGE else "p"
        dedup_key = f"{account.account_id}\x1f{short}\x1f{event.event_id}"
        if is_duplicate(batch.dedup_seq(dedup_key), state.seq):
            batch.out.duplicates += 1
            return
        try:
            if account.status == "closed":
                raise StreambillError(
                    f"account {account.account_id} is closed", code="account_closed"
                )
            if isinstance(event, UsageEvent):
                applied = state.apply_usage(account, event, source, batch.applied_at)
            else:
                applied = state.apply_payment(account, event, source, batch.applied_at)
        except StreambillError as exc:
            batch.dead_letter(rec, exc.code, exc.message)
            return
        batch.remember(dedup_key, rec.partition, state.seq)
        key = account.account_id.encode()
        batch.out.first.append(
            Message(topics.LEDGER, rec.partition, key, orjson.dumps(applied.entry))
        )
        if applied.alert is not None:
            batch.out.first.append(
                Message(topics.ALERTS, rec.partition, key, orjson.dumps(applied.alert))
            )
        batch.out.applied += 1

    # -- parked usage ---------------------------------------------------------------------
    def _park(self, batch: _Batch, state: CustomerState, rec: Record, source: Source) -> None:
        text = (rec.value or b"").decode("utf-8", errors="replace")
        if state.park(source, batch.now_s, text):
            batch.out.parked += 1
        else:
            batch.dead_letter(rec, "unknown_customer", "too many events waiting for the account")

    def _drain(self, batch: _Batch, state: CustomerState, account: AccountEvent) -> None:
        parked, state.parked = state.parked, []
        for topic, partition, offset, _first_seen, text in parked:
            rec = Record(topic, partition, offset, account.account_id.encode(), text.encode())
            try:
                event = decode_event(topic, rec.value)
            except StreambillError as exc:  # pragma: no cover - parked events were valid
                batch.dead_letter(rec, exc.code, exc.message)
                continue
            self._apply(batch, state, account, event, rec)

    def _expire_parked(self, batch: _Batch, state: CustomerState, customer_id: str) -> bool:
        """Dead-letter parked usage that waited past the retry window; True if any did."""
        keep = []
        for item in state.parked:
            topic, partition, offset, first_seen, text = item
            if batch.now_s - first_seen >= self.unknown_customer_retry_s:
                rec = Record(topic, partition, offset, customer_id.encode(), text.encode())
                waited = int(batch.now_s - first_seen)
                batch.dead_letter(
                    rec, "unknown_customer", f"no account {customer_id!r} after {waited} s"
                )
            else:
                keep.append(item)
        expired = len(keep) != len(state.parked)
        state.parked = keep
        return expired


def decode_event(topic: str, value: bytes | None) -> UsageEvent | PaymentEvent:
    """Raw bytes of a usage or payment topic -> the event, or an error with its code."""
    obj = decode_object(value if value is not None else b"")
    if topic == topics.USAGE:
        return usage_from_obj(obj)
    return payment_from_obj(obj)
