"""Reading payouts and payout runs: a reseller's own payouts (the admin and the reseller
itself; anyone else 404), runs and their files (the admin)."""

from __future__ import annotations

from sqlalchemy import select

from streambill.commissions.payouts import positions
from streambill.commissions.schemas import (
    CarriedPublic,
    PayoutPublic,
    PayoutRunPublic,
    ResellerPayouts,
    RunNote,
)
from streambill.control.models import Payout, PayoutFile, PayoutRun
from streambill.control.plane import ControlPlane, page_by_id
from streambill.control.plans import sees_reseller, visible_reseller
from streambill.control.principal import Principal
from streambill.errors import Forbidden, NotFound


def payout_public(payout: Payout) -> PayoutPublic:
    return PayoutPublic.model_validate(payout, from_attributes=True)


def run_public(run: PayoutRun, payouts: list[Payout], file: PayoutFile | None) -> PayoutRunPublic:
    return PayoutRunPublic(
        id=run.id,
        created_at=run.created_at,
        minimum=run.minimum,
        payouts=[payout_public(p) for p in sorted(payouts, key=lambda p: p.reseller_id)],
        carried=[CarriedPublic.model_validate(c) for c in run.summary.get("carried", [])],
        notes=[RunNote.model_validate(n) for n in run.summary.get("notes", [])],
        file_id=file.id if file else None,
        file_url=f"/v2/payouts/runs/{run.id}/pain.001.xml" if file else None,
    )


async def reseller_payouts(
    cp: ControlPlane, p: Principal, reseller_id: str, *, limit: int, cursor: str | None
) -> ResellerPayouts:
    tenant = await visible_reseller(cp, p, reseller_id)
    query = select(Payout).where(Payout.reseller_id == reseller_id)
    page = await page_by_id(cp, query, Payout.id, limit, cursor, payout_public)
    async with cp.sessions() as session:
        due = (await positions(session, reseller_id))[reseller_id].due_micros
    return ResellerPayouts(
        items=page.items, next_cursor=page.next_cursor, currency=tenant.currency, due_micros=due
    )


async def get_payout(cp: ControlPlane, p: Principal, payout_id: str) -> Payout:
    async with cp.sessions() as session:
        payout = await session.get(Payout, payout_id)
    if payout is None or not sees_reseller(p, payout.reseller_id):
        raise NotFound(f"payout {payout_id!r} not found")
    return payout


async def get_run(
    cp: ControlPlane, p: Principal, run_id: str
) -> tuple[PayoutRun, list[Payout], PayoutFile | None]:
    if not p.is_admin:
        raise Forbidden("the platform admin only")
    async with cp.sessions() as session:
        run = await session.get(PayoutRun, run_id)
        if run is None:
            raise NotFound(f"payout run {run_id!r} not found")
        payouts = list((await session.scalars(select(Payout).where(Payout.run_id == run_id))).all())
        file = await session.scalar(select(PayoutFile).where(PayoutFile.run_id == run_id))
    return run, payouts, file


async def get_file(cp: ControlPlane, p: Principal, run_id: str) -> PayoutFile:
    _, _, file = await get_run(cp, p, run_id)
    if file is None:
        raise NotFound(f"payout run {run_id!r} made no SEPA file (no SEPA payouts)")
    return file
