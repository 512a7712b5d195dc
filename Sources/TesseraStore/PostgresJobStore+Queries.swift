// Read queries behind the CLI. Each answers one request with ONE SQL statement that builds the JSON reply in
// PostgreSQL, so `status` never asks workers and never aggregates raw metric series (ANCHORS.md: Ray dashboard,
// MLflow run lists, Slurm polling storms). Per-shard latest metrics are kept on write (`last_metrics`).

import LibPQ
import TesseraCore

extension PostgresJobStore {
    /// The schema version recorded by the migrator; 0 when the database was never migrated.
    public func schemaVersion() throws -> Int {
        let exists = try db.execute("SELECT to_regclass('tessera_schema_version') IS NOT NULL AS present")
        guard exists.bool(0, "present") == true else { return 0 }
        let r = try db.execute("SELECT coalesce(max(version), 0) AS v FROM tessera_schema_version")
        return Int(r.int(0, "v") ?? 0)
    }

    /// Recent jobs, newest first, with shard counts by state.
    /// Jobs newest first. `nameLike` is a SQL LIKE pattern (the caller escapes it); `since` keeps jobs created at or
    /// after that instant (seconds since 1970).
    public func jobListJSON(
        limit: Int, state: String?, nameLike: String? = nil, kind: String? = nil, algorithm: String? = nil, since: Double? = nil
    ) throws -> String {
        let r = try db.execute(
            """
            SELECT coalesce(json_agg(x ORDER BY x.id DESC), '[]'::json)::text AS jobs FROM (
                SELECT j.id, j.name, j.kind, j.algorithm, j.state, j.priority, j.shard_count AS shards,
                       j.shards_succeeded,
                       (SELECT count(*) FROM tessera_shards s WHERE s.job_id = j.id AND s.state = 'leased') AS shards_running,
                       j.created_at, j.started_at, j.finished_at,
                       extract(epoch FROM (coalesce(j.finished_at, now()) - j.created_at)) AS elapsed_seconds,
                       j.error
                FROM tessera_jobs j
                WHERE ($2::text IS NULL OR j.state::text = $2) AND ($3::text IS NULL OR j.name LIKE $3)
                  AND ($4::text IS NULL OR j.kind::text = $4) AND ($5::text IS NULL OR j.algorithm = $5)
                  AND ($6::float8 IS NULL OR j.created_at >= to_timestamp($6))
                ORDER BY j.id DESC LIMIT $1) x
            """,
            [
                .int(Int64(limit)), state.map { .text($0) } ?? .null, nameLike.map { .text($0) } ?? .null,
                kind.map { .text($0) } ?? .null, algorithm.map { .text($0) } ?? .null, since.map { .double($0) } ?? .null,
            ]
        )
        return r[0, "jobs"]!
    }

    /// One job with its shards (state, attempt, worker, step/total, last metrics) and optionally its events.
    /// nil when the job does not exist.
    public func jobStatusJSON(_ id: Int64, events: Bool) throws -> String? {
        let r = try db.execute(
            """
            SELECT json_build_object(
                'id', j.id, 'name', j.name, 'kind', j.kind, 'algorithm', j.algorithm, 'state', j.state,
                'seed', j.seed::text, 'priority', j.priority, 'max_attempts', j.max_attempts, 'shard_count', j.shard_count,
                'depends_on', j.depends_on, 'created_at', j.created_at, 'started_at', j.started_at,
                'finished_at', j.finished_at,
                'elapsed_seconds', extract(epoch FROM (coalesce(j.finished_at, now()) - j.created_at)),
                'run_seconds', extract(epoch FROM (coalesce(j.finished_at, now()) - j.started_at)),
                'error', j.error,
                'steps_done', (SELECT coalesce(sum(s.step), 0) FROM tessera_shards s WHERE s.job_id = j.id),
                'steps_total', (SELECT coalesce(sum(s.total_steps), 0) FROM tessera_shards s WHERE s.job_id = j.id),
                'shards', (SELECT coalesce(json_agg(json_build_object(
                        'index', s.idx, 'slice', s.slice, 'state', s.state, 'waiting_on', s.waiting_on, 'attempt', s.attempt,
                        'failures', s.failures,
                        'worker', w.name, 'step', s.step, 'total', s.total_steps,
                        'checkpoint_step', s.checkpoint_step, 'last_metrics', s.last_metrics,
                        'summary', s.summary, 'error', s.error, 'updated_at', s.updated_at) ORDER BY s.idx), '[]'::json)
                    FROM tessera_shards s
                    -- The leaseholder; for a finished shard, the worker of its last lease (who ran it).
                    LEFT JOIN tessera_workers w ON w.id = CASE WHEN s.state = 'leased' THEN s.worker_id
                                                               WHEN s.state IN ('succeeded', 'failed') THEN s.last_worker_id END
                    WHERE s.job_id = j.id),
                'events', CASE WHEN $2 THEN (SELECT coalesce(json_agg(json_build_object(
                        'at', e.at, 'actor', e.actor, 'kind', e.kind, 'shard', e.shard_idx, 'detail', e.detail)
                        ORDER BY e.id), '[]'::json) FROM tessera_events e WHERE e.job_id = j.id) END
            )::text AS job
            FROM tessera_jobs j WHERE j.id = $1
            """,
            [.int(id), .bool(events)]
        )
        return r.rowCount == 1 ? r[0, "job"] : nil
    }

    /// Workers seen recently (alive ones and those lost within the last hour), with what they run. A worker that
    /// re-registered (reconnect, coordinator restart) has a row per registration; only its newest is shown.
    public func workersJSON() throws -> String {
        let r = try db.execute(
            """
            SELECT coalesce(json_agg(x ORDER BY x.state, x.id), '[]'::json)::text AS workers FROM (
                SELECT w.id, w.name, w.host, w.slots, w.capabilities, w.state, w.connected_at, w.last_heartbeat,
                       extract(epoch FROM (now() - w.last_heartbeat)) AS seconds_since_heartbeat,
                       (SELECT coalesce(json_agg(json_build_object('job', s.job_id, 'shard', s.idx, 'attempt', s.attempt,
                                                                   'step', s.step, 'total', s.total_steps)
                                                 ORDER BY s.job_id, s.idx), '[]'::json)
                        FROM tessera_shards s WHERE s.worker_id = w.id AND s.state = 'leased') AS running
                FROM (SELECT DISTINCT ON (name) * FROM tessera_workers ORDER BY name, id DESC) w
                WHERE w.state = 'alive' OR w.disconnected_at > now() - interval '1 hour') x
            """
        )
        return r[0, "workers"]!
    }

    /// What a job has to filter on: `{"shards": S, "names": [metric names any shard reported]}` (from each shard's
    /// latest values, so it does not scan the metric rows).
    public func metricNamesJSON(jobID: Int64) throws -> String {
        let r = try db.execute(
            """
            SELECT json_build_object(
                'shards', (SELECT shard_count FROM tessera_jobs WHERE id = $1),
                'names', (SELECT coalesce(json_agg(DISTINCT k.name ORDER BY k.name), '[]'::json)
                          FROM tessera_shards s, jsonb_object_keys(s.last_metrics) AS k(name) WHERE s.job_id = $1)
            )::text AS available
            """, [.int(jobID)])
        return r[0, "available"]!
    }

    /// The job's metric series: `[{name, shards, points, first_step, last_step}]` by name, optionally of one shard;
    /// nil when the job does not exist.
    public func metricSeriesJSON(jobID: Int64, shard: Int32?) throws -> String? {
        let exists = try db.execute("SELECT 1 FROM tessera_jobs WHERE id = $1", [.int(jobID)])
        guard exists.rowCount == 1 else { return nil }
        let r = try db.execute(
            """
            SELECT coalesce(json_agg(json_build_object('name', name, 'shards', shards, 'points', points,
                                                       'first_step', first_step, 'last_step', last_step) ORDER BY name),
                            '[]'::json)::text AS series
            FROM (SELECT name, count(DISTINCT shard_idx) AS shards, count(*) AS points, min(step) AS first_step,
                         max(step) AS last_step
                  FROM tessera_metrics WHERE job_id = $1 AND ($2::int IS NULL OR shard_idx = $2) GROUP BY name) m
            """,
            [.int(jobID), shard.map { .int(Int64($0)) } ?? .null])
        return r[0, "series"]!
    }

    /// Metric rows of a job, filtered by shard and name, in (shard, name, step) order.
    /// A position in a job's metric rows, which are ordered by (shard, name, step): a page starts after it.
    public struct MetricCursor: Sendable, Equatable {
        public var shard: Int32
        public var name: String
        public var step: Int64
        public init(shard: Int32, name: String, step: Int64) {
            self.shard = shard
            self.name = name
            self.step = step
        }
    }

    /// Metric rows of a job (optionally one shard, one name) in (shard, name, step) order, at most `limit`, starting
    /// after `after`; and the cursor of the last row when the page is full (there may be more). nil: no such job.
    public func metricsJSON(
        jobID: Int64, shard: Int32?, name: String?, limit: Int, after: MetricCursor? = nil
    ) throws -> (json: String, next: MetricCursor?)? {
        let exists = try db.execute("SELECT 1 FROM tessera_jobs WHERE id = $1", [.int(jobID)])
        guard exists.rowCount == 1 else { return nil }
        let r = try db.execute(
            """
            SELECT coalesce(json_agg(json_build_object('shard', m.shard_idx, 'name', m.name, 'step', m.step,
                                                       'value', m.value, 'attempt', m.attempt)
                                     ORDER BY m.shard_idx, m.name, m.step), '[]'::json)::text AS metrics,
                   count(*) AS n,
                   (array_agg(m.shard_idx ORDER BY m.shard_idx DESC, m.name DESC, m.step DESC))[1] AS last_shard,
                   (array_agg(m.name ORDER BY m.shard_idx DESC, m.name DESC, m.step DESC))[1] AS last_name,
                   (array_agg(m.step ORDER BY m.shard_idx DESC, m.name DESC, m.step DESC))[1] AS last_step
            FROM (SELECT * FROM tessera_metrics
                  WHERE job_id = $1 AND ($2::int IS NULL OR shard_idx = $2) AND ($3::text IS NULL OR name = $3)
                    AND ($5::int IS NULL OR (shard_idx, name, step) > ($5::int, $6::text, $7::bigint))
                  ORDER BY shard_idx, name, step LIMIT $4) m
            """,
            [
                .int(jobID), shard.map { .int(Int64($0)) } ?? .null, name.map { .text($0) } ?? .null, .int(Int64(limit)),
                after.map { .int(Int64($0.shard)) } ?? .null, after.map { .text($0.name) } ?? .null,
                after.map { .int($0.step) } ?? .null,
            ]
        )
        var next: MetricCursor?
        if let n = r[0, "n"].flatMap({ Int($0) }), n >= limit, let s = r[0, "last_shard"].flatMap({ Int32($0) }),
            let name = r[0, "last_name"], let step = r[0, "last_step"].flatMap({ Int64($0) })
        {
            next = MetricCursor(shard: s, name: name, step: step)
        }
        return (r[0, "metrics"]!, next)
    }

    /// Queue depth for the Prometheus export: shards that are queued or leased now, and jobs by state.
    /// `{"shards": {"queued": n, "leased": n}, "jobs": {"queued": n, "running": n, ...}}` (absent states are 0).
    public func queueDepthJSON() throws -> String {
        let r = try db.execute(
            """
            SELECT json_build_object(
                'shards', (SELECT coalesce(json_object_agg(state, n), '{}'::json) FROM
                           (SELECT state::text AS state, count(*) AS n FROM tessera_shards
                            WHERE state IN ('queued', 'leased') GROUP BY state) s),
                'jobs', (SELECT coalesce(json_object_agg(state, n), '{}'::json) FROM
                         (SELECT state::text AS state, count(*) AS n FROM tessera_jobs GROUP BY state) j)
            )::text AS depth
            """
        )
        return r[0, "depth"]!
    }

    /// The job's state and merged result. nil when the job does not exist.
    public func resultJSON(jobID: Int64) throws -> (state: String, result: String?, error: String?)? {
        let r = try db.execute(
            "SELECT state::text AS state, result::text AS result, error FROM tessera_jobs WHERE id = $1",
            [.int(jobID)]
        )
        guard r.rowCount == 1 else { return nil }
        return (r[0, "state"]!, r[0, "result"], r[0, "error"])
    }

    /// The blob kinds and steps a shard has (for `checkpoint pull` errors that say what exists).
    /// Every stored blob of a job (or of one shard), in (shard, kind, step) order, with the attempt that stored it.
    public func jobBlobsJSON(jobID: Int64, shard: Int32?) throws -> String {
        let r = try db.execute(
            """
            SELECT coalesce(json_agg(json_build_object('shard', shard_idx, 'kind', kind, 'step', step, 'size', size,
                                                       'sha256', sha256, 'attempt', attempt, 'created_at', created_at)
                                     ORDER BY shard_idx, kind, step), '[]'::json)::text AS blobs
            FROM tessera_checkpoints WHERE job_id = $1 AND ($2::int IS NULL OR shard_idx = $2)
            """,
            [.int(jobID), shard.map { .int(Int64($0)) } ?? .null]
        )
        return r[0, "blobs"]!
    }

    public func blobsJSON(jobID: Int64, shard: Int32) throws -> String {
        let r = try db.execute(
            """
            SELECT coalesce(json_agg(json_build_object('kind', kind, 'step', step, 'size', size, 'sha256', sha256)
                                     ORDER BY kind, step), '[]'::json)::text AS blobs
            FROM tessera_checkpoints WHERE job_id = $1 AND shard_idx = $2
            """,
            [.int(jobID), .int(Int64(shard))]
        )
        return r[0, "blobs"]!
    }
}
