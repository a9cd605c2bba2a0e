"""Commission accrual against an independent batch computation, over generated months.

Hypothesis builds customers' ledger histories (usage with fractional charges and quantities,
refunds, chargebacks, top-ups) spread over six months with instants close to month ends, in a
random time zone; the stream interleaves customers at random (each customer's own entries stay
in ledger order, as Kafka keeps them per key) and repeats entries. The streaming book must end
with exactly the batch totals per month, to the micro, and after every fact its commission must
equal the rules applied to what arrived so far.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from streambill.domain.commissions import Fact, Plan, ResellerBook

# The table, written out again on purpose (not imported): 25 / 27.5 / 30 / 32.5 %.
TIERS = [(0, "0.25"), (1_000, "0.275"), (5_000, "0.30"), (10_000, "0.325")]
ZONES = ["Europe/Berlin", "America/New_York", "UTC", "Asia/Tokyo"]
START = datetime(2026, 9, 1, tzinfo=UTC)


def expected_commission(base_micros: int) -> int:
    rate = Decimal(TIERS[0][1])
    for floor, r in TIERS:
        if Decimal(base_micros) >= Decimal(floor) * 1_000_000:
            rate = Decimal(r)
    exact = Decimal(base_micros) * rate
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def month(at: datetime, zone: str) -> str:
    return at.astimezone(ZoneInfo(zone)).strftime("%Y-%m")


def shift(month_text: str, n: int) -> str:
    year, mon = divmod(int(month_text[:4]) * 12 + int(month_text[5:]) - 1 + n, 12)
    return f"{year:04d}-{mon + 1:02d}"


def batch(facts: list[Fact], zone: str) -> dict[str, tuple[int, int]]:
    """month -> (commission, bonuses), from the unique facts in ledger order."""
    base: dict[str, int] = defaultdict(int)
    bonus: dict[str, int] = defaultdict(int)
    first_topup: dict[str, str] = {}
    usage_months: dict[str, set[str]] = defaultdict(set)
    units: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for f in facts:
        m = month(f.occurred_at, zone)
        if f.kind == "usage":
            base[m] += f.amount_micros
            usage_months[f.customer_id].add(m)
            if f.meter == "call_minutes":
                units[(f.customer_id, m)] += f.quantity
        elif f.kind in ("refund", "chargeback"):
            base[m] -= f.amount_micros
        elif f.kind == "topup" and f.customer_id not in first_topup:
            first_topup[f.customer_id] = m
            bonus[m] += 5_000_000
    for customer, first in first_topup.items():
        wanted = {shift(first, n) for n in (1, 2, 3)}
        if wanted <= usage_months[customer]:
            bonus[shift(first, 3)] += 10_000_000
    for (_, m), total in units.items():
        if total >= 500:
            bonus[m] += 2_000_000
    months = set(base) | set(bonus)
    return {m: (expected_commission(base[m]), bonus[m]) for m in months}


@st.composite
def histories(draw: st.DrawFn) -> tuple[str, list[list[Fact]]]:
    zone = draw(st.sampled_from(ZONES))
    customers = draw(st.integers(1, 5))
    out = []
    n = 0
    for c in range(customers):
        facts = []
        for _ in range(draw(st.integers(0, 25))):
            n += 1
            kind = draw(st.sampled_from(["usage"] * 6 + ["refund", "chargeback", "topup", "topup"]))
            # Mostly near a month's end or start, where time zones disagree about the month.
            day = draw(st.integers(0, 180))
            minute = draw(st.sampled_from([0, 30, 60 * 23 + 30, 60 * 23 + 59, 600]))
            at = START + timedelta(days=day, minutes=minute)
            amount = draw(st.integers(0, 3_000 * 1_000_000))
            quantity = Decimal(draw(st.integers(0, 400_000))) / 1000
            meter = draw(st.sampled_from(["call_minutes", "sms"]))
            if kind != "usage":
                amount = draw(st.integers(1, 800 * 1_000_000))
            facts.append(Fact(f"e{n}", f"cus_{c}", kind, amount, at, meter, quantity))
        out.append(facts)
    return zone, out


def interleave(
    per_customer: list[list[Fact]], choices: list[int], repeats: list[int]
) -> list[Fact]:
    queues = [list(q) for q in per_customer if q]
    stream: list[Fact] = []
    i = 0
    while queues:
        q = queues[choices[i % len(choices)] % len(queues)] if choices else queues[0]
        i += 1
        stream.append(q.pop(0))
        if repeats and stream and repeats[i % len(repeats)] == 0:
            stream.append(stream[(i * 7) % len(stream)])  # an entry delivered again
        queues = [q for q in queues if q]
    return stream


@settings(max_examples=300, deadline=None)
@given(
    histories(),
    st.lists(st.integers(0, 10), min_size=1, max_size=50),
    st.lists(st.integers(0, 4), max_size=50),
)
def test_streaming_equals_batch_to_the_micro(
    history: tuple[str, list[list[Fact]]], choices: list[int], repeats: list[int]
) -> None:
    zone, per_customer = history
    book = ResellerBook("res_1", Plan(currency="EUR", timezone=zone))
    stream = interleave(per_customer, choices, repeats)
    entries = []
    for fact in stream:
        entries += book.apply(fact)
        state = book.month(month(fact.occurred_at, zone))
        assert state.commission_micros == expected_commission(state.base_micros)
    unique: dict[str, Fact] = {}
    for fact in stream:
        unique.setdefault(fact.entry_id, fact)
    expected = batch(list(unique.values()), zone)
    summed: dict[str, int] = defaultdict(int)
    for e in entries:
        summed[e.month] += e.amount_micros
    for m, (commission, bonus) in expected.items():
        state = book.month(m)
        assert (state.commission_micros, state.bonus_micros) == (commission, bonus), m
        assert summed[m] == commission + bonus, m
    assert set(summed) <= set(expected) | {m for m, v in summed.items() if v == 0}
    assert len({e.entry_id for e in entries}) == len(entries)


def test_a_tier_crossing_is_trued_up_and_a_refund_can_take_it_back() -> None:
    book = ResellerBook("res_1", Plan(currency="EUR", timezone="UTC"))
    at = datetime(2026, 11, 5, tzinfo=UTC)
    book.apply(Fact("u1", "c", "usage", 4_000_000_000, at))
    up = book.apply(Fact("u2", "c", "usage", 1_000_000_000, at))  # base 5,000: 30%
    assert [(e.kind, e.amount_micros, str(e.rate)) for e in up] == [
        ("true_up", 100_000_000, "0.30"),
        ("accrual", 300_000_000, "0.30"),
    ]
    down = book.apply(Fact("r1", "c", "refund", 1, at))  # 4,999.999999: back to 27.5%
    assert [e.kind for e in down] == ["true_up", "accrual"]
    assert book.month("2026-11").commission_micros == expected_commission(4_999_999_999)


def test_bonuses_at_their_edges() -> None:
    book = ResellerBook("res_1", Plan(currency="EUR", timezone="Europe/Berlin"))

    def at(y: int, m: int, d: int) -> datetime:
        return datetime(y, m, d, 12, tzinfo=UTC)

    def kinds(fact: Fact) -> list[str]:
        return [e.kind for e in book.apply(fact) if e.kind.startswith("bonus")]

    # Exactly 500 units of the main meter is high usage; 499.999 is not; other meters never.
    assert (
        kinds(Fact("q1", "a", "usage", 1, at(2026, 11, 2), "call_minutes", Decimal("499.999")))
        == []
    )
    assert kinds(Fact("q2", "a", "usage", 1, at(2026, 11, 3), "sms", Decimal(5))) == []
    assert kinds(
        Fact("q3", "a", "usage", 1, at(2026, 11, 4), "call_minutes", Decimal("0.001"))
    ) == ["bonus_high_usage"]
    assert kinds(Fact("q4", "a", "usage", 1, at(2026, 11, 5), "call_minutes", Decimal(600))) == []
    # First top-up: 5.00 once; the second top-up earns nothing.
    assert kinds(Fact("t1", "b", "topup", 20_000_000, at(2026, 11, 6))) == ["bonus_new_customer"]
    assert kinds(Fact("t2", "b", "topup", 20_000_000, at(2026, 11, 7))) == []
    # Usage in each of the three months after November: 10.00, booked in February.
    assert kinds(Fact("u1", "b", "usage", 1, at(2026, 12, 1))) == []
    assert kinds(Fact("u2", "b", "usage", 1, at(2027, 2, 1))) == []
    loyalty = book.apply(Fact("u3", "b", "usage", 1, at(2027, 1, 15)))
    assert [(e.kind, e.month, e.amount_micros) for e in loyalty if e.kind == "bonus_loyalty"] == [
        ("bonus_loyalty", "2027-02", 10_000_000)
    ]
    assert kinds(Fact("u4", "b", "usage", 1, at(2027, 3, 1))) == []
    # A month is the reseller's: 23:30 UTC on 31 December is January in Berlin.
    assert Plan(currency="EUR").month_of(datetime(2026, 12, 31, 23, 30, tzinfo=UTC)) == "2027-01"
