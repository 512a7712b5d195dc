// A blocking FIFO between threads, shared by the coordinator's service threads and the worker's compute pool.
// Nothing here runs on Swift's cooperative pool (STYLE.md §Concurrency).

import Foundation

/// A blocking FIFO between threads: `pop` waits for an item or for `close()`.
public final class WorkQueue<Item: Sendable>: @unchecked Sendable {
    // @unchecked: `items` and `closed` are touched only under `condition`.
    private let condition = NSCondition()
    private var items: [Item] = []
    private var closed = false

    public init() {}

    public func push(_ item: Item) {
        condition.lock()
        items.append(item)
        condition.signal()
        condition.unlock()
    }

    /// Appends the item unless the queue is closed (its consumers may be gone); false when it was not appended.
    public func pushUnlessClosed(_ item: Item) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !closed else { return false }
        items.append(item)
        condition.signal()
        return true
    }

    /// The next item, or nil once closed and empty.
    public func pop() -> Item? {
        condition.lock()
        defer { condition.unlock() }
        while items.isEmpty && !closed { condition.wait() }
        return items.isEmpty ? nil : items.removeFirst()
    }

    public func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }
}
