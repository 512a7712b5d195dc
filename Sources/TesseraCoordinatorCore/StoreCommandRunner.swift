// The writer's batch: store commands run against any `JobStore` in a fixed order inside the caller's transaction.

import TesseraModel

/// Runs one batch of store commands in one transaction, grouped in a fixed order: registrations (their adoptions
/// come before anything else about those shards), metrics in one call, completions in one call, failures, blobs,
/// heartbeats of all workers in one call, lost workers' requeues, the lease sweep, unsent leases handed back, and claims
/// last in one call (they
/// see the slots and shards the rest freed). Outcomes come back in the batch's order.
public enum StoreCommandRunner {
    enum Phase: Int, CaseIterable {
        case register, metrics, logs, complete, fail, blob, renew, gone, rescue, unlease, claim
    }

    static func phase(_ c: StoreCommand) -> Phase {
        switch c {
        case .registerWorker: .register
        case .ingestMetrics: .metrics
        case .ingestLogs: .logs
        case .completeShard: .complete
        case .failShard: .fail
        case .registerBlob: .blob
        case .renewLeases: .renew
        case .workerGone: .gone
        case .requeueExpiredLeases: .rescue
        case .unleaseShard: .unlease
        case .claimShards: .claim
        }
    }

    /// The batch's outcomes. `isolated`: each command in its own savepoint, and a command the store refuses is
    /// answered `.rejected` alone (`refused` sees the error); `isFatal` errors (the connection is gone) are rethrown.
    /// The caller opens the outer transaction.
    public static func run(
        _ batch: [StoreCommand], on store: some JobStore, isolated: Bool,
        isFatal: (any Error) -> Bool = { _ in false }, refused: (any Error) -> Void = { _ in }
    ) throws -> [StoreOutcome] {
        var outcomes = [StoreOutcome?](repeating: nil, count: batch.count)
        let byPhase = Dictionary(grouping: batch.indices, by: { phase(batch[$0]) })
        for phase in Phase.allCases {
            guard let indices = byPhase[phase] else { continue }
            if isolated {
                for i in indices {
                    do {
                        outcomes[i] = try store.transaction { try execute(phase, [i], batch, on: store) }[0]
                    } catch where isFatal(error) {
                        throw error
                    } catch {
                        refused(error)
                        outcomes[i] = .rejected(reason: "\(error)")
                    }
                }
            } else {
                for (i, o) in zip(indices, try execute(phase, indices, batch, on: store)) { outcomes[i] = o }
            }
        }
        return outcomes.map { $0! }
    }

    /// The commands at `indices` (all of `phase`), their outcomes in the same order.
    static func execute(_ phase: Phase, _ indices: [Int], _ batch: [StoreCommand], on store: some JobStore) throws -> [StoreOutcome] {
        switch phase {
        case .metrics:
            let items = indices.map { i -> (key: ShardRef, workerID: Int64, rows: [MetricPoint]) in
                guard case .ingestMetrics(let w, let ref, let points) = batch[i] else { preconditionFailure() }
                return (ref, w, points)
            }
            return try store.ingestMetrics(items).map { .metricsIngested(accepted: $0) }
        case .logs:
            // Before completions: a shard's last lines commit while it is still leased (its SHARD_DONE follows them).
            let items = indices.map { i -> ShardLogBatch in
                guard case .ingestLogs(let w, let ref, let sequence, let lines) = batch[i] else { preconditionFailure() }
                return ShardLogBatch(ref: ref, workerID: w, sequence: sequence, lines: lines.map {
                    LogLine(time: $0.time, level: $0.level, message: LogLine.clip($0.message))
                })
            }
            return try store.ingestLogs(items).map { .logsIngested(accepted: $0) }
        case .complete:
            let items = indices.map { i -> (ref: ShardRef, workerID: Int64, summary: String, resultSHA256: String?) in
                guard case .completeShard(let w, let ref, let summary, let sha) = batch[i] else { preconditionFailure() }
                return (ref, w, summary, sha)
            }
            return try store.completeShards(items).map {
                .shardCompleted(accepted: $0.accepted, jobComplete: $0.jobComplete, releasedDependents: $0.released > 0)
            }
        case .renew:
            return try indices.map { i in
                guard case .renewLeases(let renewals) = batch[i] else { preconditionFailure() }
                let stale = try store.renewLeases(renewals.map { r in (r.workerID, r.progress.map { ($0.ref, $0.step) }) })
                return .leasesRenewed(stale: stale)
            }
        case .claim:
            let requests = indices.map { i -> (workerID: Int64, limit: Int, capabilities: [String]) in
                guard case .claimShards(let w, let limit, let capabilities) = batch[i] else { preconditionFailure() }
                return (w, limit, capabilities)
            }
            return try store.claimShards(requests).map { .shardsClaimed($0) }
        default:
            return try indices.map { try executeOne(batch[$0], on: store) }
        }
    }

    static func executeOne(_ command: StoreCommand, on store: some JobStore) throws -> StoreOutcome {
        switch command {
        case .registerWorker(let name, let host, let slots, let capabilities, let running):
            let id = try store.registerWorker(name: name, host: host, slots: slots, capabilities: capabilities)
            return .workerRegistered(workerID: id, adopted: try store.adoptShards(workerID: id, keys: running))
        case .workerGone(let workerID, let lost, let reason):
            let requeued = try store.requeueShards(ofWorker: workerID, reason: reason)
            try store.markWorker(workerID, state: lost ? .lost : .gone, reason: reason)
            return .workerGone(requeued: requeued.count)
        case .failShard(let workerID, let ref, let reason, let failure):
            let (outcome, stop) = try store.failShard(ref, workerID: workerID, reason: reason, failure: failure)
            return .shardFailed(outcome, stop: stop)
        case .registerBlob(let workerID, let ref, let kind, let step, let sha256, let size, let path):
            return .blobRegistered(
                accepted: try store.registerBlob(ref, workerID: workerID, kind: kind.name, step: step, sha256: sha256, size: size, path: path))
        case .requeueExpiredLeases:
            return .expiredLeasesRequeued(count: try store.requeueExpiredLeases().count)
        case .claimShards(let workerID, let limit, let capabilities):
            return .shardsClaimed(try store.claimShards(workerID: workerID, limit: limit, capabilities: capabilities))
        case .unleaseShard(let workerID, let ref):
            return .shardUnleased(accepted: try store.unleaseShard(ref, workerID: workerID))
        case .ingestMetrics, .ingestLogs, .completeShard, .renewLeases:
            preconditionFailure("batched commands run in execute(_:_:_:on:)")
        }
    }
}
