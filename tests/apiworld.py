"""Test support for the api: a running ``streambill api`` process on SQLite or PostgreSQL, and
a populated world of tenants, keys and users to test scope rules against."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from pipeline import Stack
from streambill.broker.testing import memory_broker

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
STRIPE_WEBHOOK_SECRET = "whsec_streambill_tests"
BACKENDS = ("sqlite", "postgresql")


def postgres_available() -> bool:
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def database_url(backend: str, data_dir: Path) -> Iterator[str | None]:
    """None for the default SQLite file in the data dir; for PostgreSQL a fresh schema in the
    ``test`` database (dropped afterwards), so runs never see each other's rows."""
    if backend == "sqlite":
        yield None
        return
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    schema = f"sb_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'create schema "{schema}"')
    try:
        yield f"{PG_DSN}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'drop schema "{schema}" cascade')


@dataclass
class Api:
    stack: Stack
    bootstrap: str
    database_url: str | None
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base_url, timeout=30)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.api_port}"

    @property
    def admin(self) -> dict[str, str]:
        return bearer(self.stack.admin_key)

    def call(
        self, method: str, path: str, token: str | None, json: Any = None, **kw: Any
    ) -> httpx.Response:
        headers = {**kw.pop("headers", {}), **(bearer(token) if token else {})}
        return self.client.request(method, path, json=json, headers=headers, **kw)

    def ok(self, method: str, path: str, json: Any = None, token: str | None = None) -> Any:
        response = self.call(method, path, token or self.stack.admin_key, json)
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return response.json() if response.content else None


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def running_api(
    tmp: Path, backend: str = "sqlite", env: dict[str, str] | None = None
) -> Iterator[Api]:
    with memory_broker(4) as broker, database_url(backend, tmp) as url:
        stack = Stack(broker.bootstrap, tmp, 4)
        if url is not None:
            stack.env["STREAMBILL_DATABASE_URL"] = url
        stack.env["STREAMBILL_STRIPE_WEBHOOK_SECRET"] = STRIPE_WEBHOOK_SECRET
        stack.env.update(env or {})
        stack.start_api()
        api = Api(stack, broker.bootstrap, url)
        try:
            yield api
        finally:
            api.client.close()
            stack.stop()


@dataclass
class World:
    """Two resellers with a customer each, a direct customer, and credentials for each role.

    ``tokens`` maps principal names (admin, reseller_a, reseller_b, customer_a, customer_b,
    service_a, revoked) to secrets; ``objects`` maps object names to ids; ``owner`` maps each
    object name to the tenant names that may see it (besides the admin)."""

    tokens: dict[str, str]
    objects: dict[str, str]
    names: dict[str, str]
    kinds: dict[str, str]


def build_world(api: Api) -> World:
    ok = api.ok
    tag = secrets.token_hex(3)
    res_a = ok("POST", "/v2/resellers", {"name": f"Reseller A {tag}", "currency": "EUR"})["id"]
    res_b = ok("POST", "/v2/resellers", {"name": f"Reseller B {tag}", "currency": "GBP"})["id"]
    price = [{"meter": "call_minutes", "unit_price": "0.15"}]
    cus_a = ok(
        "POST",
        "/v2/customers",
        {"name": f"Customer A1 {tag}", "currency": "EUR", "prices": price, "reseller_id": res_a},
    )["id"]
    cus_b = ok(
        "POST",
        "/v2/customers",
        {"name": f"Customer B1 {tag}", "currency": "GBP", "prices": price, "reseller_id": res_b},
    )["id"]
    cus_d = ok(
        "POST", "/v2/customers", {"name": f"Direct D1 {tag}", "currency": "USD", "prices": price}
    )["id"]

    def key(tenant: str | None, role: str) -> dict[str, Any]:
        return ok("POST", "/v2/api-keys", {"tenant_id": tenant, "role": role})

    tokens = {
        "admin": api.stack.admin_key,
        "reseller_a": key(res_a, "reseller")["key"],
        "reseller_b": key(res_b, "reseller")["key"],
        "customer_a": key(cus_a, "customer")["key"],
        "customer_b": key(cus_b, "customer")["key"],
        "service_a": key(cus_a, "service")["key"],
    }
    revoked = key(res_a, "reseller")
    ok("DELETE", f"/v2/api-keys/{revoked['id']}")
    tokens["revoked"] = revoked["key"]
    objects = {"res_a": res_a, "res_b": res_b, "cus_a": cus_a, "cus_b": cus_b, "cus_d": cus_d}
    kinds = {"res_a": "reseller", "res_b": "reseller", "cus_a": "customer"}
    kinds |= {"cus_b": "customer", "cus_d": "customer"}
    names: dict[str, str] = {}
    for tenant in ("res_a", "res_b", "cus_a", "cus_b", "cus_d"):
        # a key and a user per tenant: the targets of key and user routes
        objects[f"key_{tenant}"] = key(objects[tenant], "service")["id"]
        kinds[f"key_{tenant}"] = "key"
        role = "reseller" if tenant.startswith("res") else "customer"
        user = ok(
            "POST",
            "/v2/users",
            {
                "email": f"{tenant}-{tag}@example.com",
                "password": f"pw-{tenant}-{tag}-long",
                "role": role,
                "tenant_id": objects[tenant],
            },
        )
        objects[f"user_{tenant}"] = user["id"]
        kinds[f"user_{tenant}"] = "user"
    for name in ("res_a", "res_b", "cus_a", "cus_b", "cus_d"):
        names[name] = ok("GET", f"/v2/{kinds[name]}s/{objects[name]}")["name"]
    return World(tokens=tokens, objects=objects, names=names, kinds=kinds)


# Which tenants each principal acts for, and which tenant owns each object (for the rule below).
PRINCIPAL_TENANTS = {
    "reseller_a": ("res_a", "reseller"),
    "reseller_b": ("res_b", "reseller"),
    "customer_a": ("cus_a", "customer"),
    "customer_b": ("cus_b", "customer"),
    "service_a": ("cus_a", "service"),
}
PARENT = {"cus_a": "res_a", "cus_b": "res_b", "cus_d": None, "res_a": None, "res_b": None}


def tenant_of(obj: str) -> str:
    """The tenant an object belongs to: itself for tenants, its tenant for keys and users."""
    for prefix in ("key_", "user_"):
        if obj.startswith(prefix):
            return obj[len(prefix) :]
    return obj


def may_see(principal: str, obj: str) -> bool:
    """The scope rule of CONTRACT section 5, written out independently of the product code:
    the admin sees everything; a reseller itself, its customers and their keys and users; a
    customer itself and its keys and users; a service key its customer (not keys or users)."""
    if principal == "admin":
        return True
    if principal in ("none", "revoked"):
        return False
    tenant, role = PRINCIPAL_TENANTS[principal]
    owner = tenant_of(obj)
    if role == "service":
        return obj == tenant
    if role == "reseller":
        return owner == tenant or PARENT.get(owner) == tenant
    return owner == tenant
