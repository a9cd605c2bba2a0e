"""Fixtures for the dashboard tests: one stack and one Chromium for the module, a fresh
browser context (no cookies) per test, and ``shot(page, name)`` which saves a full-page
screenshot into ``.screenshots/`` (git ignores it) for a person to look at."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline import Stack
from streambill.broker.testing import memory_broker

from .world import SCREENSHOTS, World, build_world

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PARTITIONS = 4

try:
    from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("dashboards")
    with memory_broker(PARTITIONS, data_dir=data_dir / "broker") as broker:
        stack = Stack(broker.bootstrap, data_dir, PARTITIONS)
        stack.env["STREAMBILL_DASHBOARD_LANGUAGE"] = "en"
        try:
            stack.start_worker()
            stack.start_api()
            yield build_world(stack)
        finally:
            stack.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if sync_playwright is None or not Path(CHROMIUM).exists():
        pytest.skip("Playwright or Debian's chromium is not installed")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1360, "height": 900}, locale="en-GB")
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.script_errors = errors  # type: ignore[attr-defined]
    return page


@pytest.fixture
def shot() -> Callable[[Page, str], Path]:
    SCREENSHOTS.mkdir(exist_ok=True)

    def take(page: Page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def sign_in(page: Page, base_url: str, area: str, email: str, password: str) -> None:
    """Sign in through the area's login page and wait for the area's page."""
    page.goto(f"{base_url}/{area}/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/{area}")
