"""The one shape every online model has, and how its state is saved and restored.

River's convention: ``learn_one(x, y)`` learns one example, ``predict_one(x)`` answers for
one (a fraud score in [0, 1], a forecast in units). A model must survive a worker crash
without relearning from scratch, so its whole state is one picklable object:
:func:`snapshot` / :func:`restore` are what the agents checkpoint, and the contract test
(``tests/unit/test_online_ml_contract.py``) holds every model in :data:`MODELS` to it: a model
restored mid-stream answers exactly what the uninterrupted one answers.

>>> from datetime import date
>>> model = MODELS["forecast"]()
>>> for n in range(21):
...     model.learn_one({"day": date(2026, 6, 1 + n)}, 50.0)
>>> round(restore(snapshot(model)).predict_one({"day": date(2026, 6, 22)}))
50
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any, Final, Protocol, runtime_checkable

from streambill.online_ml.forecast import DailyUsage
from streambill.online_ml.fraud import FraudScorer

Example = Mapping[str, Any]


@runtime_checkable
class OnlineModel(Protocol):
    def learn_one(self, x: Example, y: Any = None) -> None: ...

    def predict_one(self, x: Example) -> float: ...


class FraudModel:
    """:class:`FraudScorer` in the common shape: ``learn_one(x)`` learns what is normal,
    ``learn_one(x, True | False)`` a label; ``predict_one(x)`` the score."""

    def __init__(self, seed: int = 42, window: int = 500) -> None:
        self.scorer = FraudScorer(seed=seed, window=window)

    def learn_one(self, x: Example, y: Any = None) -> None:
        if y is None:
            self.scorer.learn_one(x)
        else:
            self.scorer.learn_label(x, bool(y))

    def predict_one(self, x: Example) -> float:
        return self.scorer.score_one(x)


class ForecastModel:
    """:class:`DailyUsage` in the common shape: ``x = {"day": date}``, ``y`` the day's
    units; ``predict_one({"day": d})`` the forecast for ``d``."""

    def __init__(self) -> None:
        self.usage = DailyUsage()

    def learn_one(self, x: Example, y: Any = None) -> None:
        day: date = x["day"]
        self.usage.learn_day(day, float(y or 0.0))

    def predict_one(self, x: Example) -> float:
        return self.usage.forecast(x["day"], 1)[0]


MODELS: Final[dict[str, Callable[[], OnlineModel]]] = {
    "fraud": FraudModel,
    "forecast": ForecastModel,
}


def snapshot(model: OnlineModel) -> bytes:
    """The model's whole state as bytes (what a checkpoint stores)."""
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


def restore(data: bytes) -> Any:
    """A model from :func:`snapshot` bytes. Only for bytes this process's own checkpoints
    wrote (pickle runs code while it loads)."""
    return pickle.loads(data)
