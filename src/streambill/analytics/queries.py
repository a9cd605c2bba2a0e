"""Reads of the ledger and its rollups, and the ledger invariant checker.

Every function takes the blocking clickhouse-connect client first, so the api runs them through
``AsyncClickHouse.run`` on the ClickHouse thread. Reads of ``ledger`` deduplicate by
``entry_id`` (``LIMIT 1 BY entry_id``, or ``FINAL``) because ReplacingMergeTree collapses
replays only eventually, at merge time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal

from clickhouse_connect.driver.client import Client

from streambill.analytics.ledger_view import Balance
from streambill.analytics.rows import LedgerRow, utc

Granularity = Literal["minute", "hour", "day"]
ROLLUP_BUCKETS: Final[dict[str, str]] = {
    "minute": "toStartOfMinute",
    "hour": "toStartOfHour",
    "day": "toStartOfDay",
}
LEDGER_LIMIT_MAX: Final = 1000
VIOLATIONS_MAX: Final = 1000
# Ids per existence query: bounds the size of one request (HTTP sends parameters in the URL).
ID_CHUNK: Final = 2000
_LEDGER_COLUMNS: Final = ", ".join(LedgerRow._fields)
_BALANCE_SELECT: Final = """
SELECT customer_id, argMax(balance_micros, seq), max(seq), argMax(currency, seq),
       argMax(applied_at, seq)
FROM ledger
"""


def _balance(row: Sequence[Any]) -> Balance:
    return Balance(str(row[0]), int(row[1]), int(row[2]), str(row[3]), utc(row[4]))


def customer_balance(client: Client, customer_id: str) -> Balance | None:
    """The balance after the customer's highest-``seq`` entry, or None without entries."""
    rows = client.query(
        _BALANCE_SELECT + "WHERE customer_id = {c:String} GROUP BY customer_id",
        parameters={"c": customer_id},
    ).result_rows
    return _balance(rows[0]) if rows else None


def latest_balances(client: Client) -> list[Balance]:
    """Every customer's latest balance: seeds the live view when the api starts."""
    rows = client.query(_BALANCE_SELECT + "GROUP BY customer_id").result_rows
    return [_balance(r) for r in rows]


def customer_ledger(
    client: Client, customer_id: str, limit: int = 100, before_seq: int | None = None
) -> list[LedgerRow]:
    """The customer's entries, newest first, each ``entry_id`` once, ``seq < before_seq``."""
    limit = max(1, min(limit, LEDGER_LIMIT_MAX))
    before = before_seq if before_seq is not None else 2**62
    rows = client.query(
        f"SELECT {_LEDGER_COLUMNS} FROM ledger"
        " WHERE customer_id = {c:String} AND seq < {before:Int64}"
        " ORDER BY seq DESC, entry_id LIMIT 1 BY entry_id LIMIT {limit:UInt32}",
        parameters={"c": customer_id, "before": before, "limit": limit},
    ).result_rows
    return [_ledger_row(r) for r in rows]


def _ledger_row(row: Sequence[Any]) -> LedgerRow:
    values = list(row)
    values[13] = utc(values[13])
    values[14] = utc(values[14])
    return LedgerRow(*values)


def merge_pending(
    stored: Iterable[LedgerRow],
    pending: Iterable[LedgerRow],
    limit: int = 100,
    before_seq: int | None = None,
) -> list[LedgerRow]:
    """Stored entries plus the live view's unflushed ones, newest first, each id once.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> def e(i, seq):
    ...     return LedgerRow(i, i, "u", "c", None, "usage", "m", "1", Decimal(1), -1, -seq,
    ...                      "EUR", seq, t, t)
    >>> [r.seq for r in merge_pending([e("a", 1), e("b", 2)], [e("b", 2), e("c", 3)], 2)]
    [3, 2]
    """
    merged: dict[str, LedgerRow] = {}
    for row in (*pending, *stored):
        if before_seq is None or row.seq < before_seq:
            merged.setdefault(row.entry_id, row)
    ordered = sorted(merged.values(), key=lambda r: (-r.seq, r.entry_id))
    return ordered[: max(1, min(limit, LEDGER_LIMIT_MAX))]


def existing_entry_ids(client: Client, rows: Sequence[LedgerRow]) -> set[str]:
    """The ids among ``rows`` that ``ledger`` already holds (asked in bounded chunks)."""
    found: set[str] = set()
    for start in range(0, len(rows), ID_CHUNK):
        chunk = rows[start : start + ID_CHUNK]
        result = client.query(
            "SELECT DISTINCT entry_id FROM ledger"
            " WHERE customer_id IN {c:Array(String)} AND entry_id IN {e:Array(String)}",
            parameters={
                "c": sorted({r.customer_id for r in chunk}),
                "e": [r.entry_id for r in chunk],
            },
        )
        found.update(str(r[0]) for r in result.result_rows)
    return found


def usage_rollup(
    client: Client,
    customer_id: str,
    granularity: Granularity,
    since: datetime,
    until: datetime,
) -> list[tuple[datetime, str, str, int, Decimal, int]]:
    """(bucket, meter, currency, entries, quantity, spend_micros) rows, oldest bucket first."""
    if granularity not in ROLLUP_BUCKETS:
        raise ValueError(f"granularity must be one of {sorted(ROLLUP_BUCKETS)}")
    rows = client.query(
        "SELECT bucket, meter, currency, sum(entries), sum(quantity), sum(spend_micros)"
        f" FROM usage_per_{granularity}"
        " WHERE customer_id = {c:String} AND bucket >= {since:DateTime64(6, 'UTC')}"
        " AND bucket < {until:DateTime64(6, 'UTC')}"
        " GROUP BY bucket, meter, currency ORDER BY bucket, meter, currency",
        parameters={"c": customer_id, "since": utc(since), "until": utc(until)},
    ).result_rows
    return [(utc(b), str(m), str(c), int(n), Decimal(q), int(s)) for b, m, c, n, q, s in rows]


def rebuild_rollups(client: Client) -> None:
    """Recompute the usage rollups from ``ledger FINAL`` (each entry counted once).

    Repairs double counting after two sinks raced on one entry. Run it with the sink stopped:
    an insert during the rebuild would be counted by both the view and the rebuild.
    """
    for granularity, bucket_fn in ROLLUP_BUCKETS.items():
        table = f"usage_per_{granularity}"
        client.command(f"TRUNCATE TABLE {table}")
        client.command(
            f"INSERT INTO {table}"
            " (customer_id, meter, currency, bucket, reseller_id, entries, quantity, spend_micros)"
            " SELECT customer_id, ifNull(meter, '') AS meter, currency,"
            f" toDateTime({bucket_fn}(occurred_at), 'UTC') AS bucket,"
            " any(ifNull(reseller_id, '')), count(), sum(quantity), sum(-amount_micros)"
            " FROM ledger FINAL WHERE kind = 'usage'"
            " GROUP BY customer_id, meter, currency, bucket"
        )


@dataclass(frozen=True)
class Violation:
    """One broken ledger invariant (ARCHITECTURE, correctness model)."""

    kind: Literal["seq_gap", "seq_repeat", "balance_break", "duplicate_source_event"]
    customer_id: str
    seq: int | None
    detail: str


def ledger_invariants(client: Client, limit: int = VIOLATIONS_MAX) -> list[Violation]:
    """Every invariant violation in the ledger (after collapsing replays), at most ``limit``.

    - ``seq_repeat``: two different entries claim one ``seq`` of a customer;
    - ``seq_gap``: a customer's ``seq`` does not run 1, 2, 3, …;
    - ``balance_break``: ``balance[n] != balance[n-1] + amount[n]`` (with balance[0] = 0);
    - ``duplicate_source_event``: one source event applied in more than one entry.
    """
    found = _seq_repeats(client, limit)
    found += _chain_breaks(client, limit)
    found += _duplicate_sources(client, limit)
    return found[:limit]


def _seq_repeats(client: Client, limit: int) -> list[Violation]:
    rows = client.query(
        "SELECT customer_id, seq, groupArray(entry_id) FROM ledger FINAL"
        " GROUP BY customer_id, seq HAVING count() > 1"
        " ORDER BY customer_id, seq LIMIT {n:UInt32}",
        parameters={"n": limit},
    ).result_rows
    return [Violation("seq_repeat", c, int(s), f"entries {sorted(ids)}") for c, s, ids in rows]


_CHAIN_SQL: Final = """
SELECT customer_id, seq, prev_seq, amount_micros, balance_micros, prev_balance FROM (
    SELECT customer_id, seq, amount_micros, balance_micros,
           lagInFrame(seq, 1, 0) OVER w AS prev_seq,
           lagInFrame(balance_micros, 1, 0) OVER w AS prev_balance
    FROM (
        SELECT customer_id, seq, any(amount_micros) AS amount_micros,
               any(balance_micros) AS balance_micros
        FROM ledger FINAL GROUP BY customer_id, seq
    )
    WINDOW w AS (PARTITION BY customer_id ORDER BY seq ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
)
WHERE seq != prev_seq + 1 OR balance_micros != prev_balance + amount_micros
ORDER BY customer_id, seq
LIMIT {n:UInt32}
"""


def _chain_breaks(client: Client, limit: int) -> list[Violation]:
    found = []
    for c, seq, prev_seq, amount, balance, prev_balance in client.query(
        _CHAIN_SQL, parameters={"n": limit}
    ).result_rows:
        if seq != prev_seq + 1:
            detail = f"seq {seq} follows {prev_seq}" if prev_seq else f"first seq is {seq}"
            found.append(Violation("seq_gap", c, int(seq), detail))
        else:
            detail = f"balance {balance} != {prev_balance} + {amount}"
            found.append(Violation("balance_break", c, int(seq), detail))
    return found


def _duplicate_sources(client: Client, limit: int) -> list[Violation]:
    rows = client.query(
        "SELECT customer_id, source_event_id, groupArray(seq) FROM ledger FINAL"
        " GROUP BY customer_id, source_event_id, kind = 'usage' HAVING count() > 1"
        " ORDER BY customer_id, source_event_id LIMIT {n:UInt32}",
        parameters={"n": limit},
    ).result_rows
    return [
        Violation("duplicate_source_event", c, min(seqs), f"{src!r} applied at seqs {sorted(seqs)}")
        for c, src, seqs in rows
    ]
