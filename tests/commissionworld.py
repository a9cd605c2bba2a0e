"""Test support for month close and payouts: a control plane (SQLite or PostgreSQL) with a
clock the test moves, chDB in the test process, and commission entries made by the real
:class:`ResellerBook` and inserted into ``commissions`` directly."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from apiworld import database_url
from streambill.analytics.client import AsyncClickHouse
from streambill.analytics.migrate import migrate as migrate_clickhouse
from streambill.commissions.close import MonthCloser
from streambill.commissions.payouts import PayoutConfig, PayoutRunner
from streambill.control import db
from streambill.control.access import Authenticator
from streambill.control.plane import ControlPlane
from streambill.control.principal import Principal
from streambill.control.schemas import CustomerCreate, ResellerCreate
from streambill.control.tenants import create_customer, create_reseller
from streambill.domain.commissions import CommissionEntry, Fact, Plan, ResellerBook

ADMIN = Principal("admin", None, None, "admin")
GRACE = timedelta(days=3)
COLUMNS = (
    "entry_id",
    "reseller_id",
    "customer_id",
    "month",
    "kind",
    "amount_micros",
    "currency",
    "base_micros",
    "base_delta_micros",
    "tier",
    "rate",
    "position",
    "month_commission_micros",
    "month_bonus_micros",
    "source_entry_id",
    "source_kind",
    "source_amount_micros",
    "source_currency",
    "fx_rate",
    "fx_date",
    "occurred_at",
    "created_at",
)
DEBTOR = {"debtor_name": "streambill platform", "debtor_iban": "DE89370400440532013000"}


def row(entry: CommissionEntry, source_kind: str = "usage") -> tuple[Any, ...]:
    return (
        entry.entry_id,
        entry.reseller_id,
        entry.customer_id,
        entry.month,
        entry.kind,
        entry.amount_micros,
        entry.currency,
        entry.base_micros,
        entry.base_delta_micros,
        entry.tier,
        str(entry.rate),
        entry.position,
        entry.month_commission_micros,
        entry.month_bonus_micros,
        entry.source_entry_id,
        source_kind,
        0,
        entry.currency,
        None,
        None,
        entry.occurred_at,
        entry.occurred_at,
    )


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    cp: ControlPlane
    clickhouse: AsyncClickHouse
    clock: Clock
    url: str
    books: dict[str, ResellerBook] = field(default_factory=dict)
    inserted: list[CommissionEntry] = field(default_factory=list)
    counter: int = 0

    @property
    def closer(self) -> MonthCloser:
        return MonthCloser(self.cp, self.clickhouse, GRACE)

    def runner(self, minimum: str = "50.00", **debtor: str | None) -> PayoutRunner:
        config = PayoutConfig(
            minimum=minimum,
            minimum_micros=int(Decimal(minimum) * 1_000_000),
            debtor_name=debtor.get("debtor_name"),
            debtor_iban=debtor.get("debtor_iban"),
            debtor_bic=debtor.get("debtor_bic"),
        )
        return PayoutRunner(self.cp, config)

    async def reseller(self, name: str, currency: str = "EUR", **fields: Any) -> str:
        body = ResellerCreate(name=name, currency=currency, **fields)  # type: ignore[arg-type]
        rid = (await create_reseller(self.cp, ADMIN, body)).id
        self.books[rid] = ResellerBook(rid, Plan(currency=currency))
        return rid

    async def customer(self, reseller_id: str, name: str) -> str:
        currency = self.books[reseller_id].plan.currency
        body = CustomerCreate(name=name, currency=currency, reseller_id=reseller_id)  # type: ignore[arg-type]
        return (await create_customer(self.cp, ADMIN, body)).id

    async def facts(
        self, reseller_id: str, customer_id: str, *facts: tuple[str, str, datetime]
    ) -> list[CommissionEntry]:
        """Apply (kind, major units, at) facts to the reseller's book; insert its entries."""
        entries = []
        for kind, units, at in facts:
            self.counter += 1
            micros = int(Decimal(units) * 1_000_000)
            fact = Fact(f"le{self.counter}", customer_id, kind, micros, at, meter="call_minutes")
            entries += self.books[reseller_id].apply(fact)
        await self.insert(entries)
        return entries

    async def insert_slice(self, entries: Sequence[CommissionEntry], parts: dict[str, int]) -> None:
        """Entries of an accrual slice: many facts' base summed, ``parts`` per customer."""
        rows = [(*row(e), parts, len(parts)) for e in entries]
        await self.clickhouse.insert("commissions", rows, (*COLUMNS, "customers", "facts"))
        self.inserted += entries

    async def insert(self, entries: Sequence[CommissionEntry]) -> None:
        if entries:
            await self.clickhouse.insert("commissions", [row(e) for e in entries], COLUMNS)
            self.inserted += entries


@contextlib.asynccontextmanager
async def commission_world(backend: str, tmp: Path, now: datetime) -> AsyncIterator[World]:
    with database_url(backend, tmp) as found:
        url = found or f"sqlite:///{tmp / 'control.db'}"
        db.migrate(url)
        engine = db.open_engine(url)
        clock = Clock(now)
        sessions = db.session_factory(engine)
        cp = ControlPlane(sessions=sessions, auth=Authenticator(sessions, None), clock=clock)
        clickhouse = await AsyncClickHouse.open(f"chdb://{tmp / 'clickhouse'}")
        try:
            await clickhouse.run(migrate_clickhouse)
            yield World(cp=cp, clickhouse=clickhouse, clock=clock, url=url)
        finally:
            await clickhouse.close()
            await engine.dispose()


def at(text: str) -> datetime:
    """An instant written as ISO text, in UTC when it has no offset."""
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
