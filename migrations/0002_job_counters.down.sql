DROP INDEX IF EXISTS tessera_jobs_awaiting_merge_idx;
ALTER TABLE tessera_jobs DROP CONSTRAINT IF EXISTS tessera_jobs_succeeded_le_count;
ALTER TABLE tessera_jobs DROP COLUMN IF EXISTS shards_succeeded;
