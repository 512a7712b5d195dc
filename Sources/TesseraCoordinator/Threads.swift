// The small concurrency pieces the coordinator's threads share. Nothing here runs on Swift's cooperative pool:
// every blocking call (libpq, fsync, zmq_poll) stays on a thread the coordinator owns (STYLE.md §Concurrency).

import Foundation
import Synchronization
import TesseraCore
import TesseraCoordinatorCore
import TesseraProtocol
import ZeroMQ

/// What other threads hand to the transport thread: events for the state machine and replies to send. Posting wakes
/// the transport's `zmq_poll` (no fixed-interval polling).
final class Inbox: Sendable {
    enum Item: Sendable {
        case event(CoordinatorStateMachine.Event)
        case send([UInt8], Message)
    }

    private let items = Mutex<[Item]>([])
    let wakeup: Wakeup

    init() throws { wakeup = try Wakeup() }

    func post(_ item: Item) {
        items.withLock { $0.append(item) }
        wakeup.signal()
    }

    func post(_ batch: [Item]) {
        guard !batch.isEmpty else { return }
        items.withLock { $0.append(contentsOf: batch) }
        wakeup.signal()
    }

    func take() -> [Item] {
        items.withLock {
            let out = $0
            $0.removeAll(keepingCapacity: true)
            return out
        }
    }
}

/// Starts a named thread and lets the caller wait for it to finish.
final class ServiceThread: @unchecked Sendable {
    // @unchecked: `done` is a semaphore; the thread is started once.
    private let done = DispatchSemaphore(value: 0)

    init(name: String, _ body: @escaping @Sendable () -> Void) {
        let t = Thread { [done] in
            body()
            done.signal()
        }
        t.name = name
        t.stackSize = 4 << 20
        t.start()
    }

    func join() { done.wait() }
}
