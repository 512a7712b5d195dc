// Guarantee 5: malformed frames, unknown message types and oversize lengths are answered with ERROR, counted,
// and never crash the coordinator. SPEC §6.1.7: an ERROR is never answered with an ERROR, and one peer gets at
// most 10 ERRORs a second.

import Foundation
import Testing
import TesseraProtocol
import ZeroMQ

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct HostileInputTests {
    @Test func garbageFramesGetErrorsAndTheCoordinatorKeepsServing() throws {
        let c = try Cluster(workers: 1)
        defer { c.shutdown() }
        let ctx = try ZMQContext()
        let s = try ZMQSocket(context: ctx, type: .dealer)
        defer {
            s.close()
            ctx.terminate()
        }
        try s.connect(c.endpoint)

        func counters() throws -> [String: Any] {
            let w = try #require(try c.json(["workers"]) as? [String: Any])
            return try #require(w["coordinator"] as? [String: Any])
        }
        /// Every ERROR that arrives within `seconds` (or until `until` of them came).
        func collectErrors(seconds: Double, until: Int = .max) throws -> [ErrorMessage] {
            var out: [ErrorMessage] = []
            let deadline = Date().addingTimeInterval(seconds)
            while out.count < until, Date() < deadline {
                guard try ZMQ.poll([ZMQPollItem(socket: s)], timeoutMilliseconds: 100)[0] else { continue }
                while let reply = try s.receive(dontWait: true) {
                    if case .error(let e) = try WireCodec.decode(WireCodec.splitDealerEnvelope(reply)) { out.append(e) }
                }
            }
            return out
        }

        // Each kind of malformed message is answered with one ERROR carrying the code our decoder gives it (SPEC §8).
        let cases: [[[UInt8]]] = [
            [[]],  // empty header
            [[0x54, 0x53, 0x01, 0x00, 0x63, 0, 0, 0], []],  // unknown type 0x63
            [[0x54, 0x53, 0x09, 0x00, 0x02, 0, 0, 0], []],  // unsupported version 9
            [[0x00, 0x01, 0x02]],  // bad magic
            WireCodec.encode(.heartbeat(Heartbeat())).enumerated().map { $0.offset == 1 ? [0xFF, 0xFF, 0xFF, 0xFF] : $0.element },
        ]
        let codes: [UInt16] = cases.map { frames in
            do throws(ProtocolError) {
                _ = try WireCodec.decode(frames)
                return 0
            } catch { return error.code.wireCode }
        }
        #expect(!codes.contains(0))
        for frames in cases { try s.send([[]] + frames) }
        // No empty delimiter: the envelope itself is wrong (badEnvelope), and the peer is still told.
        try s.send(WireCodec.encode(.heartbeat(Heartbeat())))
        let answered = try collectErrors(seconds: 20, until: cases.count + 1)
        #expect(answered.map(\.code) == codes + [ProtocolError.Code.badEnvelope.wireCode])

        // An ERROR is never answered with an ERROR (SPEC §6.1.7), a valid one or a broken one. Ordering on one
        // connection is kept, so the ping's reply arriving first proves nothing was sent back for them.
        try s.send(WireCodec.encodeForDealer(.error(ErrorMessage(code: 6, message: "you are wrong"))))
        var broken = WireCodec.encode(.error(ErrorMessage(code: 6, message: "x")))
        broken[1].append(0xAA)  // trailing byte
        try s.send([[]] + broken)
        try s.send(WireCodec.encodeForDealer(.request(ClientRequest(requestID: 77, method: "ping", body: Array("{}".utf8)))))
        var first: Message?
        let pingDeadline = Date().addingTimeInterval(20)
        while first == nil, Date() < pingDeadline {
            guard try ZMQ.poll([ZMQPollItem(socket: s)], timeoutMilliseconds: 100)[0] else { continue }
            if let reply = try s.receive(dontWait: true) { first = try WireCodec.decode(WireCodec.splitDealerEnvelope(reply)) }
        }
        guard case .reply(let pong) = try #require(first) else {
            Issue.record("the coordinator answered an ERROR: \(String(describing: first))")
            return
        }
        #expect(pong.requestID == 77)
        // The valid ERROR is counted as received; the broken one as a malformed frame.
        #expect((try counters()["errors_received"] as? Int) == 1)

        // A flood: at most 10 ERRORs per second to one peer; every other malformed message is counted as suppressed.
        Thread.sleep(forTimeInterval: 1.1)  // a fresh one-second window
        let before = try counters()
        var rng = SystemRandomNumberGenerator()
        let flood = 200
        let started = Date()
        for _ in 0..<flood {
            // Bad magic: never a valid message by chance.
            try s.send([[], [0x00] + (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }])
        }
        let flooded = try collectErrors(seconds: 3)
        let elapsed = Date().timeIntervalSince(started)
        let after = try counters()
        let suppressed = (after["errors_suppressed"] as? Int ?? 0) - (before["errors_suppressed"] as? Int ?? 0)
        #expect(flooded.count >= 10)
        #expect(Double(flooded.count) <= 10 * (elapsed.rounded(.up) + 1), "\(flooded.count) ERRORs in \(elapsed) s")
        #expect(flooded.count + suppressed == flood)

        // Still serving: a real job runs and the counters saw the garbage.
        let job = try c.submit(text: ringSpec(shards: 1, samples: 4096, keep: false))
        #expect(try c.cli(["wait", String(job), "--timeout", "120"]).status == 0)
        #expect((try counters()["malformed_frames"] as? Int ?? 0) >= flood + cases.count)
    }
}
