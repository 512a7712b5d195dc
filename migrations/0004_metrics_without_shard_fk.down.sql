-- Reverts schema v4: metric rows reference their shard again (rows of shards that do not exist would make this fail;
-- the writer never creates such rows).
ALTER TABLE tessera_metrics
    ADD CONSTRAINT tessera_metrics_job_id_shard_idx_fkey
    FOREIGN KEY (job_id, shard_idx) REFERENCES tessera_shards (job_id, idx) ON DELETE CASCADE;
