"""Auto top-up against localstripe, through the api and a worker.

- a card that works: one crossing, one PaymentIntent, one credit (the agent's own payment
  event and localstripe's webhook both announce it);
- a declined card: no credit, a ``topup_failed`` alert each time, backoff between attempts,
  auto top-up switched off after three declines in a row (an account change and an alert);
- a card that needs the customer: a ``topup_requires_action`` alert with a link.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiworld import STRIPE_WEBHOOK_SECRET, Api, running_api
from pipeline import read_topic
from streambill.streams.topics import LEDGER
from stripestub import (
    API_KEY,
    alerts_of,
    all_intents,
    attempts,
    balance,
    localstripe,
    new_customer,
    use,
    wait_balance,
)

pytestmark = pytest.mark.integration

GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000341"  # attaches, every charge declined
AUTH_CARD = "4000002760003184"  # needs 3-D Secure every time


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, str]]:
    tmp: Path = tmp_path_factory.mktemp("autotopup")
    with localstripe(tmp) as stripe_url:
        env = {
            "STREAMBILL_STRIPE_API_KEY": API_KEY,
            "STREAMBILL_STRIPE_API_BASE": stripe_url,
            "STREAMBILL_AUTOTOPUP_COOLDOWN_S": "0",
            "STREAMBILL_AUTOTOPUP_BACKOFF_S": "3",
        }
        with running_api(tmp, "sqlite", env) as api:
            api.stack.start_worker()
            # localstripe delivers its events to the api like Stripe would.
            httpx.post(
                f"{stripe_url}/_config/webhooks/streambill",
                data={"url": f"{api.base_url}/v2/stripe/webhook", "secret": STRIPE_WEBHOOK_SECRET},
                auth=(API_KEY, ""),
            ).raise_for_status()
            yield api, stripe_url


def test_a_working_card_is_charged_once_and_credited_once(world: tuple[Api, str]) -> None:
    api, stripe_url = world
    cid = new_customer(api, stripe_url, "Praxis Dr. Weber", GOOD_CARD)
    use(api, cid, "call-1", "2")  # 6.00 -> 4.00, below 5.00
    after = wait_balance(api, cid, 24_000_000)
    # More usage while the credit lands, and after: no second charge (24.00 is above 5.00).
    use(api, cid, "call-2", "0.5")
    wait_balance(api, cid, 23_500_000)
    time.sleep(3)  # localstripe's webhook arrives about a second after the charge
    assert balance(api, cid)["balance_micros"] == 23_500_000
    intents = [i for i in all_intents(stripe_url) if i["metadata"].get("customer_id") == cid]
    assert len(intents) == 1 and intents[0]["status"] == "succeeded"
    assert intents[0]["amount"] == 2000 and intents[0]["currency"] == "eur"
    assert intents[0]["metadata"]["attempt_key"] == f"autotopup:{cid}:1"
    entries = read_topic(api.bootstrap, LEDGER, until=10**9, timeout_s=3, quiet_s=1)
    credits = [e for e in entries if e["customer_id"] == cid and e["kind"] == "topup"]
    assert {e["source_event_id"] for e in credits} == {intents[0]["id"]}
    assert len({e["entry_id"] for e in credits}) == 1
    (attempt,) = attempts(api, cid)
    assert attempt["status"] == "succeeded" and attempt["credited_at"] is not None
    assert after["seq"] >= 3


def settled(api: Api, cid: str, count: int) -> list[dict[str, Any]]:
    """The customer's attempts once ``count`` of them left flight."""
    deadline = time.monotonic() + 15
    while True:
        found = attempts(api, cid)
        done = [a for a in found if a["status"] not in ("pending", "unknown", "processing")]
        if len(done) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_declined_card_alerts_backs_off_and_turns_itself_off(world: tuple[Api, str]) -> None:
    api, stripe_url = world
    cid = new_customer(api, stripe_url, "Kanzlei Roth", DECLINED_CARD)
    use(api, cid, "call-1", "2")  # crossing: attempt 1, declined; backoff 3 s
    assert [a["status"] for a in settled(api, cid, 1)] == ["failed"]
    use(api, cid, "call-2", "0.1")  # inside the backoff: no attempt
    time.sleep(1.0)
    assert len(attempts(api, cid)) == 1
    time.sleep(2.5)
    use(api, cid, "call-3", "0.1")  # backoff over: attempt 2, declined; backoff 6 s
    assert [a["status"] for a in settled(api, cid, 2)] == ["failed", "failed"]
    use(api, cid, "call-4", "0.1")
    time.sleep(1.0)
    assert len(attempts(api, cid)) == 2
    time.sleep(5.5)
    use(api, cid, "call-5", "0.1")  # attempt 3, declined: auto top-up turns itself off
    assert len(settled(api, cid, 3)) == 3
    deadline = time.monotonic() + 10
    while api.ok("GET", f"/v2/customers/{cid}")["auto_topup"]["enabled"]:
        assert time.monotonic() < deadline, "auto top-up was not switched off"
        time.sleep(0.2)
    found = alerts_of(api, cid, {"topup_failed", "autotopup_disabled"}, 4)
    kinds = [kind for _, kind in sorted({(a["alert_id"], a["kind"]) for a in found})]
    assert kinds.count("topup_failed") == 3 and kinds.count("autotopup_disabled") == 1
    assert {a["details"].get("code") for a in found if a["kind"] == "topup_failed"} == {
        "card_declined"
    }
    time.sleep(6.5)  # past any backoff: still nothing, auto top-up is off
    use(api, cid, "call-6", "0.1")
    time.sleep(1.5)
    assert [a["status"] for a in attempts(api, cid)] == ["failed"] * 3
    assert balance(api, cid)["balance_micros"] == 6_000_000 - 2_500_000
    intents = [i for i in all_intents(stripe_url) if i["metadata"].get("customer_id") == cid]
    assert len(intents) == 3 and all(i["status"] != "succeeded" for i in intents)


def test_a_card_that_needs_the_customer_gets_a_link(world: tuple[Api, str]) -> None:
    api, stripe_url = world
    cid = new_customer(api, stripe_url, "Autohaus Klein", AUTH_CARD)
    use(api, cid, "call-1", "2")
    (found,) = {
        a["alert_id"]: a for a in alerts_of(api, cid, {"topup_requires_action"}, 1)
    }.values()
    (attempt,) = attempts(api, cid)
    assert attempt["status"] == "requires_action"
    assert found["details"]["action_url"].endswith(f"/v2/topups/{attempt['id']}/checkout")
    assert found["details"]["amount"] == "20.00"
    time.sleep(2)
    assert balance(api, cid)["balance_micros"] == 4_000_000
