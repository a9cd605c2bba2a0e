"""The demo's pure generation: determinism, schema validity, skew, business hours, top-ups."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from streambill import demo_logins
from streambill.control.schemas import CustomerCreate, ResellerCreate
from streambill.demo import setup_messages, tenant_requests
from streambill.domain.money import to_micros
from streambill.loadgen.population import build_population, reseller_count
from streambill.loadgen.traffic import (
    RATE_FACTOR_FLOOR,
    Pacer,
    SpendTracker,
    TrafficModel,
    activity_factor,
    call_minutes,
)
from streambill.streams.events import decode_payment, decode_usage
from streambill.streams.topics import PAYMENTS, USAGE

# Wednesday 2026-11-25 10:00 in Berlin; Saturday 2026-11-28 03:00 in Berlin.
WEEKDAY_NOON_BERLIN = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
SATURDAY_NIGHT_BERLIN = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


def _stream(seed: int, session: str, count: int, customers: int = 40) -> list[bytes]:
    model = TrafficModel(build_population(customers, seed), seed=seed, session=session)
    out = []
    for i in range(count):
        now = WEEKDAY_NOON_BERLIN + timedelta(seconds=i)
        out += [orjson.dumps(m.value) for m in model.next_messages(now)]
    return out


def test_population_is_deterministic_for_a_seed() -> None:
    assert build_population(30, seed=7) == build_population(30, seed=7)
    assert build_population(30, seed=7) != build_population(30, seed=8)


def test_usage_stream_is_deterministic_for_seed_and_session() -> None:
    assert _stream(7, "s1", 300) == _stream(7, "s1", 300)
    assert _stream(7, "s1", 300) != _stream(7, "s2", 300)


def test_event_ids_are_unique_and_carry_the_session() -> None:
    ids = [orjson.loads(raw)["event_id"] for raw in _stream(3, "abc", 2000)]
    assert len(ids) == len(set(ids))
    assert all(i.startswith("demo-abc-") for i in ids)


def test_tenant_requests_are_valid_api_bodies_resellers_first() -> None:
    population = build_population(50, seed=1)
    requests = tenant_requests(population)
    resellers = [ResellerCreate.model_validate(b) for p, b in requests if p == "/v2/resellers"]
    customers = [CustomerCreate.model_validate(b) for p, b in requests if p == "/v2/customers"]
    assert len(resellers) == reseller_count(50) and len(customers) == 50
    # A reseller is created before any customer that names it.
    assert [p for p, _ in requests[: len(resellers)]] == ["/v2/resellers"] * len(resellers)
    reseller_ids = {r.id for r in resellers}
    for customer in customers:
        assert customer.reseller_id is None or customer.reseller_id in reseller_ids
        assert {p.meter for p in customer.prices} == {"call_minutes", "sms", "ai_tokens_1k"}
    assert any(c.auto_topup is not None and c.auto_topup.enabled for c in customers)
    assert any(c.auto_topup is None for c in customers)


def test_setup_messages_are_initial_topups_that_decode() -> None:
    population = build_population(50, seed=1)
    messages = setup_messages(population, WEEKDAY_NOON_BERLIN)
    payments = [decode_payment(orjson.dumps(m.value)) for m in messages if m.topic == PAYMENTS]
    assert len(payments) == len(messages) == 50
    assert all(p.kind == "topup" and p.amount > 0 for p in payments)
    # Stable ids: a rerun sends the same initial top-up, which the worker drops as duplicate.
    assert all(p.event_id == f"{p.customer_id}-initial-topup" for p in payments)


def test_currencies_are_mixed_and_mostly_eur() -> None:
    counts = Counter(c.currency for c in build_population(1000, seed=5).customers)
    assert set(counts) == {"EUR", "USD", "GBP"}
    assert counts["EUR"] > counts["USD"] + counts["GBP"]


def test_usage_and_topups_decode_and_use_decimal_strings() -> None:
    raws = _stream(11, "x", 3000, customers=20)
    topics: Counter[str] = Counter()
    for raw in raws:
        value = orjson.loads(raw)
        if "meter" in value:
            event = decode_usage(raw)
            assert isinstance(value["quantity"], str)
            assert event.meter in {"call_minutes", "sms", "ai_tokens_1k"}
            assert event.quantity > 0
            topics[USAGE] += 1
        else:
            payment = decode_payment(raw)
            assert isinstance(value["amount"], str) and payment.kind == "topup"
            topics[PAYMENTS] += 1
    assert topics[USAGE] == 3000
    # 20 customers and 3000 events at demo prices run someone low: a manual top-up appears.
    assert topics[PAYMENTS] > 0


def test_call_lengths_are_lognormal_with_median_near_two_and_a_half_minutes() -> None:
    rng = random.Random(42)
    values = sorted(Decimal(call_minutes(rng)) for _ in range(20_000))
    assert Decimal("2.3") <= values[len(values) // 2] <= Decimal("2.7")
    assert all(v == v.quantize(Decimal("0.1")) and v >= Decimal("0.1") for v in values)
    assert values[-1] > 5 * values[len(values) // 2]  # a long right tail


def test_heavy_users_dominate() -> None:
    population = build_population(200, seed=9)
    model = TrafficModel(population, seed=9, session="s")
    counts = Counter(model.pick_customer(WEEKDAY_NOON_BERLIN).account_id for _ in range(20_000))
    top_tenth = sum(n for _, n in counts.most_common(20))
    assert top_tenth > 0.4 * 20_000  # uniform would give about 10 %


def test_business_hours_weigh_far_more_than_nights_and_weekends() -> None:
    tue = datetime(2026, 11, 24)
    assert activity_factor(tue.replace(hour=10)) == 1.0
    assert activity_factor(tue.replace(hour=3)) < 0.1
    assert activity_factor(tue.replace(hour=18)) < 1.0
    assert activity_factor(datetime(2026, 11, 29, 11)) < 0.2  # Sunday


def test_rate_factor_follows_local_time_but_never_goes_silent() -> None:
    population = build_population(200, seed=2)
    model = TrafficModel(population, seed=2, session="s")
    day = model.rate_factor(WEEKDAY_NOON_BERLIN)
    night = model.rate_factor(SATURDAY_NIGHT_BERLIN)
    assert day > 0.5
    assert night == pytest.approx(RATE_FACTOR_FLOOR)
    assert day > 3 * night


def test_customers_in_business_hours_are_picked_more() -> None:
    population = build_population(300, seed=4)
    model = TrafficModel(population, seed=4, session="s")
    # 09:00 UTC on a Wednesday: Europe is at work, the Americas are asleep.
    zones = Counter(
        model.pick_customer(WEEKDAY_NOON_BERLIN).time_zone.split("/")[0] for _ in range(5000)
    )
    share_usd = sum(1 for c in population.customers if c.currency == "USD") / 300
    assert zones["America"] / 5000 < share_usd / 3


def test_spend_tracker_posts_manual_topup_only_without_auto_topup() -> None:
    population = build_population(100, seed=6)
    manual = next(c for c in population.customers if not c.auto_topup)
    auto = next(c for c in population.customers if c.auto_topup)
    tracker = SpendTracker([manual, auto])
    topups = [tracker.charge(manual, "call_minutes", "60.0") for _ in range(200)]
    assert any(t == manual.topup_amount for t in topups)
    assert all(tracker.charge(auto, "call_minutes", "60.0") is None for _ in range(200))
    assert tracker.balance_micros(auto.account_id) >= 0
    floor = to_micros("2.00") - to_micros(manual.prices["call_minutes"] * 60)
    assert tracker.balance_micros(manual.account_id) >= floor


def test_pacer_delivers_the_rate_over_time() -> None:
    pacer = Pacer(start_s=0.0)
    total = sum(pacer.due(step * 0.013, rate=250.0) for step in range(1, 1001))
    assert total == int(13.0 * 250)


def test_pacer_bounds_a_burst_after_a_stall() -> None:
    pacer = Pacer(start_s=0.0, burst_max=100)
    assert pacer.due(3600.0, rate=1000.0) == 100
    assert pacer.due(3600.001, rate=1000.0) <= 101


def test_showcase_customers_get_a_call_at_every_interval_even_off_hours() -> None:
    population = build_population(50, 7)
    showcase = demo_logins.showcase_customers(population)
    assert len(showcase) == len(population.resellers) + 1
    # Friday 20:17 in Berlin (its customers' evening), 14:17 in New York (theirs busy): the
    # demo's floor rate of 3 calls/s goes mostly to New York
    evening = datetime(2026, 11, 27, 19, 17, tzinfo=UTC)
    ticks = [evening + timedelta(seconds=n / 3) for n in range(180)]  # 60 s at 3 calls/s

    def calls(model: TrafficModel) -> dict[str, list[float]]:
        seen: dict[str, list[float]] = {cid: [] for cid in showcase}
        for now in ticks:
            for message in model.next_messages(now):
                if message.topic == USAGE and message.key in seen:
                    seen[message.key].append((now - evening).total_seconds())
        return seen

    def longest_gap(times: list[float]) -> float:
        return max(b - a for a, b in itertools.pairwise([0.0, *times, 60.0]))

    model = TrafficModel(population, seed=3, session="s", showcase=showcase, showcase_interval_s=8)
    gaps = {cid: longest_gap(times) for cid, times in calls(model).items()}
    assert max(gaps.values()) <= 8.4, gaps
    # without the showcase, some of them wait far longer (tens of seconds at this hour)
    plain = TrafficModel(population, seed=3, session="s")
    assert max(longest_gap(times) for times in calls(plain).values()) > 20
