"""The commissions agent's state for one partition of the commission facts topic. No I/O.

The agent (agents/commissions.py) forwards ledger entries of resellers' customers to
``streambill.commission-facts.v1`` keyed by reseller id, so one partition holds every fact of
a reseller in one order; :class:`CommissionPartition` applies them to the resellers' books
(:class:`~streambill.domain.commissions.ResellerBook`) and returns commission entries.

Everything that changes a result is in that partition's order, so replaying the partition
from a checkpoint gives the same entries with the same ids and amounts. That is why plans
and reference rates are not read from the database or the accounts table while a fact is
applied: the agent writes them into the partition as *markers* (key :data:`MARKER_KEY`), and
they take effect where they are read back. A fact whose reseller has no plan yet, or whose
currency has no reference rate for its day, is parked in the state (in order, per reseller)
and applied when the marker it waits for arrives.

>>> from streambill.engine.balances import Record
>>> part = CommissionPartition(partition=0, partitions=1)
>>> entry = (b'{"entry_id":"l1","customer_id":"c1","reseller_id":"r1","kind":"usage",'
...          b'"meter":"call_minutes","quantity":"10","amount_micros":-1500000,'
...          b'"currency":"EUR","seq":1,"occurred_at":"2026-11-03T10:00:00+00:00"}')
>>> part.handle(Record(FACTS, 0, 0, b"r1", entry), "now")  # no plan yet: parked
[]
>>> part.wants_plan
{'r1'}
>>> marker = plan_marker("r1", 1, "EUR", None)
>>> part.handle(Record(FACTS, 0, 1, MARKER_KEY, marker.value), "now")  # accrued, in the slice
[]
>>> out = part.handle(Record(FACTS, 0, 2, MARKER_KEY, tick_marker(0).value), "now")
>>> [(orjson.loads(m.value)["kind"], orjson.loads(m.value)["amount_micros"]) for m in out]
[('accrual', 375000)]

Accruals are emitted per *slice*, not per fact: the accrual parts of consecutive facts are
summed per reseller, month and conversion until :data:`SLICE_FACTS` facts were folded or a
``tick`` marker (written by the agent a fraction of a second after a slice opened) is read
back. Both bounds are positions in the partition, so a replay cuts the same slices and
re-emits the same entries. One entry per slice instead of one per usage event is what keeps
the agent (and the sink and the live feed behind it) cheap; true-ups and bonuses are
emitted one by one, as they happen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from time import gmtime, strftime
from typing import Any, Final

import orjson

from streambill.domain.commissions import (
    BASE_SIGN,
    KINDS,
    CommissionEntry,
    Fact,
    InvalidPlan,
    ResellerBook,
    add_months,
    plan_document,
    plan_from_document,
)
from streambill.domain.fx import Conversion, NoRate, RateTable
from streambill.engine.balances import Message, Record, dead_letter_message, partition_for
from streambill.streams import topics

log = logging.getLogger(__name__)

FACTS: Final = topics.COMMISSION_FACTS
# Never a reseller id (ids are printable), so a marker never shadows a fact's key.
MARKER_KEY: Final = b"\x00marker"
# Months a book keeps (a late fact for an older month starts that month from nothing).
KEEP_MONTHS: Final = 14
STATE_VERSION: Final = 1
# A slice is closed after this many facts were folded into it (or at a tick marker).
SLICE_FACTS: Final = 2000


@dataclass(frozen=True)
class ResellerAccount:
    """What the agent needs of a reseller's account record."""

    currency: str
    version: int
    plan: dict[str, Any] | None
    timezone: str | None


def plan_marker(
    reseller_id: str,
    version: int,
    currency: str,
    plan: dict[str, Any] | None,
    timezone: str | None = None,
    partition: int = 0,
) -> Message:
    """The marker that sets (or changes) a reseller's plan where it is read back."""
    doc = {
        "marker": "plan",
        "reseller_id": reseller_id,
        "version": version,
        "currency": currency,
        "plan": plan,
        "timezone": timezone,
    }
    return Message(FACTS, partition, MARKER_KEY, orjson.dumps(doc))


def tick_marker(partition: int) -> Message:
    """The marker that closes the partition's open slice where it is read back."""
    return Message(FACTS, partition, MARKER_KEY, b'{"marker":"tick"}')


def rates_marker(rows: list[tuple[date, str, Decimal]], partition: int) -> Message:
    """The marker that adds reference rates (units per euro) where it is read back."""
    doc = {"marker": "rates", "rates": [[str(d), c, str(r)] for d, c, r in rows]}
    return Message(FACTS, partition, MARKER_KEY, orjson.dumps(doc))


def entry_json(
    entry: CommissionEntry, source: dict[str, Any], fx: Conversion | None, created_at: str
) -> dict[str, Any]:
    """A commission entry as published on ``billing.commissions.v1`` (docs/commissions.md)."""
    return {
        "entry_id": entry.entry_id,
        "reseller_id": entry.reseller_id,
        "customer_id": entry.customer_id,
        "month": entry.month,
        "kind": entry.kind,
        "amount_micros": entry.amount_micros,
        "currency": entry.currency,
        "base_micros": entry.base_micros,
        "base_delta_micros": entry.base_delta_micros,
        "tier": entry.tier,
        "rate": str(entry.rate),
        "position": entry.position,
        "month_commission_micros": entry.month_commission_micros,
        "month_bonus_micros": entry.month_bonus_micros,
        "customers": {},
        "facts": 1,
        "source_entry_id": entry.source_entry_id,
        "source_kind": source["kind"],
        "source_amount_micros": abs(int(source["amount_micros"])),
        "source_currency": source["currency"],
        "fx_rate": str(fx.rate) if fx is not None else None,
        "fx_date": str(fx.rate_date) if fx is not None else None,
        "occurred_at": source["occurred_at"],
        "created_at": created_at,
    }


class _Parked(Exception):
    """The fact cannot be applied yet (no reference rate for its day)."""


class CommissionPartition:
    """Books, plans, rates and parked facts of one facts partition, and its offset."""

    def __init__(self, partition: int, partitions: int) -> None:
        self.partition = partition
        self.partitions = partitions
        self.books: dict[str, ResellerBook] = {}
        self.plan_versions: dict[str, int] = {}
        self.rates = RateTable()
        self.parked: dict[str, list[bytes]] = {}
        self.next_offset = 0  # the first offset this state does not cover
        self.wants_plan: set[str] = set()  # resellers with parked facts and no plan
        self.facts = 0
        self.dirty = False
        self._routes: dict[bytes, int] = {}
        # The open slice: folded accruals per (reseller, month, kind, currency, fx rate,
        # fx day), the offset where it opened, how many facts it holds.
        self.slice: dict[tuple[str, ...], dict[str, Any]] = {}
        self.slice_start: int | None = None
        self.slice_facts = 0
        self._offset = 0

    # -- applying --------------------------------------------------------------------

    def handle(self, rec: Record, created_at: str) -> list[Message]:
        """The messages (commission entries, dead letters) one record makes."""
        self.next_offset = rec.offset + 1
        self._offset = rec.offset
        self.dirty = True
        if rec.value is None:
            return []
        if rec.key == MARKER_KEY:
            return self._marker(rec, created_at)
        out = self._fact(rec, created_at)
        if self.slice_facts >= SLICE_FACTS:
            out += self.close_slice(created_at)
        return out

    def _fact(self, rec: Record, created_at: str) -> list[Message]:
        """One ledger entry, or a JSON array of them (the re-key stage sends a reseller's
        entries of one batch as one message)."""
        raw = rec.value or b""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return [self._dead(rec, f"not JSON: {exc}")]
        if not isinstance(doc, list):
            return self._one(rec, doc, raw, created_at)
        out: list[Message] = []
        for obj in doc:
            out += self._one(rec, obj, None, created_at)
        return out

    def _one(self, rec: Record, obj: Any, raw: bytes | None, created_at: str) -> list[Message]:
        reseller_id = obj.get("reseller_id") if isinstance(obj, dict) else None
        if not isinstance(reseller_id, str):
            text = orjson.dumps(obj) if raw is None else raw
            bad = Record(rec.topic, rec.partition, rec.offset, rec.key, text)
            return [self._dead(bad, "not a ledger entry with a reseller")]
        self.facts += 1
        if reseller_id in self.parked or reseller_id not in self.books:
            self._park(reseller_id, orjson.dumps(obj) if raw is None else raw)
            if reseller_id not in self.books:
                self.wants_plan.add(reseller_id)
            return []
        try:
            return self._apply(self.books[reseller_id], obj, created_at)
        except _Parked:
            self._park(reseller_id, orjson.dumps(obj) if raw is None else raw)
            return []
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            text = orjson.dumps(obj) if raw is None else raw
            bad = Record(rec.topic, rec.partition, rec.offset, rec.key, text)
            return [self._dead(bad, f"ledger entry cannot be accrued: {exc!r}")]

    def _apply(self, book: ResellerBook, obj: dict[str, Any], created_at: str) -> list[Message]:
        customer_id = obj["customer_id"]
        seq = int(obj["seq"])
        known = book.customers.get(customer_id)
        kind = obj["kind"]
        if (known is not None and seq <= known.last_seq) or kind not in KINDS:
            return []
        amount = abs(int(obj["amount_micros"]))
        currency = obj["currency"]
        at = datetime.fromisoformat(obj["occurred_at"])
        fx = None
        if kind != "topup" and currency != book.plan.currency:
            try:
                fx = self.rates.convert(amount, currency, book.plan.currency, book.plan.day_of(at))
            except NoRate:
                raise _Parked from None
            amount = fx.micros
        quantity = obj.get("quantity")
        fact = Fact(
            obj["entry_id"],
            customer_id,
            kind,
            amount,
            at,
            obj.get("meter"),
            Decimal(quantity) if isinstance(quantity, str) else Decimal(0),
            seq,
        )
        # Bonuses come back at once; the fact's part of the base is summed into the slice.
        out = [
            self._message(book.reseller_id, entry_json(e, obj, fx, created_at))
            for e in book.apply(fact, defer=True)
        ]
        if kind != "topup":
            self._fold(book, fact, obj, fx)
        return out

    def _message(self, reseller_id: str, doc: dict[str, Any]) -> Message:
        key = reseller_id.encode()
        part = self._routes.get(key)
        if part is None:
            part = self._routes[key] = partition_for(key, self.partitions)
        return Message(topics.COMMISSIONS, part, key, orjson.dumps(doc))

    def _fold(
        self, book: ResellerBook, fact: Fact, source: dict[str, Any], fx: Conversion | None
    ) -> None:
        month = book.plan.month_of(fact.occurred_at)
        delta = BASE_SIGN[fact.kind] * fact.amount_micros
        if fx is None:
            key: tuple[str, ...] = (book.reseller_id, month, fact.kind, source["currency"], "", "")
        else:
            key = (
                book.reseller_id,
                month,
                fact.kind,
                source["currency"],
                str(fx.rate),
                str(fx.rate_date),
            )
        held = self.slice.get(key)
        if held is None:
            held = self.slice[key] = {"base_delta": 0, "source": 0, "facts": 0, "customers": {}}
        if self.slice_start is None:
            self.slice_start = self._offset
        self.slice_facts += 1
        held["base_delta"] += delta
        held["source"] += abs(int(source["amount_micros"]))
        held["facts"] += 1
        customers = held["customers"]
        customers[fact.customer_id] = customers.get(fact.customer_id, 0) + delta
        held["last"] = [fact.entry_id, source["occurred_at"]]

    def close_slice(self, created_at: str) -> list[Message]:
        """Book the open slice's sums: per reseller, month and conversion a ``true_up`` when
        the tier changes, and one ``accrual``; ids from the slice's first offset."""
        if self.slice_start is None:
            return []
        out = []
        for n, key in enumerate(sorted(self.slice)):
            reseller_id, month, kind, source_currency, fx_rate, fx_date = key
            held = self.slice[key]
            book = self.books[reseller_id]
            last_id, at = held["last"]
            source_id = f"{reseller_id}:{month}:{self.partition}-{self.slice_start}-{n}"
            customers = held["customers"]
            for e in book.accrue(source_id, month, held["base_delta"], datetime.fromisoformat(at)):
                doc = {
                    "entry_id": e.entry_id,
                    "reseller_id": reseller_id,
                    "customer_id": next(iter(customers)) if len(customers) == 1 else "",
                    "month": month,
                    "kind": e.kind,
                    "amount_micros": e.amount_micros,
                    "currency": e.currency,
                    "base_micros": e.base_micros,
                    "base_delta_micros": e.base_delta_micros,
                    "tier": e.tier,
                    "rate": str(e.rate),
                    "position": e.position,
                    "month_commission_micros": e.month_commission_micros,
                    "month_bonus_micros": e.month_bonus_micros,
                    "customers": customers if e.kind == "accrual" else {},
                    "facts": held["facts"] if e.kind == "accrual" else 0,
                    "source_entry_id": last_id,
                    "source_kind": kind,
                    "source_amount_micros": held["source"] if e.kind == "accrual" else 0,
                    "source_currency": source_currency,
                    "fx_rate": fx_rate or None,
                    "fx_date": fx_date or None,
                    "occurred_at": at,
                    "created_at": created_at,
                }
                out.append(self._message(reseller_id, doc))
        self.slice.clear()
        self.slice_start = None
        self.slice_facts = 0
        return out

    def _park(self, reseller_id: str, raw: bytes) -> None:
        self.parked.setdefault(reseller_id, []).append(raw)

    def _drain(self, reseller_id: str, created_at: str) -> list[Message]:
        """Apply a reseller's parked facts in order, up to the first that still waits."""
        waiting = self.parked.get(reseller_id)
        book = self.books.get(reseller_id)
        if not waiting or book is None:
            return []
        out: list[Message] = []
        while waiting:
            try:
                out += self._apply(book, orjson.loads(waiting[0]), created_at)
            except _Parked:
                break
            except (KeyError, TypeError, ValueError, ArithmeticError):
                log.exception("parked commission fact cannot be accrued; dropped from the book")
            waiting.pop(0)
        if not waiting:
            del self.parked[reseller_id]
        return out

    def _marker(self, rec: Record, created_at: str) -> list[Message]:
        try:
            doc = orjson.loads(rec.value or b"")
            kind = doc["marker"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return [self._dead(rec, f"not a commissions marker: {exc}")]
        if kind == "rates":
            for day, currency, rate in doc["rates"]:
                self.rates.add(date.fromisoformat(day), currency, Decimal(rate))
            out: list[Message] = []
            for reseller_id in list(self.parked):
                out += self._drain(reseller_id, created_at)
            return out
        if kind == "plan":
            return self._plan(doc, rec, created_at)
        if kind == "tick":
            return self.close_slice(created_at)
        return [self._dead(rec, f"unknown marker {kind!r}")]

    def _plan(self, doc: dict[str, Any], rec: Record, created_at: str) -> list[Message]:
        reseller_id, version = doc["reseller_id"], int(doc["version"])
        if version <= self.plan_versions.get(reseller_id, -1):
            return []  # an older or repeated marker
        book = self.books.get(reseller_id)
        currency = book.plan.currency if book is not None else doc["currency"]
        try:
            plan = plan_from_document(doc.get("plan"), currency, doc.get("timezone"))
        except InvalidPlan as exc:
            log.error(
                "reseller %s: invalid commission plan (%s); keeping the last", reseller_id, exc
            )
            plan = book.plan if book is not None else plan_from_document(None, currency)
        if book is not None and doc["currency"] != book.plan.currency:
            log.error(
                "reseller %s changed currency %s -> %s; its commissions stay in %s",
                reseller_id,
                book.plan.currency,
                doc["currency"],
                book.plan.currency,
            )
        self.plan_versions[reseller_id] = version
        if book is None:
            self.books[reseller_id] = ResellerBook(reseller_id, plan)
        else:
            book.plan = plan
        self.wants_plan.discard(reseller_id)
        return self._drain(reseller_id, created_at)

    def _dead(self, rec: Record, reason: str) -> Message:
        failed_at = strftime("%Y-%m-%dT%H:%M:%S+00:00", gmtime())
        return dead_letter_message(rec, "invalid_event", reason, failed_at)

    # -- what the agent asks -----------------------------------------------------------

    def plan_markers(self, account_of: Any, requested: dict[str, int]) -> list[Message]:
        """Plan markers for resellers whose account (``account_of(id) -> ResellerAccount |
        None``) is newer than their book's plan; ``requested`` remembers what was asked and
        not yet read back, so a marker is written once."""
        out = []
        for reseller_id in sorted(self.wants_plan | set(self.books)):
            account = account_of(reseller_id)
            if account is None:
                continue
            have = max(self.plan_versions.get(reseller_id, -1), requested.get(reseller_id, -1))
            if account.version > have:
                requested[reseller_id] = account.version
                out.append(
                    plan_marker(
                        reseller_id,
                        account.version,
                        account.currency,
                        account.plan,
                        account.timezone,
                        self.partition,
                    )
                )
        return out

    def missing_rates(
        self, rows: list[tuple[date, str, Decimal]]
    ) -> list[tuple[date, str, Decimal]]:
        """The rows this partition's rate table does not hold with that value."""
        return [(d, c, r) for d, c, r in rows if self.rates.exact(c, d) != r]

    @property
    def parked_count(self) -> int:
        return sum(len(v) for v in self.parked.values())

    # -- checkpoints -------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        books = {}
        for reseller_id, book in self.books.items():
            newest = max(book.months, default=None)
            if newest is not None:
                book.prune(add_months(newest, -KEEP_MONTHS))
            books[reseller_id] = {
                "currency": book.plan.currency,
                "plan": plan_document(book.plan),
                "version": self.plan_versions.get(reseller_id, 0),
                "book": book.to_state(),
            }
        return {
            "version": STATE_VERSION,
            "offset": self.next_offset,
            "books": books,
            "rates": [[str(d), c, str(r)] for d, c, r in self.rates.rows()],
            "parked": {r: [raw.decode() for raw in v] for r, v in self.parked.items()},
            "wants_plan": sorted(self.wants_plan),
            "slice": [[list(k), v] for k, v in self.slice.items()],
            "slice_start": self.slice_start,
            "slice_facts": self.slice_facts,
        }

    @classmethod
    def from_state(
        cls, partition: int, partitions: int, state: dict[str, Any]
    ) -> CommissionPartition:
        part = cls(partition, partitions)
        part.next_offset = int(state["offset"])
        for reseller_id, held in state["books"].items():
            plan = plan_from_document(held["plan"], held["currency"])
            part.books[reseller_id] = ResellerBook.from_state(reseller_id, plan, held["book"])
            part.plan_versions[reseller_id] = int(held["version"])
        for day, currency, rate in state["rates"]:
            part.rates.add(date.fromisoformat(day), currency, Decimal(rate))
        part.parked = {r: [raw.encode() for raw in v] for r, v in state["parked"].items()}
        part.wants_plan = set(state["wants_plan"])
        part.slice = {tuple(k): v for k, v in state["slice"]}
        part.slice_start = state["slice_start"]
        part.slice_facts = int(state["slice_facts"])
        return part
