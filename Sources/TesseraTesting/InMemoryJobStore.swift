// An in-memory `JobStore` for unit tests of the state machines (simulations without PostgreSQL). It follows the
// PostgreSQL store's rules outcome for outcome — fencing on attempt and sender, attempts, retries, claims in
// priority / job / shard order, requeues that consume no attempt — and Tests/TesseraStoreTests/JobStoreContractTests
// runs the same scenarios against both to keep it so. Time comes from `now` (a test moves it by hand).
// Not covered: job-level `depends_on`, shard dependencies (every shard is claimable at once; `released` is 0), events, the metrics' `last_metrics` roll-up and blob files.

import TesseraModel

public final class InMemoryJobStore: JobStore, @unchecked Sendable {
    // @unchecked: used from one thread at a time, like a PostgreSQL connection.

    public struct Job: Sendable {
        public var kind: String
        public var algorithm: String
        public var spec: String
        public var seed: UInt64
        public var priority: Int
        public var maxAttempts: Int
        public var shardCount: Int
        public var succeeded = 0
        public var state = "queued"
    }

    public struct Shard: Sendable {
        public var slice: String
        public var totalSteps: Int64
        public var state = "queued"
        public var attempt: Int32 = 0
        public var workerID: Int64?
        public var leaseExpires: ContinuousClock.Instant?
        public var failures = 0
        public var step: Int64 = 0
        public var summary: String?
        public var resultSHA256: String?
        public var error: String?
        public var resume: ResumePoint?
        /// How many times this shard was marked succeeded (a simulation checks it is exactly once).
        public var successes = 0
    }

    public struct Worker: Sendable {
        public var name: String
        public var slots: Int
        public var capabilities: [String]
        public var state = "alive"
    }

    struct ShardKey: Hashable, Comparable {
        var job: Int64
        var idx: Int32
        static func < (a: Self, b: Self) -> Bool { (a.job, a.idx) < (b.job, b.idx) }
    }

    struct MetricKey: Hashable {
        var job: Int64
        var idx: Int32
        var name: String
        var step: Int64
    }

    struct State {
        var jobs: [Int64: Job] = [:]
        var shards: [ShardKey: Shard] = [:]
        var workers: [Int64: Worker] = [:]
        var metrics: [MetricKey: Double] = [:]
        /// Stored shard log lines in insertion order, with the (ref, sequence) of their batch.
        var logs: [(ref: ShardRef, sequence: UInt64, line: LogLine)] = []
        var blobs: [String: (key: ShardRef, kind: String, step: Int64, size: Int64)] = [:]
        var nextJob: Int64 = 1
        var nextWorker: Int64 = 1
    }

    private var s = State()
    public var leaseDuration: Duration
    public var now: () -> ContinuousClock.Instant
    /// Counts transactions that committed (a simulation reads it to compare commits per shard).
    public private(set) var commits = 0
    private var depth = 0

    public init(leaseDuration: Duration = .seconds(15), now: @escaping () -> ContinuousClock.Instant = { .now }) {
        self.leaseDuration = leaseDuration
        self.now = now
    }

    // MARK: Test-side API

    /// A job with planned shards (slices as JSON text); its id.
    @discardableResult
    public func submitJob(
        kind: String, algorithm: String, slices: [(slice: String, totalSteps: Int64)], spec: String = "{}", seed: UInt64 = 1,
        priority: Int = 0, maxAttempts: Int = 3
    ) -> Int64 {
        let id = s.nextJob
        s.nextJob += 1
        s.jobs[id] = Job(
            kind: kind, algorithm: algorithm, spec: spec, seed: seed, priority: priority, maxAttempts: maxAttempts,
            shardCount: slices.count)
        for (i, sl) in slices.enumerated() {
            s.shards[ShardKey(job: id, idx: Int32(i))] = Shard(slice: sl.slice, totalSteps: sl.totalSteps)
        }
        return id
    }

    public func job(_ id: Int64) -> Job? { s.jobs[id] }
    public func shard(_ job: Int64, _ idx: Int32) -> Shard? { s.shards[ShardKey(job: job, idx: idx)] }
    public func shards(ofJob job: Int64) -> [Shard] {
        s.shards.filter { $0.key.job == job }.sorted { $0.key < $1.key }.map(\.value)
    }
    public func worker(_ id: Int64) -> Worker? { s.workers[id] }
    public func metric(_ job: Int64, _ idx: Int32, _ name: String, step: Int64) -> Double? {
        s.metrics[MetricKey(job: job, idx: idx, name: name, step: step)]
    }
    public var metricCount: Int { s.metrics.count }

    /// Marks a job finished the way the merge does.
    public func finishJob(_ id: Int64) { s.jobs[id]?.state = "succeeded" }

    // MARK: JobStore

    public func transaction<T>(_ body: () throws -> T) throws -> T {
        let saved = s
        depth += 1
        defer { depth -= 1 }
        do {
            let value = try body()
            if depth == 1 { commits += 1 }
            return value
        } catch {
            s = saved
            throw error
        }
    }

    public func registerWorker(name: String, host: String, slots: Int, capabilities: [String]) throws -> Int64 {
        let id = s.nextWorker
        s.nextWorker += 1
        s.workers[id] = Worker(name: name, slots: slots, capabilities: capabilities)
        return id
    }

    public func adoptShards(workerID: Int64, keys: [ShardRef]) throws -> [ShardRef] {
        keys.filter { ref in
            let k = ShardKey(job: ref.jobID, idx: ref.shardIndex)
            guard var sh = s.shards[k], sh.attempt == ref.attempt, sh.state == "leased" || sh.state == "queued",
                let j = s.jobs[ref.jobID], j.state == "queued" || j.state == "running"
            else { return false }
            sh.state = "leased"
            sh.workerID = workerID
            sh.leaseExpires = now() + leaseDuration
            s.shards[k] = sh
            return true
        }
    }

    public func markWorker(_ id: Int64, state: WorkerState, reason: String) throws {
        s.workers[id]?.state = state.rawValue
    }

    private func isCurrent(_ ref: ShardRef, workerID: Int64) -> Bool {
        guard let sh = s.shards[ShardKey(job: ref.jobID, idx: ref.shardIndex)] else { return false }
        return sh.attempt == ref.attempt && sh.state == "leased" && sh.workerID == workerID
    }

    public func ingestMetrics(_ batches: [(key: ShardRef, workerID: Int64, rows: [MetricPoint])]) throws -> [Bool] {
        batches.map { b in
            guard isCurrent(b.key, workerID: b.workerID) else { return false }
            for p in b.rows {
                s.metrics[MetricKey(job: b.key.jobID, idx: b.key.shardIndex, name: p.name, step: p.step)] = p.value
            }
            return true
        }
    }

    public func ingestLogs(_ batches: [ShardLogBatch]) throws -> [Bool] {
        batches.map { b in
            guard isCurrent(b.ref, workerID: b.workerID) else { return false }
            if s.logs.contains(where: { $0.ref == b.ref && $0.sequence == b.sequence }) { return true }
            s.logs += b.lines.map { (b.ref, b.sequence, $0) }
            let ofShard = s.logs.indices.filter { s.logs[$0].ref.jobID == b.ref.jobID && s.logs[$0].ref.shardIndex == b.ref.shardIndex }
            if ofShard.count > ShardLogRetention.linesPerShard {
                let drop = Set(ofShard.prefix(ofShard.count - ShardLogRetention.linesPerShard))
                s.logs = s.logs.enumerated().filter { !drop.contains($0.offset) }.map(\.element)
            }
            return true
        }
    }

    /// The stored log lines of a shard, oldest first (for tests).
    public func logLines(job: Int64, shard: Int32) -> [(attempt: Int32, line: LogLine)] {
        s.logs.filter { $0.ref.jobID == job && $0.ref.shardIndex == shard }.map { ($0.ref.attempt, $0.line) }
    }

    public func completeShards(
        _ items: [(ref: ShardRef, workerID: Int64, summary: String, resultSHA256: String?)]
    ) throws -> [(accepted: Bool, jobComplete: Bool, released: Int)] {
        var accepted: [Bool] = []
        for item in items {
            guard isCurrent(item.ref, workerID: item.workerID) else {
                accepted.append(false)
                continue
            }
            let k = ShardKey(job: item.ref.jobID, idx: item.ref.shardIndex)
            s.shards[k]!.state = "succeeded"
            s.shards[k]!.summary = item.summary
            s.shards[k]!.resultSHA256 = item.resultSHA256.flatMap { $0.isEmpty ? nil : $0 }
            s.shards[k]!.step = s.shards[k]!.totalSteps
            s.shards[k]!.workerID = nil
            s.shards[k]!.leaseExpires = nil
            s.shards[k]!.successes += 1
            s.jobs[item.ref.jobID]!.succeeded += 1
            accepted.append(true)
        }
        // Like the single statement: completeness is read after every item of the call is counted.
        return zip(items, accepted).map { item, ok in
            guard ok, let j = s.jobs[item.ref.jobID] else { return (false, false, 0) }
            return (true, j.succeeded == j.shardCount, 0)
        }
    }

    public func unleaseShard(_ key: ShardRef, workerID: Int64) throws -> Bool {
        guard isCurrent(key, workerID: workerID) else { return false }
        let k = ShardKey(job: key.jobID, idx: key.shardIndex)
        s.shards[k]!.state = "queued"
        s.shards[k]!.attempt -= 1
        s.shards[k]!.workerID = nil
        s.shards[k]!.leaseExpires = nil
        return true
    }

    public func failShard(_ key: ShardRef, workerID: Int64, reason: String, failure: ShardFailureKind) throws -> (ShardFailureOutcome, [Lease]) {
        guard isCurrent(key, workerID: workerID) else { return (.rejected, []) }
        let k = ShardKey(job: key.jobID, idx: key.shardIndex)
        let failures = s.shards[k]!.failures + (failure == .infrastructure ? 0 : 1)
        s.shards[k]!.failures = failures
        s.shards[k]!.error = reason
        s.shards[k]!.workerID = nil
        s.shards[k]!.leaseExpires = nil
        if failure != .permanent, failures < s.jobs[key.jobID]!.maxAttempts {
            s.shards[k]!.state = "queued"
            return (.requeued, [])
        }
        s.shards[k]!.state = "failed"
        var leased: [Lease] = []
        for (sk, sh) in s.shards.sorted(by: { $0.key < $1.key }) where sk.job == key.jobID && (sh.state == "queued" || sh.state == "leased") {
            if sh.state == "leased", let w = sh.workerID {
                leased.append(Lease(ref: ShardRef(jobID: sk.job, shardIndex: sk.idx, attempt: sh.attempt), workerID: w))
            }
            s.shards[sk]!.state = "cancelled"
            s.shards[sk]!.workerID = nil
            s.shards[sk]!.leaseExpires = nil
        }
        s.jobs[key.jobID]!.state = "failed"
        return (.jobFailed, leased)
    }

    public func registerBlob(
        _ key: ShardRef, workerID: Int64, kind: String, step: Int64, sha256: String, size: Int64, path: String
    ) throws -> Bool {
        guard isCurrent(key, workerID: workerID) else { return false }
        s.blobs[sha256] = (key, kind, step, size)
        let k = ShardKey(job: key.jobID, idx: key.shardIndex)
        if kind == "checkpoint", (s.shards[k]!.resume?.step ?? Int64.min) <= step {
            s.shards[k]!.resume = ResumePoint(step: step, sha256: sha256, size: size)
        }
        return true
    }

    public func renewLeases(_ renewals: [(workerID: Int64, progress: [(ref: ShardRef, step: Int64)])]) throws -> [Lease] {
        var stale: [Lease] = []
        for r in renewals {
            s.workers[r.workerID]?.state = "alive"
            for p in r.progress {
                if isCurrent(p.ref, workerID: r.workerID) {
                    let k = ShardKey(job: p.ref.jobID, idx: p.ref.shardIndex)
                    s.shards[k]!.leaseExpires = now() + leaseDuration
                    s.shards[k]!.step = max(s.shards[k]!.step, p.step)
                } else {
                    stale.append(Lease(ref: p.ref, workerID: r.workerID))
                }
            }
        }
        return stale
    }

    public func requeueShards(ofWorker workerID: Int64, reason: String) throws -> [ShardRef] {
        requeue { $0.state == "leased" && $0.workerID == workerID }
    }

    public func requeueExpiredLeases() throws -> [ShardRef] {
        let t = now()
        return requeue { $0.state == "leased" && ($0.leaseExpires.map { $0 < t } ?? false) }
    }

    private func requeue(_ matching: (Shard) -> Bool) -> [ShardRef] {
        var refs: [ShardRef] = []
        for (k, sh) in s.shards.sorted(by: { $0.key < $1.key }) where matching(sh) {
            s.shards[k]!.state = "queued"
            s.shards[k]!.workerID = nil
            s.shards[k]!.leaseExpires = nil
            refs.append(ShardRef(jobID: k.job, shardIndex: k.idx, attempt: sh.attempt))
        }
        return refs
    }

    public func claimShards(workerID: Int64, limit: Int, capabilities: [String]) throws -> [ClaimedShard] {
        guard limit > 0 else { return [] }
        let caps = Set(capabilities)
        let candidates = s.shards.filter { k, sh in
            guard sh.state == "queued", let j = s.jobs[k.job], j.state == "queued" || j.state == "running" else { return false }
            return caps.contains("\(j.kind)/\(j.algorithm)")
        }
        .sorted { a, b in
            let pa = s.jobs[a.key.job]!.priority
            let pb = s.jobs[b.key.job]!.priority
            return pa != pb ? pa > pb : a.key < b.key
        }
        .prefix(limit)
        return candidates.map { k, _ in
            s.shards[k]!.state = "leased"
            s.shards[k]!.attempt += 1
            s.shards[k]!.workerID = workerID
            s.shards[k]!.leaseExpires = now() + leaseDuration
            if s.jobs[k.job]!.state == "queued" { s.jobs[k.job]!.state = "running" }
            let sh = s.shards[k]!
            let j = s.jobs[k.job]!
            return ClaimedShard(
                ref: ShardRef(jobID: k.job, shardIndex: k.idx, attempt: sh.attempt), kind: j.kind, algorithm: j.algorithm,
                seed: j.seed, spec: j.spec, slice: sh.slice, totalSteps: sh.totalSteps, resume: sh.resume)
        }
    }
}
