"""The demo's dashboard users and white-label brands: who can sign in where after ``up``.

Every demo reseller gets a slug (its white-label host ``<slug>.<base domain>``), a brand
name and colours; a partner user; and a customer user for its most active customer (so the
portal moves within seconds). A direct customer's user and a platform admin user complete
the set. All share the demo password (``<data dir>/demo_password``, printed by ``up``).
E-mail addresses are fixed, so the banner can name them without asking the api.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from streambill.loadgen.population import DemoCustomer, Population

ADMIN_EMAIL: Final = "admin@streambill-demo.de"
# reseller name -> (slug, primary colour, accent colour)
BRANDS: Final = {
    "Nordwind Telecom": ("nordwind", "#0b5394", "#e69138"),
    "Alpen Voice": ("alpen", "#6d2077", "#00a3a1"),
    "BlueLine Partners": ("blueline", "#114b8a", "#2bb673"),
    "Metro Agents": ("metro", "#2f3e46", "#f4a259"),
}


@dataclass(frozen=True)
class Login:
    area: str  # portal, reseller or admin
    email: str
    slug: str | None  # the white-label host to use, if any


def slug_of(reseller_name: str) -> str:
    """The demo slug of a reseller name.

    >>> slug_of("Nordwind Telecom"), slug_of("Some New Name")
    ('nordwind', 'some')
    """
    known = BRANDS.get(reseller_name)
    return known[0] if known else reseller_name.split()[0].lower()


def partner_email(slug: str) -> str:
    return f"partner@{slug}-demo.de"


def customer_email(slug: str | None) -> str:
    return f"kunde@{slug}-demo.de" if slug else "kunde@streambill-demo.de"


def _most_active(customers: list[DemoCustomer]) -> DemoCustomer | None:
    return max(customers, key=lambda c: c.weight, default=None)


def branding_requests(population: Population) -> list[tuple[str, dict[str, Any]]]:
    """``(path, body)`` PATCHes that give every demo reseller its slug and brand."""
    requests = []
    for reseller in population.resellers:
        slug, primary, accent = BRANDS.get(reseller.name, (slug_of(reseller.name), None, None))
        body: dict[str, Any] = {"slug": slug, "brand_name": reseller.name}
        if primary and accent:
            body |= {"color_primary": primary, "color_accent": accent}
        requests.append((f"/v2/resellers/{reseller.account_id}", body))
    return requests


def showcase_customers(population: Population) -> list[str]:
    """The customers with a demo sign-in: each reseller's most active one and the most active
    direct customer (the demo keeps their pages moving at any hour)."""
    chosen = [
        _most_active([c for c in population.customers if c.parent_id == r.account_id])
        for r in population.resellers
    ]
    chosen.append(_most_active([c for c in population.customers if c.parent_id is None]))
    return [c.account_id for c in chosen if c is not None]


def user_requests(population: Population, password: str) -> list[dict[str, Any]]:
    """``POST /v2/users`` bodies: the admin, a partner per reseller, a customer per reseller
    (its most active one) and one direct customer."""
    users: list[dict[str, Any]] = [
        {"email": ADMIN_EMAIL, "password": password, "role": "admin", "name": "Plattform-Betrieb"}
    ]
    for reseller in population.resellers:
        slug = slug_of(reseller.name)
        users.append(
            {
                "email": partner_email(slug),
                "password": password,
                "role": "reseller",
                "tenant_id": reseller.account_id,
                "name": f"Partner {reseller.name}",
            }
        )
        own = [c for c in population.customers if c.parent_id == reseller.account_id]
        customer = _most_active(own)
        if customer is not None:
            users.append(_customer_user(customer, customer_email(slug), password))
    direct = _most_active([c for c in population.customers if c.parent_id is None])
    if direct is not None:
        users.append(_customer_user(direct, customer_email(None), password))
    return users


def _customer_user(customer: DemoCustomer, email: str, password: str) -> dict[str, Any]:
    return {
        "email": email,
        "password": password,
        "role": "customer",
        "tenant_id": customer.account_id,
        "name": customer.name,
    }


def banner_logins(reseller_names: tuple[str, ...] = tuple(BRANDS)) -> list[Login]:
    """The three sign-ins the banner shows: admin, the first reseller, its customer."""
    slug = slug_of(reseller_names[0])
    return [
        Login("admin", ADMIN_EMAIL, None),
        Login("reseller", partner_email(slug), slug),
        Login("portal", customer_email(slug), slug),
    ]
