"""The api's live view of the ledger: each customer's latest entry, and unflushed entries.

The sink updates it as ledger messages are consumed, before they are flushed, so a balance
read through the api is as fresh as the ledger topic rather than one flush behind. At start it
is seeded from ClickHouse (``queries.latest_balances``). The latest entry only moves forward
in ``seq``: a replayed older entry never rolls a balance back.

Memory: one tuple of four small values per customer (100k customers take about 30 MB); the
unflushed entries are bounded by the sink's buffer. Past ``max_customers`` new customers are
not tracked and :meth:`LedgerView.balance` answers None, so the api falls back to ClickHouse.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

from streambill.analytics.rows import LedgerRow, utc

logger = logging.getLogger(__name__)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
MAX_CUSTOMERS_DEFAULT: Final = 2_000_000


class Balance(NamedTuple):
    customer_id: str
    balance_micros: int
    seq: int
    currency: str
    applied_at: datetime


def _epoch_micros(value: datetime) -> int:
    return (utc(value) - _EPOCH) // _MICROSECOND


class LedgerView:
    """Latest balance per customer plus the not-yet-flushed ledger entries."""

    def __init__(self, max_customers: int = MAX_CUSTOMERS_DEFAULT) -> None:
        # customer_id -> (seq, balance_micros, currency, applied_at as epoch micros)
        self._latest: dict[str, tuple[int, int, str, int]] = {}
        self._pending: dict[str, list[LedgerRow]] = {}
        self._max_customers = max_customers
        self._overflowed = False

    def __len__(self) -> int:
        return len(self._latest)

    def seed(self, balances: Iterable[Balance]) -> int:
        """Load balances read from ClickHouse; newer entries already seen are kept."""
        count = 0
        for b in balances:
            self._set(b.customer_id, b.seq, b.balance_micros, b.currency, b.applied_at)
            count += 1
        return count

    def apply(self, row: LedgerRow) -> None:
        """A consumed ledger entry: advance the customer's latest, remember it as pending."""
        self._set(row.customer_id, row.seq, row.balance_micros, row.currency, row.applied_at)
        self._pending.setdefault(row.customer_id, []).append(row)

    def may_be_stored(self, customer_id: str, seq: int) -> bool:
        """Whether an entry might already be in ClickHouse (or consumed before).

        Valid once the view was seeded from ClickHouse: an entry beyond the customer's
        latest ``seq`` is new. The sink skips the existence query for new entries, so in
        steady state a flush costs one insert per table and nothing else.
        """
        latest = self._latest.get(customer_id)
        if latest is None:
            return self._overflowed
        return seq <= latest[0]

    def flushed(self, rows: Iterable[LedgerRow]) -> None:
        """These entries are in ClickHouse now: stop holding them as pending."""
        by_customer: dict[str, set[str]] = {}
        for row in rows:
            by_customer.setdefault(row.customer_id, set()).add(row.entry_id)
        for customer_id, entry_ids in by_customer.items():
            kept = [r for r in self._pending.get(customer_id, ()) if r.entry_id not in entry_ids]
            if kept:
                self._pending[customer_id] = kept
            else:
                self._pending.pop(customer_id, None)

    def drop_pending(self) -> None:
        """Forget every pending entry (the sink discarded its buffer; they will be re-read)."""
        self._pending.clear()

    def balance(self, customer_id: str) -> Balance | None:
        latest = self._latest.get(customer_id)
        if latest is None:
            return None
        seq, balance_micros, currency, applied_us = latest
        applied_at = _EPOCH + timedelta(microseconds=applied_us)
        return Balance(customer_id, balance_micros, seq, currency, applied_at)

    def pending(self, customer_id: str) -> list[LedgerRow]:
        """Consumed entries of this customer not yet in ClickHouse, in arrival order."""
        return list(self._pending.get(customer_id, ()))

    @property
    def pending_count(self) -> int:
        return sum(len(rows) for rows in self._pending.values())

    def _set(
        self, customer_id: str, seq: int, balance_micros: int, currency: str, applied_at: datetime
    ) -> None:
        current = self._latest.get(customer_id)
        if current is not None and current[0] >= seq:
            return
        if current is None and len(self._latest) >= self._max_customers:
            if not self._overflowed:
                logger.warning(
                    "ledger view full; further customers are read from ClickHouse",
                    extra={"max_customers": self._max_customers},
                )
                self._overflowed = True
            return
        self._latest[customer_id] = (
            seq,
            balance_micros,
            sys.intern(currency),
            _epoch_micros(applied_at),
        )
