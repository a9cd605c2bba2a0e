"""Prequential (test-then-train) evaluation of the online models: ``streambill ml-eval``.

Every figure comes from models that see each event once, in time order, and are scored on it
before they learn it; nothing is fitted on data it is later judged on.

- ``forecast`` on the generated population: after a warm-up, at the start of every week each
  customer's next 7 days are forecast, then the week is learned day by day. Accuracy is
  ``1 - WAPE``, of the weekly totals (the issue's figure) and of the days.
- ``fraud`` on the generated population: every call and top-up is scored, then learned;
  labels (fraud or not) are learned right after the score for a share of events, like
  chargebacks and manual flags arriving. ROC AUC of the score against the injected fraud.
- River's bundled real datasets: ``Shuttle`` (anomaly detection, HalfSpaceTrees, ROC AUC)
  and ``AirlinePassengers`` (monthly, yearly season; River's Holt-Winters, 12-month-ahead
  accuracy ``1 - WAPE``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from datetime import date, timedelta
from typing import Any

from river import anomaly, compose, datasets, preprocessing, time_series

from streambill.online_ml.forecast import DailyUsage
from streambill.online_ml.fraud import FraudScorer
from streambill.online_ml.generator import Population

START = date(2026, 1, 5)  # a Monday


def roc_auc(scores: Iterable[tuple[float, bool]]) -> float:
    """The exact ROC AUC (Mann-Whitney; ties count half).

    >>> roc_auc([(0.9, True), (0.8, False), (0.7, True), (0.1, False)])
    0.75
    """
    ranked = sorted(scores, key=lambda s: s[0])
    positives = sum(1 for _, y in ranked if y)
    negatives = len(ranked) - positives
    if not positives or not negatives:
        raise ValueError("ROC AUC needs both classes")
    rank_sum, n = 0.0, 0
    while n < len(ranked):
        m = n
        while m < len(ranked) and ranked[m][0] == ranked[n][0]:
            m += 1
        average_rank = (n + 1 + m) / 2  # ranks n+1..m share their mean
        rank_sum += average_rank * sum(1 for _, y in ranked[n:m] if y)
        n = m
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def forecast_generated(
    customers: int = 200, weeks: int = 20, seed: int = 7, warmup_weeks: int = 4
) -> dict[str, Any]:
    population = Population.generate(customers, seed)
    daily = [d.minutes_by_customer() for d in population.days(START, weeks * 7)]
    models = {p.customer_id: DailyUsage() for p in population.profiles}
    weekly_error = daily_error = actual_total = 0.0
    for n, minutes in enumerate(daily):
        day = START + timedelta(days=n)
        if n >= warmup_weeks * 7 and n % 7 == 0 and n + 7 <= len(daily):
            for cid, model in models.items():
                predicted = model.forecast(day, 7)
                actual = [daily[n + k].get(cid, 0.0) for k in range(7)]
                weekly_error += abs(sum(predicted) - sum(actual))
                daily_error += sum(abs(p - a) for p, a in zip(predicted, actual, strict=True))
                actual_total += sum(actual)
        for cid, model in models.items():
            model.learn_day(day, minutes.get(cid, 0.0))
    return {
        "model": "forecast.DailyUsage",
        "dataset": "generated",
        "customers": customers,
        "weeks": weeks,
        "warmup_weeks": warmup_weeks,
        "weekly_accuracy": round(1 - weekly_error / actual_total, 4),
        "daily_accuracy": round(1 - daily_error / actual_total, 4),
    }


def _events(population: Population, days: int) -> Iterator[tuple[str, Any]]:
    for day in population.days(START, days):
        merged = [("call", c.at, c) for c in day.calls] + [("topup", t.at, t) for t in day.topups]
        merged.sort(key=lambda e: (e[1], e[0]))
        for kind, _, event in merged:
            yield kind, event


def fraud_generated(
    customers: int = 200, weeks: int = 8, seed: int = 7, label_share: float = 0.3
) -> dict[str, Any]:
    population = Population.generate(customers, seed, fraud_rate=0.05)
    scorer = FraudScorer(seed=seed)
    labels = random.Random(f"labels-{seed}")
    combined: list[tuple[float, bool]] = []
    unsupervised: list[tuple[float, bool]] = []
    for kind, event in _events(population, weeks * 7):
        if kind == "call":
            x = scorer.features.call(event.customer_id, event.at, event.minutes, event.country)
        else:
            x = scorer.features.topup(
                event.customer_id, event.at, event.amount_micros, event.succeeded
            )
        fraud = event.fraud is not None
        score, alone, _ = scorer.score_learn_one(x)  # what the fraud agent does per event
        combined.append((score, fraud))
        unsupervised.append((alone, fraud))
        if labels.random() < label_share:
            scorer.learn_label(x, fraud)
    return {
        "model": "fraud.FraudScorer",
        "dataset": "generated",
        "events": len(combined),
        "fraud_events": sum(1 for _, y in combined if y),
        "label_share": label_share,
        "roc_auc": round(roc_auc(combined), 4),
        "roc_auc_unsupervised": round(roc_auc(unsupervised), 4),
    }


def shuttle(seed: int = 42) -> dict[str, Any]:
    model = compose.Pipeline(
        preprocessing.MinMaxScaler(),
        anomaly.HalfSpaceTrees(n_trees=25, height=8, window_size=250, seed=seed),
    )
    scores = []
    for x, y in datasets.Shuttle():
        scores.append((float(model.score_one(x)), bool(y)))
        model.learn_one(x)
    return {
        "model": "anomaly.HalfSpaceTrees",
        "dataset": "river.datasets.Shuttle",
        "events": len(scores),
        "roc_auc": round(roc_auc(scores), 4),
    }


def airline_passengers(horizon: int = 12) -> dict[str, Any]:
    series = [float(y) for _, y in datasets.AirlinePassengers()]
    model = time_series.HoltWinters(
        alpha=0.3, beta=0.1, gamma=0.6, seasonality=12, multiplicative=True
    )
    error = total = 0.0
    for n, y in enumerate(series):
        if n >= 24 and n + horizon <= len(series):
            predicted = model.forecast(horizon=horizon)
            actual = series[n : n + horizon]
            error += sum(abs(p - a) for p, a in zip(predicted, actual, strict=True))
            total += sum(actual)
        model.learn_one(y)
    return {
        "model": "time_series.HoltWinters(multiplicative, 12)",
        "dataset": "river.datasets.AirlinePassengers",
        "horizon_months": horizon,
        "accuracy": round(1 - error / total, 4),
    }
