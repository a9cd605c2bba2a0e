-- Fraud scores, one per scored usage or payment event, as the fraud agent emits them on
-- billing.fraud.v1. score_id is derived from the event, and a replay carries the same
-- occurred_at (the event's time): the sorting key (customer_id, occurred_at, score_id)
-- collapses a replayed score at merge time (the latest insert wins), and the reads use
-- LIMIT 1 BY score_id until then. The key serves "a customer's scores, newest first";
-- the skip indexes serve "suspected events of one reseller" (few rows are suspected).
-- Scores are model outputs in [0, 1] with 4 decimals, kept exact as Decimal(9, 4) (no Float
-- column anywhere: the migrations test guards it).
CREATE TABLE IF NOT EXISTS fraud_scores
(
    score_id String,
    customer_id String,
    reseller_id Nullable(String),
    source LowCardinality(String),
    event_id String,
    kind LowCardinality(String),
    score Decimal(9, 4),
    unsupervised Decimal(9, 4),
    supervised Nullable(Decimal(9, 4)),
    threshold Decimal(9, 4),
    suspected Bool,
    occurred_at DateTime64(6, 'UTC'),
    scored_at DateTime64(6, 'UTC'),
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6),
    INDEX fraud_suspected suspected TYPE set(2) GRANULARITY 1,
    INDEX fraud_reseller reseller_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_id, occurred_at, score_id);
