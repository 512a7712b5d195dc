-- Schema v3: shards that wait on other shards of their job (ShardSlice.dependsOn, protocol/SPEC.md §6.9).
-- A shard is claimable only once every shard it depends on has succeeded. Each shard keeps the count of its
-- dependencies that have not succeeded yet (`waiting_on`, set at submit); a SHARD_DONE decrements its dependents'
-- counts in the same statement, found through tessera_shard_dependencies_on_idx, so no statement about one shard
-- scans the job. Dependencies point at earlier shards only (depends_on < shard_idx): a plan cannot hold a cycle.
CREATE TABLE tessera_shard_dependencies (
    job_id     bigint NOT NULL,
    shard_idx  integer NOT NULL,
    depends_on integer NOT NULL CHECK (depends_on >= 0 AND depends_on < shard_idx),
    PRIMARY KEY (job_id, shard_idx, depends_on),
    FOREIGN KEY (job_id, shard_idx) REFERENCES tessera_shards (job_id, idx) ON DELETE CASCADE,
    FOREIGN KEY (job_id, depends_on) REFERENCES tessera_shards (job_id, idx) ON DELETE CASCADE
);
-- A succeeded shard's dependents.
CREATE INDEX tessera_shard_dependencies_on_idx ON tessera_shard_dependencies (job_id, depends_on);

ALTER TABLE tessera_shards ADD COLUMN waiting_on integer NOT NULL DEFAULT 0 CHECK (waiting_on >= 0);

-- The claim takes only shards with nothing to wait for; waiting shards stay out of its index, so the claim's cost
-- does not grow with the shards that wait.
DROP INDEX tessera_shards_queued_idx;
CREATE INDEX tessera_shards_queued_idx ON tessera_shards (priority DESC, job_id, idx)
    WHERE state = 'queued' AND waiting_on = 0;
