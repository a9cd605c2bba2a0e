"""The feed: a group-less consumer of the billing topics that publishes into the hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streambill.api.live.hub import LiveHub
from streambill.api.live.metrics import (
    DELAY,
    FEED_ERRORS,
    INVALID,
    LAG,
)
from streambill.errors import InvalidEvent
from streambill.settings import Settings
from streambill.streams import topics

logger = logging.getLogger(__name__)

LIVE_TOPICS: Final = (topics.LEDGER, topics.ALERTS, topics.COMMISSIONS)
BACKOFF_S_MIN: Final = 0.5
BACKOFF_S_MAX: Final = 30.0
POLL_IDLE_MS: Final = 500
LAG_REPORT_S: Final = 1.0


class LiveFeed:
    """Consume the live topics from their end, without a group, into a :class:`LiveHub`.

    No group: every api replica must see every message (each serves its own sockets), and
    a group join on the embedded broker waits about a session timeout. Lifecycle:
    ``await start()`` (returns once the partitions are positioned, or after
    ``start_timeout_s`` with the loop still retrying), ``await stop()``.
    """

    def __init__(
        self,
        bootstrap: str,
        hub: LiveHub,
        *,
        topics: Sequence[str] = LIVE_TOPICS,
        fetch_max_wait_ms: int = 20,
        max_poll_records: int = 500,
        client_id: str = "streambill-live",
        request_timeout_ms: int = 30_000,
        start_timeout_s: float = 10.0,
    ) -> None:
        handlers: dict[str, Callable[[dict[str, Any]], int]] = {
            LIVE_TOPICS[0]: self._publish_ledger,
            LIVE_TOPICS[1]: hub.publish_alert,
            LIVE_TOPICS[2]: hub.publish_commission,
        }
        unknown = set(topics) - handlers.keys()
        if unknown:
            raise ValueError(f"no live handler for topics {sorted(unknown)}")
        self._bootstrap = bootstrap
        self._hub = hub
        self._handlers = {topic: handlers[topic] for topic in topics}
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._max_poll_records = max_poll_records
        self._client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._start_timeout_s = start_timeout_s
        self._positions: dict[TopicPartition, int] = {}
        self._positioned = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_lag_at = 0.0
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, hub: LiveHub, **options: Any) -> LiveFeed:
        """The feed of an api process: its broker, and the broker's fetch wait (Tansu
        answers a fetch only when the wait runs out, so the wait is a latency floor)."""
        options.setdefault("fetch_max_wait_ms", settings.fetch_max_wait_ms)
        options.setdefault("client_id", f"streambill-live-{settings.api_port}")
        return cls(settings.bootstrap, hub, **options)

    @property
    def running(self) -> bool:
        """True while the loop runs (it retries Kafka errors; it ends only on stop)."""
        return self._task is not None and not self._task.done()

    @property
    def live(self) -> bool:
        """True while partitions are assigned and positioned."""
        return self._positioned.is_set()

    async def start(self) -> None:
        if self.running:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="live-feed")
        try:
            await asyncio.wait_for(self._positioned.wait(), timeout=self._start_timeout_s)
        except TimeoutError:
            logger.warning("live feed not connected yet; it keeps retrying in the background")

    async def stop(self) -> None:
        """Stop the loop and close the consumer. Idempotent. Nothing to flush: no offsets
        are committed, the feed is live only."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        logger.info("live feed stopped")

    async def _run(self) -> None:
        backoff_s = BACKOFF_S_MIN
        while not self._stopping.is_set():
            try:
                consumer = await self._connect()
            except KafkaError as exc:
                self._failed(exc, backoff_s)
            else:
                backoff_s = BACKOFF_S_MIN
                try:
                    await self._consume(consumer)
                except KafkaError as exc:
                    self._failed(exc, backoff_s)
                finally:
                    self._positioned.clear()
                    await consumer.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=backoff_s)
            backoff_s = min(BACKOFF_S_MAX, backoff_s * 2)

    def _failed(self, exc: KafkaError, backoff_s: float) -> None:
        self.last_error = repr(exc)
        FEED_ERRORS.inc()
        logger.warning(
            "live feed: kafka error; reconnecting",
            extra={"error": repr(exc), "retry_in_s": backoff_s},
        )

    async def _connect(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            client_id=self._client_id,
            enable_auto_commit=False,
            # A position out of range (retention passed it during an outage): go live again.
            auto_offset_reset="latest",
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            max_poll_records=self._max_poll_records,
            request_timeout_ms=self._request_timeout_ms,
        )
        await consumer.start()
        try:
            await self._assign(consumer)
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        # start() loaded the metadata of every topic. A topic that does not exist is skipped
        # rather than assigned: asking the broker for it would make Tansu auto-create it.
        partitions = [
            TopicPartition(topic, partition)
            for topic in self._handlers
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        found = {tp.topic for tp in partitions}
        if not found:
            raise KafkaError(f"none of the live topics exists: {sorted(self._handlers)}")
        consumer.assign(partitions)
        # After a reconnect, resume where the last connection stopped (the gap would be
        # lost updates); partitions never read start at the end: the feed is live only.
        fresh = [tp for tp in partitions if tp not in self._positions]
        for tp in partitions:
            if tp in self._positions:
                consumer.seek(tp, self._positions[tp])
        if fresh:
            await consumer.seek_to_end(*fresh)
        for tp in fresh:
            self._positions[tp] = await consumer.position(tp)
        self._positioned.set()
        logger.info(
            "live feed assigned",
            extra={"partitions": len(partitions), "skipped": sorted(set(self._handlers) - found)},
        )

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            batches = await consumer.getmany(
                timeout_ms=POLL_IDLE_MS, max_records=self._max_poll_records
            )
            # Nobody listening: nothing to decode (the feed keeps its place, and the lag).
            listening = self._hub.subscriber_count > 0
            for tp, messages in batches.items():
                if listening:
                    handler = self._handlers[tp.topic]
                    for message in messages:
                        self._handle(handler, tp, message.offset, message.value)
                self._positions[tp] = messages[-1].offset + 1
            self._report_lag(consumer)

    def _handle(
        self,
        handler: Callable[[dict[str, Any]], int],
        tp: TopicPartition,
        offset: int,
        value: bytes | None,
    ) -> None:
        """Decode and publish one message; a bad one is logged and counted, never raised."""
        try:
            obj = orjson.loads(value) if value is not None else None
            if not isinstance(obj, dict):
                raise InvalidEvent("not a JSON object")
            handler(obj)
        except Exception as exc:
            INVALID.labels(tp.topic).inc()
            expected = isinstance(exc, InvalidEvent | orjson.JSONDecodeError)
            logger.log(
                logging.WARNING if expected else logging.ERROR,
                "live feed skipped a message",
                extra={"topic": tp.topic, "partition": tp.partition, "offset": offset},
                exc_info=not expected,
            )

    def _publish_ledger(self, entry: dict[str, Any]) -> int:
        sockets = self._hub.publish_ledger(entry)
        # applied_at was checked to be a string; a non-ISO one is only not measured.
        with contextlib.suppress(ValueError):
            applied_s = datetime.fromisoformat(entry["applied_at"]).timestamp()
            DELAY.observe(max(0.0, time.time() - applied_s))
        return sockets

    def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._last_lag_at < LAG_REPORT_S:
            return
        self._last_lag_at = now
        lag: dict[str, int] = dict.fromkeys(self._handlers, 0)
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = self._positions.get(tp)
            if highwater is not None and position is not None:
                lag[tp.topic] += max(0, highwater - position)
        for topic, value in lag.items():
            LAG.labels(topic).set(value)
