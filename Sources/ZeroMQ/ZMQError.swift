internal import CZeroMQ

/// A failed libzmq call: the `zmq_errno()` value and the operation that failed. EAGAIN never becomes an
/// error (sends return false, receives return nil) and EINTR is retried, so what remains is worth handling.
public struct ZMQError: Error, CustomStringConvertible, Sendable, Hashable {
    public let errno: Int32
    public let operation: String

    public init(errno: Int32, operation: String) {
        self.errno = errno
        self.operation = operation
    }

    /// The context was terminated (ETERM): the owning thread should close its sockets and stop.
    public var isTerminated: Bool { errno == ETERM }
    /// ROUTER with router-mandatory: no peer with that identity is connected (EHOSTUNREACH).
    public var isHostUnreachable: Bool { errno == EHOSTUNREACH }
    /// A send or receive timed out or would block. Only surfaces from `poll`-less helpers; `send`/`receive` map it.
    public var isWouldBlock: Bool { errno == EAGAIN }

    public var description: String {
        let text = zmq_strerror(errno).map { String(cString: $0) } ?? "unknown error"
        return "ZMQError(\(operation)): \(text) (errno \(errno))"
    }
}

/// The one choke point for libzmq return codes: retries EINTR, returns nil for EAGAIN, throws the rest.
@inline(__always)
func zmqCall(_ operation: @autoclosure () -> String, _ body: () -> Int32) throws(ZMQError) -> Int32? {
    while true {
        let rc = body()
        if rc >= 0 { return rc }
        let e = zmq_errno()
        switch e {
        case EINTR: continue
        case EAGAIN: return nil
        case EFAULT: preconditionFailure("libzmq EFAULT in \(operation()): invalid socket or message pointer")
        default: throw ZMQError(errno: e, operation: operation())
        }
    }
}
