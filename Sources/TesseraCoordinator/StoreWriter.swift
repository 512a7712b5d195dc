// The writer (group commit): one thread, one PostgreSQL connection, one transaction per batch of store commands.
// A batch is whatever the state machine accumulated while the previous one committed, so the busier the
// coordinator, the bigger the batch and the fewer commits per shard. Outcomes go back to the state machine, which
// only then sends ACKs (durable before acknowledged).
//
// Inside a batch the commands run grouped in a fixed order (StoreCommandRunner, TesseraCoordinatorCore): metrics in
// one multi-row insert, completions in one statement, heartbeats of all workers in one statement, claims last.
//
// PostgreSQL away: the batch is retried with backoff on a new connection until it commits; the coordinator keeps its
// sessions and heartbeats meanwhile, and nothing unacknowledged is lost (workers keep it until ACKed). A batch that
// fails for a reason of its own data is retried with one savepoint per command, so one bad command is refused alone.

import Foundation
import LibPQ
import Synchronization
import Logging
import Metrics
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

    // Created with the writer, after the metrics backend is bootstrapped (tessera coordinator / dev).
    private let batchSize = Recorder(label: "tessera_writer_batch_commands", aggregate: true)
    private let commitLatency = Metrics.Timer(label: "tessera_writer_commit_seconds")

    static func nanoseconds(_ d: Duration) -> Int64 {
        d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000
    }

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
                let started = ContinuousClock.now
                let outcomes = try store.db.transaction { try run(batch, on: store, isolated: isolate) }
                // Group commit at work: commands per transaction, and how long the transaction took (COMMIT included).
                batchSize.record(batch.count)
                commitLatency.recordNanoseconds(Self.nanoseconds(ContinuousClock.now - started))
                return outcomes
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

    private func run(_ batch: [StoreCommand], on store: PostgresJobStore, isolated: Bool) throws -> [StoreOutcome] {
        try StoreCommandRunner.run(
            batch, on: store, isolated: isolated,
            isFatal: { [store] in $0 is PGError && !store.db.isOpen },
            refused: { [logger] in logger.info("store command refused", metadata: ["error": "\($0)"]) })
    }
}
