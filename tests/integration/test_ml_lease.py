"""One active ``streambill ml`` per stack: the ``ml`` lease, the standby, the takeover.

Two ML processes share a control-plane database (no broker is needed to take a lease): the
first holds the lease and may run its agents, the second stands by (ready, not running); once
the first's lease has expired the second takes over, and the first may no longer write a
checkpoint. Before the database is migrated neither is ready.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import update

from streambill.agents.mlworker import LEASE, MlProcess
from streambill.control import db
from streambill.control.models import Lease
from streambill.settings import load_settings

pytestmark = pytest.mark.integration


def process(url: str, tmp: Path) -> MlProcess:
    return MlProcess(load_settings(data_dir=tmp, database_url=url, kafka_bootstrap="127.0.0.1:1"))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[MlProcess, MlProcess]]:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    db.migrate(url)
    first, second = process(url, tmp_path), process(url, tmp_path)
    yield first, second
    first.close()
    second.close()


async def readiness(ml: MlProcess) -> tuple[int, dict[str, object]]:
    response = await ml._readyz(None)  # type: ignore[arg-type]
    return response.status, orjson.loads(response.body)  # type: ignore[arg-type]


async def test_one_holds_the_lease_the_other_stands_by_then_takes_over(
    pair: tuple[MlProcess, MlProcess],
) -> None:
    first, second = pair
    assert await first._renew()
    assert first.holding() and first.lease_valid()
    assert not await second._renew()
    assert second.standby and not second.holding()
    assert await readiness(second) == (
        200,
        {"ready": True, "role": "standby", "agents": {"fraud": False, "forecast": False}},
    )
    # The first is active but its agents have not started: not ready yet.
    assert (await readiness(first))[0] == 503

    # The first stops renewing; its lease runs out.
    async with first.sessions.begin() as session:
        await session.execute(
            update(Lease)
            .where(Lease.name == LEASE)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await second._renew()
    assert second.holding()
    assert not await first._renew()
    assert not first.lease_valid()  # so no final checkpoint of its own


async def test_without_a_migrated_database_nobody_is_ready(tmp_path: Path) -> None:
    ml = process(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path)
    try:
        assert not await ml._renew()
        assert not ml.standby and not ml.holding()
        status, body = await readiness(ml)
        assert status == 503 and body["ready"] is False
    finally:
        ml.close()
