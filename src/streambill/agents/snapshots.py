"""A table store that starts from a local snapshot instead of the whole changelog.

Faust's memory store recovers a table by reading its changelog from the first record. On
the embedded broker's durable storage (Tansu on localbucket) a fetch returns about one
record batch per partition and waits out its whole fetch wait (measured: ~35 records/s), so
a worker restarted on a data dir with a day of traffic would take hours to recover.

:class:`SnapshotStore` is the memory store plus a snapshot file written by the worker at
quiescent points (no batch between compute and publish). A snapshot holds every key and
value and, per changelog partition, the offset up to which it is complete; Faust asks
:meth:`SnapshotStore.persisted_offset` and replays only what follows. A replay on top of a
snapshot yields what a replay from the first record would, so a stale snapshot is never
wrong, only slower. A snapshot whose offsets lie past the log's end (a memory broker that
started empty, another cluster) is discarded before recovery (see :func:`discard_stale`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson
from faust.stores import STORES
from faust.stores.memory import Store as MemoryStore
from faust.types import TP

log = logging.getLogger(__name__)
FORMAT_VERSION: Final = 1
SCHEME: Final = "snapshot"


def snapshot_path(directory: Path, table: str) -> Path:
    return directory / f"{table}.snapshot"


def read_offsets(path: Path) -> dict[int, int] | None:
    """The offsets of a snapshot file, or None when there is no valid one."""
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError):
        log.warning("unreadable table snapshot %s; the changelog will be replayed", path)
        return None
    if doc.get("version") != FORMAT_VERSION:
        return None
    return {int(p): int(o) for p, o in doc["offsets"].items()}


def discard_stale(path: Path, log_ends: Mapping[int, int]) -> bool:
    """Delete a snapshot that claims offsets at or past the changelog's current end.

    ``log_ends`` maps partition -> offset of a record just written there (a seal), so any
    record the snapshot covers must lie below it. True when the snapshot was discarded.
    """
    offsets = read_offsets(path)
    if offsets is None:
        return False
    stale = [p for p, offset in offsets.items() if offset >= log_ends.get(p, -1)]
    if stale:
        log.warning(
            "table snapshot %s is ahead of its changelog (partitions %s); discarded",
            path,
            sorted(stale),
        )
        path.unlink(missing_ok=True)
        return True
    return False


class SnapshotStore(MemoryStore):
    """Memory store that loads a snapshot at start and reports its offsets to recovery."""

    def __init__(self, url: Any, app: Any, table: Any, **kwargs: Any) -> None:
        self.offsets: dict[int, int] = {}
        # Set when a ChangelogFollower took over (agents/follower.py): Faust's own
        # changelog batches are then ignored, so the follower is this store's one writer.
        self.followed = False
        super().__init__(url, app, table, **kwargs)
        directory = Path(self.url.path or ".")
        self.path = snapshot_path(directory, self.table_name)
        self._load()

    def _load(self) -> None:
        try:
            doc = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError):
            log.warning("unreadable table snapshot %s; replaying the changelog", self.path)
            return
        if doc.get("version") != FORMAT_VERSION:
            return
        self.offsets = {int(p): int(o) for p, o in doc["offsets"].items()}
        for key, value in doc["data"]:
            raw_key = key.encode("utf-8", "surrogateescape")
            # Not entered in ``_key_partition``: keys the agents write are not either, and
            # ownership is handled by the worker on revocation (it forgets those keys).
            self.data[raw_key] = value.encode("utf-8", "surrogateescape")
        log.info("table %s: %d keys from snapshot", self.table_name, len(self.data))

    def persisted_offset(self, tp: TP) -> int | None:
        return self.offsets.get(tp.partition)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.offsets[tp.partition] = max(offset, self.offsets.get(tp.partition, -1))

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Any, to_value: Any) -> None:
        if self.followed:
            return
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        for event in events:
            msg = event.message
            self.offsets[msg.partition] = max(msg.offset, self.offsets.get(msg.partition, -1))

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """Keep every key. The memory store drops keys of partitions this worker does not
        own, but the offsets stay, and a partition that comes back would then be replayed
        from an offset its (dropped) data no longer reached. Keys of a partition owned
        elsewhere are never read here: its events go to the owner."""

    def write_snapshot(self, sealed: Mapping[int, int]) -> int:
        """Write every key with offsets (``sealed``: partition -> last sealed offset).

        Call only when nothing is between compute and publish. Atomic (temp file, fsync,
        rename). Returns the number of keys written.
        """
        return self.freeze(sealed).write()

    def freeze(self, sealed: Mapping[int, int]) -> Frozen:
        """A copy of the keys and offsets to write later, off the processing path: the
        copy takes milliseconds, encoding and fsyncing 100k customers took seconds, which
        held up every batch behind it. Call only when nothing is between compute and
        publish (``sealed`` as in :meth:`write_snapshot`)."""
        for partition, offset in sealed.items():
            self.offsets[partition] = max(offset, self.offsets.get(partition, -1))
        return Frozen(self.path, dict(self.offsets), dict(self.data))


class Frozen:
    """A table's keys and offsets at one quiescent point, ready to be written."""

    def __init__(self, path: Path, offsets: dict[int, int], data: dict[Any, Any]) -> None:
        self.path, self.offsets, self.data = path, offsets, data

    def write(self, chunk: int = 10_000) -> int:
        """Atomic (temp file, fsync, rename). Returns the number of keys written.

        The document is written ``chunk`` pairs at a time (one JSON document, the same as a
        single ``orjson.dumps``), so the transient memory is a chunk, not a second copy of
        the table.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        head = {"version": FORMAT_VERSION, "offsets": self.offsets}
        written = 0
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(head, option=orjson.OPT_NON_STR_KEYS)[:-1] + b',"data":[')
            pairs = [(k, v) for k, v in self.data.items() if isinstance(k, bytes)]
            for start in range(0, len(pairs), chunk):
                part = [
                    [k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")]
                    for k, v in pairs[start : start + chunk]
                    if isinstance(v, bytes)
                ]
                if part:
                    fh.write((b"," if written else b"") + orjson.dumps(part)[1:-1])
                    written += len(part)
            fh.write(b"]}")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        return written


def register() -> None:
    """Make ``snapshot:///<dir>`` a Faust store URL."""
    STORES.aliases[SCHEME] = f"{__name__}:SnapshotStore"
