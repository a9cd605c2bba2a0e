"""Payout runs and payout status.

A run looks at every reseller's closed statements that no payout covers. What a reseller is
due is their sum plus the sub-cent remainders earlier payouts carried; and, since a statement
is covered by at most one live (pending or paid) payout, that is always the sum of all its
statements minus the amounts of its live payouts (checked at every run). Due at least
``payout_minimum`` (and at least a cent): one ``pending`` payout of the due amount rounded
down to whole cents, the statements marked as paid out in it. Below the minimum, or not
positive (refunds can make a statement negative): nothing now, the statements are marked as
carried and count again at the next run.

Resellers billed in EUR with an IBAN are paid by SEPA credit transfer: one pain.001 file per
run, validated against the XSD before it is stored (``sepa_not_configured`` when the platform's
debtor account is missing); everyone else gets a ``manual`` payout. ``pending`` -> ``paid``
(the admin confirms) or ``pending`` -> ``failed`` (with the reason: its statements are unpaid
again, so the next run pays them). Every run and transition leaves an audit record; one run
at a time (a lease).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession

from streambill.commissions import sepa
from streambill.commissions.errors import PayoutRunBusy
from streambill.control import leases
from streambill.control.models import Payout, PayoutFile, PayoutRun, Statement, Tenant
from streambill.control.plane import ControlPlane, audit
from streambill.control.principal import Principal
from streambill.control.security import new_id
from streambill.domain.money import to_micros
from streambill.errors import Conflict, Forbidden, InvalidEvent, NotFound, check
from streambill.settings import Settings

log = logging.getLogger(__name__)

LEASE_NAME: Final = "payout-run"
LEASE_TTL_S: Final = 300.0
LIVE: Final = ("pending", "paid")


@dataclass(frozen=True)
class PayoutConfig:
    minimum: str
    minimum_micros: int
    debtor_name: str | None
    debtor_iban: str | None
    debtor_bic: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> PayoutConfig:
        minimum = to_micros(settings.payout_minimum, field="payout_minimum")
        if minimum < 0:
            raise InvalidEvent("payout_minimum must not be negative", code="invalid_request")
        return cls(
            minimum=settings.payout_minimum,
            minimum_micros=minimum,
            debtor_name=settings.sepa_debtor_name,
            debtor_iban=settings.sepa_debtor_iban,
            debtor_bic=settings.sepa_debtor_bic,
        )


@dataclass(frozen=True)
class RunResult:
    run: PayoutRun
    payouts: list[Payout]
    file: PayoutFile | None


def whole_cents(micros: int) -> int:
    """Rounded down to whole cents (for the positive amounts that are paid).

    >>> whole_cents(12_345_678)
    12340000
    """
    return micros - micros % 10_000


@dataclass
class _Due:
    """One reseller's position at a run."""

    tenant: Tenant
    unpaid: list[Statement]
    residue_micros: int  # sum over its live payouts of (statements covered - amount)

    @property
    def unpaid_micros(self) -> int:
        return sum(s.total_micros for s in self.unpaid)

    @property
    def due_micros(self) -> int:
        return self.unpaid_micros + self.residue_micros


async def positions(session: SqlSession, reseller_id: str | None = None) -> dict[str, _Due]:
    """Every reseller's due amount (or one's), with the invariant checked."""
    resellers = select(Tenant).where(Tenant.kind == "reseller")
    statements = select(Statement).where(Statement.payout_id.is_(None))
    live = select(Payout).where(Payout.status.in_(LIVE))
    totals = select(Statement.reseller_id, func.sum(Statement.total_micros)).group_by(
        Statement.reseller_id
    )
    if reseller_id is not None:
        resellers = resellers.where(Tenant.id == reseller_id)
        statements = statements.where(Statement.reseller_id == reseller_id)
        live = live.where(Payout.reseller_id == reseller_id)
        totals = totals.where(Statement.reseller_id == reseller_id)
    out = {
        t.id: _Due(t, [], 0) for t in (await session.scalars(resellers.order_by(Tenant.id))).all()
    }
    for statement in (await session.scalars(statements.order_by(Statement.month))).all():
        out[statement.reseller_id].unpaid.append(statement)
    paid_amounts: dict[str, int] = defaultdict(int)
    for payout in (await session.scalars(live)).all():
        out[payout.reseller_id].residue_micros += payout.statements_micros - payout.amount_micros
        paid_amounts[payout.reseller_id] += payout.amount_micros
    for rid, total in (await session.execute(totals)).all():
        # What it earned minus what went out (or is going out) is what it is due.
        check(
            int(total or 0) - paid_amounts[rid] == out[rid].due_micros,
            f"payout books of {rid} disagree: statements {total}, live payouts"
            f" {paid_amounts[rid]}, due {out[rid].due_micros}",
        )
    return out


class PayoutRunner:
    def __init__(self, cp: ControlPlane, config: PayoutConfig) -> None:
        self.cp = cp
        self.config = config

    async def run(self, p: Principal) -> RunResult:
        """One payout run (the admin only); ``payout_run_in_progress`` while another runs."""
        if not p.is_admin:
            raise Forbidden("only the platform admin runs payouts")
        run_id = new_id("prun")
        try:
            acquired = await leases.acquire(
                self.cp.sessions, LEASE_NAME, run_id, LEASE_TTL_S, self.cp.clock()
            )
        except IntegrityError:  # another run inserted the first lease row at the same moment
            acquired = False
        if not acquired:
            raise PayoutRunBusy("another payout run is in progress; try again when it ends")
        try:
            return await self._run(p, run_id)
        finally:
            await leases.release(self.cp.sessions, LEASE_NAME, run_id)

    async def _run(self, p: Principal, run_id: str) -> RunResult:
        now = self.cp.clock()
        payouts: list[Payout] = []
        carried: list[dict[str, Any]] = []
        notes: list[dict[str, str]] = []
        async with self.cp.sessions.begin() as session:
            run = PayoutRun(
                id=run_id,
                created_at=now,
                created_by=p.label(),
                minimum=self.config.minimum,
                summary={},
                file_id=None,
            )
            session.add(run)
            await session.flush()
            for due in (await positions(session)).values():
                if not due.unpaid and due.residue_micros == 0:
                    continue
                payout = await self._settle(session, run, due, carried, notes, now)
                if payout is not None:
                    payouts.append(payout)
            file = await self._sepa_file(session, run, payouts, now)
            run.summary = {"carried": carried, "notes": notes}
            run.file_id = file.id if file else None
            audit(
                session,
                now,
                p,
                "payout_run.create",
                run.id,
                {"payouts": len(payouts), "carried": len(carried), "file_id": run.file_id},
            )
            for payout in payouts:
                audit(
                    session,
                    now,
                    p,
                    "payout.create",
                    payout.id,
                    {
                        "reseller_id": payout.reseller_id,
                        "amount_micros": payout.amount_micros,
                        "currency": payout.currency,
                        "method": payout.method,
                    },
                )
        log.info("payout run %s: %d payouts, %d carried", run.id, len(payouts), len(carried))
        return RunResult(run, payouts, file)

    async def _settle(
        self,
        session: SqlSession,
        run: PayoutRun,
        due: _Due,
        carried: list[dict[str, Any]],
        notes: list[dict[str, str]],
        now: datetime,
    ) -> Payout | None:
        tenant = due.tenant
        amount = whole_cents(due.due_micros) if due.due_micros > 0 else 0
        ids = [s.id for s in due.unpaid]
        if due.due_micros < self.config.minimum_micros or amount <= 0:
            if due.due_micros != 0:  # a sum of zero carries nothing worth a line
                reason = "not_positive" if due.due_micros < 0 else "below_minimum"
                carried.append(
                    {
                        "reseller_id": tenant.id,
                        "currency": tenant.currency,
                        "due_micros": due.due_micros,
                        "reason": reason,
                    }
                )
            if ids:
                await session.execute(
                    update(Statement)
                    .where(Statement.id.in_(ids), Statement.payout_id.is_(None))
                    .values(carried_run_id=run.id)
                    .execution_options(synchronize_session=False)
                )
            return None
        method, iban = "manual", None
        if tenant.currency == "EUR" and tenant.payout_iban:
            iban = tenant.payout_iban.replace(" ", "").upper()
            if sepa.iban_valid(iban):
                method = "sepa"
            else:
                notes.append(
                    {
                        "reseller_id": tenant.id,
                        "note": "payout_iban fails its check digits: paid manually",
                    }
                )
        payout = Payout(
            id=new_id("po"),
            run_id=run.id,
            reseller_id=tenant.id,
            amount_micros=amount,
            currency=tenant.currency,
            statements_micros=due.unpaid_micros,
            carried_in_micros=due.residue_micros,
            remainder_micros=due.due_micros - amount,
            statement_ids=ids,
            method=method,
            status="pending",
            creditor_name=tenant.payout_holder or tenant.name,
            creditor_iban=iban if method == "sepa" else tenant.payout_iban,
            creditor_bic=tenant.payout_bic,
            failure_reason=None,
            created_at=now,
            updated_at=now,
            paid_at=None,
            failed_at=None,
        )
        session.add(payout)
        await session.flush()
        if ids:
            marked = await session.execute(
                update(Statement)
                .where(Statement.id.in_(ids), Statement.payout_id.is_(None))
                .values(payout_id=payout.id)
                .execution_options(synchronize_session=False)
            )
            if marked.rowcount != len(ids):  # type: ignore[attr-defined]
                raise Conflict("statements changed during the payout run; run it again")
        return payout

    async def _sepa_file(
        self, session: SqlSession, run: PayoutRun, payouts: list[Payout], now: datetime
    ) -> PayoutFile | None:
        transfers_of = [p for p in payouts if p.method == "sepa"]
        if not transfers_of:
            return None
        debtor = sepa.debtor_from(
            self.config.debtor_name, self.config.debtor_iban, self.config.debtor_bic
        )
        months = await _months(session, [sid for p in transfers_of for sid in p.statement_ids])
        transfers = [
            sepa.Transfer(
                end_to_end_id=p.id,
                amount_micros=p.amount_micros,
                name=p.creditor_name or p.reseller_id,
                iban=p.creditor_iban or "",
                bic=p.creditor_bic,
                remittance=_remittance(p, months),
            )
            for p in transfers_of
        ]
        document = sepa.build_pain001(run.id, now, debtor, transfers)
        sepa.validate(document)
        file = PayoutFile(
            id=new_id("pf"),
            run_id=run.id,
            format=sepa.FORMAT,
            content=document,
            sha256=hashlib.sha256(document.encode()).hexdigest(),
            created_at=now,
        )
        session.add(file)
        return file


async def _months(session: SqlSession, statement_ids: list[str]) -> dict[str, str]:
    if not statement_ids:
        return {}
    rows = await session.execute(
        select(Statement.id, Statement.month).where(Statement.id.in_(statement_ids))
    )
    return {i: m for i, m in rows}


def _remittance(payout: Payout, months: dict[str, str]) -> str:
    covered = sorted({months[s] for s in payout.statement_ids if s in months})
    text = "streambill commission " + " ".join(covered) if covered else "streambill commission"
    return f"{text} {payout.id}"


async def mark_paid(cp: ControlPlane, p: Principal, payout_id: str) -> Payout:
    """``pending`` -> ``paid`` (the admin, once the money arrived)."""
    return await _transition(cp, p, payout_id, "paid", None)


async def mark_failed(cp: ControlPlane, p: Principal, payout_id: str, reason: str) -> Payout:
    """``pending`` -> ``failed``: its statements are unpaid again (the next run pays them)."""
    return await _transition(cp, p, payout_id, "failed", reason)


async def _transition(
    cp: ControlPlane, p: Principal, payout_id: str, status: str, reason: str | None
) -> Payout:
    if not p.is_admin:
        raise Forbidden("only the platform admin changes payouts")
    now = cp.clock()
    async with cp.sessions.begin() as session:
        payout = await session.get(Payout, payout_id, with_for_update=True)
        if payout is None:
            raise NotFound(f"payout {payout_id!r} not found")
        if payout.status != "pending":
            raise Conflict(f"payout {payout_id!r} is {payout.status}, not pending")
        payout.status = status
        payout.updated_at = now
        if status == "paid":
            payout.paid_at = now
        else:
            payout.failed_at = now
            payout.failure_reason = reason
            await session.execute(
                update(Statement)
                .where(Statement.payout_id == payout.id)
                .values(payout_id=None, carried_run_id=None)
                .execution_options(synchronize_session=False)
            )
        details: dict[str, object] = {"amount_micros": payout.amount_micros}
        if reason is not None:
            details["reason"] = reason
        audit(session, now, p, f"payout.{status}", payout.id, details)
    return payout
