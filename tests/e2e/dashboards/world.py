"""A running stack for the dashboard tests: the embedded broker, a worker, an api, and a
small world of tenants with users who sign in through the pages.

Two resellers with their own brands (``nordwind`` in blue, ``suedstern`` in green), two
customers each with a user, a direct customer, and a platform admin user. Every password is
:data:`PASSWORD`. Hosts: ``127.0.0.1:<port>`` is the platform's, ``<slug>.localhost:<port>``
a reseller's white-label portal (Chromium resolves ``*.localhost`` to the loopback).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from pipeline import Stack

PASSWORD = "e2e-dashboards-correct-horse"
WELCOME_CREDIT_MICROS = 50_000_000
SCREENSHOTS = Path(__file__).resolve().parents[3] / ".screenshots"


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    currency: str
    email: str
    reseller_id: str | None = None


@dataclass
class World:
    stack: Stack
    admin_email: str = "ops@streambill-demo.de"
    resellers: dict[str, Tenant] = field(default_factory=dict)
    customers: dict[str, Tenant] = field(default_factory=dict)
    service_key: dict[str, str] = field(default_factory=dict)  # customer id -> service key

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.api_port}"

    def host_url(self, slug: str) -> str:
        return f"http://{slug}.localhost:{self.stack.api_port}"

    def admin(self, method: str, path: str, json: Any = None) -> Any:
        response = httpx.request(
            method,
            self.base_url + path,
            json=json,
            headers={"Authorization": f"Bearer {self.stack.admin_key}"},
            timeout=30,
        )
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def post_usage(
        self, customer_id: str, event_id: str, quantity: str, meter: str = "call_minutes"
    ) -> None:
        """One usage event through the API, as a service posting usage would."""
        response = httpx.post(
            self.base_url + "/v2/usage",
            json={
                "event_id": event_id,
                "customer_id": customer_id,
                "meter": meter,
                "quantity": quantity,
                "occurred_at": _now(),
            },
            headers={"Authorization": f"Bearer {self.service_key[customer_id]}"},
            timeout=30,
        )
        if response.status_code != 202:
            raise AssertionError(f"usage refused: {response.status_code} {response.text}")

    def balance_micros(self, customer_id: str) -> int:
        doc = self.admin("GET", f"/v2/customers/{customer_id}/balance")
        return int(doc["balance_micros"])


def _credited(world: World, customer_id: str) -> bool:
    return world.balance_micros(customer_id) == WELCOME_CREDIT_MICROS


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def wait_for(check: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except (AssertionError, httpx.HTTPError, KeyError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout_s} s")
        time.sleep(0.2)


RESELLERS = (
    ("res_nordwind", "Nordwind Telekom", "EUR", "nordwind", "#0b5394", "#e69138"),
    ("res_suedstern", "Südstern Voice", "EUR", "suedstern", "#1e6b3a", "#c9a227"),
)
CUSTOMERS = (
    ("cus_weber", "Praxis Dr. Weber", "EUR", "res_nordwind", "0.15"),
    ("cus_kanzlei", "Kanzlei Albers", "EUR", "res_nordwind", "0.12"),
    ("cus_hotel", "Hotel Seeblick", "EUR", "res_suedstern", "0.18"),
    ("cus_direct", "Direktkunde GmbH", "EUR", None, "0.20"),
)


def build_world(stack: Stack) -> World:
    world = World(stack)
    world.admin(
        "POST",
        "/v2/users",
        {"email": world.admin_email, "password": PASSWORD, "role": "admin", "name": "Platform Ops"},
    )
    for rid, name, currency, slug, primary, accent in RESELLERS:
        world.admin(
            "POST",
            "/v2/resellers",
            {
                "id": rid,
                "name": name,
                "currency": currency,
                "slug": slug,
                "brand_name": name,
                "color_primary": primary,
                "color_accent": accent,
            },
        )
        email = f"partner@{slug}-demo.de"
        world.admin(
            "POST",
            "/v2/users",
            {
                "email": email,
                "password": PASSWORD,
                "role": "reseller",
                "tenant_id": rid,
                "name": name,
            },
        )
        world.resellers[rid] = Tenant(rid, name, currency, email)
    for cid, name, currency, reseller, price in CUSTOMERS:
        body: dict[str, Any] = {
            "id": cid,
            "name": name,
            "currency": currency,
            "prices": [{"meter": "call_minutes", "unit_price": price}],
            "auto_topup": {"enabled": False, "threshold": "5.00", "amount": "20.00"},
        }
        if reseller:
            body["reseller_id"] = reseller
        world.admin("POST", "/v2/customers", body)
        email = f"owner@{cid.removeprefix('cus_')}-demo.de"
        world.admin(
            "POST",
            "/v2/users",
            {
                "email": email,
                "password": PASSWORD,
                "role": "customer",
                "tenant_id": cid,
                "name": name,
            },
        )
        world.customers[cid] = Tenant(cid, name, currency, email, reseller)
        key = world.admin("POST", "/v2/api-keys", {"tenant_id": cid, "role": "service"})
        world.service_key[cid] = key["key"]
        world.admin(
            "POST",
            f"/v2/customers/{cid}/adjustments",
            {"amount": "50.00", "reason": "welcome credit"},
        )
    for cid in world.customers:
        wait_for(partial(_credited, world, cid), 60, f"{cid} credited")
    return world
