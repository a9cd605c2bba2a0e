"""Usage ingest for ``POST /v2/usage``: parse and validate a request body, then produce it.

:func:`parse_usage_body` turns a body (one usage event, or ``{"events": [...]}``) into the
records to produce and the per-event rejections, deciding exactly as the worker's decoders
would (``streams.events.fast_usage``, which matches the pydantic :class:`UsageEvent`), so an
event accepted here is never dead-lettered as ``invalid_event`` later.

:class:`UsageProducer` is an asyncio front for an idempotent confluent-kafka producer: a
``send`` returns only once the broker acknowledged every record of the call (``acks=all``)
and raises :class:`BrokerUnavailable` otherwise. It is topic-agnostic, so the control
plane's outbox relay uses it too.

A failed or timed-out ``send`` does not mean nothing was written: records still queued may
be delivered later. Clients retry with the same ``event_id`` (the idempotency key) and the
worker drops the duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streambill.errors import (
    BrokerUnavailable,
    InvalidEvent,
    InvalidJson,
    StreambillError,
    check,
)
from streambill.loadgen.kafka import producer_config
from streambill.settings import Settings
from streambill.streams.events import MAX_PAYLOAD_BYTES, fast_usage

log = logging.getLogger(__name__)

__all__ = [
    "AcceptedUsage",
    "BrokerUnavailable",
    "ParsedUsage",
    "RejectedUsage",
    "TooManyEvents",
    "UsageProducer",
    "parse_usage_body",
]

MAX_EVENTS_PER_REQUEST: Final = 1000
# librdkafka's local queue is bounded in count and size; a full queue makes `send` wait.
QUEUE_MAX_MESSAGES: Final = 100_000
QUEUE_MAX_KBYTES: Final = 64 * 1024
# How long `send` sleeps before producing again into a full local queue.
QUEUE_FULL_RETRY_S: Final = 0.005
DEFAULT_LINGER_MS: Final = 2
# librdkafka's own give-up time per record; `send` usually gives up much earlier (its
# timeout_s) and the record may still be delivered afterwards (see the module docstring).
DEFAULT_MESSAGE_TIMEOUT_MS: Final = 30_000


class TooManyEvents(StreambillError):
    """A batch with more events than one request may carry."""

    code = "too_many_events"


# -- parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcceptedUsage:
    """A valid event: ``value`` is what goes to ``billing.usage.v1`` under key ``customer_id``."""

    index: int
    customer_id: str
    event_id: str
    value: bytes


@dataclass(frozen=True, slots=True)
class RejectedUsage:
    """An event that can never be applied, with the code the worker would dead-letter it with."""

    index: int
    event_id: str | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "event_id": self.event_id,
            "code": self.code,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class ParsedUsage:
    """A parsed body. ``batch`` is False for the single-event form. Both lists are in index
    order; every index of the body is in exactly one of them."""

    batch: bool
    accepted: list[AcceptedUsage]
    rejected: list[RejectedUsage]

    @property
    def count(self) -> int:
        return len(self.accepted) + len(self.rejected)

    def records(self) -> list[tuple[bytes, bytes]]:
        """``(key, value)`` pairs for :meth:`UsageProducer.send`."""
        return [(event.customer_id.encode(), event.value) for event in self.accepted]

    def customer_ids(self) -> set[str]:
        """The customers the accepted events are for (to check the caller's scope once)."""
        return {event.customer_id for event in self.accepted}

    def reject_customers(
        self, customer_ids: Collection[str], *, code: str, message: str
    ) -> ParsedUsage:
        """A copy in which the accepted events of ``customer_ids`` are rejected with ``code``
        (for example the ones outside the caller's scope)."""
        if not customer_ids:
            return self
        kept = [e for e in self.accepted if e.customer_id not in customer_ids]
        moved = [
            RejectedUsage(e.index, e.event_id, code, f"{message}: {e.customer_id}")
            for e in self.accepted
            if e.customer_id in customer_ids
        ]
        rejected = sorted([*self.rejected, *moved], key=lambda r: r.index)
        return ParsedUsage(self.batch, kept, rejected)


def parse_usage_body(
    body: bytes, *, now: datetime, max_events: int = MAX_EVENTS_PER_REQUEST
) -> ParsedUsage:
    """Parse one usage event, or ``{"events": [...]}`` with 1..``max_events`` of them.

    A top-level object with an ``events`` key is a batch (a single event cannot carry a field
    of that name). Whole-body problems raise :class:`InvalidJson`, :class:`InvalidEvent` or
    :class:`TooManyEvents`; each event's own problem becomes a :class:`RejectedUsage`.

    An event without ``occurred_at`` gets ``now`` (services may leave the time to us); an
    ``occurred_at`` of null is rejected like any other invalid time. The produced value is
    the event as sent (unknown fields kept) with that fill-in, re-serialized.

    >>> from datetime import UTC
    >>> now = datetime(2026, 11, 25, 10, tzinfo=UTC)
    >>> parsed = parse_usage_body(
    ...     b'{"events": [{"event_id": "e1", "customer_id": "cus_1", "meter": "m",'
    ...     b' "quantity": "1.5"}, {"event_id": "e2"}]}', now=now)
    >>> parsed.accepted[0].value
    b'{"event_id":"e1","customer_id":"cus_1","meter":"m","quantity":"1.5","occurred_at":"2026-11-25T10:00:00+00:00"}'
    >>> [(r.index, r.code) for r in parsed.rejected]
    [(1, 'invalid_event')]
    """
    check(now.tzinfo is not None, "parse_usage_body needs an aware `now`")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidJson("body is not valid JSON") from None
    if type(document) is not dict:
        raise InvalidEvent(f"body must be a JSON object, got {type(document).__name__}")
    if "events" not in document:
        events: list[Any] = [document]
        batch = False
    else:
        events = document["events"]
        batch = True
        if type(events) is not list:
            raise InvalidEvent(f"events must be a list, got {type(events).__name__}")
        if not events:
            raise InvalidEvent("events must not be empty")
        if len(events) > max_events:
            raise TooManyEvents(f"{len(events)} events in one request, at most {max_events}")
    accepted, rejected = _validate_events(events, now.isoformat())
    return ParsedUsage(batch, accepted, rejected)


def _validate_events(
    events: list[Any], now_text: str
) -> tuple[list[AcceptedUsage], list[RejectedUsage]]:
    accepted: list[AcceptedUsage] = []
    rejected: list[RejectedUsage] = []
    dumps = orjson.dumps
    for index, obj in enumerate(events):
        if type(obj) is not dict:
            message = f"event must be a JSON object, got {type(obj).__name__}"
            rejected.append(RejectedUsage(index, None, "invalid_event", message))
            continue
        if "occurred_at" not in obj:
            obj["occurred_at"] = now_text  # the dict is ours: orjson built it for this call
        try:
            event = fast_usage(obj)
        except StreambillError as exc:
            rejected.append(RejectedUsage(index, _event_id(obj), exc.code, exc.message))
            continue
        try:
            value = dumps(obj)
        except orjson.JSONEncodeError:
            # orjson reads 1,024 levels of nesting but writes only 254 (deep `attributes`).
            message = "event is nested too deeply"
            rejected.append(RejectedUsage(index, event.event_id, "invalid_event", message))
            continue
        if len(value) > MAX_PAYLOAD_BYTES:
            # The worker's decoder dead-letters larger payloads; refuse them now instead.
            message = f"event of {len(value)} bytes exceeds {MAX_PAYLOAD_BYTES}"
            rejected.append(RejectedUsage(index, event.event_id, "invalid_event", message))
            continue
        accepted.append(AcceptedUsage(index, event.customer_id, event.event_id, value))
    return accepted, rejected


def _event_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("event_id")
    return value if type(value) is str else None


# -- producing --------------------------------------------------------------------------------


class _Pending:
    """One ``send`` call: counts its records' deliveries down on the poll thread and resolves
    its future on the event loop (with the first error, or None when all are acknowledged)."""

    __slots__ = ("done", "future", "loop", "positions", "remaining")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        count: int,
        positions: dict[int, int] | None = None,
    ) -> None:
        self.loop = loop
        self.future: asyncio.Future[KafkaError | None] = loop.create_future()
        self.remaining = count
        self.done = False  # touched only by the thread that runs delivery callbacks
        self.positions = positions  # partition -> next offset after the acknowledged records

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if self.done:
            return
        if err is None:
            if self.positions is not None:
                partition, offset = msg.partition() or 0, (msg.offset() or 0) + 1
                if offset > self.positions.get(partition, 0):
                    self.positions[partition] = offset
            self.remaining -= 1
            if self.remaining:
                return
        self.done = True
        # A closed loop raises RuntimeError: nobody waits for this call any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._resolve, err)

    def _resolve(self, err: KafkaError | None) -> None:
        if not self.future.done():  # cancelled when the caller timed out or went away
            self.future.set_result(err)


class UsageProducer:
    """An idempotent (``acks=all``) producer for asyncio callers; one per process.

    ``send`` may be called from many tasks at once. Delivery reports are served by one
    background thread, so the event loop never blocks on librdkafka. Keys are placed with
    Kafka's murmur2 partitioner, like the worker expects for customer-keyed topics.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str = "streambill-api",
        linger_ms: int = DEFAULT_LINGER_MS,
        message_timeout_ms: int = DEFAULT_MESSAGE_TIMEOUT_MS,
        poll_interval_s: float = 0.1,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._config: dict[str, Any] = {
            **producer_config(settings, client_id=client_id, linger_ms=linger_ms),
            "message.timeout.ms": message_timeout_ms,
            "queue.buffering.max.messages": QUEUE_MAX_MESSAGES,
            "queue.buffering.max.kbytes": QUEUE_MAX_KBYTES,
            "error_cb": self._on_error,
            **(extra_config or {}),
        }
        self._poll_interval_s = poll_interval_s
        self._producer: Producer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.last_error: KafkaError | None = None

    @property
    def running(self) -> bool:
        return self._producer is not None and not self._stopping.is_set()

    def start(self) -> None:
        check(self._producer is None, "UsageProducer started twice")
        self._producer = Producer(self._config)
        self._thread = threading.Thread(
            target=self._poll_loop, args=(self._producer,), name="usage-producer", daemon=True
        )
        self._thread.start()

    async def stop(self, timeout_s: float = 10.0) -> int:
        """Stop polling, then wait up to ``timeout_s`` for the queued records; returns how
        many were still undelivered."""
        producer, thread = self._producer, self._thread
        if producer is None or self._stopping.is_set():
            return 0
        self._stopping.set()
        if thread is not None:
            # Joined before flushing: two threads serving callbacks would race the countdowns.
            await asyncio.to_thread(thread.join, self._poll_interval_s + 5.0)
        remaining: int = await asyncio.to_thread(producer.flush, timeout_s)
        if remaining:
            log.error("usage producer stopped with %d records undelivered", remaining)
        return remaining

    async def send_one(self, topic: str, key: bytes, value: bytes, timeout_s: float) -> None:
        await self.send(topic, ((key, value),), timeout_s)

    async def send(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        timeout_s: float,
        positions: dict[int, int] | None = None,
    ) -> None:
        """Produce ``(key, value)`` records; return once the broker acknowledged all of them.

        ``positions``, when given, receives partition -> the next offset after this call's
        records (the outbox relay keeps them to tell later whether the broker lost them).
        Raises :class:`BrokerUnavailable` on the first failed delivery, when the local queue
        stays full, or when ``timeout_s`` passes first.
        """
        producer = self._producer
        if producer is None or self._stopping.is_set():
            raise BrokerUnavailable("the producer is not running")
        if not records:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = _Pending(loop, len(records), positions)
        await self._produce_all(producer, topic, records, pending.on_delivery, deadline)
        try:
            async with asyncio.timeout_at(deadline):
                err = await pending.future
        except TimeoutError:
            raise BrokerUnavailable(
                f"{pending.remaining} of {len(records)} records to {topic} not acknowledged"
                f" within {timeout_s:g} s"
            ) from None
        if err is not None:
            raise BrokerUnavailable(f"delivery to {topic} failed: {err.str()}")

    async def _produce_all(
        self,
        producer: Producer,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        on_delivery: Any,
        deadline: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        produce = producer.produce
        for key, value in records:
            while True:  # bounded by the deadline
                try:
                    produce(topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:
                    # The poll thread frees the queue as acknowledgements come in; polling
                    # here too would run delivery callbacks on two threads at once.
                    if loop.time() >= deadline:
                        raise BrokerUnavailable(
                            f"the local queue for {topic} stayed full (broker too slow?)"
                        ) from None
                    await asyncio.sleep(QUEUE_FULL_RETRY_S)
                except KafkaException as exc:
                    raise BrokerUnavailable(f"produce to {topic} failed: {exc}") from None

    def _poll_loop(self, producer: Producer) -> None:
        while not self._stopping.is_set():  # bounded by stop()
            try:
                producer.poll(self._poll_interval_s)
            except Exception:
                log.exception("usage producer poll failed")
                self._stopping.wait(self._poll_interval_s)

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = err
        if err.fatal():
            log.error("usage producer fatal error (the producer is unusable): %s", err)
        else:
            log.warning("usage producer: %s", err)
