import Foundation
import Testing
import ZeroMQ

/// Creates a context and sockets for one test and tears them down in the right order (sockets first).
private final class Fixture {
    let context: ZMQContext
    private var sockets: [ZMQSocket] = []

    init() throws { context = try ZMQContext() }

    func socket(_ type: ZMQSocketType) throws -> ZMQSocket {
        let s = try ZMQSocket(context: context, type: type)
        sockets.append(s)
        return s
    }

    deinit {
        for s in sockets { s.close() }
        context.terminate()
    }
}

/// Receives with a deadline so a broken test fails instead of hanging.
private func receive(_ socket: ZMQSocket, timeoutMilliseconds: Int = 5000) throws -> [[UInt8]]? {
    let ready = try ZMQ.poll([ZMQPollItem(socket: socket)], timeoutMilliseconds: timeoutMilliseconds)
    guard ready[0] else { return nil }
    return try socket.receive(dontWait: true)
}

@Suite struct ZeroMQTests {
    @Test func version() {
        let (major, minor, _) = ZMQ.version
        #expect(major == 4)
        #expect(minor >= 3)
    }

    @Test(arguments: ["inproc://zmq-test-router-dealer", "tcp://127.0.0.1:*"])
    func routerDealerMultipartRoundTrip(endpoint: String) throws {
        let f = try Fixture()
        let router = try f.socket(.router)
        try router.setRouterMandatory(true)
        try router.bind(endpoint)
        let bound = try router.lastEndpoint
        if endpoint.hasPrefix("tcp") {
            #expect(bound.hasPrefix("tcp://127.0.0.1:"))
            #expect(!bound.hasSuffix(":*"))
        }
        let dealer = try f.socket(.dealer)
        try dealer.setIdentity(Array("worker-1".utf8))
        try dealer.connect(bound)

        let frames: [[UInt8]] = [[], [0x54, 0x53, 1, 0], [], Array("body".utf8), [0, 255, 0]]
        #expect(try dealer.send(frames))
        let got = try #require(try receive(router))
        #expect(got == [Array("worker-1".utf8)] + frames)

        // Reply through the identity: the dealer sees the frames without it.
        #expect(try router.send([Array("worker-1".utf8), [], Array("reply".utf8)]))
        let reply = try #require(try receive(dealer))
        #expect(reply == [[], Array("reply".utf8)])
    }

    @Test func routerMandatoryUnroutableThrowsHostUnreachable() throws {
        let f = try Fixture()
        let router = try f.socket(.router)
        try router.setRouterMandatory(true)
        try router.bind("inproc://zmq-test-mandatory")
        do {
            try router.send([Array("nobody".utf8), [], [1, 2, 3]])
            Issue.record("send to an unknown identity should throw")
        } catch let error as ZMQError {
            #expect(error.isHostUnreachable)
            #expect(!error.isTerminated)
            #expect(error.description.contains("zmq_msg_send"))
        }
    }

    @Test func dontWaitReceiveReturnsNil() throws {
        let f = try Fixture()
        let pull = try f.socket(.pull)
        try pull.bind("inproc://zmq-test-nowait")
        #expect(try pull.receive(dontWait: true) == nil)
    }

    @Test func dontWaitSendWithoutPeerReturnsFalse() throws {
        let f = try Fixture()
        let dealer = try f.socket(.dealer)
        // No connection at all: a DEALER has no pipe, so the send would block.
        #expect(try dealer.send([[1]], dontWait: true) == false)
    }

    @Test func receiveTimeoutReturnsNil() throws {
        let f = try Fixture()
        let pull = try f.socket(.pull)
        try pull.setReceiveTimeout(milliseconds: 20)
        try pull.bind("inproc://zmq-test-rcvtimeo")
        #expect(try pull.receive() == nil)
    }

    @Test func pollTimesOut() throws {
        let f = try Fixture()
        let a = try f.socket(.pair)
        try a.bind("inproc://zmq-test-poll")
        let b = try f.socket(.pair)
        try b.connect("inproc://zmq-test-poll")

        let start = ContinuousClock.now
        #expect(try ZMQ.poll([ZMQPollItem(socket: a), ZMQPollItem(socket: b)], timeoutMilliseconds: 50) == [false, false])
        let elapsed = ContinuousClock.now - start
        #expect(elapsed >= .milliseconds(45))
        #expect(elapsed < .seconds(2))
        #expect(try ZMQ.poll([ZMQPollItem(socket: a)], timeoutMilliseconds: 0) == [false])

        try b.send([[42]])
        #expect(try ZMQ.poll([ZMQPollItem(socket: b), ZMQPollItem(socket: a)], timeoutMilliseconds: 2000) == [false, true])
        let events = try ZMQ.pollEvents([ZMQPollItem(socket: b, readable: true, writable: true)], timeoutMilliseconds: 0)
        #expect(events == [ZMQPollEvents(readable: false, writable: true)])
        #expect(try a.receive() == [[42]])
    }

    @Test(arguments: ["inproc://zmq-test-large", "tcp://127.0.0.1:*"])
    func largeFrames(endpoint: String) throws {
        let f = try Fixture()
        let router = try f.socket(.router)
        try router.bind(endpoint)
        let dealer = try f.socket(.dealer)
        try dealer.connect(try router.lastEndpoint)
        var big = [UInt8](repeating: 0, count: 4 << 20)
        for i in big.indices { big[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
        try dealer.send([[], Array("hdr".utf8), big, big])
        let got = try #require(try receive(router))
        #expect(got.count == 5)
        #expect(got[1] == [] && got[2] == Array("hdr".utf8))
        #expect(got[3] == big && got[4] == big)
    }

    @Test func maxMessageSizeDropsOversizedPeer() throws {
        let f = try Fixture()
        let router = try f.socket(.router)
        try router.setMaxMessageSize(1024)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try f.socket(.dealer)
        try dealer.connect(try router.lastEndpoint)
        try dealer.send([[UInt8](repeating: 7, count: 4096)])
        #expect(try receive(router, timeoutMilliseconds: 200) == nil)
    }

    @Test func terminatedContextGivesTypedError() throws {
        let context = try ZMQContext()
        let pull = try ZMQSocket(context: context, type: .pull)
        try pull.bind("inproc://zmq-test-term")
        let finished = DispatchSemaphore(value: 0)
        let thread = Thread {
            // Blocks until the context is terminated, then closes its socket so terminate() can return.
            do {
                _ = try pull.receive()
                Issue.record("receive should fail with ETERM")
            } catch let error as ZMQError {
                #expect(error.isTerminated)
            } catch {
                Issue.record("unexpected error \(error)")
            }
            pull.close()
            finished.signal()
        }
        thread.start()
        Thread.sleep(forTimeInterval: 0.05)
        context.terminate()  // returns once the thread closed its socket
        finished.wait()  // a happens-before edge the thread sanitizer can see (libzmq's is invisible to it)
        #expect(pull.isClosed)
        #expect(context.isTerminated)
        context.terminate()  // idempotent
        #expect(throws: ZMQError.self) { try ZMQSocket(context: context, type: .dealer) }
    }

    @Test func closeIsIdempotent() throws {
        let f = try Fixture()
        let s = try f.socket(.dealer)
        s.close()
        s.close()
        #expect(s.isClosed)
    }

    @Test func emptyMessageThrows() throws {
        let f = try Fixture()
        let s = try f.socket(.dealer)
        #expect(throws: ZMQError.self) { try s.send([]) }
    }

    @Test func pubSub() throws {
        let f = try Fixture()
        let pub = try f.socket(.pub)
        try pub.bind("inproc://zmq-test-pubsub")
        let sub = try f.socket(.sub)
        try sub.subscribe(Array("a".utf8))
        try sub.connect("inproc://zmq-test-pubsub")
        // Subscriptions propagate asynchronously; publish until one arrives.
        var got: [[UInt8]]? = nil
        for _ in 0..<100 where got == nil {
            try pub.send([Array("b-skip".utf8)])
            try pub.send([Array("a-keep".utf8)])
            got = try receive(sub, timeoutMilliseconds: 10)
        }
        #expect(got == [Array("a-keep".utf8)])
    }
}

@Suite struct ZeroMQCurveTests {
    @Test(.enabled(if: ZMQ.has("curve")))
    func curveRoundTrip() throws {
        let server = try ZMQ.curveKeyPair()
        let client = try ZMQ.curveKeyPair()
        #expect(server.publicKey.utf8.count == 40 && server.secretKey.utf8.count == 40)
        #expect(server != client)

        let context = try ZMQContext()
        let router = try ZMQSocket(context: context, type: .router)
        let dealer = try ZMQSocket(context: context, type: .dealer)
        let intruder = try ZMQSocket(context: context, type: .dealer)
        defer {
            router.close()
            dealer.close()
            intruder.close()
            context.terminate()
        }
        try router.setCurveServer(secretKey: server.secretKey)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint
        try dealer.setCurveClient(serverPublicKey: server.publicKey, keys: client)
        try dealer.connect(endpoint)
        try dealer.send([[], [1, 2, 3]])
        #expect(try ZMQ.poll([ZMQPollItem(socket: router)], timeoutMilliseconds: 5000) == [true])
        #expect(try router.receive()?.dropFirst() == [[], [1, 2, 3]])

        // A plain-text peer cannot talk to a CURVE server.
        try intruder.connect(endpoint)
        try intruder.send([[], [9]], dontWait: true)
        #expect(try ZMQ.poll([ZMQPollItem(socket: router)], timeoutMilliseconds: 200) == [false])
        #expect(throws: ZMQError.self) { try dealer.setCurveServer(secretKey: "short") }
    }
}
