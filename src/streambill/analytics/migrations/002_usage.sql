-- Raw usage events as services sent them (only those that decode; the worker dead-letters the
-- rest). Producers may send an event_id twice: the key (customer_id, event_id) collapses those.
CREATE TABLE IF NOT EXISTS usage
(
    event_id String,
    customer_id String,
    meter LowCardinality(String),
    quantity_text String,
    quantity Decimal(38, 9),
    occurred_at DateTime64(6, 'UTC'),
    attributes String,
    kafka_partition Int32,
    kafka_offset Int64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (customer_id, event_id);
