"""Demo tenants: a few resellers and N customers, deterministic for a seed.

Ids depend only on the seed and the index, so rerunning ``streambill up`` upserts the same
accounts on the compacted accounts topic instead of creating new ones, and the initial top-up
keeps the same ``event_id`` (the worker drops it as a duplicate).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from streambill.domain.money import to_micros

METERS: Final = ("call_minutes", "sms", "ai_tokens_1k")
# Mostly EUR (DACH and EU customers), some USD and GBP.
CURRENCIES: Final = ("EUR", "USD", "GBP")
CURRENCY_WEIGHTS: Final = (70, 20, 10)
TIME_ZONES: Final = {
    "EUR": ("Europe/Berlin", "Europe/Vienna", "Europe/Paris", "Europe/Madrid"),
    "USD": ("America/New_York", "America/Chicago", "America/Los_Angeles"),
    "GBP": ("Europe/London",),
}
PRICE_CHOICES: Final = {
    "call_minutes": ("0.09", "0.12", "0.15", "0.19", "0.25"),
    "sms": ("0.05", "0.07", "0.09"),
    "ai_tokens_1k": ("0.002", "0.004", "0.010", "0.020"),
}
TOPUP_AMOUNTS: Final = ("20.00", "50.00", "100.00", "200.00")
_TRADES: Final = ("Praxis", "Kanzlei", "Autohaus", "Hotel", "Bistro", "Studio", "Apotheke")
_NAMES: Final = ("Weber", "Schmidt", "Novak", "Rossi", "Dubois", "Garcia", "Smith", "Brown")
_RESELLERS: Final = ("Nordwind Telecom", "Alpen Voice", "BlueLine Partners", "Metro Agents")
# Zipf exponent of the customers' base activity: a few heavy users, a long tail.
ZIPF_EXPONENT: Final = 1.1


@dataclass(frozen=True)
class DemoReseller:
    account_id: str
    name: str
    currency: str


@dataclass(frozen=True)
class DemoCustomer:
    account_id: str
    parent_id: str | None
    name: str
    currency: str
    time_zone: str
    prices: dict[str, Decimal]
    auto_topup: bool
    topup_threshold: Decimal
    topup_amount: Decimal
    initial_topup: Decimal
    # Relative activity (Zipf over a shuffled rank): heavy users have the largest weights.
    weight: float


@dataclass(frozen=True)
class Population:
    resellers: tuple[DemoReseller, ...]
    customers: tuple[DemoCustomer, ...]


def reseller_count(customers: int) -> int:
    """A few resellers: one per ten customers, at least one, at most four."""
    return max(1, min(len(_RESELLERS), customers // 10))


def zipf_weights(count: int, rng: random.Random) -> list[float]:
    """Zipf weights ``1 / rank**s`` assigned to shuffled positions."""
    ranks = list(range(1, count + 1))
    rng.shuffle(ranks)
    return [1.0 / rank**ZIPF_EXPONENT for rank in ranks]


def build_population(customers: int, seed: int) -> Population:
    """The demo's tenants; the same seed gives the same tenants, ids and prices."""
    if customers < 1:
        raise ValueError("customers must be >= 1")
    rng = random.Random(f"population-{seed}")
    resellers = tuple(
        DemoReseller(f"res_demo{seed}_{j + 1}", _RESELLERS[j], "EUR")
        for j in range(reseller_count(customers))
    )
    weights = zipf_weights(customers, rng)
    built = tuple(
        _customer(seed, index, rng, resellers, weights[index]) for index in range(customers)
    )
    return Population(resellers, built)


def _customer(
    seed: int, index: int, rng: random.Random, resellers: tuple[DemoReseller, ...], weight: float
) -> DemoCustomer:
    currency = rng.choices(CURRENCIES, weights=CURRENCY_WEIGHTS)[0]
    # Resellers bill in EUR, so only EUR customers sit under one; a fifth stay direct.
    parent = rng.choice(resellers).account_id if currency == "EUR" and rng.random() < 0.8 else None
    prices = {meter: Decimal(rng.choice(PRICE_CHOICES[meter])) for meter in METERS}
    initial = Decimal(rng.choice(TOPUP_AMOUNTS))
    return DemoCustomer(
        account_id=f"cus_demo{seed}_{index + 1:05d}",
        parent_id=parent,
        name=f"{rng.choice(_TRADES)} {rng.choice(_NAMES)} {index + 1}",
        currency=currency,
        time_zone=rng.choice(TIME_ZONES[currency]),
        prices=prices,
        auto_topup=rng.random() < 0.4,
        topup_threshold=Decimal(rng.choice(("5.00", "10.00"))),
        topup_amount=Decimal(rng.choice(TOPUP_AMOUNTS[:3])),
        initial_topup=initial,
        weight=weight,
    )


def reseller_account(reseller: DemoReseller, updated_at: datetime) -> dict[str, Any]:
    """The ``billing.accounts.v1`` value of a reseller."""
    return {
        "account_id": reseller.account_id,
        "kind": "reseller",
        "parent_id": None,
        "name": reseller.name,
        "currency": reseller.currency,
        "status": "active",
        "prices": [],
        "auto_topup": None,
        "updated_at": updated_at.isoformat(),
    }


def customer_account(customer: DemoCustomer, updated_at: datetime) -> dict[str, Any]:
    """The ``billing.accounts.v1`` value of a customer (CONTRACT section 4)."""
    auto_topup = None
    if customer.auto_topup:
        auto_topup = {
            "enabled": True,
            "threshold": str(customer.topup_threshold),
            "amount": str(customer.topup_amount),
        }
    return {
        "account_id": customer.account_id,
        "kind": "customer",
        "parent_id": customer.parent_id,
        "name": customer.name,
        "currency": customer.currency,
        "status": "active",
        "prices": [{"meter": m, "unit_price": str(p)} for m, p in customer.prices.items()],
        "auto_topup": auto_topup,
        "updated_at": updated_at.isoformat(),
    }


def topup_payment(
    customer_id: str, currency: str, amount: Decimal, event_id: str, occurred_at: datetime
) -> dict[str, Any]:
    """A ``billing.payments.v1`` top-up; ``amount`` is a decimal string in major units."""
    to_micros(amount)  # bounds-check before it leaves
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "kind": "topup",
        "amount": str(amount),
        "currency": currency,
        "occurred_at": occurred_at.isoformat(),
        "provider": "demo",
        "provider_ref": event_id,
    }


def initial_topup(customer: DemoCustomer, occurred_at: datetime) -> dict[str, Any]:
    """The first top-up; its id is stable so a rerun is a duplicate, not a second credit."""
    return topup_payment(
        customer.account_id,
        customer.currency,
        customer.initial_topup,
        f"{customer.account_id}-initial-topup",
        occurred_at,
    )
