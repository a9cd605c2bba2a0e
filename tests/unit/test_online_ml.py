"""The online models on the generated population: the figures the issue asks for, as
regression guards (small populations; `streambill ml-eval` runs the full ones)."""

from __future__ import annotations

from datetime import date, timedelta

from streambill.online_ml import evaluate
from streambill.online_ml.forecast import DailyUsage
from streambill.online_ml.generator import HOLIDAYS, Population

START = date(2026, 1, 5)


def test_the_generator_is_deterministic_and_injects_each_kind_of_fraud() -> None:
    first = Population.generate(40, seed=3, fraud_rate=0.2)
    again = Population.generate(40, seed=3, fraud_rate=0.2)
    days = list(first.days(START, 28))
    assert days == list(again.days(START, 28))
    kinds = {c.fraud for d in days for c in d.calls} | {t.fraud for d in days for t in d.topups}
    assert kinds == {None, "takeover", "night_calls", "card_testing"}
    night = [c for d in days for c in d.calls if c.fraud == "night_calls"]
    assert all(1 <= c.at.hour < 5 and c.minutes >= 90 for c in night)
    # Weekends and holidays are quieter than weekdays for the population as a whole.
    by_day = {d.day: sum(d.minutes_by_customer().values()) for d in days}
    weekdays = [v for k, v in by_day.items() if k.weekday() < 5 and k not in HOLIDAYS]
    weekends = [v for k, v in by_day.items() if k.weekday() >= 5]
    assert max(weekends) < min(weekdays)


def test_weekly_forecast_accuracy_after_a_four_week_warm_up() -> None:
    figures = evaluate.forecast_generated(customers=100, weeks=12, seed=7)
    assert figures["weekly_accuracy"] >= 0.85, figures
    assert figures["daily_accuracy"] < figures["weekly_accuracy"]  # days are noisier


def test_a_holiday_ahead_is_forecast_low_and_does_not_bend_the_week() -> None:
    model = DailyUsage()
    start = date(2026, 3, 2)  # Monday; Good Friday 2026-04-03 and Easter Monday follow
    for n in range(45):
        day = start + timedelta(days=n)
        usual = 10.0 if day.weekday() >= 5 else 100.0
        model.learn_day(day, usual * 0.15 if day in HOLIDAYS else usual)
    after = start + timedelta(days=45)  # Thursday 2026-04-16
    week = model.forecast(after, 7)
    assert [round(v) for v in week] == [100, 100, 10, 10, 100, 100, 100]
    easter_2027 = date(2027, 3, 26)
    assert easter_2027 in HOLIDAYS
    assert model.forecast(easter_2027, 1)[0] < 30  # a holiday ahead: its learned factor


def test_fraud_scores_separate_injected_fraud() -> None:
    figures = evaluate.fraud_generated(customers=60, weeks=4, seed=7)
    assert figures["fraud_events"] > 100, figures
    assert figures["roc_auc"] >= 0.90, figures
    assert figures["roc_auc_unsupervised"] >= 0.90, figures  # without any label, too


def test_roc_auc_is_exact_with_ties() -> None:
    assert evaluate.roc_auc([(0.5, True), (0.5, False)]) == 0.5
    assert evaluate.roc_auc([(0.9, True), (0.1, False)]) == 1.0
    assert evaluate.roc_auc([(0.1, True), (0.9, False)]) == 0.0
