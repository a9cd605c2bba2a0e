"""Payout runs on SQLite and PostgreSQL with chDB: the minimum and carry-forward, sub-cent
remainders, SEPA and manual payouts, the pain.001 file against the XSD, paid and failed
(then retried), one run at a time, and scope."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from sqlalchemy import func, select

from apiworld import BACKENDS
from commissionworld import ADMIN, DEBTOR, World, at, commission_world
from streambill.commissions import sepa
from streambill.commissions.errors import PayoutRunBusy, SepaNotConfigured
from streambill.commissions.payout_reads import get_file, get_payout, reseller_payouts
from streambill.commissions.payouts import mark_failed, mark_paid
from streambill.commissions.statements import list_statements
from streambill.control.models import AuditRecord, Payout, PayoutRun
from streambill.control.principal import Principal
from streambill.errors import Conflict, Forbidden, NotFound

pytestmark = pytest.mark.integration
NS = {"p": sepa.NAMESPACE}
IBAN_A = "DE02120300000000202051"


@pytest.fixture(params=BACKENDS)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    async with commission_world(request.param, tmp_path, at("2026-09-15T10:00")) as w:
        yield w


async def _usage(w: World, rid: str, units: str, when: str) -> None:
    customer = await w.customer(rid, f"customer of {rid} {w.counter}")
    await w.facts(rid, customer, ("usage", units, at(when)))


async def _close(w: World, month: str, now: str) -> None:
    w.clock.now = at(now)
    await w.closer.close_month(ADMIN, month)


async def _runs(w: World) -> int:
    async with w.cp.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(PayoutRun)) or 0)


async def test_below_the_minimum_carries_forward_until_it_is_reached(world: World) -> None:
    a = await world.reseller("Nordwind", payout_iban=IBAN_A, payout_holder="Nordwind GmbH")
    b = await world.reseller("Ostwind")  # EUR without IBAN: manual
    c = await world.reseller("Westwind Ltd", currency="GBP", payout_iban="GB33BUKB20201555555555")
    await _usage(world, a, "120", "2026-10-05T10:00")  # 30.00
    await _usage(world, b, "1000", "2026-10-05T10:00")  # 275.00
    await _usage(world, c, "300.0002", "2026-10-05T10:00")  # 75.00005: a sub-cent remainder
    await _close(world, "2026-10", "2026-11-04T00:00")
    first = await world.runner().run(ADMIN)  # no SEPA payout due: no debtor needed
    assert first.file is None
    paid = {p.reseller_id: p for p in first.payouts}
    assert sorted(paid) == sorted([b, c])
    assert (paid[b].method, paid[b].amount_micros, paid[b].currency) == (
        "manual",
        275_000_000,
        "EUR",
    )
    assert (paid[c].method, paid[c].amount_micros, paid[c].remainder_micros) == (
        "manual",
        75_000_000,
        50,
    )
    assert first.run.summary["carried"] == [
        {"reseller_id": a, "currency": "EUR", "due_micros": 30_000_000, "reason": "below_minimum"}
    ]
    own = Principal("reseller", a, "reseller", "k")
    statements = await list_statements(world.cp, own, a, limit=10, cursor=None)
    assert [s.payout_status for s in statements.items] == ["carried"]
    # November brings A to 55.00: paid by SEPA at the next run, both statements at once
    await _usage(world, a, "100", "2026-11-05T10:00")  # 25.00
    await _close(world, "2026-11", "2026-12-04T00:00")
    second = await world.runner(**DEBTOR).run(ADMIN)
    assert [(p.reseller_id, p.method, p.amount_micros) for p in second.payouts] == [
        (a, "sepa", 55_000_000)
    ]
    assert len(second.payouts[0].statement_ids) == 2
    # C's 50 micros stay carried (below the minimum); B has nothing new
    assert second.run.summary["carried"] == [
        {"reseller_id": c, "currency": "GBP", "due_micros": 50, "reason": "below_minimum"}
    ]
    page = await reseller_payouts(world.cp, own, a, limit=10, cursor=None)
    assert [p.amount_micros for p in page.items] == [55_000_000] and page.due_micros == 0
    statuses = await list_statements(world.cp, own, a, limit=10, cursor=None)
    assert [s.payout_status for s in statuses.items] == ["pending", "pending"]


async def test_the_sepa_file_validates_and_names_run_and_payouts(world: World) -> None:
    a = await world.reseller("Müller & Söhne", payout_iban=IBAN_A, payout_bic="BYLADEM1001")
    await _usage(world, a, "400", "2026-10-05T10:00")  # 100.00
    await _close(world, "2026-10", "2026-11-04T00:00")
    result = await world.runner(**DEBTOR, debtor_bic="COBADEFFXXX").run(ADMIN)
    assert result.file is not None and result.run.file_id == result.file.id
    stored = await get_file(world.cp, ADMIN, result.run.id)
    sepa.validate(stored.content)  # the XSD accepts it as stored
    root = ET.fromstring(stored.content)
    assert root.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:MsgId", namespaces=NS) == result.run.id
    tx = root.find("p:CstmrCdtTrfInitn/p:PmtInf/p:CdtTrfTxInf", NS)
    assert tx is not None
    assert tx.findtext("p:PmtId/p:EndToEndId", namespaces=NS) == result.payouts[0].id
    assert tx.findtext("p:Amt/p:InstdAmt", namespaces=NS) == "100.00"
    assert tx.findtext("p:Cdtr/p:Nm", namespaces=NS) == "Muller Sohne"
    assert tx.findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=NS) == IBAN_A
    # a deliberately broken copy does not validate
    broken = stored.content.replace("<IBAN>" + IBAN_A, "<IBAN>DE02 1203", 1)
    with pytest.raises(sepa.SepaFileInvalid):
        sepa.validate(broken)
    missing = stored.content.replace("<ChrgBr>SLEV</ChrgBr>", "<ChrgBr>NOPE</ChrgBr>", 1)
    with pytest.raises(sepa.SepaFileInvalid):
        sepa.validate(missing)


async def test_a_sepa_payout_without_a_debtor_stores_nothing(world: World) -> None:
    a = await world.reseller("Nordwind", payout_iban=IBAN_A)
    await _usage(world, a, "400", "2026-10-05T10:00")
    await _close(world, "2026-10", "2026-11-04T00:00")
    with pytest.raises(SepaNotConfigured) as refused:
        await world.runner().run(ADMIN)
    assert refused.value.code == "sepa_not_configured"
    with pytest.raises(SepaNotConfigured):
        await world.runner(debtor_name="x", debtor_iban="DE00000000000000000000").run(ADMIN)
    assert await _runs(world) == 0
    own = Principal("reseller", a, "reseller", "k")
    assert (await reseller_payouts(world.cp, own, a, limit=10, cursor=None)).due_micros == (
        100_000_000
    )
    assert len((await world.runner(**DEBTOR).run(ADMIN)).payouts) == 1


async def test_paid_is_final_and_failed_is_retried_by_the_next_run(world: World) -> None:
    a = await world.reseller("Nordwind")
    b = await world.reseller("Ostwind")
    await _usage(world, a, "400", "2026-10-05T10:00")
    await _usage(world, b, "800.00003", "2026-10-05T10:00")  # 200.0000075 -> 200.00 + 7.5 µ
    await _close(world, "2026-10", "2026-11-04T00:00")
    run = await world.runner().run(ADMIN)
    pa, pb = sorted(run.payouts, key=lambda p: p.reseller_id != a)
    assert pb.remainder_micros == 8  # 200.000008 after half-even rounding of the commission
    assert (await mark_paid(world.cp, ADMIN, pa.id)).status == "paid"
    with pytest.raises(Conflict):
        await mark_paid(world.cp, ADMIN, pa.id)
    with pytest.raises(Conflict):
        await mark_failed(world.cp, ADMIN, pa.id, "too late")
    with pytest.raises(Forbidden):
        await mark_paid(world.cp, Principal("reseller", b, "reseller", "k"), pb.id)
    with pytest.raises(NotFound):
        await mark_paid(world.cp, ADMIN, "po_ghost")
    failed = await mark_failed(world.cp, ADMIN, pb.id, "IBAN closed (AC04)")
    assert (failed.status, failed.failure_reason) == ("failed", "IBAN closed (AC04)")
    own = Principal("reseller", b, "reseller", "k")
    statuses = await list_statements(world.cp, own, b, limit=10, cursor=None)
    assert [s.payout_status for s in statuses.items] == ["unpaid"]
    retry = await world.runner().run(ADMIN)
    assert [(p.reseller_id, p.amount_micros, p.statement_ids) for p in retry.payouts] == [
        (b, 200_000_000, pb.statement_ids)
    ]
    assert retry.payouts[0].carried_in_micros == 0  # the failed payout's remainder is void
    async with world.cp.sessions() as session:
        actions = (
            await session.scalars(
                select(AuditRecord.action).where(AuditRecord.target.in_([pa.id, pb.id]))
            )
        ).all()
    assert sorted(actions) == ["payout.create", "payout.create", "payout.failed", "payout.paid"]


async def test_a_negative_month_carries_and_nets_against_the_next(world: World) -> None:
    a = await world.reseller("Nordwind")
    customer = await world.customer(a, "Praxis")
    await world.facts(a, customer, ("usage", "400", at("2026-09-20T10:00")))
    await _close(world, "2026-09", "2026-10-04T00:00")
    await world.runner().run(ADMIN)  # 100.00 paid out
    await world.facts(a, customer, ("refund", "300", at("2026-10-05T10:00")))  # -75.00
    await _close(world, "2026-10", "2026-11-04T00:00")
    run = await world.runner().run(ADMIN)
    assert run.payouts == []
    assert run.run.summary["carried"] == [
        {"reseller_id": a, "currency": "EUR", "due_micros": -75_000_000, "reason": "not_positive"}
    ]
    await world.facts(a, customer, ("usage", "600", at("2026-11-05T10:00")))  # 150.00
    await _close(world, "2026-11", "2026-12-04T00:00")
    run = await world.runner().run(ADMIN)
    assert [(p.amount_micros, len(p.statement_ids)) for p in run.payouts] == [(75_000_000, 2)]


async def test_one_payout_run_at_a_time(world: World) -> None:
    rids = [await world.reseller(f"Reseller {n}") for n in range(3)]
    for rid in rids:
        await _usage(world, rid, "400", "2026-10-05T10:00")
    await _close(world, "2026-10", "2026-11-04T00:00")
    results = await asyncio.gather(
        *(world.runner().run(ADMIN) for _ in range(3)), return_exceptions=True
    )
    for result in results:
        assert not isinstance(result, BaseException) or isinstance(result, PayoutRunBusy)
    async with world.cp.sessions() as session:
        per_reseller = (
            await session.execute(
                select(Payout.reseller_id, func.count()).group_by(Payout.reseller_id)
            )
        ).all()
    assert sorted(per_reseller) == sorted((rid, 1) for rid in rids)


async def test_a_reseller_sees_only_its_own_payouts(world: World) -> None:
    a = await world.reseller("Nordwind")
    b = await world.reseller("Ostwind")
    await _usage(world, a, "400", "2026-10-05T10:00")
    await _close(world, "2026-10", "2026-11-04T00:00")
    payout = (await world.runner().run(ADMIN)).payouts[0]
    own = Principal("reseller", a, "reseller", "k1")
    foreign = Principal("reseller", b, "reseller", "k2")
    service = Principal("service", a, "reseller", "k3")
    assert (await get_payout(world.cp, own, payout.id)).amount_micros == 100_000_000
    for principal in (foreign, service):
        with pytest.raises(NotFound):
            await get_payout(world.cp, principal, payout.id)
        with pytest.raises(NotFound):
            await reseller_payouts(world.cp, principal, a, limit=10, cursor=None)
    with pytest.raises(Forbidden):
        await world.runner().run(own)
