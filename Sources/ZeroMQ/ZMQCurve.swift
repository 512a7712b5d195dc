internal import CZeroMQ

/// A CURVE key pair in Z85 text form (40 characters each), as written to key files.
public struct ZMQCurveKeyPair: Sendable, Hashable {
    public var publicKey: String
    public var secretKey: String
    public init(publicKey: String, secretKey: String) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }
}

extension ZMQ {
    /// Whether libzmq was built with a capability ("curve", "ipc", "draft", ...).
    public static func has(_ capability: String) -> Bool {
        capability.withCString { zmq_has($0) } != 0
    }

    /// A fresh CURVE key pair (zmq_curve_keypair). Throws ENOTSUP when libzmq has no CURVE.
    public static func curveKeyPair() throws -> ZMQCurveKeyPair {
        var publicKey = [CChar](repeating: 0, count: 41)
        var secretKey = [CChar](repeating: 0, count: 41)
        let rc = publicKey.withUnsafeMutableBufferPointer { p in
            secretKey.withUnsafeMutableBufferPointer { s in zmq_curve_keypair(p.baseAddress, s.baseAddress) }
        }
        guard rc == 0 else { throw ZMQError(errno: zmq_errno(), operation: "zmq_curve_keypair") }
        return ZMQCurveKeyPair(publicKey: z85Text(publicKey), secretKey: z85Text(secretKey))
    }

    /// The public key belonging to a secret key (zmq_curve_public), both Z85. Throws EINVAL for a malformed key.
    public static func curvePublicKey(secretKey: String) throws -> String {
        guard isZ85Key(secretKey) else { throw ZMQError(errno: EINVAL, operation: "curve secret key: not 40 Z85 characters") }
        var publicKey = [CChar](repeating: 0, count: 41)
        let rc = publicKey.withUnsafeMutableBufferPointer { p in secretKey.withCString { zmq_curve_public(p.baseAddress, $0) } }
        guard rc == 0 else { throw ZMQError(errno: zmq_errno(), operation: "zmq_curve_public") }
        return z85Text(publicKey)
    }

    /// Z85 text of 32 key bytes (zmq_z85_encode), e.g. the credentials of a CURVE ZAP request.
    public static func z85Encode(_ bytes: [UInt8]) -> String? {
        guard bytes.count % 4 == 0 else { return nil }
        var text = [CChar](repeating: 0, count: bytes.count * 5 / 4 + 1)
        let ok = text.withUnsafeMutableBufferPointer { t in
            bytes.withUnsafeBufferPointer { zmq_z85_encode(t.baseAddress, $0.baseAddress, $0.count) }
        } != nil
        return ok ? z85Text(text, count: bytes.count * 5 / 4) : nil
    }

    /// Whether `key` has the form of a Z85 CURVE key: 40 characters of the Z85 alphabet.
    public static func isZ85Key(_ key: String) -> Bool {
        key.utf8.count == 40 && key.utf8.allSatisfy { z85Alphabet.contains($0) }
    }

    private static let z85Alphabet = Set(
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#".utf8)

    private static func z85Text(_ key: [CChar], count: Int = 40) -> String {
        String(decoding: key.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension ZMQSocket {
    private func setCurveKey(_ option: Int32, _ name: String, _ z85: String) throws {
        // A Z85 key option takes 41 bytes: 40 characters and a NUL.
        guard z85.utf8.count == 40 else { throw ZMQError(errno: EINVAL, operation: "\(name): key must be 40 Z85 characters") }
        try setOptionBytes(option, name, Array(z85.utf8) + [0])
    }

    /// Makes this socket a CURVE server with its secret key (Z85). Set before bind.
    public func setCurveServer(secretKey: String) throws {
        try setOptionInt32(ZMQ_CURVE_SERVER, "ZMQ_CURVE_SERVER", 1)
        try setCurveKey(ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", secretKey)
    }

    /// Makes this socket a CURVE client of the server with `serverPublicKey`, using its own key pair (Z85).
    /// Set before connect.
    public func setCurveClient(serverPublicKey: String, keys: ZMQCurveKeyPair) throws {
        try setCurveKey(ZMQ_CURVE_SERVERKEY, "ZMQ_CURVE_SERVERKEY", serverPublicKey)
        try setCurveKey(ZMQ_CURVE_PUBLICKEY, "ZMQ_CURVE_PUBLICKEY", keys.publicKey)
        try setCurveKey(ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", keys.secretKey)
    }

    /// ZMQ_ZAP_DOMAIN: the domain passed to the ZAP handler (a ROUTER bound to inproc://zeromq.zap.01).
    public func setZAPDomain(_ domain: String) throws {
        try setOptionBytes(ZMQ_ZAP_DOMAIN, "ZMQ_ZAP_DOMAIN", Array(domain.utf8))
    }
}

/// Handshake failures a socket reports through zmq_socket_monitor: a peer that speaks another security mechanism
/// (plaintext against CURVE) or whose CURVE handshake cannot be decrypted (it holds a wrong server key). Libzmq
/// drops such connections before any message; this is how their owner gets to see and count them.
public final class ZMQHandshakeMonitor {
    public struct Failure: Sendable, Equatable {
        /// ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL, _PROTOCOL or _AUTH.
        public var event: UInt16
        /// The errno or protocol error code libzmq reports.
        public var value: UInt32
        /// The connection's endpoint as libzmq reports it (the local side for a bound socket).
        public var endpoint: String
        public var kind: String {
            switch Int32(event) {
            case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol"
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: "auth"
            default: "no detail"
            }
        }
    }

    public let socket: ZMQSocket

    /// Starts monitoring `target`'s handshake failures on a PAIR socket in the same context.
    public init(_ target: ZMQSocket, name: String) throws {
        let endpoint = "inproc://\(name)"
        let events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
        let handle = target.pollHandle
        _ = try zmqCall("zmq_socket_monitor") { endpoint.withCString { zmq_socket_monitor(handle, $0, events) } }
        socket = try ZMQSocket(context: target.context, type: .pair)
        do {
            try socket.setLinger(milliseconds: 0)
            try socket.connect(endpoint)
        } catch {
            socket.close()
            throw error
        }
    }

    public func close() { socket.close() }

    /// The failures reported since the last call. Never blocks.
    public func take() throws -> [Failure] {
        var out: [Failure] = []
        while let frames = try socket.receive(dontWait: true) {
            guard frames.count >= 2, frames[0].count >= 6 else { continue }
            let f = frames[0]
            let event = UInt16(f[0]) | UInt16(f[1]) << 8
            let value = UInt32(f[2]) | UInt32(f[3]) << 8 | UInt32(f[4]) << 16 | UInt32(f[5]) << 24
            out.append(Failure(event: event, value: value, endpoint: String(decoding: frames[1], as: UTF8.self)))
        }
        return out
    }
}
