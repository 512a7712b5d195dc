internal import CZeroMQ

public enum ZMQSocketType: Sendable {
    case router, dealer, pair, pub, sub, push, pull

    var raw: Int32 {
        switch self {
        case .router: ZMQ_ROUTER
        case .dealer: ZMQ_DEALER
        case .pair: ZMQ_PAIR
        case .pub: ZMQ_PUB
        case .sub: ZMQ_SUB
        case .push: ZMQ_PUSH
        case .pull: ZMQ_PULL
        }
    }
}

/// A libzmq socket.
///
/// Owned by exactly one thread at a time (libzmq sockets are not thread-safe); @unchecked Sendable only so it
/// can be handed to the thread that owns it. The owner must call `close()` (idempotent) before dropping it;
/// `deinit` asserts that it did. Using a closed socket is a programmer error and traps.
public final class ZMQSocket: @unchecked Sendable {
    private var handle: UnsafeMutableRawPointer?
    /// One message struct reused for every frame: a stable heap address, as libzmq requires.
    private let message: UnsafeMutablePointer<zmq_msg_t>
    /// Keeps the context alive while the socket exists.
    public let context: ZMQContext
    public let type: ZMQSocketType

    public init(context: ZMQContext, type: ZMQSocketType) throws {
        handle = try context.makeSocket(type.raw)
        message = .allocate(capacity: 1)
        self.context = context
        self.type = type
    }

    deinit {
        assert(handle == nil, "ZMQSocket dropped without close()")
        if let handle { _ = zmq_close(handle) }  // release builds: do not leak the socket, or ctx term would hang
        message.deallocate()
    }

    private var raw: UnsafeMutableRawPointer {
        guard let handle else { preconditionFailure("ZMQSocket used after close()") }
        return handle
    }

    /// Whether `close()` has been called.
    public var isClosed: Bool { handle == nil }

    /// Closes the socket (zmq_close). Idempotent. Pending outbound messages follow the linger setting.
    public func close() {
        guard let handle else { return }
        _ = zmq_close(handle)
        self.handle = nil
    }

    // MARK: Endpoints

    public func bind(_ endpoint: String) throws {
        let s = raw
        _ = try zmqCall("zmq_bind \(endpoint)") { endpoint.withCString { zmq_bind(s, $0) } }
    }

    public func connect(_ endpoint: String) throws {
        let s = raw
        _ = try zmqCall("zmq_connect \(endpoint)") { endpoint.withCString { zmq_connect(s, $0) } }
    }

    public func unbind(_ endpoint: String) throws {
        let s = raw
        _ = try zmqCall("zmq_unbind \(endpoint)") { endpoint.withCString { zmq_unbind(s, $0) } }
    }

    public func disconnect(_ endpoint: String) throws {
        let s = raw
        _ = try zmqCall("zmq_disconnect \(endpoint)") { endpoint.withCString { zmq_disconnect(s, $0) } }
    }

    /// ZMQ_LAST_ENDPOINT: the resolved address of the last bind, e.g. "tcp://127.0.0.1:41234" after binding
    /// "tcp://127.0.0.1:*".
    public var lastEndpoint: String {
        get throws {
            let s = raw
            var buffer = [CChar](repeating: 0, count: 1024)
            var length = buffer.count
            _ = try zmqCall("zmq_getsockopt ZMQ_LAST_ENDPOINT") {
                buffer.withUnsafeMutableBytes { zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, $0.baseAddress, &length) }
            }
            // length includes the NUL terminator; never trust it beyond our buffer.
            let n = max(0, min(length, buffer.count) - 1)
            return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    // MARK: Options

    func setOptionInt32(_ option: Int32, _ name: String, _ value: Int32) throws {
        try setOption(option, name, value)
    }

    func setOptionBytes(_ option: Int32, _ name: String, _ value: [UInt8]) throws {
        try setOption(option, name, bytes: value)
    }

    private func setOption(_ option: Int32, _ name: String, _ value: Int32) throws {
        let s = raw
        var v = value
        _ = try zmqCall("zmq_setsockopt \(name)") { zmq_setsockopt(s, option, &v, MemoryLayout<Int32>.size) }
    }

    private func setOption(_ option: Int32, _ name: String, _ value: Int64) throws {
        let s = raw
        var v = value
        _ = try zmqCall("zmq_setsockopt \(name)") { zmq_setsockopt(s, option, &v, MemoryLayout<Int64>.size) }
    }

    private func setOption(_ option: Int32, _ name: String, bytes: [UInt8]) throws {
        let s = raw
        _ = try zmqCall("zmq_setsockopt \(name)") {
            bytes.withUnsafeBytes { zmq_setsockopt(s, option, $0.baseAddress, $0.count) }
        }
    }

    /// ZMQ_LINGER: how long close/terminate wait for unsent messages (-1 forever, 0 drop; default here 0).
    public func setLinger(milliseconds: Int32) throws { try setOption(ZMQ_LINGER, "ZMQ_LINGER", milliseconds) }

    public func setSendHighWaterMark(_ n: Int32) throws { try setOption(ZMQ_SNDHWM, "ZMQ_SNDHWM", n) }

    public func setReceiveHighWaterMark(_ n: Int32) throws { try setOption(ZMQ_RCVHWM, "ZMQ_RCVHWM", n) }

    /// ZMQ_ROUTER_MANDATORY: sending to an unknown identity throws `ZMQError.isHostUnreachable` instead of
    /// silently dropping the message.
    public func setRouterMandatory(_ on: Bool) throws {
        try setOption(ZMQ_ROUTER_MANDATORY, "ZMQ_ROUTER_MANDATORY", Int32(on ? 1 : 0))
    }

    /// ZMQ_ROUTING_ID (identity) for DEALER/ROUTER peers; 1...255 bytes, not starting with a zero byte. Set it
    /// before connect.
    public func setIdentity(_ bytes: [UInt8]) throws { try setOption(ZMQ_ROUTING_ID, "ZMQ_ROUTING_ID", bytes: bytes) }

    /// ZMQ_RECONNECT_IVL and ZMQ_RECONNECT_IVL_MAX (exponential backoff up to `max`; 0 = no backoff).
    public func setReconnectInterval(milliseconds: Int32, max: Int32) throws {
        try setOption(ZMQ_RECONNECT_IVL, "ZMQ_RECONNECT_IVL", milliseconds)
        try setOption(ZMQ_RECONNECT_IVL_MAX, "ZMQ_RECONNECT_IVL_MAX", max)
    }

    /// ZMQ_MAXMSGSIZE: a peer sending a larger frame is disconnected (-1 = no limit).
    public func setMaxMessageSize(_ bytes: Int64) throws { try setOption(ZMQ_MAXMSGSIZE, "ZMQ_MAXMSGSIZE", bytes) }

    /// ZMQ_SNDTIMEO: a blocking send that times out returns false, as with `dontWait` (-1 = forever).
    public func setSendTimeout(milliseconds: Int32) throws { try setOption(ZMQ_SNDTIMEO, "ZMQ_SNDTIMEO", milliseconds) }

    /// ZMQ_RCVTIMEO: a blocking receive that times out returns nil, as with `dontWait` (-1 = forever).
    public func setReceiveTimeout(milliseconds: Int32) throws {
        try setOption(ZMQ_RCVTIMEO, "ZMQ_RCVTIMEO", milliseconds)
    }

    /// ZMQ_IMMEDIATE: queue messages only to completed connections.
    public func setImmediate(_ on: Bool) throws { try setOption(ZMQ_IMMEDIATE, "ZMQ_IMMEDIATE", Int32(on ? 1 : 0)) }

    /// ZMQ_SUBSCRIBE on a SUB socket (empty prefix = everything).
    public func subscribe(_ prefix: [UInt8] = []) throws { try setOption(ZMQ_SUBSCRIBE, "ZMQ_SUBSCRIBE", bytes: prefix) }

    // MARK: Messages

    /// Sends all frames as one multipart message. Returns false when the send would block (EAGAIN) with dontWait; throws ZMQError otherwise (e.g. EHOSTUNREACH with router-mandatory).
    @discardableResult
    public func send(_ frames: [[UInt8]], dontWait: Bool = false) throws -> Bool {
        let s = raw
        guard !frames.isEmpty else { throw ZMQError(errno: EINVAL, operation: "send: a message needs at least one frame") }
        let msg = message
        for (i, frame) in frames.enumerated() {
            let more = i < frames.count - 1
            var flags: Int32 = more ? ZMQ_SNDMORE : 0
            // libzmq delivers multipart messages atomically: once the first frame is queued the rest will be,
            // so only the first frame may report "would block"; later ones are sent blocking.
            if dontWait && i == 0 { flags |= ZMQ_DONTWAIT }
            while true {
                try initMessage(msg, copying: frame)
                let sent: Int32?
                do {
                    sent = try zmqCall("zmq_msg_send") { zmq_msg_send(msg, s, flags) }
                } catch {
                    zmq_msg_close(msg)
                    throw error
                }
                if sent != nil { break }  // libzmq now owns the content; msg is empty
                zmq_msg_close(msg)
                if i == 0 { return false }  // EAGAIN before anything was queued (dontWait or ZMQ_SNDTIMEO)
                flags &= ~ZMQ_DONTWAIT
            }
        }
        return true
    }

    private func initMessage(_ msg: UnsafeMutablePointer<zmq_msg_t>, copying frame: [UInt8]) throws(ZMQError) {
        guard zmq_msg_init_size(msg, frame.count) == 0 else {
            throw ZMQError(errno: zmq_errno(), operation: "zmq_msg_init_size")
        }
        if !frame.isEmpty, let dst = zmq_msg_data(msg) {
            frame.withUnsafeBytes { src in dst.copyMemory(from: src.baseAddress!, byteCount: src.count) }
        }
    }

    /// Receives one whole multipart message; nil when dontWait and nothing is ready.
    public func receive(dontWait: Bool = false) throws -> [[UInt8]]? {
        try receiveMessage(dontWait: dontWait, userID: false)?.frames
    }

    /// Receives one whole multipart message with its connection's ZAP user id (zmq_msg_gets "User-Id": what the
    /// ZAP handler answered when the peer's connection was authenticated; nil on unauthenticated connections).
    public func receiveWithUserID(dontWait: Bool = false) throws -> (frames: [[UInt8]], userID: String?)? {
        try receiveMessage(dontWait: dontWait, userID: true)
    }

    private func receiveMessage(dontWait: Bool, userID wantsUserID: Bool) throws -> (frames: [[UInt8]], userID: String?)? {
        let s = raw
        let msg = message
        var frames: [[UInt8]] = []
        var userID: String?
        while true {
            guard zmq_msg_init(msg) == 0 else { throw ZMQError(errno: zmq_errno(), operation: "zmq_msg_init") }
            // Once the first frame has arrived the rest of the message is already here: wait for it.
            let flags: Int32 = (dontWait && frames.isEmpty) ? ZMQ_DONTWAIT : 0
            let received: Int32?
            do {
                received = try zmqCall("zmq_msg_recv") { zmq_msg_recv(msg, s, flags) }
            } catch {
                zmq_msg_close(msg)
                throw error
            }
            guard received != nil else {
                zmq_msg_close(msg)
                if frames.isEmpty { return nil }  // dontWait or ZMQ_RCVTIMEO
                continue
            }
            let size = zmq_msg_size(msg)  // authoritative length of the data libzmq holds
            if size > 0, let data = zmq_msg_data(msg) {
                frames.append(Array(UnsafeRawBufferPointer(start: data, count: size)))
            } else {
                frames.append([])
            }
            let more = zmq_msg_more(msg) != 0
            // A ROUTER's identity frame is made locally; the frames that came off the wire carry the connection's
            // metadata, so the last frame is the one to ask.
            if wantsUserID, !more, let p = zmq_msg_gets(msg, "User-Id") { userID = String(cString: p) }
            zmq_msg_close(msg)
            if !more { return (frames, userID) }
        }
    }

    /// For ZMQ.poll: the raw handle (traps if closed).
    var pollHandle: UnsafeMutableRawPointer { raw }
}
