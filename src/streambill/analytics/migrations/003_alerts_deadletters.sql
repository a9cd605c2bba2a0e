-- Alerts, collapsed by alert_id (the id is deterministic; created_at may differ on a replay).
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id String,
    customer_id String,
    reseller_id Nullable(String),
    kind LowCardinality(String),
    details String,
    created_at DateTime64(6, 'UTC'),
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (customer_id, alert_id);

-- Dead letters, collapsed by the position of the input that failed.
CREATE TABLE IF NOT EXISTS deadletters
(
    topic LowCardinality(String),
    `partition` Int32,
    `offset` Int64,
    key Nullable(String),
    value String,
    error_code LowCardinality(String),
    reason String,
    failed_at DateTime64(6, 'UTC'),
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, `partition`, `offset`);
