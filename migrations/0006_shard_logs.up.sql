-- Schema v6: the log lines of shard attempts (protocol/SPEC.md §5 LOGS), shown by `tessera logs`.
--
-- Written by the coordinator's group-committing writer, fenced like metrics (the sender holds the shard's current
-- attempt). One row per line; `id` is the insertion order, which is the `logs` method's keyset cursor (a line
-- committed later always has a larger id: the writer commits one transaction at a time). A replayed batch (same
-- shard, attempt and sequence after a reconnect) is stored once. Retention: the writer keeps the newest 2,000 lines
-- of each shard, all attempts together, and deletes older ones in the same transaction (docs/operations.md).
CREATE TABLE tessera_shard_logs (
    id         bigserial PRIMARY KEY,
    job_id     bigint NOT NULL,
    shard_idx  integer NOT NULL,
    attempt    integer NOT NULL,
    -- The LOGS batch's sequence within its attempt, and the line's place in the batch.
    sequence   bigint NOT NULL,
    line       integer NOT NULL,
    -- When the worker wrote the line: seconds since 1970-01-01 UTC, by the worker's clock.
    logged_at  double precision NOT NULL,
    level      text NOT NULL CHECK (level IN ('trace', 'debug', 'info', 'notice', 'warning', 'error', 'critical')),
    message    text NOT NULL,
    UNIQUE (job_id, shard_idx, attempt, sequence, line)
);
-- A job's lines in order (`tessera logs JOB`), and one shard's (`--shard N`, and the retention bound).
CREATE INDEX tessera_shard_logs_job_idx ON tessera_shard_logs (job_id, id);
CREATE INDEX tessera_shard_logs_shard_idx ON tessera_shard_logs (job_id, shard_idx, id);
