-- Reverts schema v5.
ALTER TABLE tessera_shards DROP COLUMN IF EXISTS last_worker_id;
