"""Never a silent rollback: at start, no store may be ahead of the broker.

Every store of the stack remembers how far into the broker's partitions it got:

- ClickHouse (ledger, usage, alerts, …): the next offset after each flush's rows, in
  ``sink_positions`` (written before the rows themselves);
- the outbox (accounts, adjustments, webhook credits): the next offset after its
  acknowledged messages, in ``stream_offsets`` under ``outbox-relay``;
- the auto top-up and commissions agents: the next offset to read, in ``stream_offsets``;
- the commission books: the next offset of ``commission-facts``, in
  ``commission_checkpoints``;
- the fraud and forecast models: the next offset of each input, in ``model_checkpoints``;
- the worker's tables: the sealed changelog end a snapshot file covers (the worker itself
  discards a stale snapshot and recovers from the changelog: a repair, not a refusal).

The api's live ledger view starts from ClickHouse, and auto top-up attempts are settled from
the ledger, so the ClickHouse check covers them.

A store ahead of the broker means the broker lost what it had acknowledged (its journal
deleted, damaged or restored from an older backup). Starting anyway would be a silent
rollback: consumers would skip the offsets they remember, new records would take those
offsets, balances would go back beneath a newer ledger. So :func:`check_stack` refuses with
:class:`StoreAheadOfBroker`, which names every store, partition and offset that is ahead
and what fixes it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import orjson
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import create_engine, inspect, text

from streambill.errors import StreambillError

log = logging.getLogger(__name__)

OUTBOX_CONSUMER: Final = "outbox-relay"  # control/outbox.py's POSITIONS_CONSUMER


@dataclass(frozen=True, slots=True)
class Position:
    store: str
    topic: str
    partition: int
    next_offset: int  # the store holds (or has read) everything below this


@dataclass(frozen=True, slots=True)
class Ahead:
    position: Position
    broker_end: int

    def describe(self) -> str:
        p = self.position
        return (
            f"{p.store}: {p.topic}[{p.partition}] up to offset {p.next_offset}, "
            f"the broker's ends at {self.broker_end}"
        )


class StoreAheadOfBroker(StreambillError):
    """A store holds more than the broker: starting would roll balances back silently."""

    code = "store_ahead_of_broker"


def broker_ends(
    bootstrap: str, topics: Iterable[str], timeout_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the end offset, for every partition of ``topics`` that exists."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "streambill-consistency"})
    try:
        metadata = consumer.list_topics(timeout=timeout_s)
        ends: dict[tuple[str, int], int] = {}
        for topic in set(topics):
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                continue
            for partition in info.partitions:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout_s
                )
                ends[(topic, partition)] = high
        return ends
    finally:
        consumer.close()


def ahead_of(positions: Iterable[Position], ends: dict[tuple[str, int], int]) -> list[Ahead]:
    """The positions beyond the broker's end (a missing topic or partition ends at 0)."""
    out = []
    for position in positions:
        end = ends.get((position.topic, position.partition), 0)
        if position.next_offset > end:
            out.append(Ahead(position, end))
    return out


def control_positions(database_url: str) -> list[Position]:
    """What the control database remembers of the broker (empty before its migrations)."""
    from streambill.control.db import _url  # the driver-qualified URL, synchronous

    engine = create_engine(_url(database_url, asynchronous=False))
    positions: list[Position] = []
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            if "stream_offsets" in tables:
                rows = connection.execute(
                    text('SELECT consumer, topic, "partition", "offset" FROM stream_offsets')
                )
                for consumer, topic, partition, offset in rows:
                    store = "outbox" if consumer == OUTBOX_CONSUMER else f"{consumer} agent"
                    positions.append(Position(store, topic, int(partition), int(offset)))
            if "commission_checkpoints" in tables:
                from streambill.streams.topics import COMMISSION_FACTS

                rows = connection.execute(
                    text('SELECT "partition", "offset" FROM commission_checkpoints')
                )
                for partition, offset in rows:
                    positions.append(
                        Position("commission books", COMMISSION_FACTS, int(partition), int(offset))
                    )
            if "model_checkpoints" in tables:
                rows = connection.execute(text("SELECT agent, offsets FROM model_checkpoints"))
                for agent, offsets in rows:
                    doc = orjson.loads(offsets) if isinstance(offsets, str | bytes) else offsets
                    for key, offset in (doc or {}).items():
                        topic, _, partition = str(key).rpartition(":")
                        positions.append(
                            Position(f"{agent} model", topic, int(partition), int(offset))
                        )
    finally:
        engine.dispose()
    return positions


def clickhouse_positions(dsn: str) -> list[Position]:
    """How far the sink's rows in ClickHouse go (empty before migration 008)."""
    from streambill.analytics.client import connect

    client = connect(dsn)
    try:
        if str(client.command("EXISTS TABLE sink_positions")).strip() != "1":
            return []
        rows = client.query(
            "SELECT topic, partition, max(next_offset) FROM sink_positions "
            "GROUP BY topic, partition"
        ).result_rows
    finally:
        client.close()
    return [Position("ClickHouse", str(t), int(p), int(o)) for t, p, o in rows]


def clickhouse_positions_isolated(dsn: str, timeout_s: float = 120.0) -> list[Position]:
    """:func:`clickhouse_positions` in a child process: chDB lets one process open a data
    directory, and the api (started later) must be that process."""
    from streambill.analytics.client import chdb_path, is_embedded

    if is_embedded(dsn) and not chdb_path(dsn).exists():
        return []  # a new data dir
    done = subprocess.run(
        [sys.executable, "-m", "streambill.consistency", "clickhouse", dsn],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise StreambillError(f"reading ClickHouse's positions failed:\n{done.stderr[-2000:]}")
    return [Position(*row) for row in orjson.loads(done.stdout)]


def check_stack(
    bootstrap: str, database_url: str, clickhouse_dsn: str, data_dir: str = "<data dir>"
) -> int:
    """Raise :class:`StoreAheadOfBroker` when a store is ahead; return how many positions
    were compared."""
    positions = control_positions(database_url) + clickhouse_positions_isolated(clickhouse_dsn)
    ends = broker_ends(bootstrap, {p.topic for p in positions})
    ahead = ahead_of(positions, ends)
    if ahead:
        by_store: dict[str, list[Ahead]] = {}
        for item in ahead:
            by_store.setdefault(item.position.store, []).append(item)
        stores = sorted(by_store)
        lines = "\n".join(
            f"  - {max(items, key=lambda a: a.position.next_offset - a.broker_end).describe()}"
            + (f" (and {len(items) - 1} more partitions)" if len(items) > 1 else "")
            for _store, items in sorted(by_store.items())
        )
        raise StoreAheadOfBroker(
            f"the broker is behind {', '.join(stores)}: it lost records it had "
            f"acknowledged (its journal was removed, damaged or restored from an older "
            f"backup).\n{lines}\n"
            f"Starting would roll balances back beneath the newer ledger. To fix it, either "
            f"restore the data dir's broker-journal/ from the backup taken together with "
            f"these stores, or keep this data dir aside and start afresh:\n"
            f"  mv {data_dir} {data_dir}.behind && make up"
        )
    log.info("stores checked against the broker: %d positions, none ahead", len(positions))
    return len(positions)


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "clickhouse":
        rows = [
            (p.store, p.topic, p.partition, p.next_offset) for p in clickhouse_positions(argv[1])
        ]
        sys.stdout.write(orjson.dumps(rows).decode())
        return 0
    print("usage: python -m streambill.consistency clickhouse <dsn>", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
