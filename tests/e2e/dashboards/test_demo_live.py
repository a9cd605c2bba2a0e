"""What ``make up`` promises: with the demo, all three dashboards move live within a minute.

``streambill up`` with its demo (memory broker, free ports), then a browser signs in with the
sign-ins the banner prints, on the hosts it prints (the reseller and its customer on their
white-label host), and watches one live figure per dashboard: the customer's balance, the
reseller's commission ticker, the admin's count of live messages.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from streambill.broker.testing import OutputReader, stack_env, stop_stack
from streambill.stack import READY_LINE

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 150.0
LIVE_WITHIN_S = 60.0
# area -> the figure that moves live
FIGURES = {"portal": "balance", "reseller": "commission-ticker", "admin": "kpi-rate"}
BANNER_LOGIN = re.compile(r"^\s+(admin|reseller|portal)\s+(http://\S+)\s+\((\S+@\S+)\)")


def _sign_in(page: Page, url: str, email: str, password: str) -> None:
    """Sign in at ``url``'s login page; the demo may still be creating its users."""
    deadline = time.monotonic() + 60
    while True:
        page.goto(url)  # signed out: redirected to the login page
        page.fill("#email", email)
        page.fill("#password", password)
        page.click("button[type=submit]")
        try:
            page.wait_for_url(url, timeout=5_000)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(3)  # within the login limit of 10 a minute


def _figure(page: Page, area: str) -> str:
    return page.get_by_test_id(FIGURES[area]).inner_text().strip()


def test_the_demo_moves_all_three_dashboards_within_a_minute(
    tmp_path: Path, browser: Browser, shot: Callable[[Page, str], Path]
) -> None:
    data_dir = tmp_path / "data"
    env = stack_env(data_dir, workers=1, storage="memory")
    env["STREAMBILL_DEMO"] = "1"
    up = subprocess.Popen(
        [sys.executable, "-m", "streambill.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = OutputReader(up)
    contexts: list[BrowserContext] = []
    try:
        output.wait_for(READY_LINE, READY_TIMEOUT_S)
        ready_at = time.monotonic()
        logins = {
            m[1]: (m[2], m[3])
            for line in output.lines
            if (m := BANNER_LOGIN.match(line)) is not None
        }
        assert set(logins) == set(FIGURES), output.text()
        password = (data_dir / "demo_password").read_text().strip()
        # The banner says where the password is, never the password (banners end up in logs).
        assert password not in output.text() and str(data_dir / "demo_password") in output.text()
        assert "nordwind.localhost" in logins["portal"][0]  # the white-label host
        pages: dict[str, Page] = {}
        first: dict[str, str] = {}
        for area, (url, email) in logins.items():
            context = browser.new_context(viewport={"width": 1360, "height": 900})
            contexts.append(context)
            page = context.new_page()
            _sign_in(page, url, email, password)
            expect(page.get_by_test_id(FIGURES[area])).not_to_have_text("–", timeout=30_000)
            pages[area] = page
            first[area] = _figure(page, area)
        # the minute counts from the moment all three are open (signing in may have waited
        # for the demo to create its users)
        opened_at = time.monotonic()
        moved: dict[str, float] = {}
        while len(moved) < len(pages) and time.monotonic() - opened_at < LIVE_WITHIN_S:
            for area, page in pages.items():
                if area not in moved and _figure(page, area) != first[area]:
                    moved[area] = time.monotonic() - opened_at
            time.sleep(0.25)
        for area, page in pages.items():
            shot(page, f"demo-{area}")
        print(
            f"\ndemo: pages open {opened_at - ready_at:.1f} s after ready; moved "
            + ", ".join(f"{a} {s:.1f} s" for a, s in moved.items())
            + " later"
        )
        assert set(moved) == set(FIGURES), f"still after {LIVE_WITHIN_S} s: {first} / {moved}"
        assert "nordwind" in pages["reseller"].get_by_test_id("brand-name").inner_text().lower()
        api = f"http://127.0.0.1:{env['STREAMBILL_API_PORT']}"
        assert httpx.get(f"{api}/readyz", timeout=5, trust_env=False).status_code == 200
    finally:
        for context in contexts:
            context.close()
        code = stop_stack(up, output, 120)
    assert code == 0, output.text()
