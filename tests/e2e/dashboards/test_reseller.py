"""The reseller dashboard: the live commission ticker, tenant isolation, crediting a customer
and the white-label host.

Nordwind's tests mutate only ``cus_kanzlei`` (and post usage for Südstern's ``cus_hotel`` to
prove it never shows up at Nordwind); other modules share the world, so no absolute balances
or commission figures of anyone else's customers are assumed.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import Page, Response, WebSocket, expect

from .conftest import sign_in
from .world import PASSWORD, World, wait_for

pytestmark = pytest.mark.e2e

NORDWIND = "partner@nordwind-demo.de"
SUEDSTERN = "partner@suedstern-demo.de"
OURS = "cus_kanzlei"
FOREIGN_TEXTS = ("Hotel Seeblick", "cus_hotel", "Südstern", "res_suedstern")
MICROS = Decimal(1_000_000)


def _eur(micros: int) -> str:
    """How the page (en-GB) writes an amount of euros: "€1,234.56", "-€3.20"."""
    amount = Decimal(micros) / MICROS
    text = f"€{abs(amount):,.2f}"
    return "-" + text if amount < 0 else text


def _wait_loaded(page: Page) -> None:
    """Every panel has answered (no "loading" left) and the live socket is subscribed."""
    expect(page.locator("#live-status")).to_have_attribute("data-state", "on")
    expect(page.get_by_test_id("commission-ticker")).to_have_attribute(
        "data-micros", re.compile(r"^-?\d+$")
    )
    expect(page.get_by_test_id(f"balance-{OURS}")).to_have_attribute(
        "data-micros", re.compile(r"^-?\d+$")
    )
    expect(page.locator("main")).not_to_contain_text("loading")
    expect(page.get_by_test_id("kpi-active")).not_to_have_text("–")


def _settle(page: Page) -> None:
    """Wait until no live-change highlight is running and scroll to the top (for a calm
    full-page screenshot: the top bar is sticky)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_function(
        "() => document.getAnimations()"
        ".every(a => a.animationName !== 'flash' || a.playState !== 'running')"
    )


def _ticker_micros(page: Page) -> int:
    return int(page.get_by_test_id("commission-ticker").get_attribute("data-micros") or "0")


def test_the_commission_ticker_moves_after_a_customers_usage(
    world: World, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    sign_in(page, world.base_url, "reseller", NORDWIND, PASSWORD)
    expect(page.get_by_test_id("brand-name")).to_have_text("Nordwind Telekom")
    _wait_loaded(page)
    ticker = page.get_by_test_id("commission-ticker")
    before_micros = _ticker_micros(page)
    before_text = ticker.inner_text()
    run = uuid.uuid4().hex[:8]
    started = time.monotonic()
    for n in range(3):  # 3 x 10 minutes at 0.12: 3.60 of usage, 0.90 of commission at 25 %
        world.post_usage(OURS, f"rs-ticker-{run}-{n}", "10")
    page.wait_for_function(
        "([before]) => BigInt(document.getElementById('ticker').dataset.micros) > BigInt(before)",
        arg=[str(before_micros)],
        timeout=30_000,
    )
    moved_s = time.monotonic() - started
    expect(ticker).not_to_have_text(before_text)
    # all three commissions arrive (0.30 each: 25 % of 1.20), and the count-up animation
    # ends on the exact figure
    after_micros = before_micros + 900_000
    expect(ticker).to_have_attribute("data-micros", str(after_micros))
    expect(ticker).to_have_text(_eur(after_micros))
    # the entries list names the customer whose usage earned it
    expect(page.get_by_test_id("commission-entries")).to_contain_text("Kanzlei Albers")
    # the key figures follow shortly after (refetched once the burst has passed)
    expect(page.get_by_test_id("top-customers")).to_contain_text("Kanzlei Albers")
    print(
        f"\nticker {_eur(before_micros)} -> {_eur(after_micros)} "
        f"(+{_eur(after_micros - before_micros)}) {moved_s:.2f} s after the first usage post"
    )
    _settle(page)
    shot(page, "reseller-overview-en")
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_a_reseller_never_sees_another_resellers_data(
    world: World, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    responses: list[Response] = []
    frames: list[str] = []
    page.on("response", lambda r: responses.append(r) if "/v2/" in r.url else None)

    def watch(socket: WebSocket) -> None:
        socket.on("framereceived", lambda payload: frames.append(str(payload)))

    page.on("websocket", watch)
    sign_in(page, world.base_url, "reseller", NORDWIND, PASSWORD)
    _wait_loaded(page)
    customers = page.get_by_test_id("customers")
    expect(customers).to_contain_text("Kanzlei Albers")
    expect(customers).to_contain_text("Praxis Dr. Weber")

    # Südstern's customer uses the service; nothing of it may reach Nordwind's page live
    hotel_before = world.balance_micros("cus_hotel")
    run = uuid.uuid4().hex[:8]
    for n in range(3):
        world.post_usage("cus_hotel", f"rs-foreign-{run}-{n}", "5")
    wait_for(lambda: world.balance_micros("cus_hotel") < hotel_before, 30, "hotel charged")
    # and one of ours afterwards: once it shows, the socket has carried what it would carry
    ours_before = int(page.get_by_test_id(f"balance-{OURS}").get_attribute("data-micros") or "0")
    world.post_usage(OURS, f"rs-barrier-{run}", "1")
    page.wait_for_function(
        "([id, before]) => BigInt(document.querySelector(`[data-testid=balance-${id}]`)"
        ".dataset.micros) < BigInt(before)",
        arg=[OURS, str(ours_before)],
    )
    text = page.inner_text("body") + page.title()
    for foreign in FOREIGN_TEXTS:
        assert foreign not in text, f"{foreign!r} shown on Nordwind's page"

    bodies = []
    for response in responses:
        if response.request.resource_type in ("fetch", "xhr"):
            bodies.append((response.url, response.text()))
    assert len(bodies) >= 8, [url for url, _ in bodies]  # every panel fetched something
    for url, body in bodies:
        for foreign in ("cus_hotel", "res_suedstern"):
            assert foreign not in body, f"{url} answered with {foreign}"
    assert frames, "no live message received"
    for frame in frames:
        assert "cus_hotel" not in frame and "res_suedstern" not in frame, frame
    print(f"\n{len(bodies)} /v2/ responses and {len(frames)} live frames checked")
    assert page.script_errors == []  # type: ignore[attr-defined]

    # and the other way round: Südstern sees its own customer, none of Nordwind's
    page.click("#logout")
    page.wait_for_url(re.compile(r"/reseller/login"))
    sign_in(page, world.base_url, "reseller", SUEDSTERN, PASSWORD)
    expect(page.get_by_test_id("brand-name")).to_have_text("Südstern Voice")
    customers = page.get_by_test_id("customers")
    expect(customers).to_contain_text("Hotel Seeblick")
    expect(page.locator("main")).not_to_contain_text("loading")
    text = page.inner_text("body")
    for nordwind in ("Kanzlei Albers", "Praxis Dr. Weber", "cus_kanzlei", "cus_weber", "Nordwind"):
        assert nordwind not in text, f"{nordwind!r} shown on Südstern's page"
    shot(page, "reseller-suedstern")
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_crediting_a_customer_moves_its_balance_live(
    world: World, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    sign_in(page, world.base_url, "reseller", NORDWIND, PASSWORD)
    _wait_loaded(page)
    cell = page.get_by_test_id(f"balance-{OURS}")
    # the page agrees with the API before we start (usage of earlier tests has settled)
    before = wait_for(
        lambda: (
            (b := world.balance_micros(OURS)) == int(cell.get_attribute("data-micros") or "x") and b
        ),
        30,
        "page and api agree on the balance",
    )

    # bad input is refused with a clear message, before and by the API
    page.select_option("#credit-customer", OURS)
    page.fill("#credit-amount", "ten euros")
    page.fill("#credit-reason", "test")
    page.click("#credit-submit")
    expect(page.locator("#credit-error")).to_have_text(
        "Please enter an amount such as 10.00 (not zero)."
    )
    page.fill("#credit-amount", "999999999999")
    page.click("#credit-submit")
    expect(page.locator("#credit-error")).to_contain_text("Not credited:")
    expect(page.locator("#credit-error")).to_contain_text("out of range")
    assert world.balance_micros(OURS) == before

    page.fill("#credit-amount", "12.34")
    page.fill("#credit-reason", "goodwill for a dropped call")
    page.click("#credit-submit")
    expect(page.locator("#credit-ok")).to_have_text("€12.34 credited to Kanzlei Albers.")
    expected = before + 12_340_000
    expect(cell).to_have_attribute("data-micros", str(expected))
    expect(cell).to_have_text(_eur(expected))
    wait_for(lambda: world.balance_micros(OURS) == expected, 10, "the api shows the credit")
    _settle(page)
    shot(page, "reseller-credited")
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_the_white_label_host_shows_nordwinds_brand(
    world: World, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    host = world.host_url("nordwind")
    sign_in(page, host, "reseller", NORDWIND, PASSWORD)
    expect(page.get_by_test_id("brand-name")).to_have_text("Nordwind Telekom")
    primary = page.evaluate("getComputedStyle(document.querySelector('.topbar')).backgroundColor")
    assert primary == "rgb(11, 83, 148)"  # #0b5394
    _wait_loaded(page)
    port = host.rsplit(":", 1)[1]
    expect(page.get_by_test_id("portal-url")).to_have_text(f"nordwind.localhost:{port}")
    assert "streambill" not in (page.title() + page.inner_text("body")).lower()
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_german_overview_and_phone_width(
    world: World, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    sign_in(page, world.base_url, "reseller", NORDWIND, PASSWORD)
    page.goto(f"{world.base_url}/reseller?lang=de")
    expect(page.locator("h2#ticker-title")).to_contain_text("Provision diesen Monat")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "on")
    expect(page.locator("main")).not_to_contain_text("lädt")
    expect(page.get_by_test_id(f"balance-{OURS}")).to_contain_text("€")
    _settle(page)
    shot(page, "reseller-overview-de")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "reseller-phone")
    # one column: nothing sticks out sideways (wide tables and the tabs scroll in their box)
    wider = page.evaluate(
        "[...document.querySelectorAll('body *')].filter(n => !n.closest('.table-wrap, .tabs') &&"
        " n.getBoundingClientRect().right > window.innerWidth + 1).map(n => n.tagName + '#' +"
        " n.id + '.' + n.className)"
    )
    assert wider == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.goto(f"{world.base_url}/reseller?lang=en")
    assert page.script_errors == []  # type: ignore[attr-defined]
