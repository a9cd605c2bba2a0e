"""What the online-ML agents share: read topics, keep a model book, publish, checkpoint.

An agent (:class:`ModelAgent`) holds one in-memory book (the fraud scorer, the forecast
models) for every partition of its input topics: it runs in the ``streambill ml`` process, one
per stack (a lease makes a second one wait as a standby, see :mod:`streambill.agents.mlworker`).
Its consumer is assigned every partition of the inputs at the offsets of its last checkpoint.

A batch: records in -> the book -> messages out, published and acknowledged by the broker ->
the next batch. Every ``checkpoint_ms`` (and at a clean stop) the whole book is pickled and
stored with the next offset of every input partition in ONE row of ``model_checkpoints``,
written after everything derived from the records before those offsets was acknowledged. So
the book and the offsets always agree: after a crash the agent restores the book and re-reads
from the offsets, and the records after the checkpoint are scored by the model exactly as it
was when it first saw them (its outputs carry deterministic ids, so repeats collapse).

Any failure (broker, database, a bug) drops the in-memory book and restarts from the last
checkpoint after a pause: nothing is skipped, nothing applied twice to the model.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from streambill.agents.offsets import assigned_consumer
from streambill.agents.publisher import Publisher
from streambill.control.models import ModelCheckpoint
from streambill.engine.balances import Message

log = logging.getLogger(__name__)

BATCH_MAX: Final = 2000
POLL_S: Final = 0.05
ERROR_BACKOFF_S: Final = 2.0
# All partitions are kept in one row (one book); the column leaves room for sharding.
WHOLE: Final = 0


class ModelAgent:
    """Subclasses set :attr:`name` and :attr:`inputs` and implement :meth:`new_book`,
    :meth:`handle` and, optionally, :meth:`prepare`, :meth:`extra` and :meth:`on_checkpoint`."""

    name: str = ""
    inputs: tuple[str, ...] = ()
    # Topics read from their beginning at every start, not checkpointed (reference data).
    reference: tuple[str, ...] = ()

    def __init__(
        self,
        bootstrap: str,
        sessions: async_sessionmaker[SqlSession],
        publisher: Publisher,
        *,
        partitions: int,
        fetch_wait_ms: int,
        checkpoint_ms: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.partitions = partitions
        self.checkpoint_s = checkpoint_ms / 1000
        self.clock = clock
        self._bootstrap = bootstrap
        self._fetch_wait_ms = fetch_wait_ms
        self._consumer: Any = None
        self.book: Any = None
        self.next_offsets: dict[tuple[str, int], int] = {}
        self._saved_at = time.monotonic()
        self._dirty = False
        self.records = 0
        self.checkpoints = 0
        self.restored_events: int | None = None  # events in the book at the last start
        self.running = False
        # False between applying a batch to the book and the broker acknowledging what it
        # produced: a stop in that window must not checkpoint.
        self._settled = True

    # -- to implement -------------------------------------------------------------------

    def new_book(self) -> Any:
        raise NotImplementedError

    def handle(self, messages: Sequence[Any]) -> list[Message]:
        """Apply the records to :attr:`book`; the messages to publish."""
        raise NotImplementedError

    def book_events(self) -> int:
        """How many events the book has learned (reported, and stored with a checkpoint)."""
        return 0

    def read_reference(self) -> dict[tuple[str, int], int]:
        """Before the inputs: read the reference topics up to where they end now (in a thread);
        (topic, partition) -> the offset to go on from. Default: read them with the inputs."""
        return {}

    async def prepare(self) -> None:
        """Called before each batch: refresh what the agent reads from the database."""

    async def extra(self) -> list[Message]:
        """Called after each batch was published: more messages (from database work)."""
        return []

    async def on_checkpoint(self, session: SqlSession, now: datetime) -> None:
        """Write what belongs with the checkpoint, in its transaction."""

    # -- the loop -------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore the last checkpoint (or start empty) and assign the inputs there."""
        async with self.sessions() as session:
            row = await session.get(ModelCheckpoint, (self.name, WHOLE))
            if row is not None:
                book, offsets, events = row.state, dict(row.offsets), row.events
            else:
                book, offsets, events = None, {}, 0
        # Only this process's own checkpoints are ever unpickled (see online_ml.protocol).
        self.book = pickle.loads(book) if book is not None else self.new_book()
        self.restored_events = events
        self.next_offsets = {}
        starts = []
        for topic in self.inputs:
            for p in range(self.partitions):
                offset = int(offsets.get(f"{topic}:{p}", OFFSET_BEGINNING))
                starts.append(TopicPartition(topic, p, offset))
                if offset >= 0:
                    self.next_offsets[(topic, p)] = offset
        reference = await asyncio.to_thread(self.read_reference)
        for topic in self.reference:
            starts.extend(
                TopicPartition(topic, p, reference.get((topic, p), OFFSET_BEGINNING))
                for p in range(self.partitions)
            )
        if self._consumer is not None:
            self._consumer.close()
        self._consumer = assigned_consumer(
            self._bootstrap, f"ml-{self.name}", self._fetch_wait_ms, 8192
        )
        self._consumer.assign(starts)
        self._saved_at = time.monotonic()
        self._dirty = False
        log.info(
            "%s agent starts from %s (%d events learned)",
            self.name,
            "its checkpoint" if row is not None else "scratch",
            events,
        )

    def _read(self) -> list[Any]:
        return [m for m in self._consumer.consume(BATCH_MAX, POLL_S) if m.error() is None]

    async def step(self) -> int:
        """One batch: read, handle, publish, maybe checkpoint. The number of records read."""
        await self.prepare()
        messages = await asyncio.to_thread(self._read)
        self._settled = False
        out = self.handle(messages) if messages else []
        for m in messages:
            topic = m.topic()
            if topic in self.inputs:
                self.next_offsets[(topic, m.partition())] = m.offset() + 1
        if messages:
            self.records += len(messages)
            self._dirty = True
        if out:
            await self.publisher.publish(out)
        more = await self.extra()
        if more:
            await self.publisher.publish(more)
        self._settled = True
        if self._dirty and time.monotonic() - self._saved_at >= self.checkpoint_s:
            await self.checkpoint()
        return len(messages)

    async def checkpoint(self) -> None:
        """Store the book and the offsets it is complete to (everything before them was
        published and acknowledged: :meth:`step` checkpoints only between batches)."""
        state = pickle.dumps(self.book, protocol=pickle.HIGHEST_PROTOCOL)
        offsets = {f"{t}:{p}": o for (t, p), o in self.next_offsets.items()}
        now = self.clock()
        async with self.sessions.begin() as session:
            row = await session.get(ModelCheckpoint, (self.name, WHOLE))
            if row is None:
                session.add(
                    ModelCheckpoint(
                        agent=self.name,
                        partition=WHOLE,
                        offsets=offsets,
                        state=state,
                        events=self.book_events(),
                        updated_at=now,
                    )
                )
            else:
                row.offsets, row.state, row.events, row.updated_at = (
                    offsets,
                    state,
                    self.book_events(),
                    now,
                )
            await self.on_checkpoint(session, now)
        self._saved_at = time.monotonic()
        self._dirty = False
        self.checkpoints += 1

    async def run(self, holding: Callable[[], bool]) -> None:
        """Run batches while ``holding()`` (the ML lease) is true; any failure restarts from
        the last checkpoint after a pause. Returns when the lease is lost."""
        started = False
        while holding():
            try:
                if not started:
                    await self.start()
                    started = True
                    self.running = True
                await self.step()
            except asyncio.CancelledError:
                raise
            except DBAPIError as exc:
                log.warning(
                    "%s agent: control-plane database unavailable (%s); restart from the "
                    "checkpoint in %.0f s",
                    self.name,
                    type(exc.orig).__name__,
                    ERROR_BACKOFF_S,
                )
                started = self.running = False
                await asyncio.sleep(ERROR_BACKOFF_S)
            except Exception:
                log.exception(
                    "%s agent failed; restart from the checkpoint in %.0f s",
                    self.name,
                    ERROR_BACKOFF_S,
                )
                started = self.running = False
                await asyncio.sleep(ERROR_BACKOFF_S)
        self.running = False

    async def stop(self) -> None:
        """Checkpoint what was handled (a clean stop re-reads nothing)."""
        if self.running and self._dirty and self._settled:
            await self.checkpoint()
        self.running = False

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
