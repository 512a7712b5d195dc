// CURVE with a ZAP allow-list over real tcp loopback sockets, and the certificate files.

import Foundation
import Testing
import ZeroMQ

@Suite struct CurveTests {
    @Test func libzmqHasCurve() { #expect(ZMQ.has("curve")) }

    @Test("A key pair's public key is derived from its secret key; Z85 of 32 bytes is 40 characters")
    func keyPairAndZ85() throws {
        let pair = try ZMQ.curveKeyPair()
        #expect(ZMQ.isZ85Key(pair.publicKey) && ZMQ.isZ85Key(pair.secretKey))
        #expect(try ZMQ.curvePublicKey(secretKey: pair.secretKey) == pair.publicKey)
        #expect(pair.publicKey != pair.secretKey)
        // The Z85 spec's own test vector (ZeroMQ RFC 32): 8 bytes → "HelloWorld".
        #expect(ZMQ.z85Encode([0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B]) == "HelloWorld")
        #expect(ZMQ.z85Encode([1, 2, 3]) == nil)
        #expect(!ZMQ.isZ85Key(String(repeating: "a", count: 39)))
        #expect(!ZMQ.isZ85Key(String(repeating: "a", count: 39) + "\""))
    }

    @Test("Certificates: secret and public files round-trip; a mismatched or malformed file is refused with its line")
    func certificates() throws {
        let pair = try ZMQ.curveKeyPair()
        let cert = ZMQCertificate(publicKey: pair.publicKey, secretKey: pair.secretKey, metadata: [("name", "w1")])
        let secretText = cert.render(secret: true, generatedBy: "test")
        let publicText = cert.render(secret: false, generatedBy: "test")
        #expect(try ZMQCertificate.parse(secretText) == cert)
        #expect(!publicText.contains(pair.secretKey))
        #expect(try ZMQCertificate.parse(publicText) == ZMQCertificate(publicKey: pair.publicKey, metadata: [("name", "w1")]))
        // czmq writes exactly this shape; we read it.
        let czmq = "#   ZeroMQ CURVE Public Certificate\n\nmetadata\ncurve\n    public-key = \"\(pair.publicKey)\"\n"
        #expect(try ZMQCertificate.parse(czmq).publicKey == pair.publicKey)

        let other = try ZMQ.curveKeyPair()
        let mismatched = "curve\n    public-key = \"\(pair.publicKey)\"\n    secret-key = \"\(other.secretKey)\"\n"
        #expect(throws: ZMQCertificate.ParseError.self) { try ZMQCertificate.parse(mismatched) }
        do {
            _ = try ZMQCertificate.parse("curve\n    public-key = \"short\"\n")
            Issue.record("a short key must be refused")
        } catch {
            #expect(error.line == 2)
        }
        #expect(throws: ZMQCertificate.ParseError.self) { try ZMQCertificate.parse("metadata\n    name = \"x\"\n") }
        #expect(throws: ZMQCertificate.ParseError.self) { try ZMQCertificate.parse("bogus\n") }
    }

    @Test("Keys directories: the coordinator's and a client's layouts load; a world-readable secret is refused")
    func keysDirectories() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-keys-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let server = try ZMQ.curveKeyPair()
        let client = try ZMQ.curveKeyPair()
        let c = dir + "/coordinator", w = dir + "/w1"
        try FileManager.default.createDirectory(atPath: c + "/authorized", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: w, withIntermediateDirectories: true)
        func write(_ path: String, _ text: String, mode: Int) throws {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
        }
        let serverCert = ZMQCertificate(publicKey: server.publicKey, secretKey: server.secretKey)
        let clientCert = ZMQCertificate(publicKey: client.publicKey, secretKey: client.secretKey, metadata: [("name", "w1")])
        try write(c + "/coordinator.key_secret", serverCert.render(secret: true, generatedBy: "test"), mode: 0o600)
        try write(c + "/authorized/w1.key", clientCert.render(secret: false, generatedBy: "test"), mode: 0o644)
        try write(c + "/authorized/broken.key", "not a certificate\n", mode: 0o644)
        try write(c + "/authorized/notes.txt", "ignored\n", mode: 0o644)
        try write(w + "/client.key_secret", clientCert.render(secret: true, generatedBy: "test"), mode: 0o600)
        try write(w + "/coordinator.key", serverCert.render(secret: false, generatedBy: "test"), mode: 0o644)

        let ck = try CurveKeysDirectory.coordinator(c)
        #expect(ck.keyPair == server)
        let allowed = try CurveKeysDirectory.authorizedKeys(ck.authorizedDirectory)
        #expect(allowed.keys == [client.publicKey: "w1.key"])
        #expect(allowed.problems.count == 1 && allowed.problems[0].contains("broken.key"))
        let wk = try CurveKeysDirectory.client(w)
        #expect(wk.keyPair == client && wk.coordinatorPublicKey == server.publicKey)

        // A client pointed at the coordinator's directory is told what it needs instead.
        #expect { try CurveKeysDirectory.client(c) } throws: { "\($0)".contains("coordinator's keys directory") }
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: w + "/client.key_secret")
        #expect { try CurveKeysDirectory.client(w) } throws: { "\($0)".contains("chmod 600") }
    }

    @Test("CURVE server with a ZAP allow-list: an allowed key gets through with its key as User-Id, an unknown one never does")
    func zapAllowList() throws {
        let context = try ZMQContext()
        defer { context.terminate() }
        let zap = try ZAPHandler(context: context)
        defer { zap.close() }
        // A second handler in the same context cannot bind: the coordinator refuses to start rather than run unguarded.
        #expect(throws: ZMQError.self) { _ = try ZAPHandler(context: context) }

        let server = try ZMQ.curveKeyPair()
        let allowedKey = try ZMQ.curveKeyPair()
        let unknownKey = try ZMQ.curveKeyPair()
        let router = try ZMQSocket(context: context, type: .router)
        defer { router.close() }
        try router.setCurveServer(secretKey: server.secretKey)
        try router.setZAPDomain("test")
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint

        func client(_ keys: ZMQCurveKeyPair?) throws -> ZMQSocket {
            let s = try ZMQSocket(context: context, type: .dealer)
            try s.setLinger(milliseconds: 0)
            if let keys { try s.setCurveClient(serverPublicKey: server.publicKey, keys: keys) }
            try s.connect(endpoint)
            _ = try s.send([Array("hello".utf8)])
            return s
        }
        let good = try client(allowedKey)
        let bad = try client(unknownKey)
        let plain = try client(nil)
        defer { good.close(); bad.close(); plain.close() }

        var received: [(frames: [[UInt8]], userID: String?)] = []
        var decisions: [(ZAPRequest, allowed: Bool)] = []
        let deadline = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < deadline {
            let ready = try ZMQ.poll([ZMQPollItem(socket: router), ZMQPollItem(socket: zap.socket)], timeoutMilliseconds: 100)
            if ready[1] {
                decisions += try zap.serve { $0.publicKey == allowedKey.publicKey ? $0.publicKey : nil }
            }
            if ready[0], let m = try router.receiveWithUserID(dontWait: true) { received.append(m) }
            if received.count >= 1 && decisions.count >= 2 { break }
        }
        // Give a wrongly admitted peer a moment more to show up.
        if try ZMQ.poll([ZMQPollItem(socket: router)], timeoutMilliseconds: 300)[0], let m = try router.receiveWithUserID(dontWait: true) {
            received.append(m)
        }
        #expect(received.count == 1)
        #expect(received.first?.userID == allowedKey.publicKey)
        #expect(received.first?.frames.last == Array("hello".utf8))
        #expect(decisions.filter(\.allowed).map(\.0.publicKey) == [allowedKey.publicKey])
        #expect(decisions.filter { !$0.allowed }.map(\.0.publicKey) == [unknownKey.publicKey])
        #expect(decisions.allSatisfy { $0.0.mechanism == "CURVE" && $0.0.domain == "test" && $0.0.address == "127.0.0.1" })
    }
}
