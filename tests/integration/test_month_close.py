"""Month close on SQLite and PostgreSQL with chDB: one statement per reseller and month,
however often and however concurrently it is closed; the grace; late entries carried by
the next statement; the auto-closer; scope."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from apiworld import BACKENDS
from commissionworld import ADMIN, GRACE, World, at, commission_world
from streambill.commissions.close import MonthCloser
from streambill.commissions.errors import MonthNotClosable
from streambill.commissions.statements import get_statement, list_statements
from streambill.control import db
from streambill.control.access import Authenticator
from streambill.control.models import AuditRecord, Statement
from streambill.control.plane import ControlPlane
from streambill.control.principal import Principal
from streambill.errors import Forbidden, InvalidEvent, NotFound

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    async with commission_world(request.param, tmp_path, at("2026-09-15T10:00")) as w:
        yield w


async def _october(w: World) -> tuple[str, str, str]:
    """A Berlin reseller with two customers and October usage that crosses into tier 1."""
    rid = await w.reseller("Nordwind Telecom")
    c1 = await w.customer(rid, "Praxis Dr. Weber")
    c2 = await w.customer(rid, "Kanzlei Roth")
    await w.facts(rid, c1, ("topup", "20", at("2026-10-02T08:00")))
    await w.facts(rid, c1, ("usage", "900", at("2026-10-03T10:00")))
    await w.facts(rid, c2, ("usage", "200", at("2026-10-20T10:00")))
    return rid, c1, c2


async def _count(w: World) -> int:
    async with w.cp.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Statement)) or 0)


async def test_a_month_closes_once_with_the_books_figures(world: World) -> None:
    rid, c1, c2 = await _october(world)
    world.clock.now = at("2026-11-04T00:00")
    first = (await world.closer.close_month(ADMIN, "2026-10")).statements
    again = (await world.closer.close_month(ADMIN, "2026-10", rid)).statements
    assert len(first) == 1 and len(again) == 1 and await _count(world) == 1
    statement = first[0]
    book = world.books[rid].month("2026-10")
    assert statement.id == f"st_{rid}_2026-10"
    assert (statement.base_micros, statement.tier, statement.rate) == (1_100_000_000, 1, "0.275")
    assert statement.commission_micros == book.commission_micros == 302_500_000
    assert statement.bonus_micros == 5_000_000 and statement.total_micros == 307_500_000
    assert statement.late_micros == 0 and statement.late_lines == []
    by_customer = {line["customer_id"]: line for line in statement.lines}
    assert by_customer[c1]["name"] == "Praxis Dr. Weber"
    # each customer's share is the month's rate on its base (27.5% of 900 and of 200)
    assert (by_customer[c1]["commission_micros"], by_customer[c1]["bonus_micros"]) == (
        247_500_000,
        5_000_000,
    )
    assert (by_customer[c2]["commission_micros"], by_customer[c2]["base_micros"]) == (
        55_000_000,
        200_000_000,
    )
    assert sum(line["total_micros"] for line in statement.lines) == statement.total_micros
    # the second close answered the stored statement unchanged
    assert again[0].closed_at == statement.closed_at and again[0].total_micros == 307_500_000
    async with world.cp.sessions() as session:
        audits = (
            await session.scalars(select(AuditRecord).where(AuditRecord.target == statement.id))
        ).all()
    assert [a.action for a in audits] == ["statement.close"]


async def test_an_accrual_slice_is_split_by_its_customers_parts(world: World) -> None:
    rid = await world.reseller("Nordwind Telecom")
    c1 = await world.customer(rid, "Praxis Dr. Weber")
    c2 = await world.customer(rid, "Kanzlei Roth")
    c3 = await world.customer(rid, "Hotel Adler")
    await world.facts(rid, c1, ("topup", "20", at("2026-10-02T08:00")))
    book = world.books[rid]
    # the agent summed three customers' usage into one accrual entry (customer_id empty)
    parts = {c1: 900_000_000, c2: 200_000_000, c3: 333_333}
    slice_entries = book.accrue("slice-1", "2026-10", sum(parts.values()), at("2026-10-05"))
    await world.insert_slice(slice_entries, parts)
    world.clock.now = at("2026-11-04T00:00")
    statement = (await world.closer.close_month(ADMIN, "2026-10")).statements[0]
    assert statement.commission_micros == book.month("2026-10").commission_micros == 302_591_667
    lines = {line["customer_id"]: line for line in statement.lines}
    assert sorted(lines) == sorted(parts)  # no line for the slice's empty customer id
    assert {c: lines[c]["base_micros"] for c in parts} == parts
    # 27.5% each: 247.5, 55.0 and 0.09166657..., the remainder micro to the largest fraction
    assert [lines[c]["commission_micros"] for c in (c1, c2, c3)] == [
        247_500_000,
        55_000_000,
        91_667,
    ]
    assert lines[c1]["bonus_micros"] == 5_000_000
    assert sum(line["total_micros"] for line in statement.lines) == statement.total_micros


async def test_a_replayed_entry_counts_once(world: World) -> None:
    await _october(world)
    # the agent re-emits entries after a restart: the same ids, the same rows, again
    await world.insert(list(world.inserted))
    world.clock.now = at("2026-11-04T00:00")
    statement = (await world.closer.close_month(ADMIN, "2026-10")).statements[0]
    assert (statement.total_micros, statement.entry_count) == (307_500_000, 4)


async def test_two_concurrent_closes_store_one_statement(world: World) -> None:
    rid, _, _ = await _october(world)
    world.clock.now = at("2026-11-04T00:00")
    other_engine = db.open_engine(world.url)
    try:
        sessions = db.session_factory(other_engine)
        replica = ControlPlane(
            sessions=sessions, auth=Authenticator(sessions, None), clock=world.clock
        )
        closers = [world.closer, MonthCloser(replica, world.clickhouse, GRACE)]
        results = await asyncio.gather(
            *(closer.close_month(ADMIN, "2026-10", rid) for closer in closers * 2)
        )
    finally:
        await other_engine.dispose()
    totals = {(r.statements[0].id, r.statements[0].total_micros) for r in results}
    assert totals == {(f"st_{rid}_2026-10", 307_500_000)}
    assert len({r.statements[0].closed_at for r in results}) == 1
    assert await _count(world) == 1


async def test_a_month_closes_only_after_its_end_plus_the_grace(world: World) -> None:
    berlin = await world.reseller("Berlin GmbH")
    york = await world.reseller("York Inc", currency="USD", timezone="America/New_York")
    # Berlin's October ends at 2026-10-31T23:00Z (CET), New York's at 2026-11-01T04:00Z
    world.clock.now = at("2026-11-03T22:59:59")
    with pytest.raises(MonthNotClosable) as refused:
        await world.closer.close_month(ADMIN, "2026-10", berlin)
    assert refused.value.code == "month_not_closable"
    assert "2026-11-03T23:00:00+00:00" in refused.value.message
    with pytest.raises(MonthNotClosable):
        await world.closer.close_month(ADMIN, "2026-10")
    world.clock.now = at("2026-11-03T23:00")
    result = await world.closer.close_month(ADMIN, "2026-10")
    assert [s.reseller_id for s in result.statements] == [berlin]
    assert [(p.reseller_id, p.closable_at) for p in result.pending] == [
        (york, at("2026-11-04T04:00"))
    ]
    with pytest.raises(MonthNotClosable):
        await world.closer.close_month(ADMIN, "2026-10", york)
    with pytest.raises(MonthNotClosable):
        await world.closer.close_month(ADMIN, "2026-11")
    with pytest.raises(InvalidEvent):
        await world.closer.close_month(ADMIN, "2026-13")
    with pytest.raises(Forbidden):
        await world.closer.close_month(Principal("reseller", berlin, "reseller", "k"), "2026-10")
    with pytest.raises(NotFound):
        await world.closer.close_month(ADMIN, "2026-10", "res_ghost")


async def test_late_entries_are_carried_by_the_next_statement(world: World) -> None:
    rid, c1, c2 = await _october(world)
    world.clock.now = at("2026-11-04T00:00")
    october = (await world.closer.close_month(ADMIN, "2026-10")).statements[0]
    # after October's close: a late October entry (27.50 at 27.5%) and November usage
    await world.facts(rid, c1, ("usage", "100", at("2026-10-30T12:00")))
    await world.facts(rid, c2, ("usage", "400", at("2026-11-10T12:00")))
    world.clock.now = at("2026-12-04T00:00")
    november = (await world.closer.close_month(ADMIN, "2026-11")).statements[0]
    assert november.month_total_micros == 100_000_000
    assert november.late_lines == [{"month": "2026-10", "amount_micros": 27_500_000}]
    assert (november.late_micros, november.total_micros) == (27_500_000, 127_500_000)
    # October's statement never changes
    again = (await world.closer.close_month(ADMIN, "2026-10", rid)).statements[0]
    assert again.total_micros == october.total_micros == 307_500_000
    # more late entries for both closed months: December carries each once
    await world.facts(rid, c1, ("usage", "50", at("2026-10-31T22:30")))  # Berlin: October
    await world.facts(rid, c2, ("refund", "20", at("2026-11-30T12:00")))
    world.clock.now = at("2027-01-04T00:00")
    december = (await world.closer.close_month(ADMIN, "2026-12")).statements[0]
    assert december.late_lines == [
        {"month": "2026-10", "amount_micros": 13_750_000},
        {"month": "2026-11", "amount_micros": -5_000_000},
    ]
    assert december.total_micros == 8_750_000
    # every micro of October and November is paid exactly once over the three statements
    paid = october.total_micros + november.total_micros + december.total_micros
    books = world.books[rid]
    assert paid == sum(books.month(m).total_micros for m in ("2026-10", "2026-11", "2026-12"))


async def test_the_auto_closer_closes_every_due_month_once(world: World) -> None:
    rid = await world.reseller("Nordwind Telecom")  # created 2026-09-15
    customer = await world.customer(rid, "Praxis Dr. Weber")
    # entries from before the reseller existed still get their month closed
    await world.facts(rid, customer, ("usage", "10", at("2026-08-10T10:00")))
    await world.facts(rid, customer, ("usage", "40", at("2026-11-10T10:00")))
    world.clock.now = at("2026-12-03T22:00")  # November not closable yet in Berlin
    made = await world.closer.close_due()
    assert sorted(s.month for s in made) == ["2026-08", "2026-09", "2026-10"]
    assert await world.closer.close_due() == []
    world.clock.now = at("2026-12-03T23:00")
    made = await world.closer.close_due()
    assert [(s.month, s.total_micros) for s in made] == [("2026-11", 10_000_000)]
    assert await _count(world) == 4


async def test_a_reseller_sees_only_its_own_statements(world: World) -> None:
    rid, c1, _ = await _october(world)
    other = await world.reseller("Other Reseller")
    world.clock.now = at("2026-11-04T00:00")
    await world.closer.close_month(ADMIN, "2026-10")
    own = Principal("reseller", rid, "reseller", "k1")
    foreign = Principal("reseller", other, "reseller", "k2")
    customer = Principal("customer", c1, "customer", "k3")
    service = Principal("service", rid, "reseller", "k4")
    page = await list_statements(world.cp, own, rid, limit=10, cursor=None)
    assert [s.month for s in page.items] == ["2026-10"]
    assert page.items[0].payout_status == "unpaid"
    statement = await get_statement(world.cp, own, rid, "2026-10")
    assert statement.total_micros == 307_500_000
    for principal in (foreign, customer, service):
        with pytest.raises(NotFound):
            await list_statements(world.cp, principal, rid, limit=10, cursor=None)
        with pytest.raises(NotFound):
            await get_statement(world.cp, principal, rid, "2026-10")
    with pytest.raises(NotFound):
        await get_statement(world.cp, own, rid, "2026-11")  # not closed
