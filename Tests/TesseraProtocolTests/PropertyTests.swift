import Testing
import TesseraProtocol

/// Random but valid messages (within `WireCodec.limits` and the CHUNK/sha256 rules of SPEC.md §5).
struct MessageGenerator {
    var rng: SeededGenerator

    init(seed: UInt64) { rng = SeededGenerator(seed: seed) }

    mutating func int<T: FixedWidthInteger>(_: T.Type = T.self) -> T {
        // Bias toward edge values, which find more bugs than uniform ones.
        switch Int.random(in: 0..<8, using: &rng) {
        case 0: return 0
        case 1: return .max
        case 2: return .min
        case 3: return T(truncatingIfNeeded: Int.random(in: -3...3, using: &rng))
        default: return T(truncatingIfNeeded: rng.next())
        }
    }

    mutating func bool() -> Bool { Bool.random(using: &rng) }

    mutating func string(maxLength: Int = 12) -> String {
        let pools: [ClosedRange<UInt32>] = [0x20...0x7E, 0x00...0x1F, 0xA0...0x2FF, 0x3B1...0x3C9, 0x4E00...0x4E20, 0x1F600...0x1F64F]
        var s = String.UnicodeScalarView()
        for _ in 0..<Int.random(in: 0...maxLength, using: &rng) {
            let pool = pools[Int.random(in: 0..<pools.count, using: &rng)]
            s.append(Unicode.Scalar(UInt32.random(in: pool, using: &rng))!)
        }
        return String(s)
    }

    mutating func bytes(maxCount: Int = 40) -> [UInt8] {
        (0..<Int.random(in: 0...maxCount, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    mutating func sha() -> String {
        let hex = Array("0123456789abcdef")
        return String((0..<64).map { _ in hex[Int.random(in: 0..<16, using: &rng)] })
    }

    mutating func ref() -> ShardRef { ShardRef(jobID: int(), shardIndex: int(), attempt: int()) }

    mutating func array<T>(max: Int = 5, _ element: (inout MessageGenerator) -> T) -> [T] {
        (0..<Int.random(in: 0...max, using: &rng)).map { _ in element(&self) }
    }

    mutating func double() -> Double {
        switch Int.random(in: 0..<6, using: &rng) {
        case 0: return .nan
        case 1: return -.infinity
        case 2: return Double(bitPattern: 0x7FF0_0000_0000_0000 | UInt64.random(in: 1...(1 << 52 - 1), using: &rng))
        case 3: return -0.0
        default: return Double(bitPattern: rng.next())
        }
    }

    mutating func message() -> Message {
        switch MessageType.allCases[Int.random(in: 0..<MessageType.allCases.count, using: &rng)] {
        case .ready:
            return .ready(Ready(protocolVersion: int(), workerName: string(), host: string(), slots: int(),
                capabilities: array { $0.string() }, running: array { $0.ref() }))
        case .heartbeat:
            return .heartbeat(Heartbeat(credits: int(), progress: array { g in
                ShardProgress(ref: g.ref(), step: g.int(), total: g.int())
            }))
        case .disconnect:
            return .disconnect(Disconnect(reason: string()))
        case .dispatch:
            return .dispatch(Dispatch(ref: ref(), kind: string(), algorithm: string(), seed: int(), spec: bytes(),
                slice: bytes(), resume: bool() ? nil : CheckpointInfo(step: int(), sha256: sha(), size: int()),
                totalSteps: int()))
        case .cancel:
            return .cancel(Cancel(ref: ref(), reason: string()))
        case .metrics:
            return .metrics(MetricsBatch(ref: ref(), sequence: int(), points: array(max: 20) { g in
                MetricPoint(name: g.string(), step: g.int(), value: g.double())
            }))
        case .logs:
            return .logs(LogBatch(ref: ref(), sequence: int(), lines: array(max: 20) { g in
                LogLine(time: g.double(), level: LogLevel.allCases.randomElement(using: &g.rng)!, message: g.string())
            }))
        case .chunk:
            let data = bytes()
            let isLast = bool()
            let offset = UInt64.random(in: 0...(UInt64.max - UInt64(data.count)), using: &rng)
            let end = offset + UInt64(data.count)
            let totalSize = isLast ? end : UInt64.random(in: end...UInt64.max, using: &rng)
            return .chunk(BlobChunk(ref: ref(), transferID: int(), kind: [.checkpoint, .samples, .result].randomElement(using: &rng)!,
                step: int(), offset: offset, totalSize: totalSize, isLast: isLast, sha256: isLast ? sha() : "", data: data))
        case .shardDone:
            return .shardDone(ShardDone(ref: ref(), summary: bytes(), resultSHA256: bool() ? sha() : ""))
        case .shardFailed:
            return .shardFailed(ShardFailed(ref: ref(), reason: string(), failure: [.shardError, .infrastructure, .permanent].randomElement(using: &rng)!))
        case .ack:
            return .ack(Ack(ref: ref(), kind: [.metrics, .chunk, .done, .failed, .logs].randomElement(using: &rng)!,
                sequence: int(), offset: int(), status: [.refused, .accepted, .deferred].randomElement(using: &rng)!))
        case .fetch:
            return .fetch(Fetch(requestID: int(), sha256: sha(), offset: int(), length: int()))
        case .fetchReply:
            return .fetchReply(FetchReply(requestID: int(), sha256: sha(), offset: int(), totalSize: int(), data: bytes(),
                error: string()))
        case .request:
            return .request(ClientRequest(requestID: int(), method: string(), body: bytes()))
        case .reply:
            return .reply(ClientReply(requestID: int(), status: int(), body: bytes(), blob: bytes()))
        case .error:
            return .error(ErrorMessage(code: int(), message: string()))
        }
    }
}

@Suite struct PropertyTests {
    @Test func randomMessagesRoundTrip() throws {
        var g = MessageGenerator(seed: 0x7E55_E7A1)
        var seen = Set<MessageType>()
        for _ in 0..<5000 {
            let message = g.message()
            seen.insert(message.type)
            let frames = WireCodec.encode(message)
            let decoded = try WireCodec.decode(frames)
            #expect(decoded == message)
            #expect(WireCodec.encode(decoded) == frames)
            if decoded != message { break }
        }
        #expect(seen == Set(MessageType.allCases))
    }

    /// Frames that decode are canonical: re-encoding gives back exactly the input. Everything else throws a
    /// ProtocolError (decode has typed throws, so reaching the catch is the property) and never traps.
    private func check(_ frames: [[UInt8]], _ counts: inout [ProtocolError.Code: Int]) {
        do {
            let message = try WireCodec.decode(frames)
            #expect(WireCodec.encode(message) == frames)
        } catch {
            counts[error.code, default: 0] += 1
            #expect(ProtocolError.Code(wireCode: error.code.wireCode) == error.code)
        }
    }

    @Test func mutatedFramesNeverCrash() {
        var g = MessageGenerator(seed: 0xBAD_F00D)
        var counts: [ProtocolError.Code: Int] = [:]
        for _ in 0..<20_000 {
            var frames = WireCodec.encode(g.message())
            switch Int.random(in: 0..<6, using: &g.rng) {
            case 0:  // flip bytes
                for _ in 0..<Int.random(in: 1...3, using: &g.rng) {
                    let f = Int.random(in: 0..<frames.count, using: &g.rng)
                    guard !frames[f].isEmpty else { continue }
                    frames[f][Int.random(in: 0..<frames[f].count, using: &g.rng)] = UInt8.random(in: 0...255, using: &g.rng)
                }
            case 1:  // truncate a frame
                let f = Int.random(in: 0..<frames.count, using: &g.rng)
                frames[f] = Array(frames[f].prefix(Int.random(in: 0...frames[f].count, using: &g.rng)))
            case 2:  // overwrite 4 bytes with a huge length
                let f = 1
                if frames[f].count >= 4 {
                    let at = Int.random(in: 0...(frames[f].count - 4), using: &g.rng)
                    let v = [UInt32.max, 0x8000_0000, 65_537, 1 << 24][Int.random(in: 0..<4, using: &g.rng)]
                    for k in 0..<4 { frames[f][at + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(k))) }
                }
            case 3:  // drop or add frames
                if g.bool() { frames.removeLast(Int.random(in: 1...frames.count, using: &g.rng)) } else { frames.append(g.bytes()) }
            case 4:  // append garbage to the body
                frames[1] += g.bytes(maxCount: 8)
            default:  // random type byte
                frames[0][4] = UInt8.random(in: 0...255, using: &g.rng)
            }
            check(frames, &counts)
        }
        for code in [ProtocolError.Code.truncated, .oversize, .unknownType, .malformed, .trailingBytes, .badFrameCount] {
            #expect(counts[code, default: 0] > 0, "mutations never produced \(code)")
        }
    }

    @Test func randomBytesNeverCrash() {
        var g = MessageGenerator(seed: 0x5EED)
        var counts: [ProtocolError.Code: Int] = [:]
        for i in 0..<200_000 {
            var frames: [[UInt8]] = (0..<Int.random(in: 0...4, using: &g.rng)).map { _ in g.bytes(maxCount: 48) }
            // Half the time give it a valid header so the body parsers see the garbage.
            if i % 2 == 0, !frames.isEmpty {
                let type = MessageType.allCases[Int.random(in: 0..<MessageType.allCases.count, using: &g.rng)]
                frames[0] = WireCodec.encodeHeader(type)
            }
            check(frames, &counts)
        }
        #expect(counts[.badMagic, default: 0] > 0)
        #expect(counts[.truncated, default: 0] > 0)
    }

    @Test func oversizeFramesAreRejectedBeforeParsing() {
        let limits = WireCodec.limits
        let big = [UInt8](repeating: 0, count: limits.maxBodyBytes + 1)
        let error = #expect(throws: ProtocolError.self) {
            try WireCodec.decode([WireCodec.encodeHeader(.disconnect), big])
        }
        #expect(error?.code == .oversize)
        let blob = [UInt8](repeating: 0, count: limits.maxBlobBytes + 1)
        let blobError = #expect(throws: ProtocolError.self) {
            try WireCodec.decode(WireCodec.encode(.reply(ClientReply(requestID: 1, status: 0, body: [], blob: blob))))
        }
        #expect(blobError?.code == .oversize)
    }

    @Test func wireCodesAreStableAndDistinct() {
        let codes: [(ProtocolError.Code, UInt16)] = [
            (.truncated, 1), (.oversize, 2), (.badMagic, 3), (.unsupportedVersion, 4), (.unknownType, 5),
            (.malformed, 6), (.trailingBytes, 7), (.badUTF8, 8), (.badFrameCount, 9), (.badEnvelope, 10),
        ]
        for (code, wire) in codes {
            #expect(code.wireCode == wire)
            #expect(ProtocolError.Code(wireCode: wire) == code)
        }
        #expect(ProtocolError.Code(wireCode: 0) == nil)
        #expect(ProtocolError.Code(wireCode: 100) == nil)
    }

    @Test func headerIsParsedBeforeVersionAndTypeChecks() throws {
        var header = WireCodec.encodeHeader(.ack)
        header[2] = 9
        let parsed = try WireCodec.decodeHeader(header)
        #expect(parsed.version == 9 && parsed.type == .ack)
        let error = #expect(throws: ProtocolError.self) { try WireCodec.decode([header, []]) }
        #expect(error?.code == .unsupportedVersion)
        // The ERROR reply for it carries the wire code and a reason.
        let reply = ErrorMessage(try #require(error))
        #expect(reply.code == 4 && reply.message.contains("version 9"))
    }

    @Test func envelopes() throws {
        let message = Message.disconnect(Disconnect(reason: "bye"))
        let routed = try WireCodec.encodeForRouter(identity: [1, 2], message)
        let (identity, frames) = try WireCodec.splitRouterEnvelope(routed)
        #expect(identity == [1, 2])
        #expect(try WireCodec.decode(frames) == message)
        let dealt = try WireCodec.encodeForDealer(message)
        #expect(try WireCodec.decode(try WireCodec.splitDealerEnvelope(dealt)) == message)
        #expect(throws: ProtocolError.self) { try WireCodec.splitDealerEnvelope(frames) }
        #expect(throws: ProtocolError.self) { try WireCodec.splitRouterEnvelope([[1]]) }
    }

    @Test("A message over the frame limits is refused when encoded for sending, not sent for the peer to reject")
    func encodingChecksLimits() throws {
        let limits = WireCodec.limits
        let bigBody = Message.reply(ClientReply(requestID: 1, status: 0, body: [UInt8](repeating: 0x20, count: limits.maxBodyBytes + 1), blob: []))
        let e1 = #expect(throws: ProtocolError.self) { try WireCodec.encodeForRouter(identity: [1], bigBody) }
        #expect(e1?.code == .oversize)
        let bigBlob = Message.reply(ClientReply(requestID: 1, status: 0, body: [], blob: [UInt8](repeating: 0, count: limits.maxBlobBytes + 1)))
        let e2 = #expect(throws: ProtocolError.self) { try WireCodec.encodeForDealer(bigBlob) }
        #expect(e2?.code == .oversize)
        // At the limit exactly, it is encoded and decodes back.
        let atLimit = Message.reply(ClientReply(requestID: 2, status: 0, body: [UInt8](repeating: 0x20, count: limits.maxBodyBytes - 64), blob: []))
        let frames = try WireCodec.splitDealerEnvelope(try WireCodec.encodeForDealer(atLimit))
        #expect(try WireCodec.decode(frames) == atLimit)
    }

    @Test func metricPointEqualityIsBitwise() {
        let nan = MetricPoint(name: "x", step: 0, value: .nan)
        #expect(nan == nan)
        #expect(MetricPoint(name: "x", step: 0, value: 0.0) != MetricPoint(name: "x", step: 0, value: -0.0))
        #expect(Set([nan, nan]).count == 1)
    }
}
