// The store as the coordinator's writer sees it: every write of the hot path, fenced on (job, shard, attempt) and
// on the sender. `PostgresJobStore` (TesseraStore, libpq) is the implementation; `InMemoryJobStore` (TesseraTesting)
// drives the state-machine simulations in Tests/TesseraCoordinatorCoreTests. Both pass the same contract tests
// (Tests/TesseraStoreTests/JobStoreContractTests.swift), outcome for outcome.

public protocol JobStore: AnyObject {
    /// Runs `body` all-or-nothing: one transaction, or a savepoint inside the caller's.
    func transaction<T>(_ body: () throws -> T) throws -> T

    func registerWorker(name: String, host: String, slots: Int, capabilities: [String]) throws -> Int64
    /// Re-adopts shards a reconnecting worker still runs, when their attempt is still the live one.
    func adoptShards(workerID: Int64, keys: [ShardRef]) throws -> [ShardRef]
    /// Marks a worker `lost` or `gone` (the shards it held are requeued separately).
    func markWorker(_ id: Int64, state: WorkerState, reason: String) throws
    /// Per batch: accepted (current attempt, sent by its leaseholder) or not. Replayed steps overwrite.
    func ingestMetrics(_ batches: [(key: ShardRef, workerID: Int64, rows: [MetricPoint])]) throws -> [Bool]
    /// Per batch: accepted (current attempt, sent by its leaseholder) or not. A batch already stored (same shard,
    /// attempt and sequence: a replay) is accepted and not stored twice. Keeps each shard's newest
    /// `ShardLogRetention.linesPerShard` lines (all attempts together) and deletes older ones.
    func ingestLogs(_ batches: [ShardLogBatch]) throws -> [Bool]
    /// Per item: accepted, whether its job has now every shard succeeded, and how many shards that waited on it
    /// became claimable. A summary that is not JSON is stored as `{}`.
    func completeShards(
        _ items: [(ref: ShardRef, workerID: Int64, summary: String, resultSHA256: String?)]
    ) throws -> [(accepted: Bool, jobComplete: Bool, released: Int)]
    func failShard(_ key: ShardRef, workerID: Int64, reason: String, failure: ShardFailureKind) throws -> (ShardFailureOutcome, [Lease])
    /// Takes back a lease whose DISPATCH was never sent (leased ahead, then handed back): the shard is queued again at
    /// the attempt it had before the claim, so the next claim gets the same attempt number, which no worker has
    /// seen. Fenced on attempt and holder; false when that is no longer the lease.
    func unleaseShard(_ key: ShardRef, workerID: Int64) throws -> Bool
    func registerBlob(
        _ key: ShardRef, workerID: Int64, kind: String, step: Int64, sha256: String, size: Int64, path: String
    ) throws -> Bool
    /// Heartbeats of many workers; returns the reported leases that are not that worker's current attempt.
    func renewLeases(_ renewals: [(workerID: Int64, progress: [(ref: ShardRef, step: Int64)])]) throws -> [Lease]
    /// Requeues (no attempt consumed) every leased shard of a worker that is gone.
    func requeueShards(ofWorker workerID: Int64, reason: String) throws -> [ShardRef]
    /// Requeues every lease whose expiry passed.
    func requeueExpiredLeases() throws -> [ShardRef]
    /// Leases up to `limit` claimable shards the worker can run, each at a new attempt.
    func claimShards(workerID: Int64, limit: Int, capabilities: [String]) throws -> [ClaimedShard]
    /// The claims of one batch, for many workers, with the outcome of running them one after another in this order
    /// (a store may do it in fewer statements). One list of claimed shards per request.
    func claimShards(_ requests: [(workerID: Int64, limit: Int, capabilities: [String])]) throws -> [[ClaimedShard]]
}

extension JobStore {
    public func claimShards(_ requests: [(workerID: Int64, limit: Int, capabilities: [String])]) throws -> [[ClaimedShard]] {
        try requests.map { try claimShards(workerID: $0.workerID, limit: $0.limit, capabilities: $0.capabilities) }
    }
}

/// How many log lines the store keeps per shard (docs/operations.md, "Shard logs").
public enum ShardLogRetention {
    public static let linesPerShard = 2000
}
