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

import logging
import uuid
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

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
        self.dedup: dict[str, tuple[int, bytes | None]] = {}
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

    def dedup_offset(self, dedup_key: str) -> int | None:
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
            dedup_key = f"{customer_id}\x1f{short}\x1f{entry['source_event_id']}"
            offset = state.offsets.get(source, -1)
            self.dedup[dedup_key] = (partition, b"[%d,%d,%d]" % (entry["seq"], at_s, offset))

    def remember(self, dedup_key: str, partition: int, seq: int, offset: int) -> None:
        # Byte-identical to ``orjson.dumps([seq, ts, offset])``; orjson's output keeps a
        # ~4 KB allocation per object, which a value held in the table for days cannot afford.
        self.dedup[dedup_key] = (partition, b"[%d,%d,%d]" % (seq, int(self.now_s), offset))

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
        for dedup_key, (partition, raw) in self.dedup.items():
            engine.dedup[dedup_key] = raw
            self.out.dedup.append(
                Message(topics.DEDUP_CHANGELOG, partition, dedup_key.encode(), raw)
            )
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
        short = "u" if rec.topic == topics.USAGE else "p"
        dedup_key = f"{account.account_id}\x1f{short}\x1f{event.event_id}"
        consumed = state.offsets.get(rec.topic, -1)
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
        batch.remember(dedup_key, rec.partition, state.seq, rec.offset)
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
