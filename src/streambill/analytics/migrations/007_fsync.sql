-- The sink commits its Kafka offsets after an insert returns. ClickHouse does not sync a new
-- part by default, so a power loss could drop rows whose offsets are already committed, and
-- nothing would read them again. These tables sync each part (and its directory) before the
-- insert returns: the sink's batches (1,000 rows or 1 s) pay ~13 fdatasync calls each.
-- The per-minute/hour/day usage rollups are derived (queries.rebuild_rollups) and stay as
-- they are.
ALTER TABLE ledger MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE usage MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE alerts MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE deadletters MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE commissions MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE fraud_scores MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
