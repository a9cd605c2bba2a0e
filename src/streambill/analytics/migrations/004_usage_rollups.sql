-- Usage quantity and spend (the negated amount of usage entries, in micros) per customer,
-- meter and currency, per minute, hour and day of occurred_at, for the dashboards.
--
-- Duplicates: a materialized view sees every INSERT into ledger, before ReplacingMergeTree
-- collapses anything, so a replayed entry inserted twice would be counted twice here. The sink
-- therefore inserts each entry_id once: it drops repeats within a batch and asks ledger which
-- ids of the batch it already holds before inserting. What is left (two sinks racing on the
-- same entry during a rebalance against a ClickHouse server) is repaired by
-- analytics.queries.rebuild_rollups, which recomputes these tables from ledger FINAL.
-- SummingMergeTree sums rows lazily: read with sum() ... GROUP BY.
-- reseller_id is informational (a customer's reseller; any value among merged rows).

CREATE TABLE IF NOT EXISTS usage_per_minute
(
    customer_id String,
    meter String,
    currency LowCardinality(String),
    bucket DateTime('UTC'),
    reseller_id String,
    entries UInt64,
    quantity Decimal(38, 9),
    spend_micros Int64
)
ENGINE = SummingMergeTree
ORDER BY (customer_id, meter, currency, bucket);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_per_minute_mv TO usage_per_minute AS
SELECT
    customer_id,
    ifNull(meter, '') AS meter,
    currency,
    toDateTime(toStartOfMinute(occurred_at), 'UTC') AS bucket,
    any(ifNull(reseller_id, '')) AS reseller_id,
    count() AS entries,
    sum(quantity) AS quantity,
    sum(-amount_micros) AS spend_micros
FROM ledger
WHERE kind = 'usage'
GROUP BY customer_id, meter, currency, bucket;

CREATE TABLE IF NOT EXISTS usage_per_hour
(
    customer_id String,
    meter String,
    currency LowCardinality(String),
    bucket DateTime('UTC'),
    reseller_id String,
    entries UInt64,
    quantity Decimal(38, 9),
    spend_micros Int64
)
ENGINE = SummingMergeTree
ORDER BY (customer_id, meter, currency, bucket);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_per_hour_mv TO usage_per_hour AS
SELECT
    customer_id,
    ifNull(meter, '') AS meter,
    currency,
    toDateTime(toStartOfHour(occurred_at), 'UTC') AS bucket,
    any(ifNull(reseller_id, '')) AS reseller_id,
    count() AS entries,
    sum(quantity) AS quantity,
    sum(-amount_micros) AS spend_micros
FROM ledger
WHERE kind = 'usage'
GROUP BY customer_id, meter, currency, bucket;

CREATE TABLE IF NOT EXISTS usage_per_day
(
    customer_id String,
    meter String,
    currency LowCardinality(String),
    bucket DateTime('UTC'),
    reseller_id String,
    entries UInt64,
    quantity Decimal(38, 9),
    spend_micros Int64
)
ENGINE = SummingMergeTree
ORDER BY (customer_id, meter, currency, bucket);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_per_day_mv TO usage_per_day AS
SELECT
    customer_id,
    ifNull(meter, '') AS meter,
    currency,
    toDateTime(toStartOfDay(occurred_at), 'UTC') AS bucket,
    any(ifNull(reseller_id, '')) AS reseller_id,
    count() AS entries,
    sum(quantity) AS quantity,
    sum(-amount_micros) AS spend_micros
FROM ledger
WHERE kind = 'usage'
GROUP BY customer_id, meter, currency, bucket;
