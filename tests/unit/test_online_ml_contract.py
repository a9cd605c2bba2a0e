"""The contract every online model keeps (``online_ml.protocol.MODELS``).

- it answers before it has learned anything (no exception, a finite number);
- its answers are finite numbers while it learns a realistic stream;
- restored from a snapshot taken mid-stream, it answers exactly what the uninterrupted model
  answers, from that point on: a worker that crashes resumes, it does not relearn.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Any

import pytest

from streambill.online_ml.fraud import FeatureBook
from streambill.online_ml.generator import Population
from streambill.online_ml.protocol import MODELS, OnlineModel, restore, snapshot

START = date(2026, 1, 5)


def stream(name: str) -> list[tuple[dict[str, Any], Any]]:
    """(x, y) examples for a model, from the generated population; y None means unlabelled."""
    population = Population.generate(20, seed=11, fraud_rate=0.2)
    if name == "forecast":
        days = population.days(START, 56)
        return [({"day": d.day}, d.minutes_by_customer().get("gen_003", 0.0)) for d in days]
    features = FeatureBook()
    out: list[tuple[dict[str, Any], Any]] = []
    for n, day in enumerate(population.days(START, 10)):
        for call in day.calls:
            x = dict(features.call(call.customer_id, call.at, call.minutes, call.country))
            out.append((x, None))
            if n % 3 == 0:
                out.append((x, call.fraud is not None))
    return out


def replay(model: OnlineModel, examples: list[tuple[dict[str, Any], Any]]) -> list[float]:
    answers = []
    for x, y in examples:
        answers.append(model.predict_one(x))
        model.learn_one(x, y)
    return answers


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_model_answers_before_it_learned_anything(name: str) -> None:
    model = MODELS[name]()
    assert isinstance(model, OnlineModel)
    x, _ = stream(name)[0]
    assert math.isfinite(model.predict_one(x))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_model_restored_mid_stream_answers_like_the_uninterrupted_one(name: str) -> None:
    examples = stream(name)
    assert len(examples) > 50
    cut = len(examples) // 2
    whole = replay(MODELS[name](), examples)
    assert all(math.isfinite(a) for a in whole)
    first = MODELS[name]()
    replay(first, examples[:cut])
    resumed = restore(snapshot(first))
    assert replay(resumed, examples[cut:]) == whole[cut:]
    # A fresh model would not have answered the same: the state matters.
    assert replay(MODELS[name](), examples[cut:]) != whole[cut:]


def test_forecast_days_keep_their_order_after_a_restore() -> None:
    model = MODELS["forecast"]()
    for n in range(20):
        model.learn_one({"day": START + timedelta(days=n)}, 10.0)
    resumed = restore(snapshot(model))
    resumed.learn_one({"day": START + timedelta(days=5)}, 999.0)  # already learned: ignored
    assert resumed.predict_one({"day": START + timedelta(days=20)}) == pytest.approx(10.0)
