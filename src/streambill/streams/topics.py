"""Topic names and their configuration. Every topic is created explicitly before use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

ACCOUNTS: Final = "billing.accounts.v1"
USAGE: Final = "billing.usage.v1"
PAYMENTS: Final = "billing.payments.v1"
LEDGER: Final = "billing.ledger.v1"
ALERTS: Final = "billing.alerts.v1"
DEADLETTER: Final = "billing.deadletter.v1"
# Reseller commission entries, key reseller_id (agents/commissions.py).
COMMISSIONS: Final = "billing.commissions.v1"
# Internal: ledger entries of resellers' customers re-keyed by reseller_id, plus the
# commissions agent's own markers (rates, plans); one partition holds a reseller's book.
COMMISSION_FACTS: Final = "streambill.commission-facts.v1"
# Fraud scores of usage and payment events (agents/fraud.py), key customer_id.
FRAUD: Final = "billing.fraud.v1"
# Fraud labels posted through the API (manual flags), key customer_id: the fraud agent's
# supervised model learns from them (chargebacks reach it on the payments topic).
FRAUD_LABELS: Final = "streambill.fraud-labels.v1"

# The Faust app id; Faust names table changelogs "<app id>-<table>-changelog".
APP_ID: Final = "streambill"
BALANCES_CHANGELOG: Final = f"{APP_ID}-balances-changelog"
DEDUP_CHANGELOG: Final = f"{APP_ID}-dedup-changelog"
ACCOUNTS_CHANGELOG: Final = f"{APP_ID}-accounts-changelog"
# The consumer group of the api's ClickHouse sink.
SINK_GROUP: Final = "streambill-sink"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(partitions: int) -> list[TopicSpec]:
    """Every topic the stack uses. Customer-keyed topics and the tables' changelogs share one
    partition count (Faust raises PartitionsMismatch otherwise)."""
    compacted = {"cleanup.policy": "compact"}
    return [
        TopicSpec(ACCOUNTS, partitions, compacted),
        TopicSpec(USAGE, partitions),
        TopicSpec(PAYMENTS, partitions),
        TopicSpec(LEDGER, partitions),
        TopicSpec(ALERTS, partitions),
        TopicSpec(DEADLETTER, partitions),
        TopicSpec(COMMISSIONS, partitions),
        TopicSpec(COMMISSION_FACTS, partitions),
        TopicSpec(FRAUD, partitions),
        TopicSpec(FRAUD_LABELS, partitions),
        TopicSpec(BALANCES_CHANGELOG, partitions, compacted),
        TopicSpec(DEDUP_CHANGELOG, partitions, compacted),
        TopicSpec(ACCOUNTS_CHANGELOG, partitions, compacted),
    ]
