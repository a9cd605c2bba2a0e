"""The reconciler against localstripe: payments whose webhooks never arrived are taken in
once, through the webhook's own path; events already taken in are left alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from streambill.control import db
from streambill.control.access import Authenticator
from streambill.control.models import OutboxMessage, StripeEvent
from streambill.control.plane import ControlPlane
from streambill.payments.gateway import StripeConfig, StripeGateway
from streambill.payments.reconcile import Reconciler
from streambill.payments.webhooks import take_in
from streambill.streams.topics import PAYMENTS
from stripestub import API_KEY, client, localstripe

pytestmark = pytest.mark.integration


@pytest.fixture
def stripe_url(tmp_path: Path) -> Iterator[str]:
    with localstripe(tmp_path) as url:
        yield url


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    db.migrate(url)
    engine = db.open_engine(url)
    sessions = db.session_factory(engine)
    yield ControlPlane(sessions=sessions, auth=Authenticator(sessions, None))
    await engine.dispose()


def charge(stripe_url: str, customer_id: str, cents: int, card: str = "4242424242424242") -> Any:
    sc = client(stripe_url)
    customer = sc.v1.customers.create(params={"metadata": {"customer_id": customer_id}})
    pm = sc.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": card, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    sc.v1.payment_methods.attach(pm.id, params={"customer": customer.id})
    params: Any = {
        "amount": cents,
        "currency": "eur",
        "customer": customer.id,
        "payment_method": pm.id,
        "confirm": True,
        "metadata": {"customer_id": customer_id},
    }
    try:
        return sc.v1.payment_intents.create(params=params)
    except Exception:
        return None


async def payments(control: ControlPlane) -> list[dict[str, Any]]:
    async with control.sessions() as session:
        rows = await session.execute(
            select(OutboxMessage.payload).where(OutboxMessage.topic == PAYMENTS)
        )
        return [orjson.loads(p) for p in rows.scalars()]


async def test_lost_webhooks_are_recovered_once(control: ControlPlane, stripe_url: str) -> None:
    intents = [charge(stripe_url, f"cus_{n}", 1000 + n) for n in range(5)]
    charge(stripe_url, "cus_declined", 700, card="4000000000000341")  # moves no money
    gateway = StripeGateway(StripeConfig(API_KEY, stripe_url, 10))
    reconciler = Reconciler(control, gateway, interval_s=60, lookback_s=3600)

    # One of them did arrive as a webhook.
    sc = client(stripe_url)
    events = sc.v1.events.list(params={"limit": 100}).data
    arrived = next(e for e in events if e.data.object["id"] == intents[0].id)
    await take_in(control, arrived.to_dict())

    report = await reconciler.run_once()
    assert report.missing == 5 and report.payments == 4  # 4 payments and 1 failure
    found = await payments(control)
    assert sorted(p["event_id"] for p in found) == sorted(i.id for i in intents)
    by_id = {p["event_id"]: p for p in found}
    assert by_id[intents[3].id]["amount"] == "10.03"
    assert by_id[intents[3].id]["customer_id"] == "cus_3"

    again = await reconciler.run_once()
    assert again.missing == 0 and again.listed == report.listed
    assert len(await payments(control)) == 5
    async with control.sessions() as session:
        taken = await session.scalar(select(func.count()).select_from(StripeEvent))
    assert taken == 5 + 1  # the succeeded events plus the declined one's failure event


async def test_the_lookback_bounds_what_is_listed(control: ControlPlane, stripe_url: str) -> None:
    charge(stripe_url, "cus_old", 1000)
    gateway = StripeGateway(StripeConfig(API_KEY, stripe_url, 10))
    later = datetime.now(UTC).timestamp() + 7200
    control.clock = lambda: datetime.fromtimestamp(later, UTC)
    report = await Reconciler(control, gateway, interval_s=60, lookback_s=3600).run_once()
    assert report.listed == 0 and report.missing == 0
