"""The journal proxy: the embedded broker's front door, which makes an acknowledgement durable.

Kafka clients of the embedded stack connect here (``STREAMBILL_BROKER_PORT``); Tansu runs in
memory behind it on a private loopback port and advertises this address, so clients never
talk to Tansu directly. Every request is passed through on a connection of its own to
Tansu, in order, and most responses come straight back. Three kinds wait for the journal
(:mod:`streambill.broker.journal`):

- **Produce**: the batches Tansu accepted are appended with the offsets it gave them and
  synced (``fdatasync``, grouped: every write in flight shares one sync) before the client
  gets its acknowledgement. ``acks=0`` requests are sent with ``acks=1`` so the proxy
  learns the offsets; the client gets no response, as it asked.
- **Fetch**: a response may carry records whose produce is not yet in the journal. It is
  held until every produce sent to Tansu before the response arrived is journaled (or has
  failed). So no consumer ever sees, and no output is ever derived from, a record that a
  crash could take back: what a crash loses is a set of unacknowledged, unread produces.
- **OffsetCommit** and **CreateTopics**: journaled once Tansu accepted them, so a replay
  restores consumer positions and topics with their partition counts and configs.

At start the journal is replayed into the empty Tansu before the proxy listens
(:mod:`streambill.broker.replay`), so no client ever sees a half-restored broker.

Two Tansu processes stand behind the proxy. The *groups'* Tansu (started by
:class:`~streambill.broker.embedded.EmbeddedBroker` as ``broker``) coordinates consumer
groups, keeps their committed offsets and hands out producer ids: every group API goes
there. The *data* Tansu, which the proxy starts itself, holds the records. Tansu's memory
engine keeps every record it ever received and reads slower the more batches a partition
holds, so the proxy **rotates** it: after a compaction of the journal it starts a fresh data
Tansu, replays the compacted journal into it (few big batches), then holds new requests for
a moment, lets every open request finish, closes the client connections, replays the few
records written meanwhile, switches, and stops the old one. Clients reconnect, their groups
and producer ids untouched (they live in the groups' Tansu), every offset where it was.
(Keeping the clients' connections and moving only the proxy's side to the fresh Tansu made
librdkafka 2.16 crash with a segmentation fault half a second later: its connection state,
fetch sessions among it, belongs to the old broker.)
Producer ids are cleared from the batches before the data Tansu sees them (a fresh one
would refuse an id it did not issue); what this gives up is the broker's own suppression of
a producer's retried duplicate, which every consumer of the stack already tolerates (event
and entry ids).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import struct
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import uvloop

from streambill.broker import journal as jr
from streambill.broker import wire
from streambill.broker.compaction import DAY_MS, Retention, compact
from streambill.broker.journal import Journal
from streambill.broker.process import ChildProcess, free_port, tcp_accepts
from streambill.broker.replay import replay
from streambill.malloc import limit_arenas, trim_heap
from streambill.shutdown import exit_when_orphaned

log = logging.getLogger(__name__)

_SIZE: Final = struct.Struct(">i")
_MAX_FRAME: Final = 256 * 1024 * 1024
READY_LINE: Final = "journal proxy listening"
COMPACT_BYTES: Final = 256 * 2**20
COMPACT_CHECK_S: Final = 30.0
ROTATE_BATCHES: Final = 2_000  # in one partition
QUIESCE_S: Final = 10.0
# A due compaction and rotation waits while more than this is journaled per second, until
# the journal or a partition reaches OVERDUE times its threshold (see _maintain).
BUSY_BYTES_PER_S: Final = 2**20
OVERDUE: Final = 3
FETCH_MAX_BYTES: Final = 8 * 2**20
# Consumer groups, their offsets and producer ids: the groups' Tansu, which never rotates.
_TOPIC_ALREADY_EXISTS: Final = 36
GROUP_APIS: Final = frozenset({8, 9, 10, 11, 12, 13, 14, 15, 16, 22, 42, 47, 68, 69})


class DataBroker:
    """A data Tansu that the proxy starts (and replaces): in memory, on a free loopback
    port, advertising the proxy's address. It dies with the proxy (SIGKILL on its death)."""

    def __init__(
        self,
        binary: str,
        advertised: str,
        log_dir: Path,
        run_dir: Path | None = None,
        generation: int = 0,
    ) -> None:
        self.binary = binary
        self.advertised = advertised
        self.log_dir = log_dir
        self.run_dir = run_dir
        self.generation = generation
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self._child: ChildProcess | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def successor(self) -> DataBroker:
        return DataBroker(
            self.binary, self.advertised, self.log_dir, self.run_dir, self.generation + 1
        )

    def start(self, timeout_s: float = 30.0) -> None:
        host = "127.0.0.1"
        port = free_port(host)
        argv = [self.binary, "broker", "--cluster-id", "tansu_cluster"]
        argv += ["--listener-url", f"tcp://{host}:{port}"]
        argv += ["--advertised-listener-url", f"tcp://{self.advertised}"]
        argv += ["--storage-engine", "memory://tansu/"]
        child = ChildProcess("broker-data", argv, log_dir=self.log_dir, death_signal=signal.SIGKILL)
        child.start()
        self._child = child
        deadline = time.monotonic() + timeout_s
        while not tcp_accepts(host, port):
            if child.poll() is not None or time.monotonic() > deadline:
                raise OSError(f"the data broker did not start: {child.log_tail(10)}")
            time.sleep(0.02)
        self.address = (host, port)
        if self.run_dir is not None and child.pid is not None:
            (self.run_dir / "broker-data.pid").write_text(f"{child.pid}\n")

    def poll(self) -> int | None:
        return self._child.poll() if self._child is not None else None

    def stop(self) -> None:
        if self._child is None:
            return
        pid = self._child.pid
        self._child.stop(10.0)
        if self.run_dir is not None:
            pid_file = self.run_dir / "broker-data.pid"
            with contextlib.suppress(OSError):
                if pid_file.read_text().strip() == str(pid):
                    pid_file.unlink()


class _GroupCommit:
    """Appends from every connection, written and synced together on the event loop.

    Every payload submitted while the loop handles one round of ready I/O is written and
    ``fdatasync``ed once, right after that round. The write and the sync block the loop for
    a fraction of a millisecond (0.2 ms for 256 KiB here). They ran on a thread before, and a
    produce then waited 3 to 8 ms for its sync under load: not for the disk but for the
    interpreter lock, which the finished thread must take back from a busy loop (the switch
    interval is 5 ms).
    """

    def __init__(self, journal: Journal, on_failure: asyncio.Event) -> None:
        self.journal = journal
        self._pending: list[tuple[list[bytes], asyncio.Future[None]]] = []
        self._scheduled = False
        self._failed = on_failure

    def submit(self, payloads: list[bytes]) -> asyncio.Future[None]:
        """A future that completes once ``payloads`` (and everything before) are durable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((payloads, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._scheduled = False
        payloads = [p for ps, _ in batch for p in ps]
        try:
            self.journal.append(payloads)
        except Exception as exc:
            log.exception("writing the broker journal failed; stopping the broker")
            self._failed.set()
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    def close(self) -> None:
        if self._pending:
            self._flush()
        self.journal.close()


@dataclass(slots=True, eq=False)  # hashed by identity: open requests are kept in a set
class _Request:
    header: wire.RequestHeader
    slot: asyncio.Future[bytes | None]
    produce: wire.ProduceRequest | None = None
    commits: list[wire.CommittedOffset] = field(default_factory=list)
    topics: list[wire.NewTopicRequest] = field(default_factory=list)
    swallow: bool = False  # acks=0: the client expects no response
    durable: asyncio.Future[None] | None = None  # produce: journaled (or failed)
    frame_out: bytes = b""  # what goes to Tansu (acks patched for acks=0)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = _SIZE.unpack(await reader.readexactly(4))[0]
    if not 0 < size <= _MAX_FRAME:
        raise wire.WireError(f"frame of {size} bytes")
    return await reader.readexactly(size)


class _Upstream:
    """One connection to a Tansu: requests go out in order, responses come back in order."""

    def __init__(
        self, proxy: JournalProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.pending: deque[_Request] = deque()
        self.drained = asyncio.Event()
        self.writer = writer
        self.task = asyncio.create_task(proxy._from_upstream(reader, self.pending, self.drained))

    async def send(self, request: _Request) -> None:
        self.pending.append(request)
        self.drained.clear()
        self.writer.write(_SIZE.pack(len(request.frame_out)) + request.frame_out)
        if self.writer.transport.get_write_buffer_size() > 1 << 20:
            await self.writer.drain()

    async def finish(self, settle: Callable[[_Request], None]) -> None:
        """Read what Tansu still answers (accepted produces get journaled), then close."""
        while self.pending and not self.task.done():
            self.drained.clear()
            waiter = asyncio.ensure_future(self.drained.wait())
            await asyncio.wait([waiter, self.task], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        self.task.cancel()
        for request in self.pending:
            settle(request)
        self.pending.clear()
        self.writer.close()


class JournalProxy:
    """Serve Kafka clients, forwarding to the data Tansu and the groups' Tansu."""

    def __init__(
        self,
        journal: Journal,
        data: DataBroker,
        coordinator: tuple[str, int] | None = None,
        retention: Retention | None = None,
        compact_bytes: int = COMPACT_BYTES,
        compact_check_s: float = COMPACT_CHECK_S,
        rotate_batches: int = ROTATE_BATCHES,
    ) -> None:
        self.data = data
        self.coordinator = coordinator
        self.journal = journal
        self.retention = retention or Retention()
        self.compact_bytes = compact_bytes
        self.compact_check_s = compact_check_s
        self.rotate_batches = rotate_batches
        self.failed = asyncio.Event()
        self._commit = _GroupCommit(journal, self.failed)
        self._inflight: set[asyncio.Future[None]] = set()
        self._sessions: set[asyncio.Task[None]] = set()
        self._active: set[asyncio.Task[None]] = set()  # sessions connected to a broker
        self._clients: set[asyncio.StreamWriter] = set()
        self._open: set[_Request] = set()  # forwarded, not yet answered to the client
        self._idle = asyncio.Event()  # set when the last open request was answered
        self._gate = asyncio.Event()
        self._gate.set()
        self._rotating = False
        self.requests = 0
        self.held_fetches = 0
        self.rotations = 0
        # Record batches per partition since the data Tansu started: what makes its reads slow.
        self.batches: Counter[tuple[str, int]] = Counter()
        # Topics the groups' Tansu has: it refuses to commit offsets of any other.
        self.coordinator_topics: set[str] = set()
        self._coordinator_lock = asyncio.Lock()
        self._coordinator_link: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def serve(self, host: str, port: int, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._accept, host, port, backlog=512)
        print(f"{READY_LINE} on {host}:{port}", flush=True)
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.failed.wait())]
        maintenance = asyncio.create_task(self._maintain())
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            maintenance.cancel()
            for wait in waits:
                wait.cancel()
            server.close()
            for task in list(self._sessions):
                task.cancel()
            await asyncio.gather(*self._sessions, maintenance, return_exceptions=True)
            await server.wait_closed()
            self._commit.close()
        if self.failed.is_set():
            raise SystemExit(1)

    async def _maintain(self) -> None:
        """Watch the data Tansu; compact the journal and rotate the data Tansu when due.

        A rotation costs CPU in proportion to the records kept (the compaction rewrites
        them, the fresh Tansu is fed all of them: about 35 s of one core per million
        records on the 2-core bench machine) and pauses clients. During a burst that CPU
        comes out of the pipeline's, so a due rotation waits while the journal grows faster
        than :data:`BUSY_BYTES_PER_S`, but never past :data:`OVERDUE` times its thresholds:
        the data Tansu's memory stays bounded under any load.
        """
        written, clock = self.journal.synced_bytes, time.monotonic()
        deferred = False
        while True:
            await asyncio.sleep(self.compact_check_s)
            if self.data.poll() is not None:
                log.error("the data broker exited with %s; stopping", self.data.poll())
                self.failed.set()
                return
            trim_heap()  # big fetch answers came and went
            journal = self.journal
            now = time.monotonic()
            rate = (journal.synced_bytes - written) / max(now - clock, 1e-3)
            written, clock = journal.synced_bytes, now
            segments = sum(p.stat().st_size for p in journal.paths() if p.name[0].isdigit())
            most = max(self.batches.values(), default=0)
            if segments < self.compact_bytes and most < self.rotate_batches:
                continue
            overdue = (
                segments >= OVERDUE * self.compact_bytes or most >= OVERDUE * self.rotate_batches
            )
            if rate > BUSY_BYTES_PER_S and not overdue:
                if not deferred:
                    log.info(
                        "compaction and rotation due (%.0f MiB journaled, %d batches in a "
                        "partition), waiting while %.1f MiB/s are journaled",
                        segments / 2**20,
                        most,
                        rate / 2**20,
                    )
                deferred = True
                continue
            deferred = False
            try:
                await self.rotate()
            except Exception:
                log.exception("compacting the journal or rotating the data broker failed")

    async def rotate(self) -> None:
        """Compact the journal, and move the records to a fresh data Tansu (see above)."""
        started = time.monotonic()
        self.batches.clear()
        below = self.journal.roll()  # on the loop, between two appends
        await asyncio.to_thread(compact, self.journal, self.retention, below=below)
        fresh = self.data.successor()
        try:
            await asyncio.to_thread(fresh.start)
            restored = await asyncio.to_thread(
                replay, self.journal, fresh.bootstrap, below=below, commits=False
            )
            paused = time.monotonic()
            self._gate.clear()
            await self._quiesce()
            await asyncio.to_thread(
                replay,
                self.journal,
                fresh.bootstrap,
                start=below,
                ends=restored.ends,
                commits=False,
            )
        except BaseException:
            self._gate.set()
            await asyncio.to_thread(fresh.stop)
            raise
        old, self.data = self.data, fresh
        self._gate.set()
        self.rotations += 1
        log.info(
            "data broker rotated: %d records kept, clients paused %.0f ms, %.1f s in all",
            restored.records,
            (time.monotonic() - paused) * 1000,
            time.monotonic() - started,
        )
        await asyncio.to_thread(old.stop)
        trim_heap()

    async def _quiesce(self) -> None:
        """With new requests held back: let every open request finish, then close every
        client connection (clients reconnect once the gate opens)."""
        if self._open:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), QUIESCE_S)
        if self._open:
            log.warning(
                "rotating with %d requests still open (dropped): API keys %s",
                len(self._open),
                sorted({(r.header.api_key, r.slot.done()) for r in self._open}),
            )
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        for writer in list(self._clients):
            writer.transport.abort()
        # Sessions past the gate end now; new ones wait at the gate for the fresh broker.
        if self._active:
            await asyncio.wait(list(self._active), timeout=QUIESCE_S)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._gate.wait()
            self._clients.add(writer)
            self._active.add(task)
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client left, or the proxy stops
        except wire.WireError as exc:
            log.warning("closing a client connection: %s", exc)
        finally:
            self._sessions.discard(task)
            self._active.discard(task)
            self._clients.discard(writer)
            writer.close()

    async def _connect(self, address: tuple[str, int]) -> _Upstream | None:
        try:
            reader, writer = await asyncio.open_connection(*address)
        except OSError as exc:
            log.error("the broker at %s:%d does not answer: %s", *address, exc)
            self.failed.set()
            return None
        return _Upstream(self, reader, writer)

    async def _session(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        data = await self._connect(self.data.address)
        if data is None:
            return
        groups: _Upstream | None = None
        order: asyncio.Queue[_Request | None] = asyncio.Queue()
        writer_task = asyncio.create_task(self._to_client(cwriter, order))
        mine: set[_Request] = set()
        try:
            while True:
                try:
                    frame = await _read_frame(creader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                if not self._gate.is_set():
                    break  # a rotation: this connection closes, the client comes back
                request = self._admit(frame)
                target = data
                if self.coordinator is not None and request.header.api_key in GROUP_APIS:
                    if groups is None:
                        groups = await self._connect(self.coordinator)
                        if groups is None:
                            break
                    target = groups
                self._open.add(request)
                mine.add(request)
                order.put_nowait(request)
                await target.send(request)
            order.put_nowait(None)
            await data.finish(self._settle)
            if groups is not None:
                await groups.finish(self._settle)
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await writer_task
        finally:
            writer_task.cancel()
            for up in (data, groups):
                if up is not None:
                    up.task.cancel()
                    for request in up.pending:
                        self._settle(request)
                    up.writer.close()
            self._forget(mine)

    def _forget(self, requests: Iterable[_Request]) -> None:
        self._open.difference_update(requests)
        if not self._open:
            self._idle.set()

    def _admit(self, frame: bytes) -> _Request:
        header = wire.request_header(frame)
        self.requests += 1
        slot: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        request = _Request(header, slot)
        request.frame_out = frame
        if header.api_key == wire.PRODUCE:
            request.produce = wire.produce_request(frame, header)
            out = bytearray(frame)
            if request.produce.acks == 0:
                wire.patch_acks(out, header, 1)
                request.swallow = True
            if self.coordinator is not None:
                wire.strip_producer(out, request.produce)
            request.frame_out = bytes(out)
            request.durable = asyncio.get_running_loop().create_future()
            self._inflight.add(request.durable)
        elif header.api_key == wire.FETCH:
            # A fetch answer passes through (and may wait in) the proxy whole: clients ask
            # for up to 50 MiB each, which grew the proxy to 2.5 GB under the bench.
            capped = wire.cap_fetch_bytes(frame, header, FETCH_MAX_BYTES)
            if capped is not None:
                request.frame_out = capped
        elif header.api_key == wire.OFFSET_COMMIT:
            request.commits = wire.offset_commit_request(frame, header)
        elif header.api_key == wire.CREATE_TOPICS:
            topics, validate_only = wire.create_topics_request(frame, header)
            request.topics = [] if validate_only else topics
        return request

    async def _from_upstream(
        self, ureader: asyncio.StreamReader, pending: deque[_Request], drained: asyncio.Event
    ) -> None:
        while True:
            try:
                frame = await _read_frame(ureader)
            except (asyncio.IncompleteReadError, ConnectionError):
                if pending:
                    log.warning(
                        "the broker closed a connection with %d requests open", len(pending)
                    )
                for request in pending:
                    self._settle(request)  # the client's connection closes on the first
                pending.clear()
                drained.set()
                return
            if not pending:
                raise wire.WireError("a response without a request")
            request = pending.popleft()
            correlation = _SIZE.unpack_from(frame, 0)[0]
            if correlation != request.header.correlation_id:
                raise wire.WireError(
                    f"response {correlation} for request {request.header.correlation_id}"
                )
            self._answer(request, frame)
            if not pending:
                drained.set()

    def _answer(self, request: _Request, frame: bytes) -> None:
        key, version = request.header.api_key, request.header.api_version
        if key == wire.PRODUCE and request.produce is not None:
            payloads, new_topics = self._produce_payloads(request.produce, frame, version)
            for part in request.produce.partitions:
                self.batches[(part.topic, part.partition)] += 1
            written: asyncio.Future[Any] = self._commit.submit(payloads)
            if new_topics:  # created by Tansu on first use: the groups' Tansu needs them too
                mirrored = asyncio.ensure_future(self._mirror_topics(new_topics))
                written = asyncio.gather(written, mirrored)
            written.add_done_callback(lambda f: self._produced(request, frame, f))
        elif key == wire.FETCH and self._inflight:
            self.held_fetches += 1
            barrier = asyncio.gather(*self._inflight, return_exceptions=True)
            barrier.add_done_callback(lambda _f: _fill(request.slot, frame))
        elif key == wire.OFFSET_COMMIT and request.commits:
            errors = wire.offset_commit_response(frame, version)
            payloads = [
                jr.encode_commit(c.group, c.topic, c.partition, c.offset, c.metadata)
                for c in request.commits
                if errors.get((c.topic, c.partition)) == 0
            ]
            self._after(payloads, request, frame)
        elif key == wire.CREATE_TOPICS and request.topics:
            outcome = wire.create_topics_response(frame, version)
            new = [t for t in request.topics if outcome.get(t.name) == 0]
            payloads = [jr.encode_topic(t.name, t.partitions, t.config) for t in new]
            both = asyncio.gather(self._commit.submit(payloads), self._mirror_topics(new))
            both.add_done_callback(
                lambda f: _fill(request.slot, frame if f.exception() is None else None)
            )
        else:
            _fill(request.slot, frame)

    def _after(self, payloads: list[bytes], request: _Request, frame: bytes) -> None:
        if not payloads:
            _fill(request.slot, frame)
            return
        written = self._commit.submit(payloads)
        written.add_done_callback(
            lambda f: _fill(request.slot, frame if f.exception() is None else None)
        )

    def _produce_payloads(
        self, produce: wire.ProduceRequest, frame: bytes, version: int
    ) -> tuple[list[bytes], list[wire.NewTopicRequest]]:
        """The journal entries of a produce's accepted batches, and the topics among them
        the groups' Tansu does not know yet."""
        sent = {(p.topic, p.partition): p.records for p in produce.partitions}
        payloads = []
        new: dict[str, int] = {}
        for result in wire.produce_response(frame, version):
            records = sent.get((result.topic, result.partition))
            if result.error_code == 0 and result.base_offset >= 0 and records is not None:
                payloads.append(
                    jr.encode_batches(result.topic, result.partition, result.base_offset, records)
                )
                if self.coordinator is not None and result.topic not in self.coordinator_topics:
                    new[result.topic] = max(new.get(result.topic, 4), result.partition + 1)
        return payloads, [wire.NewTopicRequest(t, n, {}) for t, n in new.items()]

    async def _mirror_topics(self, topics: list[wire.NewTopicRequest]) -> None:
        """Create ``topics`` on the groups' Tansu too (it refuses offsets of unknown ones)."""
        if self.coordinator is None:
            return
        async with self._coordinator_lock:
            missing = [t for t in topics if t.name not in self.coordinator_topics]
            if not missing:
                return
            if self._coordinator_link is None:
                self._coordinator_link = await asyncio.open_connection(*self.coordinator)
            reader, writer = self._coordinator_link
            self.requests += 1
            frame = wire.create_topics_frame(self.requests, "streambill-journal", missing)
            writer.write(_SIZE.pack(len(frame)) + frame)
            await writer.drain()
            errors = wire.create_topics_response(await _read_frame(reader), 4)
            failed = {n: c for n, c in errors.items() if c not in (0, _TOPIC_ALREADY_EXISTS)}
            if failed:
                raise wire.WireError(f"the groups' broker did not create {failed}")
            self.coordinator_topics.update(t.name for t in missing)

    def _produced(self, request: _Request, frame: bytes, written: asyncio.Future[None]) -> None:
        ok = written.exception() is None
        _fill(request.slot, frame if ok else None)
        self._settle(request)

    def _settle(self, request: _Request) -> None:
        if request.durable is not None:
            self._inflight.discard(request.durable)
            if not request.durable.done():
                request.durable.set_result(None)
        if not request.slot.done():
            request.slot.set_result(None)

    async def _to_client(
        self, cwriter: asyncio.StreamWriter, order: asyncio.Queue[_Request | None]
    ) -> None:
        while True:
            request = await order.get()
            if request is None:
                return
            frame = await request.slot
            self._forget((request,))
            if frame is None:
                # Not durable (the journal failed) or the broker dropped the connection: the
                # client must not take it for an answer.
                cwriter.close()
                return
            if not request.swallow:
                cwriter.write(_SIZE.pack(len(frame)) + frame)
                if order.empty() or cwriter.transport.get_write_buffer_size() > 1 << 20:
                    await cwriter.drain()


def _fill(slot: asyncio.Future[bytes | None], frame: bytes | None) -> None:
    if not slot.done():
        slot.set_result(frame)


async def _main(args: argparse.Namespace) -> None:
    limit_arenas(2)  # before any thread: compactions and replays run in threads
    # A compaction or replay thread holds the interpreter lock for up to the switch interval
    # whenever the loop wants it back (5 ms by default): every forwarded request would wait.
    sys.setswitchinterval(0.001)
    journal = Journal.open(Path(args.journal))
    retention_ms = int(args.retention_hours * 3600 * 1000)
    # Tombstones stay as long as other records (Kafka's delete.retention.ms, 24 h, is the
    # default retention too), so a shorter retention also forgets deletes sooner.
    retention = Retention(default_ms=retention_ms, tombstone_ms=min(DAY_MS, retention_ms))
    compact_bytes = int(args.compact_mib * 2**20)
    if sum(p.stat().st_size for p in journal.paths() if p.name[0].isdigit()) >= compact_bytes:
        await asyncio.to_thread(compact, journal, retention)  # a shorter replay, now and later
    run_dir = Path(args.run_dir) if args.run_dir else None
    data = DataBroker(args.tansu_bin, args.listen, Path(args.log_dir), run_dir)
    await asyncio.to_thread(data.start)
    try:
        restored = await asyncio.to_thread(
            replay, journal, data.bootstrap, coordinator=args.coordinator
        )
        log.info(
            "broker restored from its journal: %d records in %d partitions, %d group offsets",
            restored.records,
            len(restored.ends),
            restored.commits,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        coordinator_host, _, coordinator_port = args.coordinator.rpartition(":")
        proxy = JournalProxy(
            journal,
            data,
            (coordinator_host, int(coordinator_port)),
            retention,
            compact_bytes,
            args.compact_check_s,
            args.rotate_batches,
        )
        proxy.coordinator_topics.update(restored.topics)
        trim_heap()  # the replay's records are gone
        listen_host, _, listen_port = args.listen.rpartition(":")
        await proxy.serve(listen_host, int(listen_port), stop)
        log.info(
            "journal proxy stopped after %d requests, %d rotations",
            proxy.requests,
            proxy.rotations,
        )
    finally:
        await asyncio.to_thread(proxy.data.stop if "proxy" in locals() else data.stop)


def main(argv: list[str] | None = None) -> None:
    exit_when_orphaned()  # the broker stops with `up`, even when its own stop hangs
    parser = argparse.ArgumentParser(prog="streambill-broker-journal", description=__doc__)
    parser.add_argument("--journal", required=True, help="the journal's directory")
    parser.add_argument("--coordinator", required=True, help="host:port of the groups' Tansu")
    parser.add_argument("--tansu-bin", required=True, help="the Tansu binary for data brokers")
    parser.add_argument("--log-dir", required=True, help="where the data brokers log")
    parser.add_argument("--run-dir", default="", help="where the data broker's pid file goes")
    parser.add_argument("--listen", required=True, help="host:port for Kafka clients")
    parser.add_argument(
        "--retention-hours",
        type=float,
        default=24.0,
        help="how long records of topics without their own retention.ms are kept",
    )
    parser.add_argument(
        "--compact-mib",
        type=float,
        default=COMPACT_BYTES / 2**20,
        help="compact the journal once this much was written since the last compaction",
    )
    parser.add_argument(
        "--compact-check-s",
        type=float,
        default=COMPACT_CHECK_S,
        help="how often to look whether a compaction is due",
    )
    parser.add_argument(
        "--rotate-batches",
        type=int,
        default=ROTATE_BATCHES,
        help="rotate the data broker once a partition got this many record batches "
        "(and at a compaction)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        # libuv's loop: every record of the stack passes through this process twice (in
        # and out), and uvloop's sockets and callbacks cost less per pass than asyncio's.
        uvloop.run(_main(args))


if __name__ == "__main__":
    main()


__all__ = ["READY_LINE", "JournalProxy", "main"]
