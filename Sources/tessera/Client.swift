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

    init(endpoint: String, timeout: Double = 10) throws {
        self.endpoint = endpoint
        self.timeout = timeout
        context = try ZMQContext(ioThreads: 1)
        socket = try ZMQSocket(context: context, type: .dealer)
        try socket.setLinger(milliseconds: 0)
        try socket.setMaxMessageSize(Int64(WireCodec.limits.maxMessageBytes))
        do {
            try socket.connect(endpoint)
        } catch {
            throw CLIError("cannot connect to the coordinator at \(endpoint): \(error)", exitCode: 3)
        }
    }

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
        guard try socket.send(WireCodec.encodeForDealer(.request(request)), dontWait: true) else {
            throw CLIError("cannot send to the coordinator at \(endpoint)", exitCode: 3)
        }
        let deadline = Date().addingTimeInterval(timeout ?? self.timeout)
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
                + "(is `tessera coordinator` or `tessera dev` running? set --coordinator or TESSERA_COORDINATOR)",
            exitCode: 3
        )
    }
}
