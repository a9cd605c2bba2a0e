"""Reading statements: a reseller's list and one month, for the admin and the reseller itself
(anyone else: 404, as for a reseller that does not exist)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from streambill.commissions.months import check_month
from streambill.commissions.schemas import (
    LateAdjustment,
    StatementLine,
    StatementPage,
    StatementPayoutStatus,
    StatementPublic,
)
from streambill.control.models import Payout, Statement
from streambill.control.plane import ControlPlane, decode_cursor, encode_cursor
from streambill.control.plans import visible_reseller
from streambill.control.principal import Principal
from streambill.errors import NotFound


def payout_status(statement: Statement, payouts: dict[str, str]) -> StatementPayoutStatus:
    if statement.payout_id is not None:
        return "paid" if payouts.get(statement.payout_id) == "paid" else "pending"
    return "carried" if statement.carried_run_id is not None else "unpaid"


def public(statement: Statement, payouts: dict[str, str]) -> StatementPublic:
    return StatementPublic(
        id=statement.id,
        reseller_id=statement.reseller_id,
        month=statement.month,
        currency=statement.currency,
        timezone=statement.timezone,
        base_micros=statement.base_micros,
        tier=statement.tier,
        rate=statement.rate,
        commission_micros=statement.commission_micros,
        bonus_micros=statement.bonus_micros,
        month_total_micros=statement.month_total_micros,
        late_micros=statement.late_micros,
        total_micros=statement.total_micros,
        entry_count=statement.entry_count,
        lines=[StatementLine.model_validate(line) for line in statement.lines],
        late_adjustments=[LateAdjustment.model_validate(line) for line in statement.late_lines],
        closed_at=statement.closed_at,
        payout_id=statement.payout_id,
        payout_status=payout_status(statement, payouts),
    )


async def publics(cp: ControlPlane, statements: Sequence[Statement]) -> list[StatementPublic]:
    ids = sorted({s.payout_id for s in statements if s.payout_id is not None})
    payouts: dict[str, str] = {}
    if ids:
        async with cp.sessions() as session:
            rows = await session.execute(select(Payout.id, Payout.status).where(Payout.id.in_(ids)))
            payouts = {i: status for i, status in rows}
    return [public(s, payouts) for s in statements]


async def list_statements(
    cp: ControlPlane, p: Principal, reseller_id: str, *, limit: int, cursor: str | None
) -> StatementPage:
    """The reseller's statements, oldest month first."""
    await visible_reseller(cp, p, reseller_id)
    query = select(Statement).where(Statement.reseller_id == reseller_id)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(Statement.month > after)
    async with cp.sessions() as session:
        rows = (await session.scalars(query.order_by(Statement.month).limit(limit + 1))).all()
    next_cursor = encode_cursor(rows[limit - 1].month) if len(rows) > limit else None
    return StatementPage(items=await publics(cp, rows[:limit]), next_cursor=next_cursor)


async def get_statement(cp: ControlPlane, p: Principal, reseller_id: str, month: str) -> Statement:
    """The stored statement of a closed month (404 until it is closed)."""
    await visible_reseller(cp, p, reseller_id)
    check_month(month)
    async with cp.sessions() as session:
        statement = await session.scalar(
            select(Statement).where(Statement.reseller_id == reseller_id, Statement.month == month)
        )
    if statement is None:
        raise NotFound(f"no statement of {reseller_id!r} for {month} (not closed yet)")
    return statement
