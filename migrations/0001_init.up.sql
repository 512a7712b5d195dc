-- Tessera schema v1: jobs, shards, metrics, checkpoints, workers, events.
-- The one copy of the schema (ARCHITECTURE.md §Storage). Applied by `tessera migrate`, recorded in
-- tessera_schema_version by the migrator.

CREATE TYPE tessera_job_kind AS ENUM ('sampling', 'rl', 'preference');
CREATE TYPE tessera_job_state AS ENUM ('queued', 'running', 'succeeded', 'failed', 'cancelled');
CREATE TYPE tessera_shard_state AS ENUM ('queued', 'leased', 'succeeded', 'failed', 'cancelled');
CREATE TYPE tessera_worker_state AS ENUM ('alive', 'lost', 'gone');

CREATE TABLE tessera_jobs (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind          tessera_job_kind NOT NULL,
    algorithm     text NOT NULL,
    spec          jsonb NOT NULL,                 -- canonical spec (defaults filled in)
    source_text   text NOT NULL,                  -- as submitted, for the record
    seed          numeric(20, 0) NOT NULL CHECK (seed >= 0 AND seed <= 18446744073709551615),
    priority      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    shard_count   integer NOT NULL CHECK (shard_count >= 1),
    depends_on    bigint[] NOT NULL DEFAULT '{}',
    state         tessera_job_state NOT NULL DEFAULT 'queued',
    result        jsonb,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    CHECK ((state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL)),
    CHECK (state <> 'succeeded' OR result IS NOT NULL)
);
-- `tessera status` lists recent jobs first.
CREATE INDEX tessera_jobs_created_idx ON tessera_jobs (id DESC);
-- The scheduler looks only at live jobs.
CREATE INDEX tessera_jobs_live_idx ON tessera_jobs (state) WHERE state IN ('queued', 'running');

CREATE TABLE tessera_workers (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL,
    host            text NOT NULL,
    slots           integer NOT NULL CHECK (slots >= 0),
    capabilities    text[] NOT NULL DEFAULT '{}',
    public_key      text,
    state           tessera_worker_state NOT NULL DEFAULT 'alive',
    connected_at    timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    disconnected_at timestamptz
);
CREATE INDEX tessera_workers_alive_idx ON tessera_workers (name) WHERE state = 'alive';

CREATE TABLE tessera_shards (
    job_id            bigint NOT NULL REFERENCES tessera_jobs (id) ON DELETE CASCADE,
    idx               integer NOT NULL CHECK (idx >= 0),
    slice             jsonb NOT NULL,
    priority          integer NOT NULL DEFAULT 0,      -- copied from the job so the claim is one index scan
    state             tessera_shard_state NOT NULL DEFAULT 'queued',
    attempt           integer NOT NULL DEFAULT 0,      -- lease counter: every lease is a new attempt (fencing token)
    failures          integer NOT NULL DEFAULT 0,      -- the shard's own errors; infrastructure loss does not count
    worker_id         bigint REFERENCES tessera_workers (id),
    lease_expires_at  timestamptz,
    step              bigint NOT NULL DEFAULT 0,
    total_steps       bigint NOT NULL DEFAULT 0,
    checkpoint_step   bigint,                          -- latest checkpoint to resume from
    checkpoint_sha256 text,
    last_metrics      jsonb NOT NULL DEFAULT '{}',     -- latest value per metric name, kept on write
    summary           jsonb,
    result_sha256     text,
    error             text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, idx),
    CHECK ((state = 'leased') = (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CHECK (state <> 'succeeded' OR summary IS NOT NULL)
);
-- Claiming: highest priority first, then oldest job, then shard order (FOR UPDATE SKIP LOCKED).
CREATE INDEX tessera_shards_queued_idx ON tessera_shards (priority DESC, job_id, idx) WHERE state = 'queued';
-- Lease rescue: leased shards by expiry.
CREATE INDEX tessera_shards_leased_idx ON tessera_shards (lease_expires_at) WHERE state = 'leased';
CREATE INDEX tessera_shards_worker_idx ON tessera_shards (worker_id) WHERE state = 'leased';

CREATE TABLE tessera_metrics (
    job_id     bigint NOT NULL,
    shard_idx  integer NOT NULL,
    name       text NOT NULL,
    step       bigint NOT NULL,
    value      double precision NOT NULL,
    attempt    integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- One value per (shard, name, step): a resumed attempt rewrites the same steps with the same values.
    PRIMARY KEY (job_id, shard_idx, name, step),
    FOREIGN KEY (job_id, shard_idx) REFERENCES tessera_shards (job_id, idx) ON DELETE CASCADE
);

CREATE TABLE tessera_checkpoints (
    job_id     bigint NOT NULL,
    shard_idx  integer NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('checkpoint', 'samples', 'result')),
    step       bigint NOT NULL,
    attempt    integer NOT NULL,
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size       bigint NOT NULL CHECK (size >= 0),
    path       text NOT NULL,                       -- relative to the coordinator's data dir
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, shard_idx, kind, step),
    FOREIGN KEY (job_id, shard_idx) REFERENCES tessera_shards (job_id, idx) ON DELETE CASCADE
);
CREATE INDEX tessera_checkpoints_sha_idx ON tessera_checkpoints (sha256);

CREATE TABLE tessera_events (
    id         bigserial PRIMARY KEY,
    job_id     bigint REFERENCES tessera_jobs (id) ON DELETE CASCADE,
    shard_idx  integer,
    worker_id  bigint REFERENCES tessera_workers (id),
    actor      text NOT NULL,                       -- 'coordinator', 'worker:<name>', 'client'
    kind       text NOT NULL,                       -- 'job.submitted', 'shard.leased', ...
    detail     jsonb NOT NULL DEFAULT '{}',
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tessera_events_job_idx ON tessera_events (job_id, id);
