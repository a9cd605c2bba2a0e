-- The ledger: one row per applied event, as emitted on billing.ledger.v1.
-- ReplacingMergeTree collapses rows with equal ORDER BY keys. A replayed entry carries the same
-- entry_id AND the same (customer_id, seq), so the key (customer_id, seq, entry_id) makes a
-- replay collapse, while two DIFFERENT entries that claim the same seq (a bug) stay apart and
-- the invariant checker can see them. applied_at is left out of the key on purpose: a replay
-- may be stamped with another wall-clock time. No PARTITION BY: rows are only collapsed within
-- one partition, and a time partition would let a late replay escape the collapse.
-- Reads that must not see duplicates use FINAL or LIMIT 1 BY entry_id.
-- Money is Int64 micros; quantity_text keeps the decimal string exactly as emitted and
-- quantity is the same value as Decimal(38, 9) for sums. No Float anywhere.
CREATE TABLE IF NOT EXISTS ledger
(
    entry_id String,
    source_event_id String,
    source_topic LowCardinality(String),
    customer_id String,
    reseller_id Nullable(String),
    kind LowCardinality(String),
    meter Nullable(String),
    quantity_text Nullable(String),
    quantity Decimal(38, 9),
    amount_micros Int64,
    balance_micros Int64,
    currency LowCardinality(String),
    seq Int64,
    occurred_at DateTime64(6, 'UTC'),
    applied_at DateTime64(6, 'UTC'),
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (customer_id, seq, entry_id);
