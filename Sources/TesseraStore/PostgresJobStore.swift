// Every SQL statement the coordinator runs (schema: migrations/, 0001_init.up.sql and the changes after it).
//
// PostgreSQL is the only source of truth. All writes about a shard are fenced on (job, shard, attempt): a message
// from a superseded attempt changes nothing and is reported back as not accepted. Values always travel as bind
// parameters; arrays are sent as PostgreSQL array literals built by `PGArray`, never spliced into SQL text.
//
// One store owns one connection and is used from one thread (the coordinator's loop); libpq connections are not
// thread-safe.

import Foundation
import LibPQ
import TesseraCore
import TesseraModel

extension ShardRef {
    /// From a result row with columns job_id, idx, attempt.
    init(_ r: PGResult, _ row: Int) {
        self.init(jobID: r.int(row, "job_id")!, shardIndex: Int32(r.int(row, "idx")!), attempt: Int32(r.int(row, "attempt")!))
    }
}

public struct StoredBlob: Sendable, Hashable {
    public var jobID: Int64
    public var shardIndex: Int32
    public var kind: String
    public var step: Int64
    public var sha256: String
    public var size: Int64
    public var path: String
}

/// One dependency of a shard, as `shardInputs` reads it.
public struct StoredShardInput: Sendable, Hashable {
    public var shardIndex: Int32
    /// The dependency's state; its summary is final only when it is `succeeded`.
    public var state: String
    public var summary: String?
    /// The sha256 of its registered result blob, or nil when it has none.
    public var resultSHA256: String?
}

public final class PostgresJobStore: JobStore, @unchecked Sendable {
    // @unchecked: owns one PGConnection and is used from one thread at a time (the coordinator loop).
    public let db: PGConnection
    public var leaseSeconds: Double

    public init(db: PGConnection, leaseSeconds: Double = 15) {
        self.db = db
        self.leaseSeconds = leaseSeconds
    }

    /// `JobStore`: a transaction, or a savepoint inside the caller's.
    public func transaction<T>(_ body: () throws -> T) throws -> T { try db.transaction(body) }

    /// Runs `body` in a transaction, or inside the caller's when one is open (the writer's group commit runs a
    /// whole batch in one; nesting would cost a SAVEPOINT round trip per call).
    func atomically<T>(_ body: () throws -> T) throws -> T {
        db.inTransaction ? try body() : try db.transaction(body)
    }

    // MARK: Jobs

    /// Stores a validated job and its planned shards in one transaction; returns the job id. Throws `SubmitRefused`,
    /// storing nothing, when a `depends_on` job does not exist, failed or was cancelled (the job could never start),
    /// or an input job (`Algorithm.jobInputs`, e.g. `params.model.from_job`) does not exist or is not of the
    /// algorithm it must be. Those jobs stay locked (`FOR SHARE`) until the submission commits: a failure or
    /// cancellation of one that races with it waits, then fails this job too (`failDependents`).
    public func submitJob(spec: JobSpec, sourceText: String, slices: [ShardSlice], inputs: [JobInput] = []) throws -> Int64 {
        try atomically {
            try checkDependencies(spec, inputs: inputs)
            let r = try db.execute(
                """
                INSERT INTO tessera_jobs (name, kind, algorithm, spec, source_text, seed, priority, max_attempts,
                                          shard_count, depends_on)
                VALUES ($1, $2::tessera_job_kind, $3, $4::jsonb, $5, $6::numeric, $7, $8, $9, $10::bigint[])
                RETURNING id
                """,
                [
                    .text(spec.name), .text(spec.kind.rawValue), .text(spec.algorithm), .text(spec.json.render()),
                    .text(sourceText), .text(String(spec.seed)), .int(Int64(spec.priority)),
                    .int(Int64(spec.maxAttempts)), .int(Int64(slices.count)),
                    .text(PGArray.ints(spec.dependsOn)),
                ]
            )
            guard let id = r.int(0, "id") else { throw StoreError("insert into tessera_jobs returned no id") }
            // A shard with dependencies stores them in its slice too (`depends_on`, SPEC §11.2: the worker learns
            // them from its DISPATCH) and waits on all of them.
            try db.execute(
                """
                INSERT INTO tessera_shards (job_id, idx, slice, total_steps, priority, waiting_on)
                SELECT $1, s.idx - 1, s.slice::jsonb, s.total, $4, s.waiting
                FROM unnest($2::text[], $3::bigint[], $5::int[]) WITH ORDINALITY AS s(slice, total, waiting, idx)
                """,
                [
                    .int(id), .text(PGArray.texts(slices.map { $0.stored.render() })),
                    .text(PGArray.ints(slices.map(\.totalSteps))), .int(Int64(spec.priority)),
                    .text(PGArray.ints(slices.map { Int64($0.dependsOn.count) })),
                ]
            )
            let edges = slices.enumerated().flatMap { i, s in s.dependsOn.map { (Int64(i), Int64($0)) } }
            if !edges.isEmpty {
                try db.execute(
                    """
                    INSERT INTO tessera_shard_dependencies (job_id, shard_idx, depends_on)
                    SELECT $1, e.idx, e.dep FROM unnest($2::int[], $3::int[]) AS e(idx, dep)
                    """,
                    [.int(id), .text(PGArray.ints(edges.map(\.0))), .text(PGArray.ints(edges.map(\.1)))]
                )
            }
            try event(job: id, actor: "client", kind: "job.submitted", detail: ["shards": .int(slices.count)])
            return id
        }
    }

    private func checkDependencies(_ spec: JobSpec, inputs: [JobInput]) throws {
        let ids = Array(Set(spec.dependsOn + inputs.map(\.jobID))).sorted()
        guard !ids.isEmpty else { return }
        let r = try db.execute(
            """
            SELECT id, state::text AS state, kind::text || '/' || algorithm AS capability, error
            FROM tessera_jobs WHERE id = ANY($1::bigint[]) ORDER BY id FOR SHARE
            """,
            [.text(PGArray.ints(ids))])
        var jobs: [Int64: (state: String, capability: String, error: String?)] = [:]
        for i in 0..<r.rowCount { jobs[r.int(i, "id")!] = (r[i, "state"]!, r[i, "capability"]!, r[i, "error"]) }
        for input in inputs {
            guard let j = jobs[input.jobID] else { throw SubmitRefused("\(input.path): job \(input.jobID) does not exist") }
            guard input.algorithms.contains(j.capability) else {
                throw SubmitRefused(
                    "\(input.path): job \(input.jobID) is a \(j.capability) job; it must be "
                        + input.algorithms.joined(separator: " or "))
            }
        }
        for dep in spec.dependsOn {
            guard let j = jobs[dep] else { throw SubmitRefused("depends_on: job \(dep) does not exist") }
            if j.state == JobState.failed.rawValue {
                throw SubmitRefused("depends_on: job \(dep) failed, so this job could never start: \(j.error ?? "no error recorded")")
            }
            if j.state == JobState.cancelled.rawValue {
                throw SubmitRefused("depends_on: job \(dep) was cancelled, so this job could never start")
            }
        }
    }

    /// `retry`: a failed or cancelled job goes back to the queue. Its failed and cancelled shards are queued again
    /// with `failures` 0 (their `attempt` goes on counting: it is the fencing token); succeeded shards keep their
    /// output. Refused (the reason returned) for a job that is not failed or cancelled, whose `depends_on` job failed
    /// or was cancelled (retry that one first), or whose shards all succeeded (its merge failed, and would fail the
    /// same way). Jobs that failed because this one did stay failed. nil when the job does not exist.
    public func retryJob(_ id: Int64) throws -> (shards: Int, state: JobState, refused: String?)? {
        try atomically {
            let j = try db.execute(
                "SELECT state::text AS state, error, depends_on::text AS deps FROM tessera_jobs WHERE id = $1 FOR UPDATE", [.int(id)])
            guard j.rowCount == 1, let s = j[0, "state"], let state = JobState(rawValue: s) else { return nil }
            guard state == .failed || state == .cancelled else {
                return (0, state, "job \(id) is \(state.rawValue): only a failed or cancelled job can be retried")
            }
            let deps = try db.execute(
                """
                SELECT d.id, d.state::text AS state FROM tessera_jobs j JOIN tessera_jobs d ON d.id = ANY(j.depends_on)
                WHERE j.id = $1 AND d.state IN ('failed', 'cancelled') ORDER BY d.id LIMIT 1
                """, [.int(id)])
            if deps.rowCount == 1 {
                return (0, state, "depends_on job \(deps[0, "id"] ?? "?") is \(deps[0, "state"] ?? "?"): retry it first")
            }
            let requeued = try db.execute(
                """
                UPDATE tessera_shards SET state = 'queued', failures = 0, error = NULL, worker_id = NULL,
                       lease_expires_at = NULL, updated_at = now()
                WHERE job_id = $1 AND state IN ('failed', 'cancelled')
                """, [.int(id)]).affectedRows
            guard requeued > 0 else {
                return (0, state, "every shard of job \(id) succeeded and its merge failed (\(j[0, "error"] ?? "no error")); a retry would fail the same way")
            }
            let now = try db.execute(
                """
                UPDATE tessera_jobs SET state = CASE WHEN started_at IS NULL THEN 'queued' ELSE 'running' END::tessera_job_state,
                       error = NULL, finished_at = NULL
                WHERE id = $1 RETURNING state::text AS state
                """, [.int(id)])
            try event(job: id, actor: "client", kind: "job.retried", detail: ["shards": .int(requeued), "was": .string(state.rawValue)])
            return (requeued, now[0, "state"].flatMap(JobState.init(rawValue:)) ?? .queued, nil)
        }
    }

    /// Cancels a job that is not finished, and fails the jobs that depend on it (`failDependents`). Returns the
    /// shards that were leased (to tell their workers), or nil when the job does not exist.
    public func cancelJob(_ id: Int64) throws -> (state: JobState, leased: [Lease])? {
        try atomically {
            let j = try db.execute("SELECT state::text FROM tessera_jobs WHERE id = $1 FOR UPDATE", [.int(id)])
            guard j.rowCount == 1, let s = j[0, "state"], let state = JobState(rawValue: s) else { return nil }
            if state.isTerminal { return (state, []) }
            let leased = try closeOpenShards(ofJob: id)
            try db.execute(
                "UPDATE tessera_jobs SET state = 'cancelled', finished_at = now() WHERE id = $1",
                [.int(id)]
            )
            try event(job: id, actor: "client", kind: "job.cancelled")
            return (.cancelled, leased + (try failDependents(of: id, because: "was cancelled")))
        }
    }

    /// Fails every live job that depends on job `id` (which just failed or was cancelled), directly or through
    /// other such jobs: none of them could ever start. Each gets `error` = "depends_on job N failed: …" (or "… was
    /// cancelled"), naming the job it waited on, its `job.failed` event, and its shards cancelled. One statement;
    /// `depends_on` only names older jobs, so the walk ends. Returns any of their leases (there are none unless
    /// something re-adopted one) to stop.
    private func failDependents(of id: Int64, because what: String) throws -> [Lease] {
        let r = try db.execute(
            """
            WITH RECURSIVE dependents(id, error) AS (
                SELECT j.id, 'depends_on job ' || $1::bigint || ' ' || $2::text
                FROM tessera_jobs j WHERE j.state IN ('queued', 'running') AND $1::bigint = ANY(j.depends_on)
                UNION
                SELECT j.id, 'depends_on job ' || d.id || ' failed: ' || d.error
                FROM dependents d JOIN tessera_jobs j ON d.id = ANY(j.depends_on)
                WHERE j.state IN ('queued', 'running')
            ), chosen AS (
                SELECT DISTINCT ON (id) id, error FROM dependents ORDER BY id, length(error), error
            ), failed AS (
                UPDATE tessera_jobs j SET state = 'failed', error = c.error, finished_at = now()
                FROM chosen c WHERE j.id = c.id
                RETURNING j.id, j.error
            ), events AS (
                INSERT INTO tessera_events (job_id, actor, kind, detail)
                SELECT id, 'coordinator', 'job.failed', jsonb_build_object('error', error) FROM failed
            ), closed AS (
                UPDATE tessera_shards s SET state = 'cancelled', worker_id = NULL, lease_expires_at = NULL, updated_at = now()
                FROM tessera_shards old
                WHERE s.job_id IN (SELECT id FROM failed) AND s.state IN ('queued', 'leased')
                  AND old.job_id = s.job_id AND old.idx = s.idx
                RETURNING s.job_id, s.idx, s.attempt, old.state::text AS was, old.worker_id
            )
            SELECT job_id, idx, attempt, worker_id FROM closed WHERE was = 'leased' ORDER BY job_id, idx
            """,
            [.int(id), .text(what)])
        return (0..<r.rowCount).map { Lease(ref: ShardRef(r, $0), workerID: r.int($0, "worker_id")!) }
    }

    /// Leases up to `limit` queued shards to a worker: highest priority first, then oldest job, then shard order,
    /// skipping rows other coordinators hold (`FOR UPDATE SKIP LOCKED`). Only algorithms the worker can run, only
    /// jobs whose dependencies have succeeded, and only shards waiting on no other shard (`waiting_on = 0`, which
    /// the queued index requires, so waiting shards cost the claim nothing). Each lease starts a new attempt. One
    /// statement: the leases, their `shard.leased` events and the jobs' move to `running`.
    public func claimShards(workerID: Int64, limit: Int, capabilities: [String]) throws -> [ClaimedShard] {
        try claimShards([(workerID, limit, capabilities)])[0]
    }

    /// Claims for many workers at once: one statement per run of consecutive requests with the same capabilities
    /// (with one capability set, one statement for the whole tick, however many workers are idle). Within a run the
    /// claimable shards are taken in queue order and handed out in request order, each request getting up to its
    /// limit, exactly as if the requests ran one after another.
    public func claimShards(_ requests: [(workerID: Int64, limit: Int, capabilities: [String])]) throws -> [[ClaimedShard]] {
        var results = [[ClaimedShard]](repeating: [], count: requests.count)
        var start = 0
        while start < requests.count {
            var end = start + 1
            while end < requests.count && requests[end].capabilities == requests[start].capabilities { end += 1 }
            let run = requests[start..<end].enumerated().filter { $0.element.limit > 0 }
            if !run.isEmpty {
                let claimed = try claimRun(
                    workerIDs: run.map(\.element.workerID), limits: run.map { Int64($0.element.limit) },
                    capabilities: requests[start].capabilities)
                for (position, shard) in claimed { results[start + run[position].offset].append(shard) }
            }
            start = end
        }
        return results
    }

    /// One run of claims: `(position in workerIDs, shard)` in queue order.
    private func claimRun(workerIDs: [Int64], limits: [Int64], capabilities: [String]) throws -> [(Int, ClaimedShard)] {
        let r = try db.execute(
            """
            WITH wanted AS (
                SELECT w.ord, w.worker_id, sum(w.lim) OVER (ORDER BY w.ord) AS upto
                FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS w(worker_id, lim, ord)
            ), locked AS (
                SELECT s.job_id, s.idx, s.priority
                FROM tessera_shards s
                JOIN tessera_jobs j ON j.id = s.job_id
                WHERE s.state = 'queued' AND s.waiting_on = 0
                  AND j.state IN ('queued', 'running')
                  AND (j.kind::text || '/' || j.algorithm) = ANY($3::text[])
                  AND NOT EXISTS (
                      SELECT 1 FROM unnest(j.depends_on) AS d(id)
                      LEFT JOIN tessera_jobs dj ON dj.id = d.id
                      WHERE dj.state IS DISTINCT FROM 'succeeded')
                ORDER BY s.priority DESC, s.job_id, s.idx
                LIMIT (SELECT sum(lim) FROM unnest($2::bigint[]) AS l(lim))
                FOR UPDATE OF s SKIP LOCKED
            ), picked AS (
                SELECT n.job_id, n.idx, w.ord, w.worker_id
                FROM (SELECT job_id, idx, row_number() OVER (ORDER BY priority DESC, job_id, idx) AS rn FROM locked) n
                CROSS JOIN LATERAL (SELECT ord, worker_id FROM wanted WHERE wanted.upto >= n.rn ORDER BY ord LIMIT 1) w
            ), leased AS (
                UPDATE tessera_shards s
                SET state = 'leased', attempt = s.attempt + 1, worker_id = picked.worker_id, last_worker_id = picked.worker_id,
                    lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
                FROM picked
                WHERE s.job_id = picked.job_id AND s.idx = picked.idx
                RETURNING s.job_id, s.idx, s.attempt, s.worker_id, picked.ord, s.slice, s.total_steps, s.checkpoint_step,
                          s.checkpoint_sha256
            ), events AS (
                INSERT INTO tessera_events (job_id, shard_idx, worker_id, actor, kind, detail)
                SELECT job_id, idx, worker_id, 'coordinator', 'shard.leased', jsonb_build_object('attempt', attempt) FROM leased
            ), started AS (
                UPDATE tessera_jobs SET state = 'running', started_at = coalesce(started_at, now())
                WHERE id IN (SELECT DISTINCT job_id FROM leased) AND state = 'queued'
            )
            SELECT l.ord, l.job_id, l.idx, l.attempt, l.slice::text AS slice, l.total_steps, l.checkpoint_step,
                   l.checkpoint_sha256, c.size AS checkpoint_size,
                   j.kind::text AS kind, j.algorithm, j.seed::text AS seed, j.spec::text AS spec
            FROM leased l
            JOIN tessera_jobs j ON j.id = l.job_id
            LEFT JOIN tessera_checkpoints c
              ON c.job_id = l.job_id AND c.shard_idx = l.idx AND c.kind = 'checkpoint' AND c.step = l.checkpoint_step
            ORDER BY j.priority DESC, l.job_id, l.idx
            """,
            [
                .text(PGArray.ints(workerIDs)), .text(PGArray.ints(limits)), .text(PGArray.texts(capabilities)),
                .double(leaseSeconds),
            ]
        )
        return (0..<r.rowCount).map { i in
            var resume: ResumePoint?
            if let step = r.int(i, "checkpoint_step"), let sha = r[i, "checkpoint_sha256"] {
                resume = ResumePoint(step: step, sha256: sha, size: r.int(i, "checkpoint_size") ?? 0)
            }
            let shard = ClaimedShard(
                ref: ShardRef(r, i), kind: r[i, "kind"]!, algorithm: r[i, "algorithm"]!, seed: UInt64(r[i, "seed"]!) ?? 0,
                spec: r[i, "spec"]!, slice: r[i, "slice"]!, totalSteps: r.int(i, "total_steps")!, resume: resume)
            return (Int(r.int(i, "ord")!) - 1, shard)
        }
    }

    public func unleaseShard(_ key: ShardRef, workerID: Int64) throws -> Bool {
        let r = try db.execute(
            """
            WITH back AS (
                UPDATE tessera_shards
                SET state = 'queued', attempt = attempt - 1, worker_id = NULL, lease_expires_at = NULL, updated_at = now()
                WHERE job_id = $1 AND idx = $2 AND attempt = $3 AND worker_id = $4 AND state = 'leased'
                RETURNING job_id, idx
            )
            INSERT INTO tessera_events (job_id, shard_idx, worker_id, actor, kind, detail)
            SELECT job_id, idx, $4, 'coordinator', 'shard.unleased', jsonb_build_object('attempt', $3::int) FROM back
            RETURNING 1
            """,
            [.int(key.jobID), .int(Int64(key.shardIndex)), .int(Int64(key.attempt)), .int(workerID)])
        return r.rowCount == 1
    }

    /// Heartbeats of many workers in two statements: their liveness, and the leases they report (extended, with
    /// progress). Returns the reported leases that are no longer that worker's current attempt (to stop).
    public func renewLeases(_ renewals: [(workerID: Int64, progress: [(ref: ShardRef, step: Int64)])]) throws -> [Lease] {
        guard !renewals.isEmpty else { return [] }
        try db.execute(
            "UPDATE tessera_workers SET last_heartbeat = now(), state = 'alive' WHERE id = ANY($1::bigint[])",
            [.text(PGArray.ints(renewals.map(\.workerID)))])
        let reported = renewals.flatMap { r in r.progress.map { (lease: Lease(ref: $0.ref, workerID: r.workerID), step: $0.step) } }
        guard !reported.isEmpty else { return [] }
        let r = try db.execute(
            """
            UPDATE tessera_shards s
            SET lease_expires_at = now() + make_interval(secs => $6), step = greatest(s.step, p.step), updated_at = now()
            FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[], $5::bigint[]) AS p(job_id, idx, attempt, step, worker_id)
            WHERE s.job_id = p.job_id AND s.idx = p.idx AND s.attempt = p.attempt AND s.state = 'leased'
              AND s.worker_id = p.worker_id
            RETURNING s.job_id, s.idx, s.attempt, s.worker_id
            """,
            [
                .text(PGArray.ints(reported.map(\.lease.ref.jobID))),
                .text(PGArray.ints(reported.map { Int64($0.lease.ref.shardIndex) })),
                .text(PGArray.ints(reported.map { Int64($0.lease.ref.attempt) })),
                .text(PGArray.ints(reported.map(\.step))), .text(PGArray.ints(reported.map(\.lease.workerID))),
                .double(leaseSeconds),
            ]
        )
        let live = Set((0..<r.rowCount).map { Lease(ref: ShardRef(r, $0), workerID: r.int($0, "worker_id")!) })
        return reported.map(\.lease).filter { !live.contains($0) }
    }

    /// Puts back in the queue every shard whose lease expired (a lost worker, a partition). Infrastructure loss:
    /// no attempt is consumed. Returns the released keys.
    public func requeueExpiredLeases() throws -> [ShardRef] {
        try requeue(where: "state = 'leased' AND lease_expires_at < now()", params: [], reason: "lease expired")
    }

    /// Puts back in the queue the shards leased to a worker that is gone (or that handed them back on drain).
    public func requeueShards(ofWorker workerID: Int64, reason: String) throws -> [ShardRef] {
        try requeue(where: "state = 'leased' AND worker_id = $1", params: [.int(workerID)], reason: reason)
    }

    private func requeue(where condition: String, params: [PGValue], reason: String) throws -> [ShardRef] {
        let reasonParam = params.count + 1
        let r = try db.execute(
            """
            WITH requeued AS (
                UPDATE tessera_shards SET state = 'queued', worker_id = NULL, lease_expires_at = NULL, updated_at = now()
                WHERE \(condition)
                RETURNING job_id, idx, attempt
            ), events AS (
                INSERT INTO tessera_events (job_id, shard_idx, actor, kind, detail)
                SELECT job_id, idx, 'coordinator', 'shard.requeued',
                       jsonb_build_object('attempt', attempt, 'reason', $\(reasonParam)::text)
                FROM requeued
            )
            SELECT job_id, idx, attempt FROM requeued
            """,
            params + [.text(reason)]
        )
        return (0..<r.rowCount).map { ShardRef(r, $0) }
    }

    /// Whether `key` is the shard's live attempt, leased to `workerID`.
    public func isCurrent(_ key: ShardRef, workerID: Int64) throws -> Bool {
        let r = try db.execute(
            """
            SELECT 1 FROM tessera_shards
            WHERE job_id = $1 AND idx = $2 AND attempt = $3 AND state = 'leased' AND worker_id = $4
            """,
            [.int(key.jobID), .int(Int64(key.shardIndex)), .int(Int64(key.attempt)), .int(workerID)]
        )
        return r.rowCount == 1
    }

    // MARK: Metrics (group commit)

    /// A shard attempt and the worker that sent something for it.
    struct Sender: Hashable {
        var key: ShardRef
        var workerID: Int64
    }

    /// Which of `senders` hold their shard's current lease (state leased, that attempt, that worker): the fence that
    /// metric and log batches pass, one query for a whole group commit.
    private func leaseholders(_ senders: [Sender]) throws -> Set<Sender> {
        let unique = Array(Set(senders))
        let live = try db.execute(
            """
            SELECT s.job_id, s.idx, s.attempt, s.worker_id FROM tessera_shards s
            JOIN unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[]) AS k(job_id, idx, attempt, worker_id)
              ON s.job_id = k.job_id AND s.idx = k.idx AND s.attempt = k.attempt AND s.worker_id = k.worker_id
            WHERE s.state = 'leased'
            """,
            [
                .text(PGArray.ints(unique.map(\.key.jobID))),
                .text(PGArray.ints(unique.map { Int64($0.key.shardIndex) })),
                .text(PGArray.ints(unique.map { Int64($0.key.attempt) })),
                .text(PGArray.ints(unique.map(\.workerID))),
            ]
        )
        var current = Set<Sender>()
        for i in 0..<live.rowCount {
            current.insert(Sender(key: ShardRef(live, i), workerID: live.int(i, "worker_id")!))
        }
        return current
    }

    /// Writes many LOGS batches in one transaction, fenced like metrics (only the leaseholder's current attempt); a
    /// replayed batch is stored once. The result says, per batch, whether it was accepted.
    public func ingestLogs(_ batches: [ShardLogBatch]) throws -> [Bool] {
        guard !batches.isEmpty else { return [] }
        return try atomically {
            let current = try leaseholders(batches.map { Sender(key: $0.ref, workerID: $0.workerID) })
            var jobIDs: [Int64] = [], idxs: [Int64] = [], attempts: [Int64] = [], sequences: [Int64] = []
            var lineNos: [Int64] = [], times: [Double] = [], levels: [String] = [], messages: [String] = []
            var touched = Set<ShardKeyPair>()
            for b in batches where current.contains(Sender(key: b.ref, workerID: b.workerID)) {
                // The first batch of a shard's first attempt is all the shard has stored (unless it alone is past
                // the bound): no pruning then, which spares a short shard's commit the DELETE.
                if b.sequence > 0 || b.ref.attempt > 1 || b.lines.count > ShardLogRetention.linesPerShard {
                    touched.insert(ShardKeyPair(job: b.ref.jobID, idx: b.ref.shardIndex))
                }
                for (n, line) in b.lines.enumerated() {
                    jobIDs.append(b.ref.jobID)
                    idxs.append(Int64(b.ref.shardIndex))
                    attempts.append(Int64(b.ref.attempt))
                    sequences.append(Int64(bitPattern: b.sequence))
                    lineNos.append(Int64(n))
                    // A wire string may hold NUL, which PostgreSQL text cannot; a non-finite time is stored as 0.
                    times.append(line.time.isFinite ? line.time : 0)
                    levels.append(line.level.name)
                    messages.append(String(String.UnicodeScalarView(LogLine.clip(line.message).unicodeScalars.map { $0 == "\0" ? "\u{FFFD}" : $0 })))
                }
            }
            if !jobIDs.isEmpty {
                try db.execute(
                    """
                    INSERT INTO tessera_shard_logs (job_id, shard_idx, attempt, sequence, line, logged_at, level, message)
                    SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[], $5::int[], $6::float8[],
                                         $7::text[], $8::text[])
                    ON CONFLICT (job_id, shard_idx, attempt, sequence, line) DO NOTHING
                    """,
                    [
                        .text(PGArray.ints(jobIDs)), .text(PGArray.ints(idxs)), .text(PGArray.ints(attempts)),
                        .text(PGArray.ints(sequences)), .text(PGArray.ints(lineNos)), .text(PGArray.doubles(times)),
                        .text(PGArray.texts(levels)), .text(PGArray.texts(messages)),
                    ]
                )
                // Retention: each touched shard keeps its newest lines (an index probe per shard, not a count).
                let keys = Array(touched)
                if !keys.isEmpty { try db.execute(
                    """
                    DELETE FROM tessera_shard_logs l
                    USING (SELECT k.job_id, k.idx,
                                  (SELECT x.id FROM tessera_shard_logs x WHERE x.job_id = k.job_id AND x.shard_idx = k.idx
                                   ORDER BY x.id DESC OFFSET $3 LIMIT 1) AS cut
                           FROM unnest($1::bigint[], $2::int[]) AS k(job_id, idx)) c
                    WHERE l.job_id = c.job_id AND l.shard_idx = c.idx AND l.id <= c.cut
                    """,
                    [
                        .text(PGArray.ints(keys.map(\.job))), .text(PGArray.ints(keys.map { Int64($0.idx) })),
                        .int(Int64(ShardLogRetention.linesPerShard)),
                    ]
                ) }
            }
            return batches.map { current.contains(Sender(key: $0.ref, workerID: $0.workerID)) }
        }
    }

    /// Writes many metric batches in one transaction. Batches from stale attempts, or from anyone but the shard's
    /// leaseholder (`workerID` is the sender's), are dropped; the result says, per batch, whether it was accepted.
    /// Re-sent steps overwrite with the same values (idempotent replay).
    public func ingestMetrics(_ batches: [(key: ShardRef, workerID: Int64, rows: [MetricPoint])]) throws -> [Bool] {
        guard !batches.isEmpty else { return [] }
        return try atomically {
            let current = try leaseholders(batches.map { Sender(key: $0.key, workerID: $0.workerID) })
            var jobIDs: [Int64] = [], idxs: [Int64] = [], attempts: [Int64] = [], names: [String] = []
            var steps: [Int64] = [], values: [Double] = []
            // Latest value per (shard, name): the highest step in this group commit.
            var latest: [ShardRef: [String: (Int64, Double)]] = [:]
            // Deduplicate (shard, name, step) within one statement: ON CONFLICT cannot touch a row twice.
            var seen = Set<String>()
            for (key, workerID, rows) in batches where current.contains(Sender(key: key, workerID: workerID)) {
                for m in rows {
                    let id = "\(key.jobID)/\(key.shardIndex)/\(m.step)/\(m.name)"
                    if !seen.insert(id).inserted { continue }
                    jobIDs.append(key.jobID)
                    idxs.append(Int64(key.shardIndex))
                    attempts.append(Int64(key.attempt))
                    names.append(m.name)
                    steps.append(m.step)
                    values.append(m.value)
                    if let (s, _) = latest[key]?[m.name], s > m.step { continue }
                    latest[key, default: [:]][m.name] = (m.step, m.value)
                }
            }
            if !jobIDs.isEmpty {
                // `seq`: one number per call (an InitPlan, evaluated once), the commit order `metrics --follow` pages
                // by; a rewritten point keeps the seq it was first stored with (schema v7).
                try db.execute(
                    """
                    INSERT INTO tessera_metrics (job_id, shard_idx, attempt, name, step, value, seq)
                    SELECT m.*, (SELECT nextval('tessera_metrics_commit_seq'))
                    FROM unnest($1::bigint[], $2::int[], $3::int[], $4::text[], $5::bigint[], $6::float8[]) AS m
                    ON CONFLICT (job_id, shard_idx, name, step)
                    DO UPDATE SET value = EXCLUDED.value, attempt = EXCLUDED.attempt, created_at = now()
                    """,
                    [
                        .text(PGArray.ints(jobIDs)), .text(PGArray.ints(idxs)), .text(PGArray.ints(attempts)),
                        .text(PGArray.texts(names)), .text(PGArray.ints(steps)), .text(PGArray.doubles(values)),
                    ]
                )
                // The latest value per (shard, name) of this commit, merged into each shard's last_metrics in one
                // statement. Non-finite values are kept as strings spelled as PostgreSQL spells a float8 in JSON ("NaN",
                // "Infinity", "-Infinity"), so `status` and `metrics` agree (JSON has no spelling for them).
                var lj: [Int64] = [], li: [Int64] = [], la: [Int64] = [], ln: [String] = [], lv: [String] = []
                for (key, byName) in latest {
                    for (name, (step, value)) in byName {
                        lj.append(key.jobID)
                        li.append(Int64(key.shardIndex))
                        la.append(Int64(key.attempt))
                        ln.append(name)
                        let v: JSONValue = value.isFinite ? .number(value) : .string(Self.nonFiniteSpelling(value))
                        lv.append(JSONValue.object(["step": .number(Double(step)), "value": v]).render())
                    }
                }
                try db.execute(
                    """
                    UPDATE tessera_shards s SET last_metrics = s.last_metrics || u.latest, updated_at = now()
                    FROM (SELECT job_id, idx, attempt, jsonb_object_agg(name, v::jsonb) AS latest
                          FROM unnest($1::bigint[], $2::int[], $3::int[], $4::text[], $5::text[]) AS m(job_id, idx, attempt, name, v)
                          GROUP BY job_id, idx, attempt) u
                    WHERE s.job_id = u.job_id AND s.idx = u.idx AND s.attempt = u.attempt
                    """,
                    [
                        .text(PGArray.ints(lj)), .text(PGArray.ints(li)), .text(PGArray.ints(la)), .text(PGArray.texts(ln)),
                        .text(PGArray.texts(lv)),
                    ]
                )
            }
            return batches.map { current.contains(Sender(key: $0.key, workerID: $0.workerID)) }
        }
    }

    // MARK: Blobs

    /// Registers a blob already written durably to the content-addressed store. Fenced on the attempt.
    /// A checkpoint becomes the shard's resume point when its step is the newest.
    public func registerBlob(
        _ key: ShardRef, workerID: Int64, kind: String, step: Int64, sha256: String, size: Int64, path: String
    ) throws -> Bool {
        try atomically {
            guard try isCurrent(key, workerID: workerID) else { return false }
            try db.execute(
                """
                INSERT INTO tessera_checkpoints (job_id, shard_idx, kind, step, attempt, sha256, size, path)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (job_id, shard_idx, kind, step)
                DO UPDATE SET attempt = EXCLUDED.attempt, sha256 = EXCLUDED.sha256, size = EXCLUDED.size,
                              path = EXCLUDED.path, created_at = now()
                """,
                [
                    .int(key.jobID), .int(Int64(key.shardIndex)), .text(kind), .int(step), .int(Int64(key.attempt)),
                    .text(sha256), .int(size), .text(path),
                ]
            )
            if kind == "checkpoint" {
                try db.execute(
                    """
                    UPDATE tessera_shards SET checkpoint_step = $3, checkpoint_sha256 = $4, updated_at = now()
                    WHERE job_id = $1 AND idx = $2 AND (checkpoint_step IS NULL OR checkpoint_step <= $3)
                    """,
                    [.int(key.jobID), .int(Int64(key.shardIndex)), .int(step), .text(sha256)]
                )
            }
            return true
        }
    }

    /// Where a blob with this SHA-256 is stored, if any shard registered one.
    public func blobPath(sha256: String) throws -> (path: String, size: Int64)? {
        let r = try db.execute(
            "SELECT path, size FROM tessera_checkpoints WHERE sha256 = $1 LIMIT 1",
            [.text(sha256)]
        )
        guard r.rowCount == 1 else { return nil }
        return (r[0, "path"]!, r.int(0, "size")!)
    }

    /// A shard's blob of `kind`: the given step, or the newest.
    public func blob(jobID: Int64, shard: Int32, kind: String, step: Int64?) throws -> StoredBlob? {
        let r = try db.execute(
            """
            SELECT step, sha256, size, path FROM tessera_checkpoints
            WHERE job_id = $1 AND shard_idx = $2 AND kind = $3 AND ($4::bigint IS NULL OR step = $4)
            ORDER BY step DESC LIMIT 1
            """,
            [.int(jobID), .int(Int64(shard)), .text(kind), step.map { .int($0) } ?? .null]
        )
        guard r.rowCount == 1 else { return nil }
        return StoredBlob(
            jobID: jobID, shardIndex: shard, kind: kind, step: r.int(0, "step")!, sha256: r[0, "sha256"]!,
            size: r.int(0, "size")!, path: r[0, "path"]!
        )
    }

    // MARK: Shard outcomes

    /// Marks the shard succeeded, fenced on the attempt and on the sender: only the leaseholder `workerID` may
    /// complete it. Returns nil when the message is fenced, else whether every shard of the job has now succeeded
    /// (time to merge).
    public func completeShard(_ key: ShardRef, workerID: Int64, summary: String, resultSHA256: String?) throws -> Bool? {
        let r = try completeShards([(key, workerID, summary, resultSHA256)])[0]
        return r.accepted ? r.jobComplete : nil
    }

    /// Many SHARD_DONEs in one statement: each shard succeeded (fenced on attempt and sender), its event, the
    /// jobs' succeeded counters, which say when a job is complete without counting its shards, and the waiting counts
    /// of the shards that depend on them (through the dependency index: the cost is the shard's dependents, not the
    /// job's size). A summary that is not JSON is stored as `{}`. Per item, in order: whether it was accepted, whether its job is now complete, and how many of
    /// its dependents this statement left with nothing to wait for (now claimable). A repeated item is accepted once.
    public func completeShards(
        _ items: [(ref: ShardRef, workerID: Int64, summary: String, resultSHA256: String?)]
    ) throws -> [(accepted: Bool, jobComplete: Bool, released: Int)] {
        guard !items.isEmpty else { return [] }
        let r = try db.execute(
            """
            WITH done AS (
                UPDATE tessera_shards s
                SET state = 'succeeded', summary = d.summary::jsonb, result_sha256 = nullif(d.sha, ''),
                    step = s.total_steps, worker_id = NULL, lease_expires_at = NULL, error = NULL, updated_at = now()
                FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[], $5::text[], $6::text[])
                     AS d(job_id, idx, attempt, worker_id, summary, sha)
                WHERE s.job_id = d.job_id AND s.idx = d.idx AND s.attempt = d.attempt AND s.state = 'leased'
                  AND s.worker_id = d.worker_id
                RETURNING s.job_id, s.idx, s.attempt, d.worker_id
            ), events AS (
                INSERT INTO tessera_events (job_id, shard_idx, worker_id, actor, kind, detail)
                SELECT job_id, idx, worker_id, 'coordinator', 'shard.succeeded', jsonb_build_object('attempt', attempt)
                FROM done
            ), counted AS (
                UPDATE tessera_jobs j SET shards_succeeded = j.shards_succeeded + c.n
                FROM (SELECT job_id, count(*) AS n FROM done GROUP BY job_id) c
                WHERE j.id = c.job_id
                RETURNING j.id, j.shards_succeeded = j.shard_count AS complete
            ), released AS (
                -- A shard in `done` was leased, so it waited on nothing: it is never one of the dependents updated
                -- here (each row is changed by one part of the statement only).
                UPDATE tessera_shards s SET waiting_on = s.waiting_on - w.n, updated_at = now()
                FROM (SELECT dep.job_id, dep.shard_idx, count(*) AS n
                      FROM done JOIN tessera_shard_dependencies dep ON dep.job_id = done.job_id AND dep.depends_on = done.idx
                      GROUP BY dep.job_id, dep.shard_idx) w
                WHERE s.job_id = w.job_id AND s.idx = w.shard_idx
                RETURNING s.job_id, s.idx, s.waiting_on = 0 AS ready
            )
            SELECT d.job_id, d.idx, d.attempt, d.worker_id, c.complete,
                   (SELECT count(*) FROM released r
                    JOIN tessera_shard_dependencies dep ON dep.job_id = r.job_id AND dep.shard_idx = r.idx
                    WHERE r.ready AND r.job_id = d.job_id AND dep.depends_on = d.idx) AS released
            FROM done d JOIN counted c ON c.id = d.job_id
            """,
            [
                .text(PGArray.ints(items.map(\.ref.jobID))), .text(PGArray.ints(items.map { Int64($0.ref.shardIndex) })),
                .text(PGArray.ints(items.map { Int64($0.ref.attempt) })), .text(PGArray.ints(items.map(\.workerID))),
                .text(PGArray.texts(items.map { Self.storableSummary($0.summary) })),
                .text(PGArray.texts(items.map { $0.resultSHA256 ?? "" })),
            ]
        )
        // Keyed by sender too: of a foreign and the holder's DONE for one attempt, only the holder's was applied.
        var done: [Lease: (Bool, Int)] = [:]
        for i in 0..<r.rowCount {
            done[Lease(ref: ShardRef(r, i), workerID: r.int(i, "worker_id")!)] = (r.bool(i, "complete") == true, Int(r.int(i, "released") ?? 0))
        }
        return items.map { item in
            guard let (complete, released) = done.removeValue(forKey: Lease(ref: item.ref, workerID: item.workerID)) else {
                return (false, false, 0)
            }
            return (true, complete, released)
        }
    }

    /// How a non-finite metric value is written in JSON replies, the same as PostgreSQL's `float8` text, which the
    /// `metrics` reply uses: "NaN" (sign and payload dropped), "Infinity", "-Infinity" (protocol/SPEC.md §7).
    static func nonFiniteSpelling(_ v: Double) -> String {
        v.isNaN ? "NaN" : v > 0 ? "Infinity" : "-Infinity"
    }

    /// A summary as stored: canonical JSON, or `{}` when it is not JSON (protocol/SPEC.md §12.1; the merge then says
    /// what is missing).
    static func storableSummary(_ text: String) -> String {
        ((try? JSONValue.parse(Array(text.utf8))) ?? .object([:])).render()
    }

    /// Fenced like `completeShard`: only the leaseholder `workerID` may report its attempt failed.
    public func failShard(
        _ key: ShardRef, workerID: Int64, reason: String, failure: ShardFailureKind
    ) throws -> (ShardFailureOutcome, [Lease]) {
        try atomically {
            let r = try db.execute(
                """
                SELECT s.failures, j.max_attempts FROM tessera_shards s JOIN tessera_jobs j ON j.id = s.job_id
                WHERE s.job_id = $1 AND s.idx = $2 AND s.attempt = $3 AND s.state = 'leased' AND s.worker_id = $4
                FOR UPDATE OF s
                """,
                [.int(key.jobID), .int(Int64(key.shardIndex)), .int(Int64(key.attempt)), .int(workerID)]
            )
            guard r.rowCount == 1 else { return (.rejected, []) }
            let failures = Int(r.int(0, "failures")!) + (failure == .infrastructure ? 0 : 1)
            let maxAttempts = Int(r.int(0, "max_attempts")!)
            if failure != .permanent, failures < maxAttempts {
                try db.execute(
                    """
                    UPDATE tessera_shards SET state = 'queued', failures = $4, error = $5, worker_id = NULL,
                           lease_expires_at = NULL, updated_at = now()
                    WHERE job_id = $1 AND idx = $2 AND attempt = $3
                    """,
                    [.int(key.jobID), .int(Int64(key.shardIndex)), .int(Int64(key.attempt)), .int(Int64(failures)), .text(reason)]
                )
                try event(job: key.jobID, shard: key.shardIndex, actor: "coordinator", kind: "shard.retry",
                          detail: ["attempt": .int(Int(key.attempt)), "reason": .string(reason), "retryable": .bool(failure == .infrastructure)])
                return (.requeued, [])
            }
            try db.execute(
                """
                UPDATE tessera_shards SET state = 'failed', failures = $4, error = $5, worker_id = NULL,
                       lease_expires_at = NULL, updated_at = now()
                WHERE job_id = $1 AND idx = $2 AND attempt = $3
                """,
                [.int(key.jobID), .int(Int64(key.shardIndex)), .int(Int64(key.attempt)), .int(Int64(failures)), .text(reason)]
            )
            let why = failure == .permanent
                ? "shard \(key.shardIndex) failed (not retryable): \(reason)"
                : "shard \(key.shardIndex) failed after \(failures) attempts: \(reason)"
            let others = try failJobLocked(key.jobID, error: why)
            return (.jobFailed, others)
        }
    }

    /// Fails a job (e.g. its merge failed), cancelling shards still open. Returns leased shards to stop.
    public func failJob(_ id: Int64, error: String) throws -> [Lease] {
        try atomically { try failJobLocked(id, error: error) }
    }

    /// Fails the job and, with the same reason, the jobs that depend on it (`failDependents`).
    private func failJobLocked(_ id: Int64, error: String) throws -> [Lease] {
        let leased = try closeOpenShards(ofJob: id)
        try db.execute(
            """
            UPDATE tessera_jobs SET state = 'failed', error = $2, finished_at = now()
            WHERE id = $1 AND state IN ('queued', 'running')
            """,
            [.int(id), .text(error)]
        )
        try event(job: id, actor: "coordinator", kind: "job.failed", detail: ["error": .string(error)])
        return leased + (try failDependents(of: id, because: "failed: \(error)"))
    }

    /// Cancels a job's queued and leased shards; returns the leased ones with their workers (to tell them to stop).
    private func closeOpenShards(ofJob id: Int64) throws -> [Lease] {
        let r = try db.execute(
            """
            UPDATE tessera_shards s SET state = 'cancelled', worker_id = NULL, lease_expires_at = NULL, updated_at = now()
            FROM tessera_shards old
            WHERE s.job_id = $1 AND s.state IN ('queued', 'leased') AND old.job_id = s.job_id AND old.idx = s.idx
            RETURNING s.job_id, s.idx, s.attempt, old.state::text AS was, old.worker_id
            """,
            [.int(id)]
        )
        return (0..<r.rowCount).filter { r[$0, "was"] == "leased" }.map { Lease(ref: ShardRef(r, $0), workerID: r.int($0, "worker_id")!) }
            .sorted { $0.ref.shardIndex < $1.ref.shardIndex }
    }

    /// The stored spec and shard count of a job to merge.
    public func mergeSpec(jobID: Int64) throws -> (spec: String, shardCount: Int) {
        let j = try db.execute(
            "SELECT spec::text AS spec, shard_count FROM tessera_jobs WHERE id = $1", [.int(jobID)])
        guard j.rowCount == 1, let count = j.int(0, "shard_count") else { throw StoreError("job \(jobID) does not exist") }
        return (j[0, "spec"]!, Int(count))
    }

    /// One page of a merge's input: up to `limit` shards from index `from` on, in shard order, each with its
    /// summary and the path of its result blob. The merge pages through a job this way, so it never holds more than
    /// a page of summaries (the blobs it reads one at a time).
    public func mergeShards(jobID: Int64, from: Int, limit: Int) throws -> [(index: Int, summary: String, resultPath: String?)] {
        let r = try db.execute(
            """
            SELECT s.idx, s.summary::text AS summary, c.path
            FROM tessera_shards s
            LEFT JOIN LATERAL (
                SELECT path FROM tessera_checkpoints c
                WHERE c.job_id = s.job_id AND c.shard_idx = s.idx AND c.kind = 'result' AND c.sha256 = s.result_sha256
                LIMIT 1) c ON true
            WHERE s.job_id = $1 AND s.idx >= $2 ORDER BY s.idx LIMIT $3
            """,
            [.int(jobID), .int(Int64(from)), .int(Int64(limit))]
        )
        var shards: [(Int, String, String?)] = []
        for i in 0..<r.rowCount {
            let index = Int(r.int(i, "idx")!)
            guard let summary = r[i, "summary"] else { throw StoreError("shard \(index) of job \(jobID) has no summary") }
            shards.append((index, summary, r[i, "path"]))
        }
        return shards
    }

    /// What shard `shard` of a job receives from the shards it depends on (the `shard.inputs` request), in
    /// dependency order; nil when the shard does not exist. A dependency's `resultSHA256` is the result blob the
    /// merge would read: set only when a `result` blob with the stored sha256 is registered for that shard.
    public func shardInputs(jobID: Int64, shard: Int32) throws -> [StoredShardInput]? {
        let r = try db.execute(
            """
            SELECT d.depends_on, s.state::text AS state, s.summary::text AS summary, c.sha256
            FROM tessera_shards t
            LEFT JOIN tessera_shard_dependencies d ON d.job_id = t.job_id AND d.shard_idx = t.idx
            LEFT JOIN tessera_shards s ON s.job_id = d.job_id AND s.idx = d.depends_on
            LEFT JOIN LATERAL (
                SELECT sha256 FROM tessera_checkpoints c
                WHERE c.job_id = s.job_id AND c.shard_idx = s.idx AND c.kind = 'result' AND c.sha256 = s.result_sha256
                LIMIT 1) c ON true
            WHERE t.job_id = $1 AND t.idx = $2
            ORDER BY d.depends_on
            """,
            [.int(jobID), .int(Int64(shard))]
        )
        guard r.rowCount > 0 else { return nil }
        return (0..<r.rowCount).compactMap { i in
            guard let dep = r.int(i, "depends_on") else { return nil }  // the shard has no dependencies
            return StoredShardInput(
                shardIndex: Int32(dep), state: r[i, "state"]!, summary: r[i, "summary"], resultSHA256: r[i, "sha256"])
        }
    }

    /// Stores the merged result and marks the job succeeded.
    public func finishJob(_ id: Int64, result: String) throws {
        try atomically {
            try db.execute(
                """
                UPDATE tessera_jobs SET state = 'succeeded', result = $2::jsonb, finished_at = now()
                WHERE id = $1 AND state IN ('queued', 'running')
                """,
                [.int(id), .text(result)]
            )
            try event(job: id, actor: "coordinator", kind: "job.succeeded")
        }
    }

    /// Jobs whose shards all succeeded but that have no result yet (e.g. the coordinator died mid-merge).
    public func jobsAwaitingMerge() throws -> [Int64] {
        let r = try db.execute(
            """
            SELECT j.id FROM tessera_jobs j
            WHERE j.state IN ('queued', 'running') AND j.shards_succeeded = j.shard_count
            ORDER BY j.id
            """
        )
        return (0..<r.rowCount).map { r.int($0, "id")! }
    }

    // MARK: Workers

    public func registerWorker(name: String, host: String, slots: Int, capabilities: [String]) throws -> Int64 {
        let r = try db.execute(
            """
            INSERT INTO tessera_workers (name, host, slots, capabilities)
            VALUES ($1, $2, $3, $4::text[]) RETURNING id
            """,
            [.text(name), .text(host), .int(Int64(slots)), .text(PGArray.texts(capabilities))]
        )
        let id = r.int(0, "id")!
        try event(worker: id, actor: "worker:\(name)", kind: "worker.ready", detail: ["slots": .int(slots)])
        return id
    }

    /// Re-adopts shards a reconnecting worker still runs, when their attempt is still the live one.
    public func adoptShards(workerID: Int64, keys: [ShardRef]) throws -> [ShardRef] {
        guard !keys.isEmpty else { return [] }
        let r = try db.execute(
            """
            UPDATE tessera_shards s
            SET state = 'leased', worker_id = $4, last_worker_id = $4, lease_expires_at = now() + make_interval(secs => $5),
                updated_at = now()
            FROM unnest($1::bigint[], $2::int[], $3::int[]) AS k(job_id, idx, attempt)
            WHERE s.job_id = k.job_id AND s.idx = k.idx AND s.attempt = k.attempt
              AND (s.state = 'leased' OR (s.state = 'queued' AND s.waiting_on = 0))
              AND EXISTS (SELECT 1 FROM tessera_jobs j WHERE j.id = s.job_id AND j.state IN ('queued', 'running'))
            RETURNING s.job_id, s.idx, s.attempt
            """,
            [
                .text(PGArray.ints(keys.map(\.jobID))), .text(PGArray.ints(keys.map { Int64($0.shardIndex) })),
                .text(PGArray.ints(keys.map { Int64($0.attempt) })), .int(workerID), .double(leaseSeconds),
            ]
        )
        return (0..<r.rowCount).map {
            ShardRef(r, $0)
        }
    }

    public func markWorker(_ id: Int64, state: WorkerState, reason: String) throws {
        try db.execute(
            """
            UPDATE tessera_workers SET state = $2::tessera_worker_state,
                   disconnected_at = CASE WHEN $2 = 'alive' THEN NULL ELSE now() END
            WHERE id = $1
            """,
            [.int(id), .text(state.rawValue)]
        )
        try event(worker: id, actor: "coordinator", kind: "worker.\(state.rawValue)", detail: ["reason": .string(reason)])
    }

    /// At start-up: workers recorded alive by a previous coordinator are unknown to this one until they say READY.
    public func markAllWorkersLost(reason: String) throws {
        try db.execute(
            "UPDATE tessera_workers SET state = 'lost', disconnected_at = now() WHERE state = 'alive'"
        )
    }

    // MARK: Events

    public func event(
        job: Int64? = nil, shard: Int32? = nil, worker: Int64? = nil, actor: String, kind: String,
        detail: JSONObject = [:]
    ) throws {
        try db.execute(
            """
            INSERT INTO tessera_events (job_id, shard_idx, worker_id, actor, kind, detail)
            VALUES ($1, $2, $3, $4, $5, $6::jsonb)
            """,
            [
                job.map { .int($0) } ?? .null, shard.map { .int(Int64($0)) } ?? .null, worker.map { .int($0) } ?? .null,
                .text(actor), .text(kind), .text(JSONValue.object(detail).render()),
            ]
        )
    }
}

/// A submission refused for what it refers to (a `depends_on` or input job); nothing was stored.
public struct SubmitRefused: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public struct StoreError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// PostgreSQL array literals for bind parameters (`$1::bigint[]`). Elements are quoted and escaped, so any text
/// is safe; the literal is a parameter value, never SQL text.
public enum PGArray {
    public static func ints(_ values: [Int64]) -> String {
        "{" + values.map(String.init).joined(separator: ",") + "}"
    }

    public static func texts(_ values: [String]) -> String {
        var out = "{"
        for (i, v) in values.enumerated() {
            if i > 0 { out += "," }
            out += "\""
            for c in v.unicodeScalars {
                if c == "\"" || c == "\\" { out += "\\" }
                out.unicodeScalars.append(c)
            }
            out += "\""
        }
        return out + "}"
    }

    /// Shortest round-trip decimal per element; non-finite values spelled as PostgreSQL reads them.
    public static func doubles(_ values: [Double]) -> String {
        "{"
            + values.map { d -> String in
                if d.isNaN { return "NaN" }
                if d.isInfinite { return d > 0 ? "Infinity" : "-Infinity" }
                return d.description
            }.joined(separator: ",") + "}"
    }
}

struct ShardKeyPair: Hashable {
    var job: Int64
    var idx: Int32
}
