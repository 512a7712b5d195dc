#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
internal import CLibPQ

/// A `NOTIFY` received on a connection that ran `LISTEN`.
public struct PGNotification: Sendable, Hashable {
    public var channel: String
    public var payload: String
    /// The server process that sent it.
    public var senderPID: Int32
}

extension PGConnection {
    /// `LISTEN channel` (the name is quoted, so any string is a valid channel).
    public func listen(_ channel: String) throws {
        try execute("LISTEN \(try quoteIdentifier(channel))")
    }

    /// `UNLISTEN channel`.
    public func unlisten(_ channel: String) throws {
        try execute("UNLISTEN \(try quoteIdentifier(channel))")
    }

    /// `pg_notify(channel, payload)`; delivered when the surrounding transaction commits.
    public func notify(_ channel: String, payload: String = "") throws {
        try execute("SELECT pg_notify($1, $2)", [.text(channel), .text(payload)])
    }

    /// Waits up to `timeout` for notifications on the channels this connection listens to, and returns them
    /// (empty on timeout). Blocks the calling thread; use it from the thread that owns this connection, as a
    /// wake-up hint next to a polling fallback. Throws `.connectionLost` if the connection broke.
    public func waitForNotifications(timeout: Duration) throws -> [PGNotification] {
        try exclusive { try waitUnguarded(timeout: timeout) }
    }

    private func waitUnguarded(timeout: Duration) throws -> [PGNotification] {
        let h = try handle()
        if PQconsumeInput(h) == 0 { throw connectionError(h, query: nil) }
        var received = drainNotifications(h)
        guard received.isEmpty else { return received }
        let fd = PQsocket(h)
        guard fd >= 0 else { throw connectionError(h, query: nil) }
        let (seconds, attoseconds) = timeout.components
        let ms = max(0, min(Int64(Int32.max), seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let rc = poll(&pfd, 1, Int32(ms))
        if rc > 0 {
            if PQconsumeInput(h) == 0 { throw connectionError(h, query: nil) }
            received = drainNotifications(h)
        }
        return received  // rc == 0: timeout; rc < 0 (EINTR): return early, the caller loops anyway
    }

    private func drainNotifications(_ h: OpaquePointer) -> [PGNotification] {
        var out = [PGNotification]()
        while let n = PQnotifies(h) {
            out.append(
                PGNotification(
                    channel: n.pointee.relname.map { String(cString: $0) } ?? "",
                    payload: n.pointee.extra.map { String(cString: $0) } ?? "", senderPID: n.pointee.be_pid))
            PQfreemem(n)
        }
        return out
    }

    /// A handle that cancels whatever statement this connection is running, from any thread (`PQcancel`).
    /// Make it on the owning thread; it stays valid (and harmless) after the connection is closed.
    public func makeCanceller() throws -> PGCanceller {
        let h = try handle()
        guard let c = PQgetCancel(h) else {
            throw PGError(code: .badResult, message: "libpq could not create a cancel handle")
        }
        return PGCanceller(c)
    }
}

/// Cancels the running statement of one connection; the statement then fails with SQLSTATE 57014 (`queryCanceled`).
///
/// `@unchecked Sendable`: libpq documents `PQcancel` as safe to call from any thread (even a signal handler);
/// the `PGcancel` object is only read by it and freed in `deinit`.
public final class PGCanceller: @unchecked Sendable {
    private let cancelHandle: OpaquePointer

    fileprivate init(_ handle: OpaquePointer) { self.cancelHandle = handle }
    deinit { PQfreeCancel(cancelHandle) }

    /// Asks the server to cancel the current statement. Returns false if the request could not be sent (a
    /// statement that already finished is not an error; nothing happens).
    @discardableResult
    public func cancel() -> Bool {
        var buffer = [CChar](repeating: 0, count: 256)
        return PQcancel(cancelHandle, &buffer, Int32(buffer.count)) == 1
    }
}
