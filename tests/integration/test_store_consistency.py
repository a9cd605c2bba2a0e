"""A start refuses when any store remembers more of the broker than the broker holds.

One test per store: its position is put one record beyond what the broker's partition holds
(as after a lost or rolled-back journal), and the check must name that store, topic,
partition and offset; at the broker's end exactly, the same position passes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer
from sqlalchemy import create_engine, text

from streambill import consistency
from streambill.broker import EmbeddedBroker
from streambill.broker.testing import memory_broker
from streambill.consistency import StoreAheadOfBroker, check_stack
from streambill.control.db import migrate
from streambill.streams.topics import ACCOUNTS, COMMISSION_FACTS, LEDGER, USAGE

pytestmark = pytest.mark.integration
PARTITIONS = 2
RECORDS = 3  # in partition 1 of every topic the test uses


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with memory_broker(PARTITIONS) as running:
        producer = Producer({"bootstrap.servers": running.bootstrap})
        for topic in (ACCOUNTS, COMMISSION_FACTS, LEDGER, USAGE):
            for i in range(RECORDS):
                # One batch each: Tansu reports a partition's end as its last batch's base + 1
                # (the journal's replay makes that exact by putting the last record alone).
                producer.produce(topic, b"{}", b"k%d" % i, partition=1)
                assert producer.flush(10) == 0
        yield running


def sqlite(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    migrate(url)
    return url


def run_sql(url: str, sql: str, **params: object) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(sql), params)
    engine.dispose()


NOW = datetime(2026, 12, 7, tzinfo=UTC)


def stream_offset(consumer: str, topic: str) -> Callable[[str, int], None]:
    def put(url: str, offset: int) -> None:
        run_sql(
            url,
            'INSERT INTO stream_offsets (consumer, topic, "partition", "offset", updated_at) '
            "VALUES (:c, :t, 1, :o, :now)",
            c=consumer,
            t=topic,
            o=offset,
            now=NOW,
        )

    return put


def commission_checkpoint(url: str, offset: int) -> None:
    run_sql(
        url,
        'INSERT INTO commission_checkpoints ("partition", "offset", state, updated_at) '
        "VALUES (1, :o, '{}', :now)",
        o=offset,
        now=NOW,
    )


def model_checkpoint(url: str, offset: int) -> None:
    run_sql(
        url,
        'INSERT INTO model_checkpoints (agent, "partition", offsets, state, events, updated_at) '
        "VALUES ('forecast', 1, :offsets, :state, 0, :now)",
        offsets=json.dumps({f"{LEDGER}:1": offset, f"{USAGE}:0": 0}),
        state=b"",
        now=NOW,
    )


STORES = {
    "outbox": (stream_offset("outbox-relay", ACCOUNTS), ACCOUNTS),
    "autotopup agent": (stream_offset("autotopup", LEDGER), LEDGER),
    "commissions agent": (stream_offset("commissions", LEDGER), LEDGER),
    "commission books": (commission_checkpoint, COMMISSION_FACTS),
    "forecast model": (model_checkpoint, LEDGER),
}


@pytest.mark.parametrize("store", sorted(STORES))
def test_a_control_database_store_ahead_of_the_broker_refuses(
    broker: EmbeddedBroker, tmp_path: Path, store: str
) -> None:
    put, topic = STORES[store]
    url = sqlite(tmp_path)
    put(url, RECORDS + 1)
    with pytest.raises(StoreAheadOfBroker) as info:
        check_stack(broker.bootstrap, url, f"chdb://{tmp_path / 'clickhouse'}")
    message = info.value.message
    assert (
        f"{store}: {topic}[1] up to offset {RECORDS + 1}, the broker's ends at {RECORDS}" in message
    )
    assert "broker-journal" in message and "make up" in message


@pytest.mark.parametrize("store", sorted(STORES))
def test_a_store_at_the_brokers_end_passes(
    broker: EmbeddedBroker, tmp_path: Path, store: str
) -> None:
    put, _topic = STORES[store]
    url = sqlite(tmp_path)
    put(url, RECORDS)
    assert check_stack(broker.bootstrap, url, f"chdb://{tmp_path / 'clickhouse'}") >= 1


CH_SCRIPT = """
import sys
from datetime import UTC, datetime
from streambill.analytics.client import connect
from streambill.analytics.migrate import migrate
client = connect(sys.argv[1])
migrate(client)
now = datetime.now(UTC)
client.insert(
    "sink_positions",
    [["billing.ledger.v1", 1, int(sys.argv[2]), now]],
    column_names=["topic", "partition", "next_offset", "updated_at"],
)
client.close()
"""


@pytest.mark.parametrize(("offset", "refused"), [(RECORDS, False), (RECORDS + 5, True)])
def test_clickhouse_ahead_of_the_broker_refuses(
    broker: EmbeddedBroker, tmp_path: Path, offset: int, refused: bool
) -> None:
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    subprocess.run([sys.executable, "-c", CH_SCRIPT, dsn, str(offset)], check=True)
    url = sqlite(tmp_path)
    positions = consistency.clickhouse_positions_isolated(dsn)
    assert positions == [consistency.Position("ClickHouse", LEDGER, 1, offset)]
    if not refused:
        assert check_stack(broker.bootstrap, url, dsn) == 1
        return
    with pytest.raises(StoreAheadOfBroker) as info:
        check_stack(broker.bootstrap, url, dsn)
    assert f"ClickHouse: {LEDGER}[1] up to offset {offset}" in info.value.message


def test_a_topic_the_broker_does_not_have_counts_as_empty(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    url = sqlite(tmp_path)
    stream_offset("autotopup", "billing.gone.v1")(url, 1)
    with pytest.raises(StoreAheadOfBroker) as info:
        check_stack(broker.bootstrap, url, f"chdb://{tmp_path / 'clickhouse'}")
    assert "billing.gone.v1[1] up to offset 1, the broker's ends at 0" in info.value.message
