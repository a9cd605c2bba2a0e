"""The control-plane database on SQLite and PostgreSQL: migrations match the models, and the
outbox relay keeps per-key order across a crash after publishing and before marking."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, select

from apiworld import BACKENDS, database_url
from streambill.control import db
from streambill.control.access import Authenticator
from streambill.control.models import Base, OutboxMessage, StreamOffset
from streambill.control.outbox import OutboxRelay
from streambill.control.plane import ControlPlane
from streambill.control.principal import Principal
from streambill.control.schemas import CustomerCreate, CustomerUpdate
from streambill.control.tenants import create_customer, update_tenant

pytestmark = pytest.mark.integration
ADMIN = Principal("admin", None, None, "admin")


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as found:
        yield found or f"sqlite:///{tmp_path / 'control.db'}"


def test_migrations_create_exactly_the_models(url: str) -> None:
    assert db.migrate(url) == "0008"
    assert db.migrate(url) == "0008"  # a second start finds nothing to do
    engine = create_engine(db._url(url, asynchronous=False))
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


class Recorder:
    """A publisher that keeps what it was given (the broker path has its own tests)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        timeout_s: float,
        positions: dict[int, int] | None = None,
    ) -> None:
        self.sent += [(topic, key, value) for key, value in records]
        if positions is not None:  # one partition, offsets in the order received
            positions[0] = sum(1 for t, _k, _v in self.sent if t == topic)


class Crash(Exception):
    pass


async def _plane(url: str) -> ControlPlane:
    db.migrate(url)
    sessions = db.session_factory(db.open_engine(url))
    return ControlPlane(sessions=sessions, auth=Authenticator(sessions, None))


async def test_a_crash_between_publish_and_mark_repeats_in_order(url: str) -> None:
    cp = await _plane(url)
    ids = []
    for n in range(3):
        body = CustomerCreate(name=f"c{n}", currency="EUR")
        ids.append((await create_customer(cp, ADMIN, body)).id)
    for n in range(4):
        for cid in ids:
            change = CustomerUpdate(low_balance_threshold=f"{n}.5")  # type: ignore[arg-type]
            await update_tenant(cp, ADMIN, "customer", cid, change)

    async def crash(_ids: list[int]) -> None:
        raise Crash

    publisher = Recorder()
    first = OutboxRelay(cp.sessions, publisher, before_mark=crash)
    with pytest.raises(Crash):
        await first.run_once()
    assert len(publisher.sent) == 15  # published, never marked
    # The crashed relay's lease runs out; a new one takes over and publishes again.
    later = OutboxRelay(
        cp.sessions, publisher, clock=lambda: datetime.now(UTC) + timedelta(minutes=1)
    )
    assert await later.run_once() is False
    assert await later.run_once() is False
    async with cp.sessions() as session:
        left = await session.scalar(
            select(func.count()).where(OutboxMessage.published_at.is_(None))
        )
    assert left == 0
    async with cp.sessions() as session:
        kept = (
            await session.execute(
                select(StreamOffset.topic, StreamOffset.partition, StreamOffset.offset).where(
                    StreamOffset.consumer == "outbox-relay"
                )
            )
        ).all()
    # How far the acknowledged messages go, kept with the mark (the crashed round kept none).
    assert kept == [("billing.accounts.v1", 0, 30)]
    per_account: dict[str, list[int]] = {}
    for _topic, key, value in publisher.sent:
        per_account.setdefault(key.decode(), []).append(orjson.loads(value)["version"])
    for cid in ids:
        # every version, in order, the whole sequence once more after the crash
        assert per_account[cid] == [1, 2, 3, 4, 5] * 2
    await first.stop()
    await later.stop()


async def test_one_relay_holds_the_lease_at_a_time(url: str) -> None:
    cp = await _plane(url)
    await create_customer(cp, ADMIN, CustomerCreate(name="x", currency="EUR"))
    a, b = Recorder(), Recorder()
    relay_a = OutboxRelay(cp.sessions, a)
    relay_b = OutboxRelay(cp.sessions, b)
    await relay_a.run_once()
    await create_customer(cp, ADMIN, CustomerCreate(name="y", currency="EUR"))
    await relay_b.run_once()  # a holds the lease: b publishes nothing
    await relay_a.run_once()
    assert len(a.sent) == 2 and b.sent == []
    await relay_a.stop()  # releases the lease
    await create_customer(cp, ADMIN, CustomerCreate(name="z", currency="EUR"))
    await asyncio.wait_for(relay_b.run_once(), 10)
    assert len(b.sent) == 1
    await relay_b.stop()
