"""Who is asking, and what they may see: pure scope rules, no I/O.

A principal is the platform admin, a reseller, a customer, or a service key bound to one
tenant (a customer or a reseller). The rules (CONTRACT section 5, ARCHITECTURE "tenants form a
tree"): the admin sees everything; a reseller sees itself and its customers; a customer sees
itself; a service key sees the tenant it is bound to (a reseller-bound key: that reseller's
customers). Anything outside the scope answers 404, as if it did not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "reseller", "customer", "service"]
TenantKind = Literal["reseller", "customer"]
ROLES: tuple[Role, ...] = ("admin", "reseller", "customer", "service")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``tenant_id`` is None only for the admin. ``tenant_kind`` is the kind of that tenant
    (a service key can be bound to either). ``credential_id`` names the API key or session
    that authenticated the request (rate limits and revocation key on it); ``user_id`` is set
    for sessions.
    """

    role: Role
    tenant_id: str | None
    tenant_kind: TenantKind | None
    credential_id: str
    user_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def reseller_scope(self) -> str | None:
        """The reseller whose customers this principal sees, if it is one."""
        return self.tenant_id if self.tenant_kind == "reseller" else None

    def sees_money_of(self, reseller_id: str) -> bool:
        """Whether this principal may read a reseller's commissions, statements and payouts:
        the admin, or the reseller itself; not a service key bound to it (it acts for the
        tenant's traffic, not for its money).

        >>> Principal("reseller", "res_1", "reseller", "k").sees_money_of("res_1")
        True
        >>> Principal("service", "res_1", "reseller", "k").sees_money_of("res_1")
        False
        """
        return self.is_admin or (self.role == "reseller" and self.reseller_scope == reseller_id)

    @property
    def customer_scope(self) -> str | None:
        """The one customer this principal is bound to, if it is one."""
        return self.tenant_id if self.tenant_kind == "customer" else None

    def label(self) -> str:
        """For audit records and logs: never the secret itself.

        >>> Principal("reseller", "res_1", "reseller", "key_9").label()
        'reseller:res_1:key_9'
        >>> Principal("admin", None, None, "admin").label()
        'admin:-:admin'
        """
        return f"{self.role}:{self.tenant_id or '-'}:{self.credential_id}"

    def sees_customer(self, customer_id: str, reseller_id: str | None) -> bool:
        """Whether a customer (and anything it owns: balance, ledger entries, alerts) with
        this parent reseller is in scope.

        >>> admin = Principal("admin", None, None, "admin")
        >>> res = Principal("reseller", "res_1", "reseller", "k1")
        >>> cus = Principal("customer", "cus_1", "customer", "k2")
        >>> svc = Principal("service", "res_1", "reseller", "k3")
        >>> admin.sees_customer("cus_9", "res_2")
        True
        >>> res.sees_customer("cus_1", "res_1"), res.sees_customer("cus_2", "res_2")
        (True, False)
        >>> res.sees_customer("cus_3", None)
        False
        >>> cus.sees_customer("cus_1", "res_1"), cus.sees_customer("cus_2", "res_1")
        (True, False)
        >>> svc.sees_customer("cus_1", "res_1"), svc.sees_customer("cus_2", None)
        (True, False)
        """
        if self.role == "admin":
            return True
        if self.tenant_kind == "customer":
            return customer_id == self.tenant_id
        if self.tenant_kind == "reseller":
            return reseller_id is not None and reseller_id == self.tenant_id
        return False

    def sees_tenant(self, tenant_id: str, kind: TenantKind, parent_id: str | None) -> bool:
        """Whether a tenant record (a reseller or a customer) is in scope.

        >>> res = Principal("reseller", "res_1", "reseller", "k1")
        >>> res.sees_tenant("res_1", "reseller", None), res.sees_tenant("res_2", "reseller", None)
        (True, False)
        >>> res.sees_tenant("cus_1", "customer", "res_1")
        True
        """
        if self.role == "admin":
            return True
        if kind == "reseller":
            return tenant_id == self.tenant_id
        return self.sees_customer(tenant_id, parent_id)
