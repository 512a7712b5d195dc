// One active coordinator per database (docs/operations.md, "Standby coordinator"): a coordinator serves only while
// it holds a PostgreSQL session-level advisory lock on its own connection. A second coordinator started on the same
// database waits for the lock (a standby) and takes over when the active one dies (its session ends, the lock is
// released) or loses its database session for longer than a standby needs to take the lock.
//
// The active coordinator's lock connection is checked on its own thread every `checkInterval`. If it breaks, the
// coordinator keeps serving (nothing can commit while the database is away anyway) and tries to reconnect and take
// the lock again: got it back (a PostgreSQL restart) → carry on; another coordinator holds it → step down.

import Foundation
import LibPQ
import Logging
import Synchronization

final class CoordinatorLock: @unchecked Sendable {
    // @unchecked: `connection` is touched by the thread that acquires and then only by the watcher thread; the rest
    // are atomics.

    /// The advisory lock's key: "tessera\0\1" as a big-endian Int64.
    static let key: Int64 = 0x7465_7373_6572_0001

    private let databaseURL: String
    private let logger: Logger
    private var connection: PGConnection?
    private let stopped = Atomic<Bool>(false)
    private var watcher: ServiceThread?
    /// Seconds between checks of the lock connection.
    var checkInterval: Double = 0.5

    init(databaseURL: String, logger: Logger) {
        self.databaseURL = databaseURL
        self.logger = logger
    }

    enum Attempt { case acquired, heldElsewhere, unreachable(any Error) }

    private func tryAcquire() -> Attempt {
        do {
            if connection == nil || connection?.isOpen != true {
                connection?.close()
                connection = try PGConnection(databaseURL)
            }
            let r = try connection!.execute("SELECT pg_try_advisory_lock($1) AS locked", [.int(Self.key)])
            return r.bool(0, "locked") == true ? .acquired : .heldElsewhere
        } catch {
            connection?.close()
            connection = nil
            return .unreachable(error)
        }
    }

    /// Blocks until this process holds the lock, or `shouldStop()` (then returns false). While another coordinator
    /// holds it, this one is a standby and says so once.
    func acquire(pollInterval: Double = 0.2, shouldStop: () -> Bool) -> Bool {
        var saidStandby = false
        var saidUnreachable = false
        while !shouldStop() {
            switch tryAcquire() {
            case .acquired:
                if saidStandby { logger.notice("standby: the coordinator lock is ours; taking over") }
                return true
            case .heldElsewhere:
                if !saidStandby {
                    logger.notice("standby: another coordinator is active on this database; waiting for its lock")
                    saidStandby = true
                }
            case .unreachable(let error):
                if !saidUnreachable {
                    logger.warning("database unreachable while taking the coordinator lock; retrying", metadata: ["error": "\(error)"])
                    saidUnreachable = true
                }
            }
            Thread.sleep(forTimeInterval: pollInterval)
        }
        return false
    }

    /// Watches the lock connection; calls `stepDown` (once) if another coordinator took the lock meanwhile.
    func watch(stepDown: @escaping @Sendable (String) -> Void) {
        watcher = ServiceThread(name: "tessera-lock") { [self] in
            var lostSince: ContinuousClock.Instant?
            while !stopped.load(ordering: .relaxed) {
                Thread.sleep(forTimeInterval: checkInterval)
                if stopped.load(ordering: .relaxed) { break }
                if lostSince == nil {
                    do {
                        _ = try connection!.execute("SELECT 1")
                        continue
                    } catch {
                        connection?.close()
                        connection = nil
                        lostSince = .now
                        logger.warning("lost the coordinator lock's database session; retaking it", metadata: ["error": "\(error)"])
                    }
                }
                switch tryAcquire() {
                case .acquired:
                    logger.notice("coordinator lock retaken", metadata: ["after": "\(ContinuousClock.now - lostSince!)"])
                    lostSince = nil
                case .heldElsewhere:
                    stepDown("another coordinator took over while this one was cut off from the database")
                    return
                case .unreachable:
                    continue
                }
            }
        }
    }

    /// Stops watching and releases the lock (closing the session releases it).
    func release() {
        stopped.store(true, ordering: .relaxed)
        watcher?.join()
        connection?.close()
        connection = nil
    }
}
