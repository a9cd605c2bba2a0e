"""Month close: one statement per reseller and month, written once, never changed.

A month closes ``commission_close_grace_s`` after it ended in the reseller's time zone (the
time zone of its plan). The statement holds the month's figures as ClickHouse has them at
that moment (base, tier, rate, commission, bonuses, one line per customer) and, as *late
adjustments*, whatever arrived for an earlier closed month after that month's statement was
written: for each earlier statement, the month's current total minus what its statement and
the late adjustments carried since then already covered. So every micro of every month is
paid exactly once, by the statement of its month or by a later one, however late it comes.

Ids are ``st_<reseller>_<YYYY-MM>`` and (reseller, month) is unique: closing again answers
the stored statement unchanged, and of two closes racing one inserts and the other reads
it. Closes of one reseller are serialized (a lock on its tenant row, held while ClickHouse is
read), so two months closing at once cannot both carry the same late adjustment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession

from streambill.analytics.client import AsyncClickHouse
from streambill.commissions import queries
from streambill.commissions.errors import MonthNotClosable
from streambill.commissions.months import (
    check_month,
    closable_at,
    last_closable,
    month_end,
    month_of,
    months_between,
)
from streambill.control.models import Statement, Tenant
from streambill.control.plane import ControlPlane, audit
from streambill.control.plans import effective_plan
from streambill.control.principal import Principal
from streambill.domain.commissions import InvalidPlan, Plan
from streambill.domain.money import DECIMAL_CONTEXT
from streambill.errors import Forbidden, NotFound, check

log = logging.getLogger(__name__)

# The auto-closer looks back this many months per reseller, and closes at most this many
# statements in one round (the next round goes on).
MONTHS_BACK_MAX: Final = 120
CLOSES_PER_ROUND_MAX: Final = 1000
AUTO_CLOSE: Final = Principal("admin", None, None, "auto-close")


def statement_id(reseller_id: str, month: str) -> str:
    """The statement's id: deterministic, so the id is the idempotency key.

    >>> statement_id("res_1", "2026-11")
    'st_res_1_2026-11'
    """
    return f"st_{reseller_id}_{month}"


class ClosedMonth(Protocol):
    month: str
    month_total_micros: int
    late_lines: list[dict[str, Any]]


def late_adjustments(
    statements: Iterable[ClosedMonth], totals: dict[str, int]
) -> list[dict[str, Any]]:
    """Per earlier closed month: its current total minus what its statement and the late
    adjustments carried since then covered (months without a difference are left out).

    >>> from types import SimpleNamespace as S
    >>> oct = S(month="2026-10", month_total_micros=100, late_lines=[])
    >>> nov = S(month="2026-11", month_total_micros=50, late_lines=[{"month": "2026-10",
    ...                                                                "amount_micros": 7}])
    >>> late_adjustments([oct, nov], {"2026-10": 110, "2026-11": 50})
    [{'month': '2026-10', 'amount_micros': 3}]
    """
    carried: dict[str, int] = {}
    ordered = sorted(statements, key=lambda s: s.month)
    for statement in ordered:
        for line in statement.late_lines:
            month = str(line["month"])
            carried[month] = carried.get(month, 0) + int(line["amount_micros"])
    out = []
    for statement in ordered:
        if statement.month not in totals:
            continue
        covered = statement.month_total_micros + carried.get(statement.month, 0)
        difference = totals[statement.month] - covered
        if difference:
            out.append({"month": statement.month, "amount_micros": difference})
    return out


def share_commission(total_micros: int, bases: dict[str, int], rate: Decimal) -> dict[str, int]:
    """Each customer's share of the month's commission: the month's rate on its part of the
    base, to the micro, the rounding remainder handed out by largest fractional part (ties
    by customer id), so the shares add up to ``total_micros`` exactly.

    >>> share_commission(302_500_000, {"c1": 900_000_000, "c2": 200_000_000}, Decimal("0.275"))
    {'c1': 247500000, 'c2': 55000000}
    >>> share_commission(1, {"a": 1, "b": 1, "c": 1}, Decimal("0.5"))  # 0.5 each, round(1.5)
    {'a': 1, 'b': 0, 'c': 0}
    """
    if not bases:
        return {}
    exact = {c: DECIMAL_CONTEXT.multiply(Decimal(base), rate) for c, base in bases.items()}
    floors = {c: int(value.to_integral_value(rounding=ROUND_FLOOR)) for c, value in exact.items()}
    order = sorted(bases, key=lambda c: (-(exact[c] - floors[c]), c))
    per_customer, extra = divmod(total_micros - sum(floors.values()), len(order))
    for n, c in enumerate(order):
        floors[c] += per_customer + (1 if n < extra else 0)
    return floors


@dataclass(frozen=True)
class Pending:
    """A reseller whose month may not close yet, and when it may."""

    reseller_id: str
    closable_at: datetime


@dataclass(frozen=True)
class CloseResult:
    month: str
    statements: list[Statement]
    pending: list[Pending]


class MonthCloser:
    """Closes reseller months: on request (:meth:`close_month`) and when due
    (:meth:`close_due`, the auto-closer's round)."""

    def __init__(self, cp: ControlPlane, clickhouse: AsyncClickHouse, grace: timedelta) -> None:
        self.cp = cp
        self.clickhouse = clickhouse
        self.grace = grace

    async def close_month(
        self, p: Principal, month: str, reseller_id: str | None = None
    ) -> CloseResult:
        """Close ``month`` for one reseller or for every reseller (the admin only).

        One reseller: ``month_not_closable`` until its grace has passed; the statement is
        written even if the reseller was created after the month (it was asked for). Every
        reseller: those whose grace has passed and that existed in the month or have
        entries for it; the others are listed as pending, and the call answers
        ``month_not_closable`` only when none may close yet."""
        if not p.is_admin:
            raise Forbidden("only the platform admin closes months")
        check_month(month)
        now = self.cp.clock()
        resellers = await self._resellers(reseller_id)
        if reseller_id is None:
            with_entries = await self.clickhouse.run(queries.resellers_with_entries, month)
            resellers = [
                (t, plan)
                for t, plan in resellers
                if t.created_at < month_end(month, plan.timezone) or t.id in with_entries
            ]
        due, pending = [], []
        for tenant, plan in resellers:
            at = closable_at(month, plan.timezone, self.grace)
            if at <= now:
                due.append((tenant, plan))
            else:
                pending.append(Pending(tenant.id, at))
        if not due and (pending or closable_at(month, "UTC", self.grace) > now):
            first = min((x.closable_at for x in pending), default=None)
            first = first or closable_at(month, "UTC", self.grace)
            raise MonthNotClosable(
                f"{month} may be closed from {first.astimezone(UTC).isoformat()} (its end in"
                f" the reseller's time zone plus {self.grace.total_seconds():.0f} s)"
            )
        statements = [await self.close_one(p, tenant, plan, month) for tenant, plan in due]
        return CloseResult(month, statements, pending)

    async def _resellers(self, reseller_id: str | None) -> list[tuple[Tenant, Plan]]:
        async with self.cp.sessions() as session:
            if reseller_id is not None:
                tenant = await session.get(Tenant, reseller_id)
                if tenant is None or tenant.kind != "reseller":
                    raise NotFound(f"reseller {reseller_id!r} not found")
                tenants: Sequence[Tenant] = [tenant]
            else:
                tenants = (
                    await session.scalars(
                        select(Tenant).where(Tenant.kind == "reseller").order_by(Tenant.id)
                    )
                ).all()
        out = []
        for tenant in tenants:
            try:
                out.append((tenant, effective_plan(tenant)))
            except InvalidPlan:
                log.error("reseller %s has a stored plan that is not valid; not closed", tenant.id)
        return out

    async def close_one(self, p: Principal, tenant: Tenant, plan: Plan, month: str) -> Statement:
        """The reseller's statement for ``month``: the stored one, or a new one."""
        sid = statement_id(tenant.id, month)
        async with self.cp.sessions() as session:
            found = await session.get(Statement, sid)
        if found is not None:
            return found
        now = self.cp.clock()
        try:
            async with self.cp.sessions.begin() as session:
                # Serialize the closes of this reseller: PostgreSQL takes the row lock,
                # SQLite the database's write lock (a no-op write; version is unchanged).
                await session.execute(
                    update(Tenant)
                    .where(Tenant.id == tenant.id)
                    .values(version=Tenant.version)
                    .execution_options(synchronize_session=False)
                )
                found = await session.get(Statement, sid)
                if found is not None:
                    return found
                statement = await self._statement(session, tenant, plan, month, now, p)
                session.add(statement)
                await session.flush()
                audit(
                    session,
                    now,
                    p,
                    "statement.close",
                    sid,
                    {"total_micros": statement.total_micros, "currency": statement.currency},
                )
        except IntegrityError:
            # Another process inserted it first (the unique (reseller, month)): theirs stands.
            async with self.cp.sessions() as session:
                found = await session.get(Statement, sid)
            if found is None:
                raise
            return found
        log.info("closed %s: total %d micros %s", sid, statement.total_micros, statement.currency)
        return statement

    async def _statement(
        self,
        session: SqlSession,
        tenant: Tenant,
        plan: Plan,
        month: str,
        now: datetime,
        p: Principal,
    ) -> Statement:
        earlier = (
            await session.scalars(select(Statement).where(Statement.reseller_id == tenant.id))
        ).all()
        figures, parts = await self.clickhouse.run(queries.month_with_customers, tenant.id, month)
        before = sorted(s.month for s in earlier if s.month < month)
        totals = await self.clickhouse.run(queries.month_totals, tenant.id, before)
        late = late_adjustments([s for s in earlier if s.month < month], totals)
        check(
            set(figures.currencies) <= {tenant.currency},
            f"commission entries of {tenant.id} {month} in {figures.currencies}, not"
            f" {tenant.currency}",
        )
        check(
            sum(parts.bases.values()) == figures.base_micros,
            f"the customers' parts of {tenant.id} {month} do not add up to its base",
        )
        tier, rate = figures.tier_and_rate(plan)
        customers = sorted(set(parts.bases) | set(parts.bonuses))
        bases = {c: parts.bases.get(c, 0) for c in customers}
        shares = share_commission(figures.commission_micros, bases, Decimal(rate))
        names = await _customer_names(session, customers)
        lines = []
        for c in customers:
            bonus = parts.bonuses.get(c, 0)
            lines.append(
                {
                    "customer_id": c,
                    "name": names.get(c, ""),
                    "base_micros": bases[c],
                    "commission_micros": shares[c],
                    "bonus_micros": bonus,
                    "total_micros": shares[c] + bonus,
                }
            )
        commission, bonus = figures.commission_micros, figures.bonus_micros
        late_micros = sum(int(line["amount_micros"]) for line in late)
        return Statement(
            id=statement_id(tenant.id, month),
            reseller_id=tenant.id,
            month=month,
            reseller_name=tenant.name,
            brand_name=tenant.brand_name,
            currency=tenant.currency,
            timezone=plan.timezone,
            base_micros=figures.base_micros,
            tier=tier,
            rate=rate,
            commission_micros=commission,
            bonus_micros=bonus,
            month_total_micros=commission + bonus,
            late_micros=late_micros,
            total_micros=commission + bonus + late_micros,
            entry_count=figures.entry_count,
            lines=lines,
            late_lines=late,
            closed_at=now,
            closed_by=p.label(),
            payout_id=None,
            carried_run_id=None,
        )

    async def close_due(self) -> list[Statement]:
        """Close every reseller month whose grace has passed and that has no statement: the
        months from the reseller's creation on, and any month holding its entries. Oldest
        first, so late entries of one flow into the next."""
        now = self.cp.clock()
        resellers = await self._resellers(None)
        if not resellers:
            return []
        async with self.cp.sessions() as session:
            rows = await session.execute(select(Statement.reseller_id, Statement.month))
            closed = {(r, m) for r, m in rows}
        last_by_reseller = {
            t.id: last_closable(now, plan.timezone, self.grace) for t, plan in resellers
        }
        entries = await self.clickhouse.run(
            queries.months_with_entries, max(last_by_reseller.values())
        )
        made: list[Statement] = []
        for tenant, plan in resellers:
            last = last_by_reseller[tenant.id]
            first = month_of(tenant.created_at, plan.timezone)
            months = set(months_between(first, last, MONTHS_BACK_MAX))
            months |= {m for m in entries.get(tenant.id, ()) if m <= last}
            for month in sorted(m for m in months if (tenant.id, m) not in closed):
                if len(made) >= CLOSES_PER_ROUND_MAX:
                    return made
                made.append(await self.close_one(AUTO_CLOSE, tenant, plan, month))
        return made


async def _customer_names(session: SqlSession, ids: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        rows = await session.execute(
            select(Tenant.id, Tenant.name).where(Tenant.id.in_(ids[start : start + 500]))
        )
        names.update({i: n for i, n in rows})
    return names
