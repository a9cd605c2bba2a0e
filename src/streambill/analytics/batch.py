"""The sink's buffer: rows waiting for the next flush, and the offsets they came from.

Rows are kept per table in insertion-ordered dicts keyed by the row's id, so a replayed
message within one batch is stored once (the first copy wins: a replay carries the same
content). Every consumed message advances the offsets, mapped or not, so a skipped bad
message is committed with the batch and not read again.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Any

from streambill.analytics.rows import TableSpec


class Batch:
    """Rows by table, deduplicated by id, with the next offset to commit per partition."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[Hashable, Any]] = {}
        self._next_offsets: dict[tuple[str, int], int] = {}
        self.messages = 0
        self.duplicates: dict[str, int] = {}
        # entry_ids that may already be in ClickHouse: the sink asks before inserting them.
        self.maybe_stored: set[str] = set()
        self.started_at: float | None = None

    @property
    def row_count(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    def __bool__(self) -> bool:
        return self.messages > 0

    def add(self, topic: str, partition: int, offset: int, spec: TableSpec, row: Any) -> None:
        """Record a consumed message; ``row`` is None when the message was skipped."""
        if self.started_at is None:
            self.started_at = time.monotonic()
        self.messages += 1
        key = (topic, partition)
        self._next_offsets[key] = max(self._next_offsets.get(key, 0), offset + 1)
        if row is None:
            return
        rows = self._rows.setdefault(spec.table, {})
        row_id = spec.row_id(row)
        if row_id in rows:
            self.duplicates[spec.table] = self.duplicates.get(spec.table, 0) + 1
            return
        rows[row_id] = row

    def due(self, flush_rows: int, interval_s: float, now: float | None = None) -> bool:
        """Full (>= ``flush_rows`` rows) or its first message is ``interval_s`` old."""
        if not self:
            return False
        if self.row_count >= flush_rows:
            return True
        now = time.monotonic() if now is None else now
        return self.started_at is not None and now - self.started_at >= interval_s

    def seconds_until_due(self, interval_s: float, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, self.started_at + interval_s - now)

    def tables(self) -> dict[str, list[Any]]:
        """Rows to insert, per table, in arrival order."""
        return {table: list(rows.values()) for table, rows in self._rows.items() if rows}

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the offset to commit (one past the last consumed)."""
        return dict(self._next_offsets)

    def absorb(self, later: Batch) -> None:
        """Append a later batch to this one (after a failed flush, messages kept arriving)."""
        for table, rows in later._rows.items():
            mine = self._rows.setdefault(table, {})
            for row_id, row in rows.items():
                mine.setdefault(row_id, row)
        for key, offset in later._next_offsets.items():
            self._next_offsets[key] = max(self._next_offsets.get(key, 0), offset)
        self.messages += later.messages
        self.maybe_stored |= later.maybe_stored
        if self.started_at is None:
            self.started_at = later.started_at
