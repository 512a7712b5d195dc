-- Schema v5: each shard remembers the worker that held its latest lease, so `status JOB` can say who ran a finished
-- shard (worker_id is cleared when a lease ends; the CHECK on tessera_shards ties it to state 'leased').
-- Set with worker_id by the claim and by re-adoption; never cleared. No foreign key: workers are never deleted, and
-- the claim is the hot path.
ALTER TABLE tessera_shards ADD COLUMN last_worker_id bigint;
UPDATE tessera_shards s SET last_worker_id = coalesce(s.worker_id, (
    SELECT e.worker_id FROM tessera_events e
    WHERE e.job_id = s.job_id AND e.shard_idx = s.idx AND e.worker_id IS NOT NULL
    ORDER BY e.id DESC LIMIT 1));
