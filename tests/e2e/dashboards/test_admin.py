"""The platform admin page: a dead letter replayed after the account was fixed, and the
key figures and health panels showing real values."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from .conftest import sign_in
from .world import PASSWORD, World, wait_for

pytestmark = pytest.mark.e2e

CUSTOMER = "cus_deadletter"
SMS_PRICE = "0.09"
SMS_QUANTITY = "7"
CREDIT_MICROS = 20_000_000
MICROS = Decimal(1_000_000)
# How long the page may take to show what the pipeline did (worker, sink flush, page refresh).
PIPELINE_TIMEOUT_MS = 30_000
PROBES_MAX = 12
PROBE_WAIT_S = 5.0


def _usage(event_id: str, meter: str, quantity: str, customer_id: str = CUSTOMER) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "meter": meter,
        "quantity": quantity,
        "occurred_at": datetime.now(UTC).isoformat(),
    }


def _open_letter(
    world: World,
    event_id: str,
    customer_id: str = CUSTOMER,
    error_code: str = "unknown_meter",
) -> dict[str, Any] | None:
    query = f"status=open&error_code={error_code}&limit=200"
    page = world.admin("GET", f"/v2/admin/deadletters?{query}")
    for letter in page["deadletters"]:
        if letter["key"] == customer_id and f'"{event_id}"' in letter["value"]:
            return dict(letter)
    return None


def _balance_is(world: World, micros: int, customer_id: str = CUSTOMER) -> bool:
    return world.balance_micros(customer_id) == micros


def _probe_until_priced(world: World, expected_micros: int) -> None:
    """Post one-unit "sms" probes until one is charged: the worker learns the new price
    from billing.accounts.v1, which the control plane's outbox relay writes a moment after
    the PATCH; a probe that arrives earlier is dead-lettered (and stays open, harmlessly)."""
    for attempt in range(PROBES_MAX):
        world.admin("POST", "/v2/usage", _usage(f"sms-probe-{attempt}", "sms", "1"))
        try:
            wait_for(partial(_balance_is, world, expected_micros), PROBE_WAIT_S, "probe")
        except TimeoutError:
            continue
        return
    raise AssertionError(f"the sms price did not reach the worker in {PROBES_MAX} probes")


def _top(page: Page) -> None:
    """Scroll up, so a full-page screenshot shows the sticky top bar at the top."""
    page.evaluate("window.scrollTo(0, 0)")


def _letter(page: Page, letter_id: str) -> Locator:
    return page.locator(f'.dl-item[data-letter-id="{letter_id}"]')


def _replay(page: Page, letter_id: str, error_code: str = "unknown_meter") -> None:
    """Click the letter's replay button and confirm in the dialog."""
    _letter(page, letter_id).get_by_role("button", name="Replay").click()
    dialog = page.locator("#replay-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(error_code)
    dialog.get_by_role("button", name="Replay").click()
    expect(dialog).to_be_hidden()


def test_admin_replays_a_dead_letter_after_fixing_the_account(
    world: World, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    world.admin(
        "POST",
        "/v2/customers",
        {
            "id": CUSTOMER,
            "name": "Dead Letter Test GmbH",
            "currency": "EUR",
            "prices": [{"meter": "call_minutes", "unit_price": "0.10"}],
        },
    )
    world.admin(
        "POST",
        f"/v2/customers/{CUSTOMER}/adjustments",
        {"amount": "20.00", "reason": "dead-letter test"},
    )
    wait_for(partial(_balance_is, world, CREDIT_MICROS), 60, f"{CUSTOMER} credited")
    # the api takes any meter; the worker finds no price for "sms" and dead-letters it
    event_id = "sms-deadletter-1"
    world.admin("POST", "/v2/usage", _usage(event_id, "sms", SMS_QUANTITY))
    letter = wait_for(partial(_open_letter, world, event_id), 60, "the dead letter")
    assert letter["error_code"] == "unknown_meter"
    assert letter["replayable"] is True

    sign_in(page, world.base_url, "admin", world.admin_email, PASSWORD)
    item = _letter(page, letter["id"])
    expect(item).to_be_visible(timeout=PIPELINE_TIMEOUT_MS)
    expect(item.get_by_test_id("dl-code")).to_have_text("unknown_meter")
    expect(item.get_by_test_id("dl-status")).to_have_text("open")
    expect(item).to_contain_text(letter["reason"])
    item.locator("summary").click()
    expect(item.get_by_test_id("dl-value")).to_contain_text(f'"event_id": "{event_id}"')
    _top(page)
    shot(page, "admin-deadletter-expanded")

    # fix the account: the meter gets a price; a probe event proves the worker has it
    world.admin(
        "PATCH",
        f"/v2/customers/{CUSTOMER}",
        {
            "prices": [
                {"meter": "call_minutes", "unit_price": "0.10"},
                {"meter": "sms", "unit_price": SMS_PRICE},
            ]
        },
    )
    probed = CREDIT_MICROS - int(Decimal(SMS_PRICE) * MICROS)
    _probe_until_priced(world, probed)

    # a second admin's page, opened before the replay, still shows the letter as open
    other = page.context.new_page()
    other.goto(f"{world.base_url}/admin")
    expect(_letter(other, letter["id"]).get_by_test_id("dl-status")).to_have_text("open")

    _replay(page, letter["id"])
    expect(item.get_by_test_id("dl-status")).to_have_text("replayed")
    expect(item.get_by_test_id("dl-result")).to_contain_text("Replayed onto billing.usage.v1")
    charge = int(Decimal(SMS_QUANTITY) * Decimal(SMS_PRICE) * MICROS)
    wait_for(partial(_balance_is, world, probed - charge), 60, "the replayed event charged")
    _top(page)
    shot(page, "admin-deadletter-replayed")

    _replay(other, letter["id"])
    stale = _letter(other, letter["id"])
    expect(stale.get_by_test_id("dl-result")).to_contain_text("already_replayed")
    expect(stale.get_by_test_id("dl-result")).to_contain_text("was replayed at")
    expect(stale.get_by_test_id("dl-status")).to_have_text("replayed")
    assert world.balance_micros(CUSTOMER) == probed - charge
    assert page.script_errors == []  # type: ignore[attr-defined]
    other.close()


def test_a_letter_for_an_unknown_customer_is_replayed_once_the_customer_exists(
    world: World, page: Page
) -> None:
    late = "cus_deadletter_late"
    event_id = "late-call-1"
    world.admin("POST", "/v2/usage", _usage(event_id, "call_minutes", "3", late))
    # the worker retries an unknown customer for a while (5 s in this stack) first
    found = partial(_open_letter, world, event_id, late, "unknown_customer")
    letter = wait_for(found, 90, "the unknown-customer letter")
    world.admin(
        "POST",
        "/v2/customers",
        {
            "id": late,
            "name": "Späte Anmeldung KG",
            "currency": "EUR",
            "prices": [{"meter": "call_minutes", "unit_price": "0.10"}],
        },
    )
    world.admin("POST", f"/v2/customers/{late}/adjustments", {"amount": "10.00", "reason": "t"})
    wait_for(partial(_balance_is, world, 10_000_000, late), 60, f"{late} credited")

    sign_in(page, world.base_url, "admin", world.admin_email, PASSWORD)
    page.get_by_label("Error code").select_option("unknown_customer")
    item = _letter(page, letter["id"])
    expect(item.get_by_test_id("dl-code")).to_have_text("unknown_customer")
    _replay(page, letter["id"], "unknown_customer")
    expect(item.get_by_test_id("dl-status")).to_have_text("replayed")
    wait_for(partial(_balance_is, world, 9_700_000, late), 60, "the late call charged")
    assert page.script_errors == []  # type: ignore[attr-defined]


def _figure(locator: Locator) -> int:
    return int(re.sub(r"[^0-9]", "", locator.inner_text()) or "-1")


def test_kpis_and_health_show_real_values(
    world: World, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    sign_in(page, world.base_url, "admin", world.admin_email, PASSWORD)
    expect(page.locator("h1")).to_have_text("Platform")
    resellers = page.get_by_test_id("kpi-resellers")
    expect(resellers).to_have_text(re.compile(r"^\d+$"))
    assert _figure(resellers) >= 2
    assert _figure(page.get_by_test_id("kpi-customers")) >= 4
    expect(page.get_by_test_id("kpi-ledger")).to_have_text(re.compile(r"^[\d,]+$"))
    assert _figure(page.get_by_test_id("kpi-ledger")) >= 4  # the welcome credits at least
    expect(page.get_by_test_id("kpi-revenue")).not_to_be_empty()

    expect(page.locator("#live-status")).to_have_attribute("data-state", "on")
    expect(page.get_by_test_id("health-badge")).to_have_text("all green")
    checks = page.get_by_test_id("health-checks").locator(".check-item")
    expect(checks.first).to_be_visible()
    assert checks.count() >= 4
    for index in range(checks.count()):
        expect(checks.nth(index)).to_have_attribute("data-state", "ok")
    invariants = page.get_by_test_id("integrity-checks").locator(".check-item").first
    expect(invariants).to_contain_text("Ledger invariants")
    expect(invariants).to_have_attribute("data-state", "ok")

    table = page.get_by_test_id("resellers-table")
    expect(table.locator('tr[data-reseller-id="res_nordwind"]')).to_contain_text("Nordwind Telekom")
    expect(table.locator('tr[data-reseller-id="res_nordwind"]')).to_contain_text(
        "nordwind.localhost"
    )
    expect(page.get_by_test_id("commission-res_nordwind")).to_contain_text("€")

    # the live rate moves: a usage event makes a balance message reach this page
    world.post_usage("cus_direct", "admin-rate-1", "1")
    expect(page.locator("#rate-total")).to_have_text(re.compile(r"^[1-9]"), timeout=15_000)
    expect(page.locator("#rate-balances")).to_have_text(re.compile(r"^[1-9]"))
    shot(page, "admin-overview-en")

    page.goto(f"{world.base_url}/admin?lang=de")
    expect(page.locator("h1")).to_have_text("Plattform")
    expect(page.get_by_test_id("health-badge")).to_have_text("alles grün")
    expect(page.get_by_test_id("kpi-resellers")).to_have_text(re.compile(r"^\d+$"))
    shot(page, "admin-overview-de")

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{world.base_url}/admin?lang=en")
    expect(page.get_by_test_id("health-badge")).to_have_text("all green")
    expect(page.get_by_test_id("kpi-resellers")).to_have_text(re.compile(r"^\d+$"))
    expect(page.get_by_test_id("integrity-checks")).to_contain_text("OK")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways at phone width ({width} px)"
    shot(page, "admin-phone")
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_creating_a_reseller_from_the_page(world: World, page: Page) -> None:
    sign_in(page, world.base_url, "admin", world.admin_email, PASSWORD)
    form = page.locator("#reseller-form")
    form.get_by_role("button", name="Create reseller").click()
    expect(page.locator("#reseller-error")).to_have_text("Please enter a name.")
    form.get_by_label("Name").fill("Admin Test Reseller")
    form.get_by_label("Portal slug (optional)").fill("Not A Slug!")
    form.get_by_role("button", name="Create reseller").click()
    expect(page.locator("#reseller-error")).to_be_visible()
    expect(page.locator("#reseller-error")).not_to_have_text("Please enter a name.")
    form.get_by_label("Portal slug (optional)").fill("admintest")
    form.get_by_role("button", name="Create reseller").click()
    expect(page.locator("#toasts")).to_contain_text("Reseller Admin Test Reseller created")
    expect(page.locator("#reseller-error")).to_be_hidden()
    assert page.script_errors == []  # type: ignore[attr-defined]
