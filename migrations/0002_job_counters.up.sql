-- Schema v2: per-job shard counters kept in the job row, updated in the same transaction as the shard.
-- The completion check after every SHARD_DONE was a count over the job's shards (a scan that grows with the job:
-- 49 shards/s on a 10,000-shard job); it is now one row update that returns whether the job is complete.
ALTER TABLE tessera_jobs ADD COLUMN shards_succeeded integer NOT NULL DEFAULT 0 CHECK (shards_succeeded >= 0);
ALTER TABLE tessera_jobs ADD CONSTRAINT tessera_jobs_succeeded_le_count CHECK (shards_succeeded <= shard_count);
UPDATE tessera_jobs j SET shards_succeeded = c.n
FROM (SELECT job_id, count(*) AS n FROM tessera_shards WHERE state = 'succeeded' GROUP BY job_id) c
WHERE c.job_id = j.id;
-- Jobs whose every shard succeeded but that have no result yet (the coordinator died mid-merge): found at start-up
-- without looking at shards.
CREATE INDEX tessera_jobs_awaiting_merge_idx ON tessera_jobs (id)
    WHERE state IN ('queued', 'running') AND shards_succeeded = shard_count;
