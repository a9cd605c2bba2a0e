"""Open ClickHouse through clickhouse-connect, embedded (chDB) or a server (HTTP).

Both backends are the same ``clickhouse_connect.driver.client.Client`` to the code above, so
nothing else in the project knows which one it talks to. Two facts shape this module:

- chDB hosts one engine per process and one process per data directory. The api process is
  that process; the worker never opens ClickHouse.
- Every call is blocking, and chDB's handle is not safe to drive from several threads at once.
  :class:`AsyncClickHouse` therefore runs every call on ONE dedicated thread: calls are
  serialized, and the event loop never blocks on ClickHouse.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from streambill.errors import StreambillError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# HTTP only (chDB ignores them): a dead server must not hang the api forever.
CONNECT_TIMEOUT_S: Final = 10
SEND_RECEIVE_TIMEOUT_S: Final = 60
# An awaited call gives up after this long. The thread keeps running the call (a blocking
# call cannot be interrupted), so later calls queue behind it; the timeout only frees the caller.
CALL_TIMEOUT_S: Final = 120.0


class ClickHouseUnavailable(StreambillError):
    """ClickHouse cannot be opened or a call to it failed."""

    code = "clickhouse_unavailable"


def is_embedded(dsn: str) -> bool:
    """Whether ``dsn`` selects the in-process chDB engine.

    >>> is_embedded("chdb:///tmp/x/clickhouse")
    True
    >>> is_embedded("http://clickhouse:8123")
    False
    """
    return dsn.startswith("chdb:")


def chdb_path(dsn: str) -> Path:
    """The data directory of a ``chdb:///abs/path`` DSN.

    >>> chdb_path("chdb:///var/lib/sb/clickhouse")
    PosixPath('/var/lib/sb/clickhouse')
    >>> chdb_path("chdb://relative")
    Traceback (most recent call last):
    ...
    streambill.errors.StreambillError: chDB DSN must be chdb:///<absolute path>, got 'chdb://relative'
    """
    parsed = urlparse(dsn)
    if parsed.netloc or not parsed.path.startswith("/"):
        raise StreambillError(f"chDB DSN must be chdb:///<absolute path>, got {dsn!r}")
    return Path(parsed.path)


def connect(dsn: str) -> Client:
    """Open a blocking clickhouse-connect client for ``chdb:///abs/path`` or ``http(s)://…``.

    For chDB the data directory is created if missing. A second process on the same
    directory, or a second path in this process while a client is open, is refused by chDB.
    """
    try:
        if is_embedded(dsn):
            path = chdb_path(dsn)
            path.mkdir(parents=True, exist_ok=True)
            client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
        else:
            client = clickhouse_connect.get_client(
                dsn=dsn,
                connect_timeout=CONNECT_TIMEOUT_S,
                send_receive_timeout=SEND_RECEIVE_TIMEOUT_S,
                autogenerate_session_id=False,
            )
    except Exception as exc:
        raise ClickHouseUnavailable(f"cannot open ClickHouse at {_redact(dsn)}: {exc}") from exc
    logger.info("clickhouse opened", extra={"dsn": _redact(dsn), "embedded": is_embedded(dsn)})
    return client


def _redact(dsn: str) -> str:
    """Drop a password from a DSN before it reaches a log line.

    >>> _redact("http://user:secret@ch:8123/db")
    'http://user:***@ch:8123/db'
    """
    parsed = urlparse(dsn)
    if parsed.password:
        return dsn.replace(f":{parsed.password}@", ":***@", 1)
    return dsn


class AsyncClickHouse:
    """A blocking client driven from asyncio through one dedicated thread.

    Every call runs on the same thread in submission order, which serializes access to the
    chDB handle and keeps the event loop free. Pass functions that take the blocking client
    as their first argument (``queries.customer_balance``, ``migrate.migrate``).
    """

    def __init__(
        self,
        client: Client,
        *,
        executor: ThreadPoolExecutor | None = None,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        self.client = client
        self._call_timeout_s = call_timeout_s
        self._executor = executor or _single_thread()
        self._closed = False

    @classmethod
    async def open(cls, dsn: str) -> AsyncClickHouse:
        """Connect on the dedicated thread (chDB's start takes about a second)."""
        executor = _single_thread()
        try:
            client = await asyncio.get_running_loop().run_in_executor(executor, connect, dsn)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(client, executor=executor)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(client, *args, **kwargs)`` on the ClickHouse thread."""
        if self._closed:
            raise ClickHouseUnavailable("the ClickHouse client is closed")
        loop = asyncio.get_running_loop()
        call = partial(fn, self.client, *args, **kwargs)
        return await asyncio.wait_for(
            loop.run_in_executor(self._executor, call), timeout=self._call_timeout_s
        )

    async def query_rows(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> Sequence[Sequence[Any]]:
        """Rows of a SELECT, as tuples."""
        return await self.run(_query_rows, sql, parameters)

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return await self.run(_command, sql, parameters)

    async def insert(
        self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]
    ) -> None:
        await self.run(_insert, table, rows, column_names)

    async def close(self) -> None:
        """Close the client on its own thread, then stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self.client.close)
        finally:
            self._executor.shutdown(wait=False)
        logger.info("clickhouse closed")


def _single_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")


def _query_rows(
    client: Client, sql: str, parameters: dict[str, Any] | None
) -> Sequence[Sequence[Any]]:
    return client.query(sql, parameters=parameters).result_rows


def _command(client: Client, sql: str, parameters: dict[str, Any] | None) -> Any:
    return client.command(sql, parameters=parameters)


def _insert(
    client: Client, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]
) -> None:
    # Column-oriented: zip transposes in C; clickhouse-connect's own row-to-column pass was
    # a tenth of the api's CPU while the sink caught up with a backlog.
    columns: list[Sequence[Any]] = (
        list(zip(*rows, strict=True)) if rows else [() for _ in column_names]
    )
    client.insert(table, columns, column_names=list(column_names), column_oriented=True)
