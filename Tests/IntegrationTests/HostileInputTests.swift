// Guarantee 5: malformed frames, unknown message types and oversize lengths are answered with ERROR, counted,
// and never crash the coordinator.

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

        var rng = SystemRandomNumberGenerator()
        var sent = 0
        var errors = 0
        let cases: [[[UInt8]]] = [
            [[]],  // empty header
            [[0x54, 0x53, 0x01, 0x00, 0x63, 0, 0, 0], []],  // unknown type 0x63
            [[0x54, 0x53, 0x09, 0x00, 0x02, 0, 0, 0], []],  // unsupported version 9
            [[0x00, 0x01, 0x02]],  // bad magic, truncated
            WireCodec.encode(.heartbeat(Heartbeat())).enumerated().map { $0.offset == 1 ? [0xFF, 0xFF, 0xFF, 0xFF] : $0.element },
        ] + (0..<200).map { _ in
            (0..<Int.random(in: 1...4, using: &rng)).map { _ in (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) } }
        }
        for frames in cases {
            try s.send([[]] + frames)
            sent += 1
        }
        // Collect the replies: every malformed message is answered with one ERROR.
        let deadline = Date().addingTimeInterval(20)
        while errors < cases.count, Date() < deadline {
            guard try ZMQ.poll([ZMQPollItem(socket: s)], timeoutMilliseconds: 200)[0] else { continue }
            while let reply = try s.receive(dontWait: true) {
                let m = try WireCodec.decode(WireCodec.splitDealerEnvelope(reply))
                if case .error = m { errors += 1 }
            }
        }
        // Random frames can by chance be valid messages from an unregistered peer; those get ERROR notReady too.
        #expect(errors == sent, "\(errors) errors for \(sent) hostile messages")

        // Still serving: a real job runs and the counters saw the garbage.
        let job = try c.submit(text: ringSpec(shards: 1, samples: 4096, keep: false))
        #expect(try c.cli(["wait", String(job), "--timeout", "120"]).status == 0)
        let w = try #require(try c.json(["workers"]) as? [String: Any])
        let counters = try #require(w["coordinator"] as? [String: Any])
        #expect((counters["malformed_frames"] as? Int ?? 0) >= 5)
    }
}
