"""Versioned ClickHouse schema migrations, applied when the api starts.

Migrations are ``migrations/NNN_name.sql`` files shipped with the package. ``schema_migrations``
records each applied one with a SHA-256 of its text. On start, :func:`migrate` applies the
pending ones in version order and refuses to run when an applied file has changed: an edited
migration would leave databases that ran the old text different from new ones, silently.
To change the schema, add a new file.

ClickHouse has no transactional DDL. A migration that fails half way is retried from its first
statement on the next start, so every statement must be idempotent (``IF NOT EXISTS``). The
version row is written only after all its statements succeeded.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Final

from clickhouse_connect.driver.client import Client

from streambill.errors import StreambillError

logger = logging.getLogger(__name__)

_FILE_RE: Final = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# A statement ends with ';' at the end of a line. Migration files must not put ';' at a line
# end inside a string literal (none of ours has string literals spanning lines).
_STATEMENT_END_RE: Final = re.compile(r";[ \t]*$", re.MULTILINE)

SCHEMA_MIGRATIONS_DDL: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


class MigrationError(StreambillError):
    """The migrations on disk and the ones applied to the database disagree."""

    code = "migration_error"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """The SQL statements, with ``--`` comment lines dropped.

        >>> Migration(1, "x", "-- note\\nCREATE TABLE a (x UInt8) ENGINE = Memory;\\n"
        ...           "SELECT 1;\\n").statements()
        ['CREATE TABLE a (x UInt8) ENGINE = Memory', 'SELECT 1']
        """
        lines = [ln for ln in self.sql.splitlines() if not ln.lstrip().startswith("--")]
        parts = _STATEMENT_END_RE.split("\n".join(lines))
        return [p.strip() for p in parts if p.strip()]


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default: the packaged ones), ordered by version."""
    if directory is not None:
        files = [(p.name, p.read_text(encoding="utf-8")) for p in directory.iterdir()]
    else:
        root = resources.files("streambill.analytics") / "migrations"
        files = [(p.name, p.read_text(encoding="utf-8")) for p in root.iterdir()]
    migrations = []
    for filename, sql in files:
        match = _FILE_RE.match(filename)
        if match is None:
            if filename.endswith(".sql"):
                raise MigrationError(f"migration file name must be NNN_name.sql: {filename}")
            continue
        migrations.append(Migration(int(match.group(1)), match.group(2), sql))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return migrations


def applied_migrations(client: Client) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of every applied migration."""
    client.command(SCHEMA_MIGRATIONS_DDL)
    rows = client.query(
        "SELECT version, name, checksum FROM schema_migrations FINAL ORDER BY version"
    ).result_rows
    return {int(v): (str(n), str(c)) for v, n, c in rows}


def migrate(client: Client, migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations in order; return the versions applied now.

    Raises :class:`MigrationError` before applying anything when an applied migration's
    text changed or is missing from disk.
    """
    pending_all = load_migrations() if migrations is None else migrations
    applied = applied_migrations(client)
    _verify_applied(applied, pending_all)
    done: list[int] = []
    for migration in pending_all:
        if migration.version in applied:
            continue
        for statement in migration.statements():
            client.command(statement)
        client.insert(
            "schema_migrations",
            [(migration.version, migration.name, migration.checksum, datetime.now(UTC))],
            column_names=["version", "name", "checksum", "applied_at"],
        )
        logger.info(
            "clickhouse migration applied",
            extra={"version": migration.version, "migration": migration.name},
        )
        done.append(migration.version)
    return done


def _verify_applied(applied: dict[int, tuple[str, str]], on_disk: list[Migration]) -> None:
    by_version = {m.version: m for m in on_disk}
    for version, (name, checksum) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"migration {version:03d}_{name} is applied but missing on disk (newer schema?)"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {version:03d}_{name} changed after it was applied "
                f"(checksum {checksum[:12]} in the database, {migration.checksum[:12]} on disk); "
                "add a new migration instead of editing an applied one"
            )
