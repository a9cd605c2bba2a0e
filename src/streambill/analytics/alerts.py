"""Alerts in ClickHouse (``alerts``, filled by the sink from ``billing.alerts.v1``): the
recent ones of a scope, newest first, each once.

``alerts`` collapses a replayed ``alert_id`` only at merge time, so the read takes
``LIMIT 1 BY alert_id``. Reads take the blocking clickhouse-connect client first (the api runs
them through ``AsyncClickHouse.run``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, NamedTuple

from clickhouse_connect.driver.client import Client

ALERTS_LIMIT_MAX: Final = 500


class AlertRecord(NamedTuple):
    alert_id: str
    customer_id: str
    reseller_id: str | None
    kind: str
    details: str  # JSON text, as the producer wrote it
    created_at: datetime


def recent_alerts(
    client: Client,
    *,
    customer_id: str | None,
    reseller_id: str | None,
    kinds: tuple[str, ...],
    exclude_kinds: tuple[str, ...],
    limit: int,
) -> list[AlertRecord]:
    """The newest ``limit`` alerts matching every given filter (None / empty: no filter)."""
    if not 1 <= limit <= ALERTS_LIMIT_MAX:
        raise ValueError(f"limit must be 1..{ALERTS_LIMIT_MAX}")
    conditions: list[str] = []
    parameters: dict[str, Any] = {}
    if customer_id is not None:
        conditions.append("customer_id = {customer:String}")
        parameters["customer"] = customer_id
    if reseller_id is not None:
        conditions.append("reseller_id = {reseller:String}")
        parameters["reseller"] = reseller_id
    if kinds:
        conditions.append("kind IN {kinds:Array(String)}")
        parameters["kinds"] = list(kinds)
    if exclude_kinds:
        conditions.append("kind NOT IN {excluded:Array(String)}")
        parameters["excluded"] = list(exclude_kinds)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    result = client.query(
        "SELECT alert_id, customer_id, reseller_id, kind, details, created_at FROM alerts "
        f"{where} ORDER BY created_at DESC, alert_id LIMIT 1 BY alert_id LIMIT {int(limit)}",
        parameters=parameters,
    )
    return [AlertRecord(*row) for row in result.result_rows]
