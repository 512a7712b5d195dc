-- Reverts schema v6.
DROP TABLE IF EXISTS tessera_shard_logs;
