-- Schema v4: metric rows no longer carry a foreign key to their shard.
--
-- Measured (docs/performance.md): the per-row referential check (a FOR KEY SHARE lookup of the shard row for every
-- point) cost as much as the insert itself, on the table that takes the most rows. The key is redundant with how
-- rows get there: the writer inserts a shard's points only in the transaction that checked, against
-- tessera_shards, that the sender holds the shard's current attempt (fencing, protocol/SPEC.md §6.3), and Tessera
-- never deletes shards or jobs. The primary key (job_id, shard_idx, name, step) stays and serves every read.
ALTER TABLE tessera_metrics DROP CONSTRAINT IF EXISTS tessera_metrics_job_id_shard_idx_fkey;
