-- Reverts schema v3. Shards still waiting on others would become claimable in any order: let jobs with
-- dependencies finish (or cancel them) before migrating down.
DROP INDEX IF EXISTS tessera_shards_queued_idx;
CREATE INDEX tessera_shards_queued_idx ON tessera_shards (priority DESC, job_id, idx) WHERE state = 'queued';
ALTER TABLE tessera_shards DROP COLUMN IF EXISTS waiting_on;
DROP TABLE IF EXISTS tessera_shard_dependencies;
