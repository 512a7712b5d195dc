internal import CZeroMQ
import Foundation
import Synchronization

/// A libzmq context. libzmq documents contexts as thread-safe; the handle itself sits behind a Mutex so
/// `terminate()` and socket creation from different threads cannot race.
///
/// Sockets keep their context alive. Close every socket (on its owning thread) before `terminate()`, which
/// blocks until they are closed (zmq_ctx_term). Sockets default to linger 0 (the context is created with
/// ZMQ_BLOCKY = 0), so termination never hangs on unsent messages; call `ZMQSocket.setLinger` to flush.
public final class ZMQContext: @unchecked Sendable {
    private struct Handle: @unchecked Sendable { var raw: UnsafeMutableRawPointer? }
    private let handle: Mutex<Handle>

    public init(ioThreads: Int = 1) throws {
        guard let raw = zmq_ctx_new() else {
            throw ZMQError(errno: zmq_errno(), operation: "zmq_ctx_new")
        }
        let threads = Int32(clamping: max(ioThreads, 0))
        if zmq_ctx_set(raw, ZMQ_IO_THREADS, threads) != 0 || zmq_ctx_set(raw, ZMQ_BLOCKY, 0) != 0 {
            let e = zmq_errno()
            _ = zmq_ctx_term(raw)
            throw ZMQError(errno: e, operation: "zmq_ctx_set")
        }
        handle = Mutex(Handle(raw: raw))
    }

    /// Whether `terminate()` has been called.
    public var isTerminated: Bool { handle.withLock { $0.raw == nil } }

    /// Creates a libzmq socket while holding the lock, so the context cannot be freed under it.
    func makeSocket(_ type: Int32) throws(ZMQError) -> UnsafeMutableRawPointer {
        let result: Result<UnsafeMutableRawPointer, ZMQError> = handle.withLock { h in
            guard let raw = h.raw else { return .failure(ZMQError(errno: ETERM, operation: "zmq_socket")) }
            guard let socket = zmq_socket(raw, type) else {
                return .failure(ZMQError(errno: zmq_errno(), operation: "zmq_socket"))
            }
            return .success(socket)
        }
        return try result.get()
    }

    /// Terminates the context: blocking calls on its sockets fail with ETERM (`ZMQError.isTerminated`), and
    /// this call returns once every socket is closed. Idempotent.
    public func terminate() {
        let raw = handle.withLock { h in
            defer { h.raw = nil }
            return h.raw
        }
        guard let raw else { return }
        while zmq_ctx_term(raw) != 0 && zmq_errno() == EINTR {}
    }

    deinit {
        // Every socket holds a strong reference, so all are gone (closed) by now: this cannot block.
        if let raw = handle.withLock({ $0.raw }) {
            while zmq_ctx_term(raw) != 0 && zmq_errno() == EINTR {}
        }
    }
}

extension ZMQ {
    /// A comma-separated list of endpoints (an active coordinator and its standbys), trimmed, empties dropped;
    /// the text itself if it holds none.
    public static func endpointList(_ text: String) -> [String] {
        let list = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return list.isEmpty ? [text] : list
    }
}
