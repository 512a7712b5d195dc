-- Reverts schema v7.
DROP INDEX IF EXISTS tessera_metrics_seq_brin;
ALTER TABLE tessera_metrics DROP COLUMN IF EXISTS seq;
DROP SEQUENCE IF EXISTS tessera_metrics_commit_seq;
