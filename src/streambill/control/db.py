"""The control-plane database: engines for SQLite (default) and PostgreSQL, and migrations.

Settings name a database the way people write it (``sqlite:///path``, ``postgresql://…``);
the api talks to it through SQLAlchemy's asyncio engine (aiosqlite, psycopg 3), and Alembic
applies migrations through a synchronous engine at start-up, before any request.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_S = 30.0


def _url(url: str, *, asynchronous: bool) -> URL:
    """The driver-qualified URL.

    >>> str(_url("sqlite:////tmp/c.db", asynchronous=True))
    'sqlite+aiosqlite:////tmp/c.db'
    >>> str(_url("postgresql://u@h/db", asynchronous=False))
    'postgresql+psycopg://u@h/db'
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite" if asynchronous else "sqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(f"unsupported control-plane database {backend!r} (sqlite or postgresql)")


def _sqlite_pragmas(engine: Any) -> None:
    # WAL lets readers run while the relay or a request writes; the busy timeout makes a
    # writer wait for the lock instead of failing with "database is locked". synchronous=FULL
    # syncs the WAL at every commit: a webhook's stripe_events row, an adjustment or an
    # outbox row answered 2xx survives a power loss (NORMAL, some builds' WAL default, may
    # lose the last commits).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()


def open_engine(url: str) -> AsyncEngine:
    target = _url(url, asynchronous=True)
    if target.get_backend_name() == "sqlite":
        engine = create_async_engine(target, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        _sqlite_pragmas(engine.sync_engine)
        return engine
    return create_async_engine(target, pool_size=10, max_overflow=10, pool_pre_ping=True)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[SqlSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic reads the URL through ConfigParser: a literal % must be doubled.
    sync = _url(url, asynchronous=False).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", sync.replace("%", "%%"))
    return config


def migrate(url: str) -> str | None:
    """Apply every pending migration; return the revision the database is at now."""
    if make_url(url).get_backend_name() == "sqlite" and make_url(url).database:
        Path(make_url(url).database or "").parent.mkdir(parents=True, exist_ok=True)
    config = alembic_config(url)
    command.upgrade(config, "head")
    engine = create_engine(_url(url, asynchronous=False))
    try:
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    log.info("control-plane database at revision %s", revision)
    return revision
