// The ZeroMQ Authentication Protocol (ZAP, RFC 27) handler: libzmq asks it, over inproc://zeromq.zap.01 in the
// socket's own context, whether each new CURVE connection may proceed; it answers 200 (with a user id that every
// message from that connection then carries, see `ZMQSocket.receiveWithUserID`) or 400.
//
// libzmq 4.3 without draft APIs lets every CURVE handshake through when no handler is bound, so the handler must be
// bound before the server socket binds and must live as long as it: `ZAPHandler.init` throws if it cannot bind, and
// the owner serves it from the same thread and poll loop as the server socket.

internal import CZeroMQ

/// One ZAP request and the handler's answer.
public struct ZAPRequest: Sendable, Equatable {
    public var requestID: [UInt8]
    public var domain: String
    /// The peer's IP address as libzmq reports it.
    public var address: String
    public var mechanism: String
    /// For CURVE: the client's public key, Z85.
    public var publicKey: String?
}

public final class ZAPHandler {
    public static let endpoint = "inproc://zeromq.zap.01"

    public let socket: ZMQSocket

    /// Binds the handler in `context`. Throws if it cannot (e.g. another handler is already bound there).
    public init(context: ZMQContext) throws {
        socket = try ZMQSocket(context: context, type: .router)
        do {
            try socket.setLinger(milliseconds: 0)
            try socket.bind(Self.endpoint)
        } catch {
            socket.close()
            throw error
        }
    }

    public func close() { socket.close() }

    /// Answers every pending request: `decide` says whether the peer may connect and, if so, its user id.
    /// Returns the requests with their decisions (for logging and counting). Never blocks.
    @discardableResult
    public func serve(_ decide: (ZAPRequest) -> String?) throws -> [(ZAPRequest, allowed: Bool)] {
        var answered: [(ZAPRequest, allowed: Bool)] = []
        while let frames = try socket.receive(dontWait: true) {
            guard let (envelope, request) = Self.parse(frames) else { continue }  // not ZAP: libzmq never sends that
            let userID = decide(request)
            try socket.send(envelope + Self.reply(to: request, userID: userID), dontWait: true)
            answered.append((request, userID != nil))
        }
        return answered
    }

    /// Splits a request received on the ROUTER into its return envelope and the request (RFC 27: version "1.0",
    /// request id, domain, address, identity, mechanism, credentials…). Nil for anything else.
    public static func parse(_ frames: [[UInt8]]) -> (envelope: [[UInt8]], ZAPRequest)? {
        guard let delimiter = frames.firstIndex(where: \.isEmpty) else { return nil }
        let envelope = Array(frames[...delimiter])
        let body = Array(frames[(delimiter + 1)...])
        guard body.count >= 6, body[0] == Array("1.0".utf8) else { return nil }
        let text = { (i: Int) in String(decoding: body[i], as: UTF8.self) }
        let mechanism = text(5)
        var publicKey: String?
        if mechanism == "CURVE" {
            guard body.count >= 7, body[6].count == 32 else { return nil }
            publicKey = ZMQ.z85Encode(body[6])
        }
        return (envelope, ZAPRequest(requestID: body[1], domain: text(2), address: text(3), mechanism: mechanism, publicKey: publicKey))
    }

    /// The reply frames (without envelope): 200 with the user id, or 400.
    public static func reply(to request: ZAPRequest, userID: String?) -> [[UInt8]] {
        let (code, text) = userID != nil ? ("200", "OK") : ("400", "key not authorized")
        return [Array("1.0".utf8), request.requestID, Array(code.utf8), Array(text.utf8), Array((userID ?? "").utf8), []]
    }
}
