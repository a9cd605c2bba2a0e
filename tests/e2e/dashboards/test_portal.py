"""The customer portal: the live balance, top-up errors, auto top-up settings reaching
``billing.accounts.v1``, history paging, the usage chart, statements, and German.

Only ``cus_weber`` (Praxis Dr. Weber, Nordwind, 0.15 EUR a call minute) is changed here;
balances are read from the API before each step, never assumed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from streambill.broker.testing import consumer_config
from streambill.streams.topics import ACCOUNTS

from .conftest import sign_in
from .world import PASSWORD, World, wait_for

pytestmark = pytest.mark.e2e

CUSTOMER = "cus_weber"
EMAIL = "owner@weber-demo.de"
PRICE = Decimal("0.15")
MICROS = 1_000_000
LIVE_BUDGET_S = 1.0
RUN = uuid.uuid4().hex[:8]

Shot = Callable[[Page, str], Path]


def eur(micros: int) -> str:
    """What the page shows for an amount in en-GB: ``€1,234.56``, ``-€0.30``."""
    amount = (Decimal(micros) / MICROS).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    sign = "-" if amount < 0 else ""
    return f"{sign}€{abs(amount):,.2f}"


def charge_micros(quantity: str) -> int:
    return int((Decimal(quantity) * PRICE * MICROS).to_integral_value(ROUND_HALF_EVEN))


def snap(shot: Shot, page: Page, name: str) -> None:
    """A full-page screenshot from the top (a scrolled page would paint the sticky bar
    over the middle of the picture)."""
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, name)


def open_portal(world: World, page: Page) -> None:
    sign_in(page, world.base_url, "portal", EMAIL, PASSWORD)
    expect(page.get_by_test_id("balance")).to_have_text(eur(world.balance_micros(CUSTOMER)))
    expect(page.locator("#live-status")).to_have_attribute("data-state", "on")


def latest_seq(world: World) -> int:
    entries = world.admin("GET", f"/v2/customers/{CUSTOMER}/ledger?limit=1")["entries"]
    return int(entries[0]["seq"]) if entries else 0


def test_the_balance_follows_usage_live_within_a_second(
    world: World, page: Page, shot: Shot
) -> None:
    open_portal(world, page)
    elapsed_s: list[float] = []
    balance_micros = world.balance_micros(CUSTOMER)  # what the page shows (checked above)
    for number, quantity in enumerate(("2", "3", "4"), start=1):
        balance_micros -= charge_micros(quantity)
        expected = eur(balance_micros)
        started = time.monotonic()
        world.post_usage(CUSTOMER, f"portal-live-{RUN}-{number}", quantity)
        # polled every animation frame: expect()'s back-off (up to 1 s) would blur the figure
        try:
            page.wait_for_function(
                "text => document.getElementById('balance-value').textContent === text",
                arg=expected,
                polling="raf",
                timeout=10_000,
            )
        except PlaywrightTimeout as exc:
            shown = page.get_by_test_id("balance").text_content()
            raise AssertionError(f"event {number}: balance shows {shown}, not {expected}") from exc
        elapsed_s.append(time.monotonic() - started)
        print(f"\nportal live balance, event {number}: {elapsed_s[-1] * 1000:.0f} ms")
        expect(page.get_by_test_id("balance")).to_have_text(expected)
    snap(shot, page, "portal-live-balance")
    assert all(s < LIVE_BUDGET_S for s in elapsed_s), elapsed_s
    # the newest entry is on page 1 of the history without a reload
    expect(page.locator("#history-table tbody tr").first).to_have_attribute(
        "data-seq", str(latest_seq(world))
    )
    assert page.script_errors == []  # type: ignore[attr-defined]


def read_account(bootstrap: str, account_id: str, wanted: Callable[[dict[str, Any]], bool]) -> Any:
    """The first ``billing.accounts.v1`` record of ``account_id`` that ``wanted`` accepts."""
    consumer = Consumer(consumer_config(bootstrap, f"portal-{RUN}-{time.monotonic_ns()}"))
    try:
        meta = consumer.list_topics(ACCOUNTS, timeout=10)
        partitions = meta.topics[ACCOUNTS].partitions
        consumer.assign([TopicPartition(ACCOUNTS, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                doc = orjson.loads(value)
                if doc.get("account_id") == account_id and wanted(doc):
                    return doc
        raise AssertionError(f"no matching {ACCOUNTS} record of {account_id} in 30 s")
    finally:
        consumer.close()


def test_auto_top_up_settings_reach_the_accounts_topic(
    world: World, page: Page, shot: Shot
) -> None:
    open_portal(world, page)
    page.get_by_role("link", name="Settings").click()
    page.check("#auto-enabled")
    page.fill("#auto-threshold", "7,50")  # a German comma is fine too
    page.fill("#auto-amount", "25")
    page.click("#autotopup-save")
    expect(page.locator("#toasts")).to_contain_text("Auto top-up saved")
    expect(page.locator("#autotopup-error")).to_be_hidden()
    expect(page.locator("#balance-autotopup")).to_have_text("Auto top-up: €25.00 below €7.50")
    expect(page.locator("#auto-threshold")).to_have_value("7.50")

    def carries_new_settings(doc: dict[str, Any]) -> bool:
        auto = doc.get("auto_topup") or {}
        return (
            auto.get("enabled") is True
            and Decimal(auto.get("threshold", "0")) == Decimal("7.50")
            and Decimal(auto.get("amount", "0")) == Decimal("25.00")
        )

    record = read_account(world.stack.bootstrap, CUSTOMER, carries_new_settings)
    assert record["kind"] == "customer" and record["parent_id"] == "res_nordwind"
    assert isinstance(record["auto_topup"]["threshold"], str)  # decimal strings on the wire

    # an amount of 0 cannot be switched on: said before anything is sent
    page.fill("#auto-amount", "0")
    page.click("#autotopup-save")
    expect(page.locator("#autotopup-error")).to_have_text(
        "To turn it on, enter a top-up amount above 0."
    )
    snap(shot, page, "portal-settings")
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_a_top_up_without_stripe_says_why(world: World, page: Page, shot: Shot) -> None:
    open_portal(world, page)
    error = page.locator("#topup-error")
    page.fill("#topup-amount", "twenty")
    page.click("#topup-submit")
    expect(error).to_have_text("Please enter an amount such as 25 or 25.50.")
    page.get_by_role("button", name="€50", exact=True).click()
    expect(page.locator("#topup-amount")).to_have_value("50.00")
    page.click("#topup-submit")
    # the test stack has no Stripe: the API's message and code, not a silent failure
    expect(error).to_contain_text("The payment could not be started")
    expect(error).to_contain_text("(unavailable)")
    page.click("#pm-setup")
    expect(page.locator("#pm-error")).to_contain_text("(unavailable)")
    expect(page).to_have_url(f"{world.base_url}/portal")
    snap(shot, page, "portal-topup-error")
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_history_pages_usage_chart_and_statement(world: World, page: Page, shot: Shot) -> None:
    first = latest_seq(world)
    for number in range(1, 23):
        world.post_usage(CUSTOMER, f"portal-page-{RUN}-{number}", "1")
    wait_for(lambda: latest_seq(world) >= first + 22, 30, "22 more ledger entries")
    newest = latest_seq(world)
    wait_for(
        lambda: world.admin("GET", f"/v2/customers/{CUSTOMER}/usage?granularity=hour")["buckets"],
        60,
        "usage buckets",
    )
    month = datetime.now(ZoneInfo("Europe/Berlin")).strftime("%Y-%m")
    wait_for(
        lambda: (
            world.admin("GET", f"/v2/customers/{CUSTOMER}/statements/{month}")["entries"] >= newest
        ),
        60,
        "this month's statement",
    )

    open_portal(world, page)
    rows = page.locator("#history-table tbody tr")
    expect(rows).to_have_count(20)
    expect(rows.first).to_have_attribute("data-seq", str(newest))
    expect(page.locator("#history-page")).to_have_text("Page 1")
    page.click("#history-next")
    expect(rows.first).to_have_attribute("data-seq", str(newest - 20))
    expect(page.locator("#history-page")).to_have_text("Page 2")
    expect(page.locator("#history-prev")).to_be_enabled()
    page.click("#history-prev")
    expect(rows.first).to_have_attribute("data-seq", str(newest))
    expect(page.locator("#history-prev")).to_be_disabled()

    chart = page.get_by_test_id("usage-chart")
    expect(chart.locator("canvas")).to_have_count(1)
    page.get_by_role("button", name="Days").click()
    expect(page.get_by_role("button", name="Days")).to_have_attribute("aria-pressed", "true")
    expect(chart.locator("canvas")).to_have_count(1)
    expect(page.get_by_test_id("usage-total-spend")).not_to_have_text("€0.00")
    snap(shot, page, "portal-overview-en")

    page.locator(f'#statements-table button[data-month="{month}"]').click()
    view = page.locator("#statement-view")
    expect(view).to_be_visible()
    expect(view.locator("#statement-title")).to_contain_text("Statement")
    lines = view.get_by_test_id("statement-lines").locator("tbody tr")
    expect(lines.filter(has_text="Call minutes")).to_have_count(1)
    expect(lines.filter(has_text="Adjustment")).to_have_count(1)
    expect(view.get_by_role("button", name="Print")).to_be_visible()
    snap(shot, page, "portal-statement")

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{world.base_url}/portal")
    expect(page.get_by_test_id("balance")).to_have_text(eur(world.balance_micros(CUSTOMER)))
    expect(chart.locator("canvas")).to_have_count(1)
    expect(page.locator(f'#statements-table tr[data-month="{month}"]')).to_be_visible()
    expect(page.locator("#topups-table tbody")).not_to_contain_text("loading")
    box = page.locator(f'#statements-table button[data-month="{month}"]').bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390, "the statement button is off-screen"
    snap(shot, page, "portal-phone")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the phone layout scrolls sideways ({width} px)"
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_the_portal_speaks_german(world: World, page: Page, shot: Shot) -> None:
    open_portal(world, page)
    page.goto(f"{world.base_url}/portal?lang=de")
    expect(page.locator("html")).to_have_attribute("lang", "de")
    expect(page.locator("#balance-title")).to_contain_text("Guthaben")
    expect(page.locator("#history-title")).to_contain_text("Buchungen")
    expect(page.locator("#usage-title")).to_contain_text("Verbrauch")
    expect(page.locator("#statements-title")).to_have_text("Abrechnungen")
    expect(page.locator("#autotopup-title")).to_have_text("Automatisches Aufladen")
    expect(page.locator("#profile-title")).to_have_text("Profil & Benachrichtigungen")
    expect(page.get_by_role("link", name="Einstellungen")).to_be_visible()
    expect(page.locator("#topup-submit")).to_have_text("Weiter zur Zahlung")
    # German money: "48,65 €"
    expect(page.get_by_test_id("balance")).to_contain_text("€")
    expect(page.get_by_test_id("balance")).to_contain_text(",")
    expect(page.locator("#history-table tbody tr").first).to_contain_text("Verbrauch")
    headings = " | ".join(
        page.locator("h1, h2, h3, th, nav.tabs a, label, button").all_inner_texts()
    )
    english = (
        "Balance", "Top up", "Transaction", "Usage", "Statement", "Settings", "Forecast",
        "Alerts", "Profile", "Notifications", "Amount", "Threshold", "Payment", "Date",
        "Previous", "Next", "Hours", "Days", "Save",
    )  # fmt: skip
    leftovers = [word for word in english if word in headings]
    assert leftovers == [], f"English left on the German page: {leftovers}\n{headings}"
    snap(shot, page, "portal-overview-de")
    assert page.script_errors == []  # type: ignore[attr-defined]
