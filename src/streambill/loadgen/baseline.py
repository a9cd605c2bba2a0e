"""The floor the worker is compared with: raw aiokafka consume + orjson decode, no logic."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS: Final = 200
MAX_RECORDS: Final = 10_000


async def _consume(
    bootstrap: str, topic: str, start: dict[int, int], count: int, timeout_s: float
) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in start]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, start[tp.partition])
        seen = 0
        started = time.perf_counter()
        deadline = started + timeout_s
        while seen < count:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"baseline read {seen} of {count} messages in {timeout_s} s")
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=MAX_RECORDS)
            for records in batches.values():
                for record in records:
                    if record.value is not None:
                        orjson.loads(record.value)
                    seen += 1
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def baseline_seconds(
    bootstrap: str, topic: str, start: dict[int, int], count: int, timeout_s: float = 120.0
) -> float:
    """Seconds to read ``count`` messages of ``topic`` from ``start`` offsets and decode each."""
    return asyncio.run(_consume(bootstrap, topic, start, count, timeout_s))
