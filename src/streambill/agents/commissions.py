"""The ``commissions`` agent: re-keys the ledger by reseller and accrues commissions.

Two stages run in one loop on one consumer, for the partition numbers this worker owns:

1. **re-key**: ledger entries of resellers' customers (usage, top-ups, refunds,
   chargebacks) are forwarded as they are to ``streambill.commission-facts.v1``, keyed by
   ``reseller_id``, so all facts of one reseller meet in one partition in one order.
   Where it has read the ledger to is kept in ``stream_offsets`` (consumer ``commissions``);
   after a crash it forwards some entries again, which the books drop by the customer's
   ledger ``seq``.
2. **accrue**: each facts partition's books (engine/commissions.py) turn facts into
   commission entries on ``billing.commissions.v1`` (key ``reseller_id``). The state and the
   offset it covers are checkpointed together in ``commission_checkpoints`` about once a
   second, after everything before it was acknowledged by the broker; a restart replays from
   the checkpoint and re-emits the same entries (same ids, same amounts), which the sink
   collapses.

Plans (from the resellers' account records) and reference rates (the control plane's
``exchange_rates`` table) reach the books as markers this agent writes into its own facts
partitions, so they take effect at one place in the partition's order, the same on a replay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final

import orjson
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from prometheus_client import Counter, Gauge
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from streambill.agents.offsets import assigned_consumer, store_offsets, stored_offsets
from streambill.agents.publisher import Publisher
from streambill.control.models import CommissionCheckpoint, ExchangeRate
from streambill.domain.commissions import KINDS
from streambill.engine.balances import Message, Record, partition_for
from streambill.engine.commissions import (
    FACTS,
    CommissionPartition,
    ResellerAccount,
    rates_marker,
    tick_marker,
)
from streambill.streams import topics

log = logging.getLogger(__name__)

CONSUMER: Final = "commissions"
BATCH_MAX: Final = 1000
POLL_S: Final = 0.05
ERROR_BACKOFF_S: Final = 2.0
RATES_EVERY_S: Final = 2.0
PLANS_EVERY_S: Final = 1.0
# How long a slice stays open before the agent asks for it to be closed (the live ticker's
# pace; shorter means more entries).
TICK_S: Final = 0.25
# Rates are re-read from this long before the newest one seen (rows committed late).
RATES_OVERLAP: Final = timedelta(minutes=5)
# Ledger kinds that count for commissions; the rest are not forwarded.
FORWARDED: Final = frozenset(kind.encode() for kind in KINDS)

FACTS_TOTAL = Counter("streambill_commission_ledger_read_total", "Ledger entries read to re-key")
ENTRIES_TOTAL = Counter("streambill_commission_entries_total", "Commission entries emitted")
PARKED = Gauge(
    "streambill_commission_parked_facts",
    "Facts waiting for a reseller's plan or a reference rate (this worker)",
)
CHECKPOINT_SECONDS = Gauge(
    "streambill_commission_checkpoint_seconds", "Duration of the last commission checkpoint"
)


_RESELLER: Final = b'"reseller_id":'
_KIND: Final = b'"kind":"'


def reseller_of(value: bytes) -> bytes | None:
    """The reseller id of a ledger entry that counts for commissions, else None.

    The reseller and the kind are read by a scan of the bytes (entries are written by the
    balances agent with orjson: no spaces, these keys once, ids never escaped), a fraction
    of a full decode; anything unexpected goes through the full decode.

    >>> reseller_of(b'{"customer_id":"c","reseller_id":"r","kind":"usage"}')
    b'r'
    >>> reseller_of(b'{"customer_id":"c","reseller_id":null,"kind":"usage"}') is None
    True
    >>> reseller_of(b'{"customer_id":"c","reseller_id":"r","kind":"adjustment"}') is None
    True
    >>> reseller_of(b'{"reseller_id": "r", "kind": "topup"}')  # not our layout: decoded
    b'r'
    """
    at = value.find(_RESELLER)
    reseller: bytes | None = None
    kind: bytes | None = None
    if at >= 0:
        start = at + len(_RESELLER)
        if value.startswith(b"null", start):
            return None
        if value[start : start + 1] == b'"':
            end = value.find(b'"', start + 1)
            kind_at = value.find(_KIND, end)
            if end > start and kind_at > 0:
                kind_start = kind_at + len(_KIND)
                reseller = value[start + 1 : end]
                kind = value[kind_start : value.find(b'"', kind_start)]
    if reseller is None or kind is None or b"\\" in reseller:
        try:
            obj = orjson.loads(value)
            rid, name = obj.get("reseller_id"), obj.get("kind")
        except (orjson.JSONDecodeError, AttributeError):
            return None  # the balances agent only writes valid entries; nothing to accrue
        if not isinstance(rid, str) or not isinstance(name, str):
            return None
        reseller, kind = rid.encode(), name.encode()
    return reseller if kind in FORWARDED else None


def rekey(values: list[bytes], partitions: int) -> list[Message]:
    """One facts message per reseller for a batch of ledger entries: a JSON array of its
    entries in ledger order (a message per entry would cost the producer, the broker and
    the reader more than the accrual itself).

    >>> [(m.key, m.value) for m in rekey([b'{"reseller_id":"r","kind":"usage","n":1}',
    ...                                   b'{"reseller_id":null,"kind":"usage"}',
    ...                                   b'{"reseller_id":"r","kind":"topup","n":2}'], 4)]
    [(b'r', b'[{"reseller_id":"r","kind":"usage","n":1},{"reseller_id":"r","kind":"topup","n":2}]')]
    """
    grouped: dict[bytes, list[bytes]] = {}
    for value in values:
        reseller = reseller_of(value)
        if reseller is not None:
            held = grouped.get(reseller)
            if held is None:
                grouped[reseller] = [value]
            else:
                held.append(value)
    return [
        Message(FACTS, _route(reseller, partitions), reseller, b"[" + b",".join(held) + b"]")
        for reseller, held in grouped.items()
    ]


@lru_cache(maxsize=65536)
def _route(key: bytes, partitions: int) -> int:
    return partition_for(key, partitions)


class CommissionAgent:
    def __init__(
        self,
        bootstrap: str,
        sessions: async_sessionmaker[SqlSession],
        account_of: Callable[[str], ResellerAccount | None],
        *,
        partitions: int,
        fetch_wait_ms: int,
        checkpoint_s: float,
        publisher: Publisher,
    ) -> None:
        self.sessions = sessions
        self.account_of = account_of
        self.partitions = partitions
        self.checkpoint_s = checkpoint_s
        self.publisher = publisher
        self._consumer = assigned_consumer(bootstrap, CONSUMER, fetch_wait_ms, 8192)
        self.assigned: set[int] = set()
        self.books: dict[int, CommissionPartition] = {}
        self.ledger_next: dict[int, int] = {}
        self._ledger_stored: dict[int, int] = {}
        self._plan_requested: dict[str, int] = {}
        self._rates_requested: dict[int, set[tuple[date, str, Decimal]]] = {}
        self._last_checkpoint = 0.0
        self._last_rates = 0.0
        self._last_plans = 0.0
        self._rates_since: datetime | None = None
        self._stopping = False
        self._ticks: dict[int, tuple[int, float, bool]] = {}  # partition -> slice, since, asked
        self._stopped = asyncio.Event()
        self.entries_emitted = 0

    # -- assignment ----------------------------------------------------------------------

    async def _load(self, partitions: set[int]) -> tuple[dict[int, int], dict[int, Any]]:
        async with self.sessions() as session:
            ledger = await stored_offsets(session, CONSUMER, topics.LEDGER, partitions)
            checkpoints = (
                await session.execute(
                    select(CommissionCheckpoint.partition, CommissionCheckpoint.state).where(
                        CommissionCheckpoint.partition.in_(partitions)
                    )
                )
            ).all()
        return ledger, {int(p): orjson.loads(s) for p, s in checkpoints}

    async def sync(self, owned: set[int]) -> None:
        gone = self.assigned - owned
        if gone:
            await self.checkpoint(force=True)
            self._consumer.incremental_unassign(
                [TopicPartition(t, p) for p in gone for t in (topics.LEDGER, FACTS)]
            )
            self.assigned -= gone
            for p in gone:
                self.books.pop(p, None)
                self.ledger_next.pop(p, None)
                self._ledger_stored.pop(p, None)
                self._rates_requested.pop(p, None)
                self._ticks.pop(p, None)
        new = owned - self.assigned
        if new:
            ledger, states = await self._load(new)
            starts = []
            for p in sorted(new):
                state = states.get(p)
                book = (
                    CommissionPartition.from_state(p, self.partitions, state)
                    if state is not None
                    else CommissionPartition(p, self.partitions)
                )
                self.books[p] = book
                facts_at = book.next_offset if state is not None else OFFSET_BEGINNING
                starts.append(TopicPartition(FACTS, p, facts_at))
                starts.append(TopicPartition(topics.LEDGER, p, ledger.get(p, OFFSET_BEGINNING)))
            self._consumer.incremental_assign(starts)
            self.assigned |= new
            self._ledger_stored.update(ledger)
            self._plan_requested.clear()
            # A partition new here may lack any rate: read them all again, right away.
            self._rates_since = None
            self._last_rates = 0.0
            log.info(
                "commissions: %s",
                ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in starts),
            )

    # -- the loop ------------------------------------------------------------------------

    def _read(self) -> list[Any]:
        return [m for m in self._consumer.consume(BATCH_MAX, POLL_S) if m.error() is None]

    async def handle(self, messages: list[Any]) -> None:
        ledger: list[bytes] = []
        entries: list[Message] = []
        created_at = datetime.now(UTC).isoformat()
        for m in messages:
            partition = m.partition()
            if partition not in self.assigned:
                continue
            value = m.value()
            if m.topic() == topics.LEDGER:
                self.ledger_next[partition] = m.offset() + 1
                if value is not None:
                    ledger.append(value)
            else:
                book = self.books[partition]
                if m.offset() < book.next_offset:
                    continue  # covered by the checkpoint already
                rec = Record(FACTS, partition, m.offset(), m.key(), value)
                entries += book.handle(rec, created_at)
        # Facts first: the ledger offsets stored at the next checkpoint must never run
        # ahead of facts the broker has not acknowledged; entries likewise for the books.
        facts = rekey(ledger, self.partitions)
        if facts:
            await self.publisher.publish(facts)
            FACTS_TOTAL.inc(len(ledger))
        if entries:
            await self.publisher.publish(entries)
            ENTRIES_TOTAL.inc(len(entries))
            self.entries_emitted += len(entries)

    async def markers(self) -> None:
        """Plan markers for resellers whose account changed (or who wait for a first plan),
        rate markers for reference rates a partition does not hold yet."""
        out: list[Message] = []
        now = time.monotonic()
        # Plans change rarely: every reseller's account is looked at once a second, and at
        # once only for a partition with facts waiting for a first plan.
        plans_due = now - self._last_plans >= PLANS_EVERY_S
        if plans_due:
            self._last_plans = now
        for p, book in self.books.items():
            if plans_due or book.wants_plan:
                out += book.plan_markers(self.account_of, self._plan_requested)
            if book.slice_start is None:
                self._ticks.pop(p, None)
                continue
            start, since, asked = self._ticks.get(p, (-1, now, False))
            if start != book.slice_start:
                start, since, asked = book.slice_start, now, False
            if not asked and now - since >= TICK_S:
                out.append(tick_marker(p))
                asked = True
            self._ticks[p] = (start, since, asked)
        if now - self._last_rates >= RATES_EVERY_S:
            self._last_rates = now
            out += await self._rate_markers()
        if out:
            await self.publisher.publish(out)

    async def _rate_markers(self) -> list[Message]:
        rows = await self._recent_rates()
        out = []
        for p, book in self.books.items():
            asked = self._rates_requested.setdefault(p, set())
            missing = [r for r in book.missing_rates(rows) if r not in asked]
            if missing:
                asked.update(missing)
                out.append(rates_marker(missing, p))
        return out

    async def _recent_rates(self) -> list[tuple[date, str, Decimal]]:
        """Every rate on a first call, then those changed recently (with an overlap)."""
        since = self._rates_since
        async with self.sessions() as session:
            query = select(
                ExchangeRate.day, ExchangeRate.currency, ExchangeRate.rate, ExchangeRate.updated_at
            )
            if since is not None:
                query = query.where(ExchangeRate.updated_at >= since - RATES_OVERLAP)
            rows = (await session.execute(query)).all()
        if rows:
            newest = max(r[3] for r in rows)
            self._rates_since = newest if since is None else max(since, newest)
        elif since is None:
            self._rates_since = datetime.now(UTC) - RATES_OVERLAP
        return [(date.fromisoformat(d), c, Decimal(r)) for d, c, r, _ in rows]

    async def checkpoint(self, force: bool = False) -> None:
        """Write every owned partition's state and the ledger offsets, in one transaction."""
        now = time.monotonic()
        if not force and now - self._last_checkpoint < self.checkpoint_s:
            return
        self._last_checkpoint = now
        dirty = {p: b for p, b in self.books.items() if b.dirty}
        ledger = {p: o for p, o in self.ledger_next.items() if self._ledger_stored.get(p) != o}
        PARKED.set(sum(b.parked_count for b in self.books.values()))
        if not dirty and not ledger:
            return
        started = time.perf_counter()
        states = {p: orjson.dumps(b.to_state()).decode() for p, b in dirty.items()}
        stamp = datetime.now(UTC)
        async with self.sessions.begin() as session:
            for p, text in states.items():
                row = await session.get(CommissionCheckpoint, p)
                if row is None:
                    session.add(
                        CommissionCheckpoint(
                            partition=p, offset=dirty[p].next_offset, state=text, updated_at=stamp
                        )
                    )
                else:
                    row.offset, row.state, row.updated_at = dirty[p].next_offset, text, stamp
            await store_offsets(session, CONSUMER, topics.LEDGER, ledger, stamp)
        for book in dirty.values():
            book.dirty = False
        self._ledger_stored.update(ledger)
        CHECKPOINT_SECONDS.set(time.perf_counter() - started)

    async def run(self, owned: Callable[[], set[int]], ready: Callable[[], bool]) -> None:
        """Read, accrue and checkpoint until stopped; outages are waited out."""
        try:
            await self._loop(owned, ready)
        finally:
            self._stopped.set()

    async def _loop(self, owned: Callable[[], set[int]], ready: Callable[[], bool]) -> None:
        while True:
            try:
                if self._stopping:
                    # A quiescent point: everything handled is published, so the state
                    # checkpointed now is exactly what the broker holds.
                    await self.checkpoint(force=True)
                    return
                if not ready():
                    await asyncio.sleep(0.05)
                    continue
                wanted = owned()
                if wanted != self.assigned:
                    await self.sync(wanted)
                if not self.assigned:
                    await asyncio.sleep(0.05)
                    continue
                messages = await asyncio.to_thread(self._read)
                if messages:
                    await self.handle(messages)
                await self.markers()
                await self.checkpoint()
            except asyncio.CancelledError:
                raise
            except DBAPIError as exc:
                log.warning(
                    "commissions agent: control-plane database unavailable (%s); retry in %.0f s",
                    type(exc.orig).__name__,
                    ERROR_BACKOFF_S,
                )
                self._restart()
                await asyncio.sleep(ERROR_BACKOFF_S)
            except Exception:
                log.exception("commissions agent: retrying in %.0f s", ERROR_BACKOFF_S)
                self._restart()
                await asyncio.sleep(ERROR_BACKOFF_S)

    def _restart(self) -> None:
        """Start again from the last checkpoint: what was emitted since is emitted again,
        with the same ids and amounts."""
        if self.assigned:
            self._consumer.incremental_unassign(
                [TopicPartition(t, p) for p in self.assigned for t in (topics.LEDGER, FACTS)]
            )
        self.assigned.clear()
        self.books.clear()
        self.ledger_next.clear()
        self._ledger_stored.clear()
        self._plan_requested.clear()
        self._rates_requested.clear()
        # A tick asked for before the restart may never have reached the broker: ask again.
        self._ticks.clear()
        self._rates_since = None

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Let the loop finish its batch and write a last checkpoint (a restart then
        replays nothing); after ``timeout_s`` the last periodic checkpoint stands."""
        self._stopping = True
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout_s)
        except TimeoutError:
            log.warning("commissions agent: no final checkpoint; a restart replays more")

    def close(self) -> None:
        self._consumer.close()
        self.publisher.close()


def reseller_account(raw: bytes | None) -> ResellerAccount | None:
    """A reseller's account record (``billing.accounts.v1``) as the agent needs it.

    >>> reseller_account(b'{"kind":"reseller","currency":"EUR","version":3,'
    ...                  b'"commission_plan":null,"timezone":"UTC"}').version
    3
    >>> reseller_account(b'{"kind":"customer","currency":"EUR","version":1}') is None
    True
    """
    if raw is None:
        return None
    try:
        obj = orjson.loads(raw)
        if obj.get("kind") != "reseller":
            return None
        return ResellerAccount(
            obj["currency"],
            int(obj.get("version") or 0),
            obj.get("commission_plan"),
            obj.get("timezone"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
