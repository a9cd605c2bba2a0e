"""What ``streambill bench`` produces: ids, accounts, top-ups and usage. Pure.

Bench customers keep stable ids (``bench_cus_000001``...), so repeated runs upsert the same
accounts; every event id starts with the run id, so the ledger watcher tells this run's
entries apart from everything else on the topic.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from streambill.loadgen.population import topup_payment

BENCH_CURRENCY: Final = "EUR"
BENCH_METER: Final = "call_minutes"
BENCH_UNIT_PRICE: Final = "0.10"
BENCH_QUANTITY: Final = "1.0"
# Ample credit per run so no balance goes below zero during a run (no depletion alerts).
BENCH_TOPUP: Final = Decimal("100000.00")
# Every bench customer belongs to one of these resellers, so a run carries the commissions
# agent's work too (re-keying, accrual, entries), like real traffic of resold customers.
BENCH_RESELLERS: Final = 4


def reseller_id(index: int) -> str:
    """The bench reseller of customer ``index``.

    >>> reseller_id(7)
    'bench_res_3'
    """
    return f"bench_res_{index % BENCH_RESELLERS}"


def bench_reseller(n: int, updated_at: datetime) -> dict[str, Any]:
    return {
        "account_id": f"bench_res_{n}",
        "kind": "reseller",
        "parent_id": None,
        "name": f"Bench reseller {n}",
        "currency": BENCH_CURRENCY,
        "status": "active",
        "prices": [],
        "auto_topup": None,
        "updated_at": updated_at.isoformat(),
    }


def new_run_id() -> str:
    """A short random id that prefixes every event of one run.

    >>> len(new_run_id()), new_run_id().startswith("bench-")
    (14, True)
    """
    return f"bench-{secrets.token_hex(4)}"


def customer_id(index: int) -> str:
    """The stable id of bench customer ``index``.

    >>> customer_id(7)
    'bench_cus_000007'
    """
    return f"bench_cus_{index:06d}"


def event_id(run_id: str, phase: str, index: int) -> str:
    """Phases: ``p`` top-ups, ``t`` throughput, ``l`` latency.

    >>> event_id("bench-ab", "t", 3)
    'bench-ab-t-3'
    """
    return f"{run_id}-{phase}-{index}"


def bench_account(index: int, updated_at: datetime) -> dict[str, Any]:
    return {
        "account_id": customer_id(index),
        "kind": "customer",
        "parent_id": reseller_id(index),
        "name": f"Bench customer {index}",
        "currency": BENCH_CURRENCY,
        "status": "active",
        "prices": [{"meter": BENCH_METER, "unit_price": BENCH_UNIT_PRICE}],
        "auto_topup": None,
        "updated_at": updated_at.isoformat(),
    }


def bench_topup(run_id: str, index: int, occurred_at: datetime) -> dict[str, Any]:
    return topup_payment(
        customer_id(index),
        BENCH_CURRENCY,
        BENCH_TOPUP,
        event_id(run_id, "p", index),
        occurred_at,
    )


def bench_usage(
    run_id: str, phase: str, index: int, customer: int, occurred_at: str, sent_ns: int | None
) -> dict[str, Any]:
    """One usage event; ``sent_ns`` (wall clock) rides along for outside latency checks."""
    attributes: dict[str, Any] = {"bench_run": run_id}
    if sent_ns is not None:
        attributes["bench_sent_ns"] = sent_ns
    return {
        "event_id": event_id(run_id, phase, index),
        "customer_id": customer_id(customer),
        "meter": BENCH_METER,
        "quantity": BENCH_QUANTITY,
        "occurred_at": occurred_at,
        "attributes": attributes,
    }
