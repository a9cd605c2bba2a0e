-- How far the sink's rows go in each source partition: the next offset after the last
-- record of every flush, written (and synced) before the flush's rows. Rows in ClickHouse
-- never come from beyond these offsets, so a start can tell whether ClickHouse is ahead of
-- the broker (streambill/consistency.py): a broker that lost records it had acknowledged.
CREATE TABLE IF NOT EXISTS sink_positions
(
    topic LowCardinality(String),
    partition Int32,
    next_offset Int64,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (topic, partition)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
