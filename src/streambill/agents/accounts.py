"""The ``accounts`` agent: fills the global accounts table from ``billing.accounts.v1``.

The compacted accounts topic is consumed by the worker group; every account lands in a
GlobalTable whose changelog every worker reads in full, so each partition's events can look
up any account. Invalid account records go to the dead-letter topic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import faust
from faust.types.tables import GlobalTableT

from streambill.agents.app import BytesKeyed
from streambill.agents.metrics import ACCOUNTS_KNOWN
from streambill.agents.positions import SourcePositions
from streambill.agents.publisher import Publisher
from streambill.engine.balances import Message, Record, dead_letter_message
from streambill.errors import StreambillError
from streambill.streams import topics
from streambill.streams.events import AccountView, account_view, decode_account

log = logging.getLogger(__name__)


class AccountCache:
    """Parsed accounts, re-parsed only when the stored bytes change.

    Holds compact :class:`AccountView` objects, not the pydantic models (~2.5 KB each).
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        self._parsed: dict[str, tuple[bytes, AccountView]] = {}

    def get(self, account_id: str) -> AccountView | None:
        raw = self._store.get(account_id)
        if raw is None:
            return None
        held = self._parsed.get(account_id)
        if held is not None and held[0] is raw:
            return held[1]
        try:
            account = account_view(decode_account(raw))
        except StreambillError:  # validated before it was stored; a bad record is skipped
            return None
        self._parsed[account_id] = (raw, account)
        return account

    def __len__(self) -> int:
        return len(self._store)


def dead_letter(rec: Record, code: str, reason: str) -> Message:
    failed_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    return dead_letter_message(rec, code, reason, failed_at)


def register(
    app: faust.App,
    table: GlobalTableT,
    publisher: Publisher,
    positions: SourcePositions,
    follower_active: Callable[[], bool],
) -> Any:
    """Validates accounts and writes the global table's changelog; every worker's
    :class:`~streambill.agents.follower.ChangelogFollower` applies it to its table.

    The value is stored through the table's storage and published to the changelog
    explicitly (bytes keys, raw values), the same way the balances agent writes its tables.
    """
    store = BytesKeyed(table.data)
    source = app.topic(topics.ACCOUNTS, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="accounts")
    async def accounts(stream: Any) -> None:  # faust.Stream; StreamT lacks take_events
        async for events in stream.take_events(1000, within=0.05):
            out: list[Message] = []
            fresh: dict[str, bytes] = {}
            versions: dict[str, int] = {}
            # In offset order and once each: a late, older version never overwrites a newer.
            messages = await positions.admit([event.message for event in events])
            for msg in messages:
                rec = Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value)
                try:
                    account = decode_account(msg.value or b"")
                except StreambillError as exc:
                    out.append(dead_letter(rec, exc.code, exc.message))
                    continue
                if msg.key is not None and msg.key != account.account_id.encode():
                    reason = f"key {msg.key!r} differs from account_id {account.account_id!r}"
                    out.append(dead_letter(rec, "invalid_event", reason))
                    continue
                if _stale(account.version, versions, store, account.account_id):
                    continue  # a repeat of an older change (outbox redelivery): keep the newer
                if account.version is not None:
                    versions[account.account_id] = account.version
                key = account.account_id.encode()
                out.append(Message(topics.ACCOUNTS_CHANGELOG, msg.partition, key, msg.value))
                fresh[account.account_id] = msg.value or b""
            await publisher.publish(out)
            if not follower_active():
                # Before the follower takes over (it applies the changelog on every worker).
                for account_id, raw in fresh.items():
                    store[account_id] = raw
                ACCOUNTS_KNOWN.set(len(store))
            positions.mark_published(messages)

    return accounts


def _stale(version: int | None, batch: dict[str, int], store: Any, account_id: str) -> bool:
    """Whether a versioned account change is older than (or the same as) the one applied.

    The batch's own newer versions count too; the table may trail the changelog by a moment
    while the follower applies it, so a repeat can rarely pass, and is then repaired by the
    newer version that follows it in the topic."""
    if version is None:
        return False
    known = batch.get(account_id)
    if known is None:
        raw = store.get(account_id)
        if raw is not None:
            try:
                known = decode_account(raw).version
            except StreambillError:
                known = None
    return known is not None and version <= known
