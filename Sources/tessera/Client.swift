// The CLI's connection to the coordinator: one DEALER socket, one request at a time, a deadline per request.

import Foundation
import TesseraCore
import TesseraProtocol
import ZeroMQ

struct CLIError: Error, CustomStringConvertible {
    var message: String
    var exitCode: Int32 = 1
    init(_ message: String, exitCode: Int32 = 1) {
        self.message = message
        self.exitCode = exitCode
    }
    var description: String { message }
}

final class CoordinatorClient {
    let endpoint: String
    let context: ZMQContext
    let socket: ZMQSocket
    var nextID: UInt64 = 1
    let timeout: Double

    let keys: ClientKeys?

    init(endpoint: String, timeout: Double = 10, keys: ClientKeys? = nil) throws {
        self.endpoint = endpoint
        self.timeout = timeout
        self.keys = keys
        let endpoints = ZMQ.endpointList(endpoint)
        waitsForConnection = endpoints.count > 1
        context = try ZMQContext(ioThreads: 1)
        socket = try ZMQSocket(context: context, type: .dealer)
        try socket.setLinger(milliseconds: 0)
        try socket.setMaxMessageSize(Int64(WireCodec.limits.maxMessageBytes))
        if let keys {
            try socket.setCurveClient(serverPublicKey: keys.coordinatorPublicKey, keys: keys.keyPair)
        }
        // Several endpoints (an active coordinator and standbys, comma-separated): connect to all, and let a request
        // go only over a completed connection (ZMQ_IMMEDIATE). Only the active coordinator binds, so that is where
        // it goes.
        if endpoints.count > 1 { try socket.setImmediate(true) }
        for e in endpoints {
            do {
                try socket.connect(e)
            } catch {
                throw CLIError("cannot connect to the coordinator at \(e): \(error)", exitCode: 3)
            }
        }
    }

    private let waitsForConnection: Bool

    deinit {
        socket.close()
        context.terminate()
    }

    /// Sends `method` with a JSON body; returns the reply body (and blob). Non-zero status throws with the
    /// coordinator's message.
    func call(_ method: String, _ body: JSONObject = [:], timeout: Double? = nil) throws -> (body: JSONValue, blob: [UInt8]) {
        let id = nextID
        nextID += 1
        let request = ClientRequest(requestID: id, method: method, body: JSONValue.object(body).utf8Bytes)
        let deadline = Date().addingTimeInterval(timeout ?? self.timeout)
        if waitsForConnection {
            // Writable once a connection to one of the endpoints is complete.
            while Date() < deadline,
                try !ZMQ.pollEvents([ZMQPollItem(socket: socket, readable: false, writable: true)], timeoutMilliseconds: 100)[0].writable
            {}
        }
        guard try socket.send(WireCodec.encodeForDealer(.request(request)), dontWait: true) else {
            throw CLIError(
                "cannot reach the coordinator at \(endpoint) within \(Int(timeout ?? self.timeout)) s "
                    + "(is `tessera coordinator` running? set --coordinator or TESSERA_COORDINATOR)", exitCode: 3)
        }
        while Date() < deadline {
            let ms = max(1, Int(deadline.timeIntervalSinceNow * 1000))
            guard try ZMQ.poll([ZMQPollItem(socket: socket)], timeoutMilliseconds: min(ms, 200))[0] else { continue }
            guard let frames = try socket.receive(dontWait: true) else { continue }
            let message: Message
            do {
                message = try WireCodec.decode(WireCodec.splitDealerEnvelope(frames))
            } catch {
                throw CLIError("malformed reply from the coordinator: \(error)")
            }
            switch message {
            case .reply(let r) where r.requestID == id:
                let body = (try? JSONValue.parse(r.body)) ?? .object([:])
                guard r.status == 0 else {
                    let text = body["error"]?.stringValue ?? "error \(r.status)"
                    throw CLIError(text, exitCode: r.status == WireStatus.notFound ? 4 : 1)
                }
                return (body, r.blob)
            case .error(let e):
                throw CLIError("the coordinator rejected the request: \(e.message)")
            default:
                continue  // a stale reply or a heartbeat: ignore
            }
        }
        throw CLIError(
            "no answer from the coordinator at \(endpoint) within \(Int(timeout ?? self.timeout)) s "
                + "(is `tessera coordinator` or `tessera dev` running? set --coordinator or TESSERA_COORDINATOR"
                + (keys == nil
                    ? "; a coordinator off loopback needs keys: --keys-dir or TESSERA_KEYS_DIR)"
                    : "; is this machine's client.key on the coordinator's allow-list, and its coordinator.key current?)"),
            exitCode: 3
        )
    }
}
