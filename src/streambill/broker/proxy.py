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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import struct
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from streambill.broker import journal as jr
from streambill.broker import wire
from streambill.broker.compaction import Retention, compact
from streambill.broker.journal import Journal

log = logging.getLogger(__name__)

_SIZE: Final = struct.Struct(">i")
_MAX_FRAME: Final = 256 * 1024 * 1024
READY_LINE: Final = "journal proxy listening"
COMPACT_BYTES: Final = 256 * 2**20
COMPACT_CHECK_S: Final = 30.0


class _GroupCommit:
    """Appends from every connection, written and synced together in a thread."""

    def __init__(self, journal: Journal, on_failure: asyncio.Event) -> None:
        self.journal = journal
        self._pending: list[tuple[list[bytes], asyncio.Future[None]]] = []
        self._writing = False
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._failed = on_failure

    def submit(self, payloads: list[bytes]) -> asyncio.Future[None]:
        """A future that completes once ``payloads`` (and everything before) are durable."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((payloads, future))
        if not self._writing:
            self._writing = True
            asyncio.get_running_loop().create_task(self._drain())
        return future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                payloads = [p for ps, _ in batch for p in ps]
                try:
                    await loop.run_in_executor(self.executor, self.journal.append, payloads)
                except Exception as exc:
                    log.exception("writing the broker journal failed; stopping the broker")
                    self._failed.set()
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._writing = False

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.journal.close()


@dataclass(slots=True)
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


class JournalProxy:
    """Serve Kafka clients on ``listen``, forwarding to Tansu at ``upstream``."""

    def __init__(
        self,
        journal: Journal,
        upstream: tuple[str, int],
        retention: Retention | None = None,
        compact_bytes: int = COMPACT_BYTES,
        compact_check_s: float = COMPACT_CHECK_S,
    ) -> None:
        self.compact_check_s = compact_check_s
        self.upstream = upstream
        self.journal = journal
        self.retention = retention or Retention()
        self.compact_bytes = compact_bytes
        self.compactions = 0
        self.failed = asyncio.Event()
        self._commit = _GroupCommit(journal, self.failed)
        self._inflight: set[asyncio.Future[None]] = set()
        self._sessions: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.held_fetches = 0

    async def serve(self, host: str, port: int, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._accept, host, port, backlog=512)
        print(f"{READY_LINE} on {host}:{port}", flush=True)
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.failed.wait())]
        compactor = asyncio.create_task(self._compact_when_due())
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            compactor.cancel()
            for wait in waits:
                wait.cancel()
            server.close()
            for task in list(self._sessions):
                task.cancel()
            await asyncio.gather(*self._sessions, return_exceptions=True)
            await server.wait_closed()
            self._commit.close()
        if self.failed.is_set():
            raise SystemExit(1)

    async def _compact_when_due(self) -> None:
        """Compact the journal whenever its segments since the checkpoint pass
        ``compact_bytes``: its size (and a start's replay) then follows the retention."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.compact_check_s)
            journal = self.journal
            segments = sum(p.stat().st_size for p in journal.paths() if p.name[0].isdigit())
            if segments < self.compact_bytes:
                continue
            try:
                # The roll runs on the journal thread, between two appends.
                below = await loop.run_in_executor(self._commit.executor, journal.roll)
                await asyncio.to_thread(compact, journal, self.retention, below=below)
                self.compactions += 1
            except Exception:
                log.exception("compacting the broker journal failed; it keeps growing")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except wire.WireError as exc:
            log.warning("closing a client connection: %s", exc)
        finally:
            self._sessions.discard(task)
            writer.close()

    async def _session(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.error("the broker behind the journal does not answer: %s", exc)
            self.failed.set()
            return
        pending: deque[_Request] = deque()
        drained = asyncio.Event()
        order: asyncio.Queue[_Request | None] = asyncio.Queue()
        upstream_task = asyncio.create_task(self._from_upstream(ureader, pending, drained))
        writer_task = asyncio.create_task(self._to_client(cwriter, order))
        try:
            while True:
                try:
                    frame = await _read_frame(creader)
                except asyncio.IncompleteReadError:
                    break
                request = self._admit(frame)
                pending.append(request)
                drained.clear()
                order.put_nowait(request)
                uwriter.write(_SIZE.pack(len(request.frame_out)) + request.frame_out)
                if uwriter.transport.get_write_buffer_size() > 1 << 20:
                    await uwriter.drain()
            # The client left: still read what Tansu answers, so accepted produces get
            # journaled, then close.
            order.put_nowait(None)
            while pending and not upstream_task.done():
                drained.clear()
                await asyncio.wait(
                    [asyncio.ensure_future(drained.wait()), upstream_task],
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            upstream_task.cancel()
            writer_task.cancel()
            for request in pending:
                self._settle(request)
            uwriter.close()

    def _admit(self, frame: bytes) -> _Request:
        header = wire.request_header(frame)
        self.requests += 1
        slot: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        request = _Request(header, slot)
        request.frame_out = frame
        if header.api_key == wire.PRODUCE:
            request.produce = wire.produce_request(frame, header)
            if request.produce.acks == 0:
                patched = bytearray(frame)
                wire.patch_acks(patched, header, 1)
                request.frame_out = bytes(patched)
                request.swallow = True
            request.durable = asyncio.get_running_loop().create_future()
            self._inflight.add(request.durable)
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
            except asyncio.IncompleteReadError:
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
            payloads = self._produce_payloads(request.produce, frame, version)
            written = self._commit.submit(payloads)
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
            created = wire.create_topics_response(frame, version)
            payloads = [
                jr.encode_topic(t.name, t.partitions, t.config)
                for t in request.topics
                if created.get(t.name) == 0
            ]
            self._after(payloads, request, frame)
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
    ) -> list[bytes]:
        sent = {(p.topic, p.partition): p.records for p in produce.partitions}
        payloads = []
        for result in wire.produce_response(frame, version):
            records = sent.get((result.topic, result.partition))
            if result.error_code == 0 and result.base_offset >= 0 and records is not None:
                payloads.append(
                    jr.encode_batches(result.topic, result.partition, result.base_offset, records)
                )
        return payloads

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
    from streambill.broker.replay import replay

    journal = Journal.open(Path(args.journal))
    upstream_host, _, upstream_port = args.upstream.rpartition(":")
    retention = Retention(default_ms=int(args.retention_hours * 3600 * 1000))
    compact_bytes = int(args.compact_mib * 2**20)
    if sum(p.stat().st_size for p in journal.paths() if p.name[0].isdigit()) >= compact_bytes:
        await asyncio.to_thread(compact, journal, retention)  # a shorter replay, now and later
    restored = await asyncio.to_thread(replay, journal, args.upstream)
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
    proxy = JournalProxy(
        journal, (upstream_host, int(upstream_port)), retention, compact_bytes, args.compact_check_s
    )
    listen_host, _, listen_port = args.listen.rpartition(":")
    await proxy.serve(listen_host, int(listen_port), stop)
    log.info("journal proxy stopped after %d requests", proxy.requests)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="streambill-broker-journal", description=__doc__)
    parser.add_argument("--journal", required=True, help="the journal's directory")
    parser.add_argument("--upstream", required=True, help="Tansu's host:port")
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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()


__all__ = ["READY_LINE", "JournalProxy", "main"]
