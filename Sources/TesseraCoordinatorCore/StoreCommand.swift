// What the coordinator's state machine asks of the job store, and what it hears back. A batch of commands runs in
// one transaction (the writer's group commit); outcomes come back in command order, and only then does the state
// machine acknowledge anything (protocol/SPEC.md §6.4: durable before acknowledged).

import TesseraModel

public enum StoreCommand: Sendable, Equatable {
    /// A worker said READY: record it and re-adopt the shards it still runs whose attempt is current.
    case registerWorker(name: String, host: String, slots: Int, capabilities: [String], running: [ShardRef])
    /// A worker is gone (`lost`: missed heartbeats; else it disconnected or re-registered): mark it and put its
    /// leased shards back in the queue without consuming an attempt.
    case workerGone(workerID: Int64, lost: Bool, reason: String)
    /// Heartbeats of every worker since the last commit: each worker's liveness and its shards' progress.
    case renewLeases([LeaseRenewal])
    /// One METRICS batch, fenced on attempt and sender.
    case ingestMetrics(workerID: Int64, ref: ShardRef, points: [MetricPoint])
    /// One LOGS batch, fenced on attempt and sender; a replayed batch (same attempt and sequence) is stored once.
    case ingestLogs(workerID: Int64, ref: ShardRef, sequence: UInt64, lines: [LogLine])
    /// SHARD_DONE, fenced on attempt and sender.
    case completeShard(workerID: Int64, ref: ShardRef, summary: String, resultSHA256: String?)
    /// SHARD_FAILED, fenced on attempt and sender.
    case failShard(workerID: Int64, ref: ShardRef, reason: String, failure: ShardFailureKind)
    /// A blob already durable in the content-addressed store, fenced on attempt and sender.
    case registerBlob(workerID: Int64, ref: ShardRef, kind: BlobKind, step: Int64, sha256: String, size: Int64, path: String)
    /// A lease never sent (leased ahead) goes back to the queue at its previous attempt, fenced on attempt and holder.
    case unleaseShard(workerID: Int64, ref: ShardRef)
    /// Lease up to `limit` queued shards the worker can run.
    case claimShards(workerID: Int64, limit: Int, capabilities: [String])
    /// Requeue every lease whose expiry passed (leases no session renews, e.g. after a coordinator restart).
    case requeueExpiredLeases
}

public struct LeaseRenewal: Sendable, Equatable {
    public var workerID: Int64
    public var progress: [ShardProgressStep]
    public init(workerID: Int64, progress: [ShardProgressStep]) {
        self.workerID = workerID
        self.progress = progress
    }
}

public struct ShardProgressStep: Sendable, Equatable {
    public var ref: ShardRef
    public var step: Int64
    public init(ref: ShardRef, step: Int64) {
        self.ref = ref
        self.step = step
    }
}

public enum StoreOutcome: Sendable, Equatable {
    case workerRegistered(workerID: Int64, adopted: [ShardRef])
    case workerGone(requeued: Int)
    /// Progress entries that are no longer that worker's current lease (to be told CANCEL).
    case leasesRenewed(stale: [Lease])
    case metricsIngested(accepted: Bool)
    case logsIngested(accepted: Bool)
    /// `accepted` false: fenced. `jobComplete`: every shard of the job has now succeeded. `releasedDependents`: a
    /// shard that waited on this one has nothing left to wait for, so there is something new to claim.
    case shardCompleted(accepted: Bool, jobComplete: Bool, releasedDependents: Bool = false)
    /// `stop`: the job's other leases, when the failure failed the job.
    case shardFailed(ShardFailureOutcome, stop: [Lease])
    case blobRegistered(accepted: Bool)
    case shardsClaimed([ClaimedShard])
    case shardUnleased(accepted: Bool)
    case expiredLeasesRequeued(count: Int)
    /// The command could not be applied (e.g. its data was refused by the database); nothing changed for it.
    case rejected(reason: String)
}
