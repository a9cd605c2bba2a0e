"""Signing in and out of each area, the refusals, and white-label hosts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from .conftest import sign_in
from .world import PASSWORD, World

pytestmark = pytest.mark.e2e


def test_each_role_signs_in_to_its_area_and_out_again(
    world: World, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    base = world.base_url
    page.goto(f"{base}/portal")
    expect(page).to_have_url(f"{base}/portal/login?lang=en")
    shot(page, "login-portal")
    sign_in(page, base, "portal", "owner@weber-demo.de", PASSWORD)
    # a reseller's customer sees the reseller's brand, also on the platform's host
    expect(page.get_by_test_id("brand-name")).to_have_text("Nordwind Telekom")
    page.click("#logout")
    page.wait_for_url(f"{base}/portal/login?lang=en")
    page.goto(f"{base}/portal")
    expect(page).to_have_url(f"{base}/portal/login?lang=en")
    sign_in(page, base, "admin", world.admin_email, PASSWORD)
    expect(page.get_by_test_id("brand-name")).to_have_text("streambill")
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_a_customer_cannot_use_the_admin_sign_in(world: World, page: Page) -> None:
    page.goto(f"{world.base_url}/admin/login")
    page.fill("#email", "owner@weber-demo.de")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_have_text(
        "This account does not belong to this sign-in."
    )
    page.fill("#password", "wrong")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("Sign-in failed")
    assert page.url.endswith("/admin/login")


def test_a_white_label_host_shows_the_resellers_brand_and_admits_only_its_users(
    world: World, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    host = world.host_url("nordwind")
    page.goto(f"{host}/portal/login")
    expect(page.get_by_test_id("brand-name")).to_have_text("Nordwind Telekom")
    primary = page.evaluate("getComputedStyle(document.querySelector('.topbar')).backgroundColor")
    assert primary == "rgb(11, 83, 148)"  # #0b5394
    visible = (page.title() + page.inner_text("body")).lower()
    assert "streambill" not in visible
    shot(page, "login-portal-white-label")
    # Südstern's customer is refused at Nordwind's door, even with the right password
    page.fill("#email", "owner@hotel-demo.de")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_have_text(
        "This account does not belong to this sign-in."
    )
    sign_in(page, host, "portal", "owner@weber-demo.de", PASSWORD)
    expect(page.get_by_test_id("brand-name")).to_have_text("Nordwind Telekom")


def test_an_unknown_white_label_host_answers_404(world: World) -> None:
    response = httpx.get(
        f"{world.base_url}/portal/login",
        headers={"Host": f"nosuch.localhost:{world.stack.api_port}"},
    )
    assert response.status_code == 404
    assert "nosuch.localhost" in response.text


def test_german_is_the_default_and_english_is_a_click_away(world: World, page: Page) -> None:
    # this stack runs with STREAMBILL_DASHBOARD_LANGUAGE=en; the platform default is German
    page.goto(f"{world.base_url}/reseller/login?lang=de")
    expect(page.locator("h1")).to_have_text("Partner-Dashboard")
    page.goto(f"{world.base_url}/reseller/login")  # the cookie remembers the choice
    expect(page.locator("h1")).to_have_text("Partner-Dashboard")
    page.get_by_role("link", name="EN", exact=True).click()
    expect(page.locator("h1")).to_have_text("Partner dashboard")
