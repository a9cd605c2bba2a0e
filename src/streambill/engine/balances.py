"""Batch processing of the ``balances`` agent, without Kafka.

The agent hands a batch of raw records to :meth:`BalanceEngine.process`; the engine reads
and updates two key-value stores (the agent passes its Faust tables' storage) and returns
everything to emit. The agent publishes it in two phases, the first acknowledged before the
second, and only then acknowledges the source offsets:

1. the changed customers' state values (balance, seq, consumed source offsets, and an
   outbox with the messages this batch emits for the customer), with the dedup records of
   the events applied (event id -> the source offset it was applied from);
2. those messages (ledger entries, alerts, dead letters) and re-routed records.

A state that did not land replays its batch from the old state; nothing of it was emitted,
and dedup records that did land name offsets the state never consumed, so they are not
trusted. A state that landed without its dedup records holds their events in its outbox's
ledger entries: the records are rebuilt from those when the state is next loaded, before
any of its customer's events is checked (:meth:`_Batch._restore_dedup`).
A crash after (1) leaves states whose outbox this process never confirmed: the next worker
emits them again (same ids, same ``seq``) and skips the source records by offset. Either
way each event is applied once, and the ledger may carry an identical entry twice, which
the sinks collapse by id.
"""

from __future__ import annotations

import heapq
import logging
import math
import uuid
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, Protocol

import orjson
from aiokafka.partitioner import murmur2

from streambill.domain.ledger import CustomerState, is_duplicate
from streambill.errors import StreambillError
from streambill.streams import topics
from streambill.streams.events import (
    AccountEvent,
    AccountView,
    FastPayment,
    FastUsage,
    PaymentEvent,
    UsageEvent,
    decode_object,
    fast_payment,
    fast_usage,
)

Account = AccountEvent | AccountView
Event = UsageEvent | FastUsage | PaymentEvent | FastPayment

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
    def get(self, account_id: str) -> Account | None: ...


@dataclass(slots=True)
class Outputs:
    """What one batch emits, in publish order: ``dedup`` records, then customer ``state``
    values (which carry this batch's messages in their outbox), then ``emit`` (ledger,
    alerts, dead letters, re-routed records). Each phase is acknowledged before the next;
    :meth:`BalanceEngine.confirm` with ``batch_no`` after the last."""

    dedup: list[Message] = field(default_factory=list)
    state: list[Message] = field(default_factory=list)
    emit: list[Message] = field(default_factory=list)
    batch_no: int = 0
    applied: int = 0
    duplicates: int = 0
    redelivered: int = 0
    dead_letters: int = 0
    parked: int = 0
    rerouted: int = 0

    @property
    def first(self) -> list[Message]:
        """Everything but the state values (tests and tools read outputs through this)."""
        return [*self.dedup, *self.emit]


def partition_for(key: bytes, partitions: int) -> int:
    """The canonical partition of a key: Kafka's Java-default murmur2 (aiokafka's default).

    Producers with another partitioner (librdkafka's default crc32, kcat) are re-routed.

    >>> partition_for(b"cus_1", 8) == partition_for(b"cus_1", 8)
    True
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def dead_letter_message(rec: Record, code: str, reason: str, failed_at: str) -> Message:
    """The ``billing.deadletter.v1`` record for ``rec`` (CONTRACT section 4), keyed like the
    original or, without a key, by its position."""
    letter = {
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "key": rec.key.decode("utf-8", errors="replace") if rec.key is not None else None,
        "value": (rec.value or b"").decode("utf-8", errors="replace"),
        "error_code": code,
        "reason": reason[:1000],
        "failed_at": failed_at,
    }
    key = rec.key or f"{rec.topic}:{rec.partition}:{rec.offset}".encode()
    return Message(topics.DEADLETTER, rec.partition, key, orjson.dumps(letter))


# Payments' dedup records are kept much longer than usage's (they are few: a few per customer
# a month), and a payment is applied only while its record would outlive any copy of it: one
# whose ``occurred_at`` is older than the payment window less this margin goes to the dead
# letters (``stale_payment``) instead. The margin covers the seconds to minutes between the
# announcements of one payment (an auto top-up's own event and Stripe's webhook name the
# same PaymentIntent with different times) and clocks that differ.
PAYMENT_WINDOW_S: Final = 400 * 86_400
STALE_MARGIN_S: Final = 3600
# The expiry index's resolution: a record leaves at most this long after its window ends.
EXPIRY_BUCKET_S: Final = 60


def record_time(raw: bytes) -> int:
    """When a dedup record's window started: the second field of ``[seq, time, offset]``.

    >>> record_time(b"[12,1764064800,99]")
    1764064800
    """
    return int(raw.split(b",", 2)[1])


class ExpiryIndex:
    """Dedup keys by the time bucket they expire in, oldest first.

    Holds the table's own key objects (no copies): a list slot per record. A key written
    again later is indexed twice; the older slot finds the record younger and is dropped.
    The buckets' numbers are kept in a heap, so a run touches only the buckets it empties
    (there are ~590,000 one-minute buckets across 400 days of payments).
    """

    __slots__ = ("bucket_s", "buckets", "order")

    def __init__(self, bucket_s: int = EXPIRY_BUCKET_S) -> None:
        self.bucket_s = bucket_s
        self.buckets: dict[int, list[bytes]] = {}
        self.order: list[int] = []  # heap of the buckets' numbers

    def add(self, key: bytes, at_s: int) -> None:
        bucket = at_s // self.bucket_s
        keys = self.buckets.get(bucket)
        if keys is None:
            keys = self.buckets[bucket] = []
            heapq.heappush(self.order, bucket)
        keys.append(key)

    def due(self, cutoff_s: float) -> list[bytes]:
        """The keys of every bucket that began before ``cutoff_s``, removed from the index
        (the caller indexes again those of the last one that are not due yet)."""
        last = math.ceil(cutoff_s / self.bucket_s) - 1
        out: list[bytes] = []
        while self.order and self.order[0] <= last:
            out.extend(self.buckets.pop(heapq.heappop(self.order)))
        return out

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.buckets.values())


class _Batch:
    """Mutable working set of one batch: loaded states and the outputs so far."""

    def __init__(self, engine: BalanceEngine, now_s: float) -> None:
        self.engine = engine
        engine.batch_no += 1
        self.tag = f"{engine.incarnation}:{engine.batch_no}"
        self.now_s = now_s
        self.applied_at = datetime.fromtimestamp(now_s, UTC).isoformat()
        self.states: dict[str, tuple[int, CustomerState]] = {}
        # Customers whose state changed in this batch: only these are written back.
        self.dirty: set[str] = set()
        # dedup key -> (partition, record, the time its window counts from)
        self.dedup: dict[bytes, tuple[int, bytes, int]] = {}
        self.out = Outputs(batch_no=engine.batch_no)

    def state(self, customer_id: str, partition: int, *, change: bool = True) -> CustomerState:
        """The customer's state, loaded once per batch; ``change`` marks it to be written.

        An outbox left by a batch this process confirmed is dropped; one it cannot vouch for
        (the worker restarted after the state was written) is emitted again and kept until
        this batch is confirmed, and the dedup records of its ledger entries' events are
        written again, before any of the customer's events is checked against them.
        """
        held = self.states.get(customer_id)
        if held is None:
            state = CustomerState.loads(self.engine.balances.get(customer_id))
            held = (partition, state)
            self.states[customer_id] = held
            if state.outbox:
                if self.engine.confirmed(state.tag):
                    state.outbox = []
                else:
                    key = customer_id.encode()
                    for topic, text in state.outbox:
                        self.out.emit.append(Message(topic, partition, key, text.encode()))
                    self._restore_dedup(customer_id, partition, state)
                    change = True
        if change:
            self.dirty.add(customer_id)
        return held[1]

    def dedup_offset(self, dedup_key: bytes) -> int | None:
        """The source offset a dedup record was applied from (None: no record)."""
        held = self.dedup.get(dedup_key)
        raw = held[1] if held is not None else self.engine.dedup.get(dedup_key)
        if raw is None:
            return None
        record = orjson.loads(raw)
        return int(record[2]) if len(record) > 2 else None

    def _restore_dedup(self, customer_id: str, partition: int, state: CustomerState) -> None:
        """Dedup records for the events behind an unconfirmed outbox's ledger entries.

        They were published beside the state, not before it, so the state may have landed
        without them. Each ledger entry names its event and ``seq``; the source offset it
        was applied from is not kept, and the state's consumed offset of that topic stands
        in for it: it is at or after the true one, so the record is trusted exactly when
        the true one would be (:func:`~streambill.domain.ledger.is_duplicate`: a message
        not yet consumed, once the state has consumed the named position)."""
        at_s = int(self.now_s)
        for topic, text in state.outbox:
            if topic != topics.LEDGER:
                continue
            entry = orjson.loads(text)
            source = entry["source_topic"]
            short = "u" if source == topics.USAGE else "p"
            dedup_key = f"{customer_id}\x1f{short}\x1f{entry['source_event_id']}".encode()
            offset = state.offsets.get(source, -1)
            held = self.dedup_at(dedup_key)
            since = max(at_s, held) if held is not None else at_s
            record = b"[%d,%d,%d]" % (entry["seq"], since, offset)
            self.dedup[dedup_key] = (partition, record, since)

    def dedup_at(self, dedup_key: bytes) -> int | None:
        """When an existing record's window started (None: no record)."""
        raw = self.engine.dedup.get(dedup_key)
        return record_time(raw) if raw is not None else None

    def remember(
        self, dedup_key: bytes, partition: int, seq: int, offset: int, since: int | None = None
    ) -> None:
        """A dedup record for an applied event; its window counts from ``since`` (a payment's
        ``occurred_at`` when that is later than now), else from now."""
        at_s = max(int(self.now_s), since) if since is not None else int(self.now_s)
        # Byte-identical to ``orjson.dumps([seq, ts, offset])``; orjson's output keeps a
        # ~4 KB allocation per object, which a value held in the table for days cannot afford.
        self.dedup[dedup_key] = (partition, b"[%d,%d,%d]" % (seq, at_s, offset), at_s)

    def emit(self, message: Message, state: CustomerState | None) -> None:
        """Queue ``message``; with ``state``, also into its outbox (published atomically
        with the state, so a crash after the state write cannot lose it)."""
        self.out.emit.append(message)
        if state is not None:
            state.outbox.append([message.topic, (message.value or b"").decode()])

    def dead_letter(
        self, rec: Record, code: str, reason: str, state: CustomerState | None = None
    ) -> None:
        self.emit(dead_letter_message(rec, code, reason, self.applied_at), state)
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
        for dedup_key, (partition, raw, at_s) in self.dedup.items():
            engine.dedup[dedup_key] = raw
            engine.expiry.add(dedup_key, engine.expires_at(dedup_key, at_s))
            self.out.dedup.append(Message(topics.DEDUP_CHANGELOG, partition, dedup_key, raw))
        for customer_id in self.dirty:
            partition, state = self.states[customer_id]
            state.tag = self.tag
            raw = state.dumps()
            engine.balances[customer_id] = raw
            if state.parked:
                engine.parked_customers[customer_id] = partition
                engine.parked_since[customer_id] = state.parked[0][3]
            else:
                engine.parked_customers.pop(customer_id, None)
                engine.parked_since.pop(customer_id, None)
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
        dedup: MutableMapping[bytes, bytes],
        unknown_customer_retry_s: float,
        dedup_window_s: int,
        payment_window_s: int = PAYMENT_WINDOW_S,
    ) -> None:
        self.partitions = partitions
        self.accounts = accounts
        self.balances = balances
        self.dedup = dedup
        self.unknown_customer_retry_s = unknown_customer_retry_s
        self.dedup_window_s = dedup_window_s
        self.payment_window_s = max(payment_window_s, dedup_window_s)
        # Dedup keys by when their record expires.
        self.expiry = ExpiryIndex()
        # customer id -> partition, for customers with usage parked before their account.
        self.parked_customers: dict[str, int] = {}
        # customer id -> when its oldest parked event arrived (epoch s).
        self.parked_since: dict[str, float] = {}
        self._partition_cache: dict[str, int] = {}
        # Batches are tagged "<incarnation>:<number>"; a tag of this process at or below
        # ``confirmed_upto`` had every message published.
        self.incarnation = uuid.uuid4().hex[:12]
        self.batch_no = 0
        self.confirmed_upto = 0

    def confirm(self, batch_no: int) -> None:
        """The batch's last phase is acknowledged: outboxes it left need no re-emission."""
        self.confirmed_upto = max(self.confirmed_upto, batch_no)

    def vouch(self, batch_no: int) -> None:
        """The batch's publish was started after every earlier one finished, and a failed
        publish stops the process before anything later is published: later batches may
        treat its outboxes as delivered (the agent's pipelining, agents/balances.py)."""
        self.confirm(batch_no)

    def confirmed(self, tag: str) -> bool:
        incarnation, _, number = tag.partition(":")
        return incarnation == self.incarnation and int(number or 0) <= self.confirmed_upto

    def redeliver_outboxes(self, owned: set[int], now_s: float) -> Outputs:
        """After recovery: emit again what states written before a restart still hold."""
        batch = _Batch(self, now_s)
        for customer_id, raw in list(self.balances.items()):
            if raw and b'"x":[[' in raw and self.partition_of(customer_id) in owned:
                batch.state(customer_id, self.partition_of(customer_id), change=False)
        return batch.finish()

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
        expired_before = now_s - self.unknown_customer_retry_s
        for customer_id, partition in list(self.parked_customers.items()):
            if partition not in owned:
                continue
            account = self.accounts.get(customer_id)
            if account is None and self.parked_since.get(customer_id, 0.0) > expired_before:
                continue  # still waiting for its account: nothing to load or write
            state = batch.state(customer_id, partition, change=False)
            if account is not None:
                batch.dirty.add(customer_id)
                self._drain(batch, state, account)
            elif self._expire_parked(batch, state, customer_id):
                batch.dirty.add(customer_id)
        return batch.finish()

    def expires_at(self, key: bytes, at_s: int) -> int:
        """When a dedup record written at ``at_s`` expires: a payment's after the payment
        window, a usage event's after the dedup window."""
        payment = key.split(b"\x1f", 2)[1:2] == [b"p"]
        return at_s + (self.payment_window_s if payment else self.dedup_window_s)

    def expire_dedup(self, owned: set[int], now_s: float) -> list[Message]:
        """Tombstones for the dedup records of owned partitions whose window has passed.

        Each run removes everything that expired since the one before, whatever the rate:
        the records come out of the expiry index by time, so a run costs what it removes,
        not what the table holds. Records of partitions owned elsewhere are dropped here
        without a tombstone (their owner writes it).
        """
        out: list[Message] = []
        for key in self.expiry.due(now_s):
            raw = self.dedup.get(key)
            if raw is None:
                continue  # gone already
            expires = self.expires_at(key, record_time(raw))
            if expires > now_s:
                # Not due yet: in the bucket ``now_s`` falls in, indexed again; written again
                # later, it is indexed in that later bucket already.
                if expires < now_s + self.expiry.bucket_s:
                    self.expiry.add(key, expires)
                continue
            del self.dedup[key]
            partition = self.partition_of(key.split(b"\x1f", 1)[0].decode())
            if partition in owned:
                out.append(Message(topics.DEDUP_CHANGELOG, partition, key, None))
        return out

    def rebuild_dedup_index(self) -> None:
        """After recovery (records restored from the changelog or a snapshot, not written
        here): index every record by when it expires."""
        self.expiry = ExpiryIndex(self.expiry.bucket_s)
        for key, raw in self.dedup.items():
            if isinstance(key, bytes) and raw is not None:
                self.expiry.add(key, self.expires_at(key, record_time(raw)))

    def _stale(self, since: int, now_s: float) -> str:
        occurred = datetime.fromtimestamp(since, UTC).isoformat()
        days = self.payment_window_s / 86400
        return (
            f"payment occurred at {occurred}, more than the {days:g}-day payment window less "
            f"{STALE_MARGIN_S} s before it arrived: whether it was applied can no longer be "
            "told, so it is not applied again; book what is owed as an adjustment"
        )

    def rebuild_parked_index(self) -> None:
        """After recovery: find the customers whose stored state holds parked usage."""
        self.parked_customers.clear()
        self.parked_since.clear()
        for customer_id, raw in self.balances.items():
            if raw and b'"p":[[' in raw:
                self.parked_customers[customer_id] = self.partition_of(customer_id)
                self.parked_since[customer_id] = CustomerState.loads(raw).parked[0][3]

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
            # No state changes: a replay forwards it again, and the event_id dedups that.
            batch.emit(Message(rec.topic, partition, customer_id.encode(), rec.value), None)
            batch.out.rerouted += 1
            return
        state = batch.state(customer_id, partition)
        if state.already_applied(rec):
            batch.out.redelivered += 1
            return
        state.mark_consumed(rec)
        account = self.accounts.get(customer_id)
        if account is None:
            self._park(batch, state, rec)
            return
        if state.parked:
            self._drain(batch, state, account)
        self._apply(batch, state, account, event, rec)

    def _apply(
        self,
        batch: _Batch,
        state: CustomerState,
        account: Account,
        event: Event,
        rec: Record,
    ) -> None:
        usage = rec.topic == topics.USAGE
        short = "u" if usage else "p"
        dedup_key = f"{account.account_id}\x1f{short}\x1f{event.event_id}".encode()
        consumed = state.offsets.get(rec.topic, -1)
        since: int | None = None
        if not usage:
            since = int(event.occurred_at.timestamp())
            if since < batch.now_s - self.payment_window_s + STALE_MARGIN_S:
                batch.dead_letter(rec, "stale_payment", self._stale(since, batch.now_s), state)
                return
        if is_duplicate(batch.dedup_offset(dedup_key), rec.offset, consumed):
            batch.out.duplicates += 1
            return
        try:
            if account.status == "closed":
                raise StreambillError(
                    f"account {account.account_id} is closed", code="account_closed"
                )
            if rec.topic == topics.USAGE:
                applied = state.apply_usage(account, event, rec, batch.applied_at)  # type: ignore[arg-type]
            else:
                applied = state.apply_payment(account, event, rec, batch.applied_at)  # type: ignore[arg-type]
        except StreambillError as exc:
            batch.dead_letter(rec, exc.code, exc.message, state)
            return
        batch.remember(dedup_key, rec.partition, state.seq, rec.offset, since)
        key = account.account_id.encode()
        batch.emit(Message(topics.LEDGER, rec.partition, key, orjson.dumps(applied.entry)), state)
        if applied.alert is not None:
            alert = orjson.dumps(applied.alert)
            batch.emit(Message(topics.ALERTS, rec.partition, key, alert), state)
        batch.out.applied += 1

    # -- parked usage ---------------------------------------------------------------------
    def _park(self, batch: _Batch, state: CustomerState, rec: Record) -> None:
        text = (rec.value or b"").decode("utf-8", errors="replace")
        if state.park(rec, batch.now_s, text):
            batch.out.parked += 1
        else:
            batch.dead_letter(
                rec, "unknown_customer", "too many events waiting for the account", state
            )

    def _drain(self, batch: _Batch, state: CustomerState, account: Account) -> None:
        parked, state.parked = state.parked, []
        for topic, partition, offset, _first_seen, text in parked:
            rec = Record(topic, partition, offset, account.account_id.encode(), text.encode())
            try:
                event = decode_event(topic, rec.value)
            except StreambillError as exc:  # pragma: no cover - parked events were valid
                batch.dead_letter(rec, exc.code, exc.message, state)
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
                    rec, "unknown_customer", f"no account {customer_id!r} after {waited} s", state
                )
            else:
                keep.append(item)
        expired = len(keep) != len(state.parked)
        state.parked = keep
        return expired


def decode_event(topic: str, value: bytes | None) -> Event:
    """Raw bytes of a usage or payment topic -> the event, or an error with its code.

    Decoded through the hot-path decoders, which decide and fail exactly like the models.
    """
    obj = decode_object(value if value is not None else b"")
    if topic == topics.USAGE:
        return fast_usage(obj)
    return fast_payment(obj)
