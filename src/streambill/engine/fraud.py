"""The fraud agent's state and what it does with each record (pure: no I/O).

:class:`FraudBook` holds the :class:`~streambill.online_ml.fraud.FraudScorer` (per-customer
features, the unsupervised detector, the supervised classifier), each customer's most recent
feature vectors (what a label teaches the classifier) and when it was last alerted. Records
go in one at a time, in the order the agent reads them; what comes out is plain values: the
``billing.fraud.v1`` score of every usage and payment event, and ``fraud_suspected`` alerts.
The whole book is one picklable object, the agent's checkpoint.

What each input does:

- a usage event: call features (calls and minutes per window, hour and weekday, call length
  against the customer's own history, a new destination), scored, then learned;
- a payment event: ``topup`` with top-up features (amount against the customer's own, top-ups
  per hour), ``chargeback``: scored, and a fraud label on the customer's recent events (a
  disputed top-up means the card was not the customer's); ``refund`` / ``adjustment``: scored
  against the current state without changing it;
- a ``topup_failed`` alert (a declined charge): a failed payment in the features, scored;
- a label from the API: the classifier learns the labelled event (or, without an event id,
  the customer's recent events) as fraud or not.

An alert goes out when a score reaches the threshold of the customer's reseller (or the
platform's), at most one per customer per :data:`ALERT_EVERY_S` of event time; its id and the
score's id derive from the event, so a replay after a crash repeats them.

>>> from datetime import UTC, datetime, timedelta
>>> book = FraudBook(seed=3)
>>> at = datetime(2026, 3, 2, 9, tzinfo=UTC)
>>> record, alert = book.usage(Usage("e1", "c1", "r1", 3.0, at, "DE"), threshold=0.0)
>>> record["suspected"], alert["kind"], alert["alert_id"] == "fraud_suspected:" + record["score_id"]
(True, 'fraud_suspected', True)
>>> book.usage(Usage("e2", "c1", "r1", 3.0, at + timedelta(minutes=5), "DE"), 0.0)[1] is None
True
>>> record["score_id"] == score_id("c1", "usage", "e1")
True
"""

from __future__ import annotations

import hashlib
import struct
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

from streambill.online_ml.features import FEATURES
from streambill.online_ml.fraud import Features, FraudScorer

# How many of a customer's latest events a label without an event id covers.
RECENT: Final = 10
_PACK: Final = struct.Struct(f"<{len(FEATURES)}f")
# At most one fraud_suspected alert per customer in this much event time.
ALERT_EVERY_S: Final = 3600.0


class Usage(NamedTuple):
    event_id: str
    customer_id: str
    reseller_id: str | None
    minutes: float  # the event's quantity, a feature (never billed from here)
    occurred_at: datetime
    destination: str


class Payment(NamedTuple):
    event_id: str
    customer_id: str
    reseller_id: str | None
    kind: str  # topup | refund | chargeback | adjustment | topup_failed
    amount_micros: int
    occurred_at: datetime


class Label(NamedTuple):
    label_id: str
    customer_id: str
    fraud: bool
    event_id: str | None


def score_id(customer_id: str, source: str, event_id: str) -> str:
    """The deterministic id of an event's score.

    >>> first = score_id("c1", "usage", "e1")
    >>> first == score_id("c1", "usage", "e1") != score_id("c1", "usage", "e2")
    True
    """
    digest = hashlib.blake2b(f"{customer_id}\x00{source}\x00{event_id}".encode(), digest_size=10)
    return "fs_" + digest.hexdigest()


@dataclass(slots=True)
class _Customer:
    # (event id, feature values in FEATURES order as float32s): a tenth of a dict's pickle
    recent: deque[tuple[str, bytes]] = field(default_factory=lambda: deque(maxlen=RECENT))
    last_alert_s: float | None = None

    # A checkpoint pickles one of these per customer: two strings and a float, not a deque
    # of tuples (a third of the time).
    def __getstate__(self) -> tuple[str, bytes, float | None]:
        ids = "\x00".join(event_id for event_id, _ in self.recent)
        return ids, b"".join(packed for _, packed in self.recent), self.last_alert_s

    def __setstate__(self, state: tuple[str, bytes, float | None]) -> None:
        ids, packed, self.last_alert_s = state
        size = _PACK.size
        values = [packed[n : n + size] for n in range(0, len(packed), size)]
        pairs = zip(ids.split("\x00"), values, strict=True) if values else ()
        self.recent = deque(pairs, maxlen=RECENT)


class FraudBook:
    def __init__(self, seed: int = 42) -> None:
        self.scorer = FraudScorer(seed=seed)
        self.customers: dict[str, _Customer] = {}
        self.events = 0
        self.labels = 0

    def _customer(self, customer_id: str) -> _Customer:
        state = self.customers.get(customer_id)
        if state is None:
            state = self.customers[customer_id] = _Customer()
        return state

    def usage(self, event: Usage, threshold: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Score and learn one usage event: its score record and maybe an alert."""
        x = self.scorer.features.call(
            event.customer_id, event.occurred_at, event.minutes, event.destination
        )
        return self._score(
            x,
            "usage",
            "usage",
            event.event_id,
            event.customer_id,
            event.reseller_id,
            event.occurred_at,
            threshold,
            learn=True,
        )

    def payment(
        self, event: Payment, threshold: float
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Score one payment event (and learn it, for top-ups and failed charges)."""
        features = self.scorer.features
        kind = event.kind
        if kind in ("topup", "topup_failed"):
            x = features.topup(
                event.customer_id, event.occurred_at, event.amount_micros, kind == "topup"
            )
        else:
            x = features.peek_payment(event.customer_id, event.occurred_at, event.amount_micros)
        learn = kind != "chargeback"
        result = self._score(
            x,
            "payment",
            kind,
            event.event_id,
            event.customer_id,
            event.reseller_id,
            event.occurred_at,
            threshold,
            learn=learn,
        )
        if kind == "chargeback":
            self._teach(event.customer_id, None, True)
            self.scorer.learn_label(x, True)
        return result

    def label(self, label: Label) -> int:
        """Teach the classifier a label; the number of examples it learned."""
        self.labels += 1
        return self._teach(label.customer_id, label.event_id, label.fraud)

    def _teach(self, customer_id: str, event_id: str | None, fraud: bool) -> int:
        state = self.customers.get(customer_id)
        if state is None:
            return 0
        examples = [
            dict(zip(FEATURES, _PACK.unpack(packed), strict=True))
            for eid, packed in state.recent
            if event_id is None or eid == event_id
        ]
        for x in examples:
            self.scorer.learn_label(x, fraud)
        return len(examples)

    def _score(
        self,
        x: Features,
        source: str,
        kind: str,
        event_id: str,
        customer_id: str,
        reseller_id: str | None,
        occurred_at: datetime,
        threshold: float,
        *,
        learn: bool,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        scorer = self.scorer
        if learn:
            score, unsupervised, supervised = scorer.score_learn_one(x)
        else:
            unsupervised = scorer.unsupervised_one(x)
            supervised = scorer.supervised_one(x)
            score = unsupervised if supervised is None else max(unsupervised, supervised)
        self.events += 1
        state = self._customer(customer_id)
        state.recent.append((event_id, _PACK.pack(*x.values())))
        sid = score_id(customer_id, source, event_id)
        suspected = score >= threshold
        record = {
            "score_id": sid,
            "customer_id": customer_id,
            "reseller_id": reseller_id,
            "source": source,
            "event_id": event_id,
            "kind": kind,
            "score": round(score, 4),
            "unsupervised": round(unsupervised, 4),
            "supervised": None if supervised is None else round(supervised, 4),
            "threshold": threshold,
            "suspected": suspected,
            "occurred_at": occurred_at.isoformat(),
        }
        alert = None
        now_s = occurred_at.timestamp()
        if suspected and (
            state.last_alert_s is None or abs(now_s - state.last_alert_s) >= ALERT_EVERY_S
        ):
            state.last_alert_s = now_s
            alert = {
                "alert_id": f"fraud_suspected:{sid}",
                "customer_id": customer_id,
                "reseller_id": reseller_id,
                "kind": "fraud_suspected",
                "details": {
                    "score": record["score"],
                    "threshold": threshold,
                    "source": source,
                    "event_kind": kind,
                    "event_id": event_id,
                    "score_id": sid,
                },
            }
        return record, alert
