// Merges off the hot path: when the last shard of a job commits, its job is merged here, on a thread and a
// PostgreSQL connection of its own, so reading shard results and reducing them never delays heartbeats, dispatch
// or commits. A job is merged once even when several completions in one batch report it complete. Shards are read
// in index order, a page of summaries at a time, and each result blob is read, added to the algorithm's reducer and
// dropped, so a merge holds one blob plus the reducer's state whatever the shard count.

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
    /// Shard summaries read per query.
    static let pageSize = 256
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
            let job = try withStore { try $0.mergeSpec(jobID: jobID) }
            let spec = try blobs.loadingFiles(try JobSpec.fromStored(Array(job.spec.utf8)))
            let algorithm = try catalogue.resolve(spec)
            var reducer = try algorithm.makeReducer(spec)
            var next = 0
            while next < job.shardCount {
                let page = try withStore { try $0.mergeShards(jobID: jobID, from: next, limit: Self.pageSize) }
                guard !page.isEmpty else { throw MergeError("job has \(job.shardCount) shards; none from \(next) on") }
                for shard in page {
                    guard shard.index == next else { throw MergeError("shard \(next) is missing") }
                    let result = try shard.resultPath.map { try blobs.readAll(relativePath: $0) }
                    try reducer.add(ShardOutput(summary: try JSONValue.parse(shard.summary), result: result))
                    next += 1
                }
            }
            let merged = try reducer.finish()
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

/// A job whose shard rows do not form 0..<shard_count.
struct MergeError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
