"""Who pays: the customer a principal may pay for (or manage the payment methods of), its
Stripe customer, and what a failed Stripe call means to the caller. Shared by Checkout
top-ups (:mod:`.checkout`) and saved payment methods (:mod:`.methods`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from streambill.control.models import Tenant
from streambill.control.plane import ControlPlane, visible_customer
from streambill.control.principal import Principal
from streambill.errors import Conflict, Forbidden, NotFound, StreambillError
from streambill.payments.gateway import StripeGateway, StripeProblem, StripeUnreachable


class PaymentProviderUnavailable(StreambillError):
    """Stripe did not answer: the call may have taken effect; retry with the same key."""

    code = "payment_provider_unavailable"


class PaymentProviderError(StreambillError):
    """Stripe refused a request streambill made (a configuration problem or a bug)."""

    code = "payment_provider_error"


@dataclass(frozen=True)
class Payments:
    """What the operations share: the control plane, Stripe (None: not configured) and the
    address customers come back to."""

    cp: ControlPlane
    gateway: StripeGateway | None
    public_url: str
    # Origins (scheme://host[:port]) a Checkout may return to besides the tenant's own hosts
    # (STREAMBILL_ALLOWED_ORIGINS: the integrators' apps the operator trusts).
    return_origins: frozenset[str] = frozenset()
    dashboard_base_domain: str = "localhost"

    def stripe(self) -> StripeGateway:
        if self.gateway is None:
            raise StreambillError("Stripe is not configured", code="unavailable")
        return self.gateway


def stripe_failure(exc: StripeProblem, what: str) -> StreambillError:
    """The error a caller sees when a Stripe call about ``what`` failed."""
    if isinstance(exc, StripeUnreachable):
        return PaymentProviderUnavailable(f"Stripe did not answer ({what}); retry later")
    return PaymentProviderError(f"Stripe refused {what}: {exc}")


class ReturnUrlNotAllowed(StreambillError):
    code = "return_url_not_allowed"


async def check_return_urls(pay: Payments, tenant: Tenant, *urls: str | None) -> None:
    """Refuse a Checkout return URL on a host that is not the customer's own: an open
    redirect after payment would carry a customer who just paid to any site.

    Allowed: the api's public address, the customer's reseller's dashboard hosts
    (``<slug>.<DASHBOARD_BASE_DOMAIN>`` and its custom domain, any port), and the origins in
    ``STREAMBILL_ALLOWED_ORIGINS``."""
    given = [u for u in urls if u]
    if not given:
        return
    hosts = {_host(pay.public_url)}
    if tenant.parent_id:
        async with pay.cp.sessions() as session:
            reseller = await session.get(Tenant, tenant.parent_id)
        if reseller is not None:
            if reseller.slug:
                hosts.add(f"{reseller.slug}.{pay.dashboard_base_domain}".lower())
            if reseller.custom_domain:
                hosts.add(reseller.custom_domain.lower())
    for url in given:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ReturnUrlNotAllowed(f"{url!r} is not an http(s) URL")
        if parts.hostname.lower() not in hosts and origin not in pay.return_origins:
            raise ReturnUrlNotAllowed(
                f"{parts.hostname} is not one of this customer's hosts; allowed: "
                f"{', '.join(sorted(hosts))} and STREAMBILL_ALLOWED_ORIGINS"
            )


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


async def payer(cp: ControlPlane, p: Principal, customer_id: str) -> Tenant:
    """The customer whose money this is, if the principal may act for it: 404 outside the
    scope, 403 for service keys, 409 for a closed account."""
    async with cp.sessions() as session:
        tenant = await visible_customer(session, p, customer_id)
    if p.role == "service":
        raise Forbidden("service keys do not pay or manage payment methods")
    if tenant.status == "closed":
        raise Conflict(f"customer {customer_id!r} is closed")
    return tenant


async def stripe_customer(pay: Payments, tenant: Tenant) -> str:
    """The tenant's Stripe customer, made on first use (one, however many ask at once)."""
    if tenant.stripe_customer_id:
        return tenant.stripe_customer_id
    try:
        made = await pay.stripe().create_customer(tenant.id, tenant.name, f"customer:{tenant.id}")
    except StripeProblem as exc:
        raise stripe_failure(exc, "to create the customer") from exc
    async with pay.cp.sessions.begin() as session:
        row = await session.get(Tenant, tenant.id, with_for_update=True)
        if row is None:
            raise NotFound(f"customer {tenant.id!r} not found")
        if row.stripe_customer_id is None:
            row.stripe_customer_id = str(made["id"])
        stored = row.stripe_customer_id
    tenant.stripe_customer_id = stored
    return stored
