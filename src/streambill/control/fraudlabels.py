"""Manual fraud labels: the admin or the owning reseller flags a customer (or one of its
events) as fraud, or clears it; the fraud agent's supervised model learns from them.

Delivery uses the transactional outbox (:mod:`.outbox`), not a publish inside the request:
the ``fraud_labels`` row and its ``streambill.fraud-labels.v1`` message commit in ONE
transaction, and the relay publishes the message (key ``customer_id``, the murmur2
partitioner like every customer-keyed topic) right after the commit, then at least once
until the broker acknowledges it. So a 201 means the label is stored and *will* reach the
topic; a broker outage delays it instead of failing the request, and no row can exist whose
message was lost (nor a message without its row). A repeat after a crash between the
broker's acknowledgement and the relay's mark carries the same ``label_id``: consumers treat
it as the idempotency key.

Who may: the admin and the reseller owning the customer (its reseller keys and users). A
customer or a service key that sees the customer gets 403 ``forbidden`` (a suspect must not
read or write its own flags); anyone who does not see it gets 404, as for a missing id.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

from sqlalchemy import select

from streambill.control.models import FraudLabel
from streambill.control.outbox import enqueue
from streambill.control.plane import ControlPlane, audit, page_by_id, visible_customer
from streambill.control.principal import Principal
from streambill.control.schemas import FraudLabelCreate, FraudLabelPublic, Page
from streambill.errors import Forbidden
from streambill.streams.topics import FRAUD_LABELS

# FraudLabel.created_by is String(64); Principal.label() can be longer (a 128-character
# tenant id), so the row names the role and the credential, the audit record the full label.
CREATED_BY_MAX: Final = 64


def label_message(row: FraudLabel) -> dict[str, Any]:
    """The ``streambill.fraud-labels.v1`` value for a label (docs/api.md)."""
    return {
        "label_id": row.id,
        "customer_id": row.customer_id,
        "fraud": row.fraud,
        "event_id": row.event_id,
        "source": "manual",
        "note": row.note,
        "created_at": row.created_at.isoformat(),
    }


def new_label_id() -> str:
    """``fl_`` and 24 random hex digits (the message schema's ``fl_<hex>``).

    >>> len(new_label_id()), new_label_id().startswith("fl_")
    (27, True)
    """
    return f"fl_{secrets.token_hex(12)}"


def label_public(row: FraudLabel) -> FraudLabelPublic:
    return FraudLabelPublic.model_validate(row, from_attributes=True)


def created_by(p: Principal) -> str:
    """Who posted a label, short enough for its column.

    >>> created_by(Principal("admin", None, None, "admin"))
    'admin:admin'
    >>> len(created_by(Principal("reseller", "r" * 128, "reseller", "key_" + "x" * 80)))
    64
    """
    return f"{p.role}:{p.credential_id}"[:CREATED_BY_MAX]


def require_fraud_staff(p: Principal) -> None:
    """The admin or a reseller's own credential (scope is checked separately)."""
    if not (p.is_admin or p.role == "reseller"):
        raise Forbidden("only the admin or the owning reseller handles fraud labels and scores")


async def create_label(
    cp: ControlPlane, p: Principal, customer_id: str, body: FraudLabelCreate
) -> FraudLabelPublic:
    now = cp.clock()
    async with cp.sessions.begin() as session:
        await visible_customer(session, p, customer_id)
        require_fraud_staff(p)
        row = FraudLabel(
            id=new_label_id(),
            customer_id=customer_id,
            fraud=body.fraud,
            event_id=body.event_id,
            note=body.note,
            created_by=created_by(p),
            created_at=now,
        )
        session.add(row)
        enqueue(session, FRAUD_LABELS, customer_id, label_message(row), now)
        audit(
            session,
            now,
            p,
            "customer.fraud_label",
            customer_id,
            {"label_id": row.id, "fraud": body.fraud, "event_id": body.event_id},
        )
        result = label_public(row)
    cp.on_outbox()
    return result


async def list_labels(
    cp: ControlPlane, p: Principal, customer_id: str, *, limit: int, cursor: str | None
) -> Page[FraudLabelPublic]:
    """A customer's labels by id (keyset pages, like every list)."""
    async with cp.sessions() as session:
        await visible_customer(session, p, customer_id)
    require_fraud_staff(p)
    query = select(FraudLabel).where(FraudLabel.customer_id == customer_id)
    return await page_by_id(cp, query, FraudLabel.id, limit, cursor, label_public)
