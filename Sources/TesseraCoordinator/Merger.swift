// Merges off the hot path: when the last shard of a job commits, its job is merged here, on a thread and a
// PostgreSQL connection of its own, so reading shard results and running `merge` never delays heartbeats, dispatch
// or commits. A job is merged once even when several completions in one batch report it complete.

import Foundation
import LibPQ
import Logging
import Synchronization
import TesseraCore
import TesseraCoordinatorCore
import TesseraStore

final class Merger: @unchecked Sendable {
    // @unchecked: `store` is touched only by the merge thread; `pending` is a Mutex.
    private let queue = WorkQueue<Int64>()
    private let pending = Mutex<Set<Int64>>([])
    private let connect: @Sendable () throws -> PostgresJobStore
    private var store: PostgresJobStore?
    private let stopping = Atomic<Bool>(false)
    private let blobs: BlobStore
    private let catalogue: AlgorithmCatalogue
    private let inbox: Inbox
    private let logger: Logger
    private var thread: ServiceThread?

    init(connect: @escaping @Sendable () throws -> PostgresJobStore, blobs: BlobStore, catalogue: AlgorithmCatalogue, inbox: Inbox, logger: Logger) {
        self.connect = connect
        self.blobs = blobs
        self.catalogue = catalogue
        self.inbox = inbox
        self.logger = logger
    }

    func start() {
        thread = ServiceThread(name: "tessera-merge") { [self] in
            // Jobs whose shards all succeeded before a restart but that were never merged.
            if let waiting = try? withStore({ try $0.jobsAwaitingMerge() }) { for id in waiting { merge(id) } }
            while let id = queue.pop() {
                merge(id)
                _ = pending.withLock { $0.remove(id) }
            }
            store?.db.close()
        }
    }

    func submit(_ jobID: Int64) {
        guard pending.withLock({ $0.insert(jobID).inserted }) else { return }
        queue.push(jobID)
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        queue.close()
        thread?.join()
    }

    /// Runs `body` on the merge connection, reconnecting with backoff while the database is away (a merge is never
    /// failed for that; at shutdown it is left for the next coordinator's start-up scan).
    private func withStore<T>(_ body: (PostgresJobStore) throws -> T) throws -> T {
        var delay = 0.1
        while true {
            do {
                if store == nil { store = try connect() }
                return try body(store!)
            } catch let e as PGError where !(store?.db.isOpen ?? false) {
                store?.db.close()
                store = nil
                if stopping.load(ordering: .relaxed) { throw e }
                logger.info("database unavailable for merges; retrying", metadata: ["error": "\(e)"])
                Thread.sleep(forTimeInterval: delay)
                delay = min(delay * 2, 5)
            }
        }
    }

    private func merge(_ jobID: Int64) {
        do {
            let inputs = try withStore { try $0.mergeInputs(jobID: jobID) }
            let spec = try JobSpec.fromStored(Array(inputs.spec.utf8))
            let algorithm = try catalogue.resolve(spec)
            var outputs: [ShardOutput] = []
            outputs.reserveCapacity(inputs.shards.count)
            for shard in inputs.shards {
                let result = try shard.resultPath.map { try blobs.readAll(relativePath: $0) }
                outputs.append(ShardOutput(summary: try JSONValue.parse(shard.summary), result: result))
            }
            let merged = try algorithm.merge(spec, outputs: outputs)
            try withStore { try $0.finishJob(jobID, result: merged.render()) }
            logger.info("job succeeded", metadata: ["job.id": "\(jobID)"])
        } catch let e as PGError where store == nil {
            logger.info("merge left for the next start-up", metadata: ["job.id": "\(jobID)", "error": "\(e)"])
        } catch {
            logger.error("merge failed", metadata: ["job.id": "\(jobID)", "error": "\(error)"])
            do {
                let leases = try withStore { try $0.failJob(jobID, error: "merge failed: \(error)") }
                inbox.post(.event(.leasesEnded(leases, reason: "job failed")))
            } catch {
                logger.error("cannot record the failed merge", metadata: ["job.id": "\(jobID)", "error": "\(error)"])
            }
        }
    }
}
