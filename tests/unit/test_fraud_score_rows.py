"""``billing.fraud.v1`` -> ``fraud_scores`` rows: the mapper, the sink's table spec, batching
of replays, and the migration's columns (no I/O)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from streambill.analytics.batch import Batch
from streambill.analytics.fraud_scores import FraudScoreRow, fraud_score_row
from streambill.analytics.migrate import load_migrations
from streambill.analytics.rows import TABLE_SPECS
from streambill.analytics.sink import _TABLE_ORDER, SINK_TOPICS, map_message
from streambill.errors import InvalidEvent
from streambill.streams import topics


def score_msg(**overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "score_id": "fs_0123456789abcdef0123",
        "customer_id": "cus_1",
        "reseller_id": "res_1",
        "source": "payment",
        "event_id": "pi_3Nx",
        "kind": "topup",
        "score": 0.9731,
        "unsupervised": 0.8731,
        "supervised": 0.12,
        "threshold": 0.9,
        "suspected": True,
        "occurred_at": "2026-11-25T11:00:00+01:00",
        "scored_at": "2026-11-25T10:00:00.250000+00:00",
    }
    return message | overrides


def raw(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


def test_a_score_maps_to_its_row_exactly() -> None:
    row = fraud_score_row(raw(score_msg()))
    assert row == FraudScoreRow(
        "fs_0123456789abcdef0123",
        "cus_1",
        "res_1",
        "payment",
        "pi_3Nx",
        "topup",
        Decimal("0.9731"),
        Decimal("0.8731"),
        Decimal("0.1200"),
        Decimal("0.9000"),
        True,
        datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        datetime(2026, 11, 25, 10, 0, 0, 250000, tzinfo=UTC),
    )


def test_null_reseller_and_supervised_and_whole_number_scores() -> None:
    row = fraud_score_row(
        raw(score_msg(reseller_id=None, supervised=None, score=1, unsupervised=0, threshold=1))
    )
    assert row.reseller_id is None and row.supervised is None
    assert (row.score, row.unsupervised, row.threshold) == (Decimal(1), Decimal(0), Decimal(1))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"score_id": ""}, "score_id"),
        ({"score_id": None}, "score_id"),
        ({"customer_id": 7}, "customer_id"),
        ({"reseller_id": ""}, "reseller_id"),
        ({"source": "ledger"}, "source"),
        ({"kind": "bonus"}, "kind"),
        ({"event_id": "x" * 129}, "event_id"),
        ({"score": 1.5}, "score"),
        ({"score": -0.1}, "score"),
        ({"score": "0.5"}, "score"),
        ({"score": True}, "score"),
        ({"unsupervised": None}, "unsupervised"),
        ({"supervised": "high"}, "supervised"),
        ({"threshold": 2}, "threshold"),
        ({"suspected": 1}, "suspected"),
        ({"occurred_at": "2026-11-25T10:00:00"}, "occurred_at"),
        ({"scored_at": "yesterday"}, "scored_at"),
    ],
)
def test_a_malformed_score_is_refused_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        fraud_score_row(raw(score_msg(**overrides)))
    assert caught.value.message.startswith(f"{field}:")


def test_the_sink_skips_and_counts_a_bad_score_like_any_topic() -> None:
    spec = TABLE_SPECS[topics.FRAUD]

    def invalid() -> float:
        value = REGISTRY.get_sample_value(
            "streambill_sink_invalid_messages_total", {"topic": topics.FRAUD}
        )
        return value or 0.0

    before = invalid()
    assert map_message(spec, 0, 5, b"not json") is None
    assert map_message(spec, 0, 6, raw(score_msg(score=7))) is None
    assert map_message(spec, 0, 7, None) is None
    assert invalid() == before + 3
    assert map_message(spec, 0, 8, raw(score_msg())) == fraud_score_row(raw(score_msg()))


def test_the_sink_consumes_fraud_scores_into_their_table_and_collapses_replays() -> None:
    spec = TABLE_SPECS[topics.FRAUD]
    assert topics.FRAUD in SINK_TOPICS and spec.table == "fraud_scores"
    assert "fraud_scores" in _TABLE_ORDER
    batch = Batch()
    first = fraud_score_row(raw(score_msg()))
    replay = fraud_score_row(raw(score_msg(scored_at="2026-11-25T10:05:00+00:00")))
    other = fraud_score_row(raw(score_msg(score_id="fs_other")))
    for offset, row in enumerate((first, replay, other)):
        batch.add(topics.FRAUD, 1, offset, spec, row)
    rows = batch.tables()["fraud_scores"]
    assert sorted(r.score_id for r in rows) == ["fs_0123456789abcdef0123", "fs_other"]
    assert batch.duplicates == {"fraud_scores": 1}
    assert batch.next_offsets() == {(topics.FRAUD, 1): 3}


def test_fraud_score_row_columns_are_the_tables_columns() -> None:
    (migration,) = [m for m in load_migrations() if m.name.endswith("fraud_scores")]
    body = migration.sql.split("(", 1)[1].rsplit(")", 1)[0]
    declared = re.findall(r"^\s+`?(\w+)`?\s+[A-Z]\w", body, flags=re.MULTILINE)
    assert tuple(c for c in declared if c != "inserted_at") == FraudScoreRow._fields
    assert "ReplacingMergeTree" in migration.sql
    assert re.search(r"ORDER BY \(customer_id, occurred_at, score_id\)", migration.sql)
