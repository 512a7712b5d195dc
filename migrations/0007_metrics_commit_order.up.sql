-- Schema v7: metric rows remember the writer commit that first stored them, so `tessera metrics JOB --follow` can
-- page a running job by commit order (protocol/SPEC.md §7, `metrics` with `since`).
--
-- The metrics keyset (shard, name, step) cannot follow a running job: new points land in every shard, before the
-- cursor. `seq` is one value of tessera_metrics_commit_seq per writer commit (not per row): the writer commits one
-- transaction at a time, so once a commit is visible every smaller seq is too, and a cursor (seq, shard, name, step)
-- never skips a row. A point rewritten by a replay or a resumed attempt keeps its seq (the same point, not a new one).
-- Rows stored before this version have seq 0. BRIN, not a b-tree: rows are appended in seq order, so a block range
-- summary finds the newest rows for the price of a few pages, and costs the writer almost nothing per row
-- (docs/performance.md, "Following metrics").
CREATE SEQUENCE tessera_metrics_commit_seq;
ALTER TABLE tessera_metrics ADD COLUMN seq bigint NOT NULL DEFAULT 0;
CREATE INDEX tessera_metrics_seq_brin ON tessera_metrics USING brin (seq);
