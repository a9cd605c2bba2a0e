-- Commission entries, as emitted on billing.commissions.v1 by the commissions agent.
-- entry_id is deterministic (<ledger entry id>:<kind>, or <marker>:<kind> for restatements),
-- so a replay re-inserts equal rows and ReplacingMergeTree collapses them; reads that must
-- not see duplicates use FINAL or LIMIT 1 BY entry_id. A month's commission is the sum of its
-- accrual and true_up rows, its base the sum of base_delta_micros, its bonuses the sum of the
-- bonus_* rows; position orders one reseller's entries (the latest carries tier and rate).
-- Accruals come per slice (many facts of one reseller and month): customers maps each
-- customer to its part of the slice's base, facts counts the ledger entries summed.
CREATE TABLE IF NOT EXISTS commissions
(
    entry_id String,
    reseller_id String,
    customer_id String,
    month LowCardinality(String),
    kind LowCardinality(String),
    amount_micros Int64,
    currency LowCardinality(String),
    base_micros Int64,
    base_delta_micros Int64,
    tier UInt8,
    rate String,
    position Int64,
    month_commission_micros Int64,
    month_bonus_micros Int64,
    customers Map(String, Int64),
    facts UInt32,
    source_entry_id String,
    source_kind LowCardinality(String),
    source_amount_micros Int64,
    source_currency LowCardinality(String),
    fx_rate Nullable(String),
    fx_date Nullable(Date),
    occurred_at DateTime64(6, 'UTC'),
    created_at DateTime64(6, 'UTC'),
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (reseller_id, month, entry_id);
