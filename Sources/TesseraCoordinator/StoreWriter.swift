// The writer (group commit): one thread, one PostgreSQL connection, one transaction per batch of store commands.
// A batch is whatever the state machine accumulated while the previous one committed, so the busier the
// coordinator, the bigger the batch and the fewer commits per shard. Outcomes go back to the state machine, which
// only then sends ACKs (durable before acknowledged).
//
// Inside a batch the commands run grouped in a fixed order: registrations (their adoptions come before anything
// else about those shards), metrics in one multi-row insert, completions in one statement, failures, blobs,
// heartbeats of all workers in one statement, lost workers' requeues, the lease sweep, and claims last (they see the
// slots and shards the rest freed).
//
// PostgreSQL away: the batch is retried with backoff on a new connection until it commits; the coordinator keeps its
// sessions and heartbeats meanwhile, and nothing unacknowledged is lost (workers keep it until ACKed). A batch that
// fails for a reason of its own data is retried with one savepoint per command, so one bad command is refused alone.

import Foundation
import LibPQ
import Synchronization
import Logging
import TesseraCore
import TesseraCoordinatorCore
import TesseraModel
import TesseraStore

final class StoreWriter: @unchecked Sendable {
    // @unchecked: `store` is touched only by the writer thread.
    private let queue = WorkQueue<[StoreCommand]>()
    private let connect: @Sendable () throws -> PostgresJobStore
    private let inbox: Inbox
    private let logger: Logger
    private var store: PostgresJobStore?
    private var thread: ServiceThread?
    private let stopping = Atomic<Bool>(false)

    init(connect: @escaping @Sendable () throws -> PostgresJobStore, inbox: Inbox, logger: Logger) {
        self.connect = connect
        self.inbox = inbox
        self.logger = logger
    }

    func start(firstConnection: PostgresJobStore) {
        store = firstConnection
        thread = ServiceThread(name: "tessera-writer") { [self] in
            while let batch = queue.pop() {
                // nil: abandoned at shutdown while the database was away; nothing of it was acknowledged.
                guard let outcomes = commit(batch) else { break }
                inbox.post(.event(.committed(outcomes)))
            }
            store?.db.close()
            store = nil
        }
    }

    func submit(_ batch: [StoreCommand]) { queue.push(batch) }

    /// Finishes the batch in progress (and any queued), then stops. While the database is away it gives up at once:
    /// what it held was never acknowledged, so the workers still have it.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        queue.close()
        thread?.join()
    }

    // MARK: Commit with retry

    private func commit(_ batch: [StoreCommand]) -> [StoreOutcome]? {
        var delay = 0.05
        var isolate = false
        while true {
            do {
                let store = try currentStore()
                return try store.db.transaction { try run(batch, on: store, isolated: isolate) }
            } catch let e as PGError where store.map({ !$0.db.isOpen }) ?? true {
                // The connection is gone (server restart, network): reconnect and retry the whole batch.
                logger.info("database unavailable; retrying the batch", metadata: ["error": "\(e)", "retry_in": "\(delay)"])
                store?.db.close()
                store = nil
                if stopping.load(ordering: .relaxed) { return nil }
                Thread.sleep(forTimeInterval: delay)
                delay = min(delay * 2, 5)
            } catch {
                if isolate {
                    // Even one savepoint per command did not help: the transaction itself failed (e.g. at COMMIT).
                    logger.info("batch failed; retrying", metadata: ["error": "\(error)"])
                    if stopping.load(ordering: .relaxed) { return nil }
                    Thread.sleep(forTimeInterval: delay)
                    delay = min(delay * 2, 5)
                } else {
                    logger.info("batch failed; retrying it command by command", metadata: ["error": "\(error)"])
                }
                isolate = true
            }
        }
    }

    private func currentStore() throws -> PostgresJobStore {
        if let store { return store }
        let s = try connect()
        store = s
        return s
    }

    // MARK: One transaction

    private enum Phase: Int, CaseIterable {
        case register, metrics, complete, fail, blob, renew, gone, rescue, claim
    }

    private static func phase(_ c: StoreCommand) -> Phase {
        switch c {
        case .registerWorker: .register
        case .ingestMetrics: .metrics
        case .completeShard: .complete
        case .failShard: .fail
        case .registerBlob: .blob
        case .renewLeases: .renew
        case .workerGone: .gone
        case .requeueExpiredLeases: .rescue
        case .claimShards: .claim
        }
    }

    private func run(_ batch: [StoreCommand], on store: PostgresJobStore, isolated: Bool) throws -> [StoreOutcome] {
        var outcomes = [StoreOutcome?](repeating: nil, count: batch.count)
        let byPhase = Dictionary(grouping: batch.indices, by: { Self.phase(batch[$0]) })
        for phase in Phase.allCases {
            guard let indices = byPhase[phase] else { continue }
            if isolated {
                // One savepoint per command: a command the database refuses is answered `.rejected` alone.
                for i in indices {
                    do {
                        let o = try store.db.transaction { try execute(phase, [i], batch, on: store) }
                        outcomes[i] = o[0]
                    } catch let e as PGError where !store.db.isOpen {
                        throw e
                    } catch {
                        logger.info("store command refused", metadata: ["error": "\(error)"])
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
    private func execute(_ phase: Phase, _ indices: [Int], _ batch: [StoreCommand], on store: PostgresJobStore) throws -> [StoreOutcome] {
        switch phase {
        case .metrics:
            let items = indices.map { i -> (key: ShardRef, workerID: Int64, rows: [MetricPoint]) in
                guard case .ingestMetrics(let w, let ref, let points) = batch[i] else { preconditionFailure() }
                return (ref, w, points)
            }
            return try store.ingestMetrics(items).map { .metricsIngested(accepted: $0) }
        case .complete:
            let items = indices.map { i -> (ref: ShardRef, workerID: Int64, summary: String, resultSHA256: String?) in
                guard case .completeShard(let w, let ref, let summary, let sha) = batch[i] else { preconditionFailure() }
                // A summary that is not JSON is stored as {} (protocol/SPEC.md §12.1); the merge then says what is missing.
                let json = (try? JSONValue.parse(Array(summary.utf8))) ?? .object([:])
                return (ref, w, json.render(), sha)
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
        default:
            return try indices.map { try executeOne(batch[$0], on: store) }
        }
    }

    private func executeOne(_ command: StoreCommand, on store: PostgresJobStore) throws -> StoreOutcome {
        switch command {
        case .registerWorker(let name, let host, let slots, let capabilities, let running):
            let id = try store.registerWorker(name: name, host: host, slots: slots, capabilities: capabilities)
            return .workerRegistered(workerID: id, adopted: try store.adoptShards(workerID: id, keys: running))
        case .workerGone(let workerID, let lost, let reason):
            let requeued = try store.requeueShards(ofWorker: workerID, reason: reason)
            try store.markWorker(workerID, state: lost ? "lost" : "gone", reason: reason)
            return .workerGone(requeued: requeued.count)
        case .failShard(let workerID, let ref, let reason, let retryable):
            let (outcome, stop) = try store.failShard(ref, workerID: workerID, reason: reason, retryable: retryable)
            return .shardFailed(outcome, stop: stop)
        case .registerBlob(let workerID, let ref, let kind, let step, let sha256, let size, let path):
            return .blobRegistered(accepted: try store.registerBlob(
                ref, workerID: workerID, kind: kind.name, step: step, sha256: sha256, size: size, path: path))
        case .requeueExpiredLeases:
            return .expiredLeasesRequeued(count: try store.requeueExpiredLeases().count)
        case .claimShards(let workerID, let limit, let capabilities):
            return .shardsClaimed(try store.claimShards(workerID: workerID, limit: limit, capabilities: capabilities))
        case .ingestMetrics, .completeShard, .renewLeases:
            preconditionFailure("batched commands run in execute(_:_:_:on:)")
        }
    }
}
