internal import CZeroMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct ZMQPollItem {
    /// A ZeroMQ socket, or nil for a plain file descriptor (`fd`).
    public let socket: ZMQSocket?
    public let fd: Int32
    public let readable: Bool
    public let writable: Bool

    public init(socket: ZMQSocket, readable: Bool = true, writable: Bool = false) {
        self.socket = socket
        self.fd = 0
        self.readable = readable
        self.writable = writable
    }

    /// Waits for a `Wakeup` to be signalled (readable).
    public init(wakeup: Wakeup) {
        self.socket = nil
        self.fd = wakeup.fd
        self.readable = true
        self.writable = false
    }
}

/// Wakes a thread blocked in `ZMQ.poll` from any other thread (a non-blocking self-pipe): `signal()` is safe from
/// any thread, the polling thread calls `reset()` after it wakes. Signals coalesce (a full pipe is already a
/// signal). This is how results of other threads reach the thread that owns a socket, without fixed-interval
/// polling.
public final class Wakeup: @unchecked Sendable {
    // @unchecked: the descriptors are immutable after init; pipe read/write are thread-safe.
    let fd: Int32
    private let writeFD: Int32

    public init() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw ZMQError(errno: errno, operation: "pipe") }
        for f in fds {
            _ = fcntl(f, F_SETFL, fcntl(f, F_GETFL) | O_NONBLOCK)
            _ = fcntl(f, F_SETFD, FD_CLOEXEC)
        }
        fd = fds[0]
        writeFD = fds[1]
    }

    deinit {
        close(fd)
        close(writeFD)
    }

    public func signal() {
        var one: UInt8 = 1
        while write(writeFD, &one, 1) < 0 && errno == EINTR {}
    }

    /// Clears pending signals (call after a poll reported this item readable).
    public func reset() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n > 0 { continue }
            if n < 0 && errno == EINTR { continue }
            break
        }
    }
}

/// What `ZMQ.pollEvents` found for one item.
public struct ZMQPollEvents: Sendable, Hashable {
    public var readable: Bool
    public var writable: Bool
    public init(readable: Bool, writable: Bool) {
        self.readable = readable
        self.writable = writable
    }
}

public enum ZMQ {
    /// Waits until one of the items is ready or `timeoutMilliseconds` pass (-1 = forever, 0 = check only).
    /// Returns the readable flag of each item, in order. Run it on the thread that owns the sockets.
    public static func poll(_ items: [ZMQPollItem], timeoutMilliseconds: Int) throws -> [Bool] {
        try pollEvents(items, timeoutMilliseconds: timeoutMilliseconds).map(\.readable)
    }

    /// Like `poll`, returning readable and writable flags per item.
    public static func pollEvents(_ items: [ZMQPollItem], timeoutMilliseconds: Int) throws -> [ZMQPollEvents] {
        var raw = items.map { item in
            var events: Int16 = 0
            if item.readable { events |= Int16(ZMQ_POLLIN) }
            if item.writable { events |= Int16(ZMQ_POLLOUT) }
            return zmq_pollitem_t(socket: item.socket?.pollHandle, fd: item.fd, events: events, revents: 0)
        }
        let deadline = timeoutMilliseconds < 0 ? nil : monotonicMilliseconds() + Int64(timeoutMilliseconds)
        while true {
            var timeout = -1
            if let deadline { timeout = Int(max(0, deadline - monotonicMilliseconds())) }
            let count = Int32(clamping: raw.count)
            let rc = raw.withUnsafeMutableBufferPointer { zmq_poll($0.baseAddress, count, timeout) }
            if rc >= 0 { break }
            let e = zmq_errno()
            if e == EINTR { continue }  // retry with the time that is left
            throw ZMQError(errno: e, operation: "zmq_poll")
        }
        return raw.map {
            ZMQPollEvents(
                readable: $0.revents & Int16(ZMQ_POLLIN) != 0, writable: $0.revents & Int16(ZMQ_POLLOUT) != 0)
        }
    }

    /// The linked libzmq version (major, minor, patch).
    public static var version: (Int, Int, Int) {
        var major: Int32 = 0
        var minor: Int32 = 0
        var patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return (Int(major), Int(minor), Int(patch))
    }

    private static func monotonicMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}
