"""Topic administration: create every topic with its partition count before first use.

Tansu creates a topic on first use with 4 partitions; Faust then finds a source topic and a
changelog with different partition counts and its agents crash in a loop. So the stack calls
:func:`ensure_topics` before any producer or consumer starts, and refuses to run on topics
whose partition count differs from the spec.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from streambill.broker.errors import BrokerError, TopicMismatch
from streambill.streams.topics import TopicSpec

log = logging.getLogger(__name__)


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": 10_000,
            "reconnect.backoff.max.ms": 1_000,
        }
    )


def wait_for_broker(bootstrap: str, timeout_s: float = 30.0) -> ClusterMetadata:
    """Return the cluster metadata once the broker answers a metadata request."""
    deadline = time.monotonic() + timeout_s
    admin = _admin(bootstrap)
    last_error: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"broker {bootstrap} did not answer in {timeout_s:.0f} s: {last_error}"
            )
        try:
            return admin.list_topics(timeout=min(5.0, remaining))
        except KafkaException as exc:
            last_error = exc
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def topic_partitions(bootstrap: str, timeout_s: float = 10.0) -> dict[str, int]:
    """Partition count of every topic the cluster reports."""
    metadata = wait_for_broker(bootstrap, timeout_s)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec], timeout_s: float = 30.0) -> list[str]:
    """Create each missing topic of ``specs``; verify the partition count of every one.

    Idempotent. Returns the names it created. Raises :class:`TopicMismatch` naming every
    topic whose partition count differs from its spec (it never changes an existing topic).
    """
    deadline = time.monotonic() + timeout_s
    admin = _admin(bootstrap)  # kept alive until every future has resolved
    existing = _partitions(admin, deadline)
    _raise_on_mismatch(specs, existing)
    missing = [spec for spec in specs if spec.name not in existing]
    created = _create(admin, missing, deadline) if missing else []
    _verify(admin, specs, deadline)
    if created:
        log.info("created topics %s", ", ".join(created))
    return created


def _partitions(admin: AdminClient, deadline: float) -> dict[str, int]:
    remaining = max(0.5, deadline - time.monotonic())
    try:
        metadata = admin.list_topics(timeout=remaining)
    except KafkaException as exc:
        raise BrokerError(f"cannot read topic metadata: {exc}") from exc
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def _raise_on_mismatch(specs: Sequence[TopicSpec], existing: dict[str, int]) -> None:
    wrong = [
        f"{spec.name} has {existing[spec.name]} partitions, expected {spec.partitions}"
        for spec in specs
        if spec.name in existing and existing[spec.name] != spec.partitions
    ]
    if wrong:
        raise TopicMismatch(
            "topics differ from their spec (delete them or set the partition count to "
            "match; streambill never repartitions a topic): " + "; ".join(wrong)
        )


def _create(admin: AdminClient, specs: Sequence[TopicSpec], deadline: float) -> list[str]:
    remaining = max(1.0, deadline - time.monotonic())
    new_topics = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=-1,  # the cluster's default
            config=dict(spec.config),
        )
        for spec in specs
    ]
    futures = admin.create_topics(
        new_topics, operation_timeout=remaining, request_timeout=remaining
    )
    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.5, deadline - time.monotonic()))
            created.append(name)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another process won the race; _verify checks its partitions
            raise TopicMismatch(f"cannot create topic {name}: {exc}") from exc
        except TimeoutError as exc:  # concurrent.futures.TimeoutError is this in 3.11
            raise TopicMismatch(f"creating topic {name} timed out") from exc
    return created


def _verify(admin: AdminClient, specs: Sequence[TopicSpec], deadline: float) -> None:
    """Wait until metadata shows every topic with its partitions (creation is asynchronous)."""
    while True:
        existing = _partitions(admin, deadline)
        _raise_on_mismatch(specs, existing)
        missing = [spec.name for spec in specs if spec.name not in existing]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise TopicMismatch(f"topics not visible after creation: {', '.join(missing)}")
        time.sleep(0.1)
