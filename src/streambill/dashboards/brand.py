"""Who a page is dressed as: the platform or a reseller, from the Host header or the viewer.

``<slug>.<base domain>`` names a reseller by its slug; any other host that is a reseller's
``custom_domain`` names that reseller; every other host is the platform's. A white-label host
whose slug or domain names no reseller answers 404 (a typo must not show the platform's brand
to a reseller's customers). Lookups are cached for :data:`CACHE_TTL_S`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import select

from streambill.control.models import Tenant
from streambill.control.plane import ControlPlane

CACHE_TTL_S: Final = 10.0
CACHE_MAX: Final = 10_000
PLATFORM_NAME: Final = "streambill"
PLATFORM_PRIMARY: Final = "#1d4ed8"
PLATFORM_ACCENT: Final = "#0f766e"


@dataclass(frozen=True, slots=True)
class Brand:
    """A page's brand. ``reseller_id`` is None for the platform's own."""

    name: str
    primary: str = PLATFORM_PRIMARY
    accent: str = PLATFORM_ACCENT
    logo_url: str | None = None
    reseller_id: str | None = None

    @property
    def initials(self) -> str:
        """Up to two letters for the logo badge when there is no logo.

        >>> Brand("Nordwind Telekom").initials, Brand("streambill").initials
        ('NT', 'S')
        """
        words = [w for w in self.name.replace("-", " ").split() if w[:1].isalnum()]
        return "".join(w[0] for w in words[:2]).upper() or "?"


PLATFORM: Final = Brand(PLATFORM_NAME)


def reseller_brand(tenant: Tenant) -> Brand:
    return Brand(
        name=tenant.brand_name or tenant.name,
        primary=tenant.color_primary or PLATFORM_PRIMARY,
        accent=tenant.color_accent or PLATFORM_ACCENT,
        logo_url=tenant.logo_url,
        reseller_id=tenant.id,
    )


class UnknownPortal(LookupError):
    """A white-label host that names no reseller."""


def host_name(host_header: str | None) -> str:
    """The host without port, lower case.

    >>> host_name("Nordwind.LOCALHOST:8000"), host_name("[::1]:8000"), host_name(None)
    ('nordwind.localhost', '[::1]', '')
    """
    if not host_header:
        return ""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def slug_of(host: str, base_domain: str) -> str | None:
    """The reseller slug a host names under the base domain, if it names one.

    >>> slug_of("nordwind.localhost", "localhost"), slug_of("localhost", "localhost")
    ('nordwind', None)
    >>> slug_of("a.b.localhost", "localhost"), slug_of("example.com", "localhost")
    (None, None)
    """
    suffix = "." + base_domain.lower().strip(".")
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    return label if label and "." not in label else None


@dataclass
class BrandResolver:
    """Host -> brand and tenant id -> brand, cached briefly (branding changes show within
    :data:`CACHE_TTL_S`)."""

    control: ControlPlane
    base_domain: str
    platform_hosts: frozenset[str]
    _cache: dict[tuple[str, str], tuple[float, Brand | None]] = field(default_factory=dict)

    def _cached(self, key: tuple[str, str]) -> tuple[bool, Brand | None]:
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def _remember(self, key: tuple[str, str], brand: Brand | None) -> None:
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + CACHE_TTL_S, brand)

    async def for_host(self, host_header: str | None) -> Brand:
        """The brand a host names; raises :class:`UnknownPortal` for a white-label host that
        names no reseller."""
        host = host_name(host_header)
        if not host or host in self.platform_hosts or host == self.base_domain:
            return PLATFORM
        key = ("host", host)
        found, brand = self._cached(key)
        if not found:
            brand = await self._lookup(host)
            self._remember(key, brand)
        if brand is None:
            raise UnknownPortal(host)
        return brand

    async def _lookup(self, host: str) -> Brand | None:
        """A slug under the base domain names a reseller (or nothing: 404); any other host
        under the base domain is unknown; elsewhere a reseller's custom domain, else the
        platform's own host (a proxy's name, an IP)."""
        under_base = host.endswith("." + self.base_domain.strip("."))
        slug = slug_of(host, self.base_domain)
        if under_base and slug is None:
            return None
        column = Tenant.slug if slug is not None else Tenant.custom_domain
        async with self.control.sessions() as session:
            tenant = await session.scalar(
                select(Tenant).where(column == (slug or host), Tenant.kind == "reseller")
            )
        if tenant is not None:
            return reseller_brand(tenant)
        return None if under_base else PLATFORM

    async def for_tenant(self, tenant_id: str | None) -> Brand:
        """The brand a tenant's users see: a reseller's own, a customer's reseller's, the
        platform's for direct customers and the admin."""
        if tenant_id is None:
            return PLATFORM
        key = ("tenant", tenant_id)
        found, brand = self._cached(key)
        if found and brand is not None:
            return brand
        async with self.control.sessions() as session:
            tenant = await session.get(Tenant, tenant_id)
            if tenant is not None and tenant.kind == "customer" and tenant.parent_id:
                tenant = await session.get(Tenant, tenant.parent_id)
        brand = reseller_brand(tenant) if tenant is not None and tenant.kind == "reseller" else None
        self._remember(key, brand or PLATFORM)
        return brand or PLATFORM
