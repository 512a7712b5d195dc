// Protocol v1 codec: Message <-> [header, body, blob?] frames (SPEC.md §2-§5).

/// The 8-byte header frame: magic "TS", version (u16 LE), type (u8), flags (u8, 0), reserved (u16, 0).
public struct WireHeader: Sendable, Hashable {
    public var version: UInt16
    /// Raw type byte; `MessageType(rawValue:)` is nil for types this peer does not know.
    public var typeCode: UInt8
    public var type: MessageType? { MessageType(rawValue: typeCode) }
}

public enum WireCodec {
    /// The protocol version this codec speaks (the only one it accepts).
    public static let version: UInt16 = 1
    /// Header magic bytes "TS".
    public static let magic: (UInt8, UInt8) = (0x54, 0x53)

    public static var limits: ProtocolLimits { .v1 }

    // MARK: Encoding

    /// Frames after the envelope (no identity, no empty delimiter): [header, body] or, for CHUNK,
    /// FETCH_REPLY and REPLY, [header, body, blob]. The caller must keep within `limits`.
    public static func encode(_ message: Message) -> [[UInt8]] {
        let header = encodeHeader(message.type)
        var w = WireWriter()
        var blob: [UInt8]? = nil
        switch message {
        case .ready(let m):
            w.u16(m.protocolVersion)
            w.string(m.workerName)
            w.string(m.host)
            w.u16(m.slots)
            w.array(m.capabilities) { $0.string($1) }
            w.array(m.running) { $0.ref($1) }
        case .heartbeat(let m):
            w.u16(m.credits)
            w.array(m.progress) { w, p in
                w.ref(p.ref)
                w.i64(p.step)
                w.i64(p.total)
            }
        case .disconnect(let m):
            w.string(m.reason)
        case .dispatch(let m):
            w = WireWriter(capacity: 64 + m.spec.count + m.slice.count)
            w.ref(m.ref)
            w.string(m.kind)
            w.string(m.algorithm)
            w.u64(m.seed)
            w.byteArray(m.spec)
            w.byteArray(m.slice)
            if let r = m.resume {
                w.u8(1)
                w.i64(r.step)
                w.string(r.sha256)
                w.u64(r.size)
            } else {
                w.u8(0)
            }
            w.i64(m.totalSteps)
        case .cancel(let m):
            w.ref(m.ref)
            w.string(m.reason)
        case .metrics(let m):
            w = WireWriter(capacity: 32 + m.points.count * 32)
            w.ref(m.ref)
            w.u64(m.sequence)
            w.array(m.points) { w, p in
                w.string(p.name)
                w.i64(p.step)
                w.f64(p.value)
            }
        case .logs(let m):
            w = WireWriter(capacity: 32 + m.lines.reduce(0) { $0 + 16 + $1.message.utf8.count })
            w.ref(m.ref)
            w.u64(m.sequence)
            w.array(m.lines) { w, l in
                w.f64(l.time)
                w.u8(l.level.rawValue)
                w.string(l.message)
            }
        case .chunk(let m):
            w.ref(m.ref)
            w.u64(m.transferID)
            w.u8(m.kind.rawValue)
            w.i64(m.step)
            w.u64(m.offset)
            w.u64(m.totalSize)
            w.bool(m.isLast)
            w.string(m.sha256)
            blob = m.data
        case .shardDone(let m):
            w.ref(m.ref)
            w.byteArray(m.summary)
            w.string(m.resultSHA256)
        case .shardFailed(let m):
            w.ref(m.ref)
            w.string(m.reason)
            w.u8(m.failure.rawValue)
        case .ack(let m):
            w.ref(m.ref)
            w.u8(m.kind.rawValue)
            w.u64(m.sequence)
            w.u64(m.offset)
            w.u8(m.status.rawValue)
        case .fetch(let m):
            w.u64(m.requestID)
            w.string(m.sha256)
            w.u64(m.offset)
            w.u32(m.length)
        case .fetchReply(let m):
            w.u64(m.requestID)
            w.string(m.sha256)
            w.u64(m.offset)
            w.u64(m.totalSize)
            w.string(m.error)
            blob = m.data
        case .request(let m):
            w.u64(m.requestID)
            w.string(m.method)
            w.byteArray(m.body)
        case .reply(let m):
            w.u64(m.requestID)
            w.u16(m.status)
            w.byteArray(m.body)
            blob = m.blob
        case .error(let m):
            w.u16(m.code)
            w.string(m.message)
        }
        if let blob { return [header, w.bytes, blob] }
        return [header, w.bytes]
    }

    /// The 8-byte header frame for `type` at this codec's version.
    public static func encodeHeader(_ type: MessageType) -> [UInt8] {
        [magic.0, magic.1, UInt8(truncatingIfNeeded: version), UInt8(truncatingIfNeeded: version >> 8), type.rawValue, 0, 0, 0]
    }

    /// Frames to send on a DEALER socket: [empty, header, body, blob?]. Throws `oversize` instead of producing a
    /// message the receiver must reject (§3 Limits).
    public static func encodeForDealer(_ message: Message) throws(ProtocolError) -> [[UInt8]] {
        [[]] + (try encodeWithinLimits(message))
    }

    /// Frames to send on the ROUTER socket to `identity`: [identity, empty, header, body, blob?]. Throws
    /// `oversize` instead of producing a message the receiver must reject (§3 Limits).
    public static func encodeForRouter(identity: [UInt8], _ message: Message) throws(ProtocolError) -> [[UInt8]] {
        [identity, []] + (try encodeWithinLimits(message))
    }

    /// `encode`, checked against the frame limits: the body frame (which holds every string and array) at most
    /// `maxBodyBytes`, the blob frame at most `maxBlobBytes`.
    public static func encodeWithinLimits(_ message: Message) throws(ProtocolError) -> [[UInt8]] {
        let frames = encode(message)
        if frames.count > 1, frames[1].count > limits.maxBodyBytes {
            throw ProtocolError(
                code: .oversize, message: "body of \(frames[1].count) bytes exceeds the limit of \(limits.maxBodyBytes)")
        }
        if frames.count > 2, frames[2].count > limits.maxBlobBytes {
            throw ProtocolError(
                code: .oversize, message: "blob of \(frames[2].count) bytes exceeds the limit of \(limits.maxBlobBytes)")
        }
        return frames
    }

    // MARK: Decoding

    /// Parses and checks the header frame only (magic, length, reserved bytes), but not version or type, so
    /// a receiver can tell "unsupported version" and "unknown type" apart and answer with an ERROR.
    public static func decodeHeader(_ frame: [UInt8]) throws(ProtocolError) -> WireHeader {
        guard frame.count >= 2 else {
            throw ProtocolError(code: .truncated, message: "header: \(frame.count) bytes, expected 8")
        }
        guard frame[0] == magic.0, frame[1] == magic.1 else {
            throw ProtocolError(code: .badMagic, message: "header: magic is not \"TS\"")
        }
        guard frame.count >= 4 else {
            throw ProtocolError(code: .truncated, message: "header: \(frame.count) bytes, expected 8")
        }
        let version = UInt16(frame[2]) | UInt16(frame[3]) << 8
        guard frame.count >= 5 else {
            throw ProtocolError(code: .truncated, message: "header: \(frame.count) bytes, expected 8")
        }
        return WireHeader(version: version, typeCode: frame[4])
    }

    /// The type byte of a header frame that at least starts like one (magic, 5+ bytes), even when the message
    /// cannot be decoded: a receiver uses it to avoid answering a broken ERROR with an ERROR (§6.1.7).
    public static func typeCodeIfPresent(_ frames: [[UInt8]]) -> UInt8? {
        guard let h = frames.first, h.count >= 5, h[0] == magic.0, h[1] == magic.1 else { return nil }
        return h[4]
    }

    /// Decodes frames after the envelope: [header, body] or [header, body, blob] (see `encode`).
    public static func decode(_ frames: [[UInt8]]) throws(ProtocolError) -> Message {
        let limits = Self.limits
        guard let headerFrame = frames.first else {
            throw ProtocolError(code: .badFrameCount, message: "no frames")
        }
        let header = try decodeHeader(headerFrame)
        guard header.version == version else {
            throw ProtocolError(
                code: .unsupportedVersion,
                message: "version \(header.version) not supported; this peer speaks version \(version)"
            )
        }
        guard let type = header.type else {
            throw ProtocolError(code: .unknownType, message: "unknown message type 0x\(String(header.typeCode, radix: 16))")
        }
        guard headerFrame.count >= limits.headerBytes else {
            throw ProtocolError(code: .truncated, message: "\(type) header: \(headerFrame.count) bytes, expected 8")
        }
        guard headerFrame.count == limits.headerBytes else {
            throw ProtocolError(code: .trailingBytes, message: "\(type) header: \(headerFrame.count) bytes, expected 8")
        }
        guard headerFrame[5] == 0, headerFrame[6] == 0, headerFrame[7] == 0 else {
            throw ProtocolError(code: .malformed, message: "\(type) header: flags and reserved bytes must be 0")
        }
        let expectedFrames = type.hasBlob ? 3 : 2
        guard frames.count == expectedFrames else {
            throw ProtocolError(
                code: .badFrameCount, message: "\(type): \(frames.count) frames, expected \(expectedFrames)")
        }
        let body = frames[1]
        guard body.count <= limits.maxBodyBytes else {
            throw ProtocolError(code: .oversize, message: "\(type) body: \(body.count) bytes exceeds \(limits.maxBodyBytes)")
        }
        var blob: [UInt8] = []
        if type.hasBlob {
            blob = frames[2]
            guard blob.count <= limits.maxBlobBytes else {
                throw ProtocolError(
                    code: .oversize, message: "\(type) blob: \(blob.count) bytes exceeds \(limits.maxBlobBytes)")
            }
        }
        var r = WireReader(body, type: type, limits: limits)
        let message = try decodeBody(type, &r, blob: blob)
        try r.finish()
        return message
    }

    private static func decodeBody(
        _ type: MessageType, _ r: inout WireReader, blob: [UInt8]
    ) throws(ProtocolError) -> Message {
        switch type {
        case .ready:
            let protocolVersion = try r.u16("protocolVersion")
            let workerName = try r.string("workerName")
            let host = try r.string("host")
            let slots = try r.u16("slots")
            let capabilities = try r.array("capabilities", minimumSize: 4) { (r) throws(ProtocolError) in
                try r.string("capabilities")
            }
            let running = try r.array("running", minimumSize: 16) { (r) throws(ProtocolError) in try r.ref("running") }
            return .ready(
                Ready(
                    protocolVersion: protocolVersion, workerName: workerName, host: host, slots: slots,
                    capabilities: capabilities, running: running))
        case .heartbeat:
            let credits = try r.u16("credits")
            let progress = try r.array("progress", minimumSize: 32) { (r) throws(ProtocolError) in
                ShardProgress(ref: try r.ref("progress.ref"), step: try r.i64("progress.step"), total: try r.i64("progress.total"))
            }
            return .heartbeat(Heartbeat(credits: credits, progress: progress))
        case .disconnect:
            return .disconnect(Disconnect(reason: try r.string("reason")))
        case .dispatch:
            let ref = try r.ref("ref")
            let kind = try r.string("kind")
            let algorithm = try r.string("algorithm")
            let seed = try r.u64("seed")
            let spec = try r.byteArray("spec")
            let slice = try r.byteArray("slice")
            let resume: CheckpointInfo?
            switch try r.u8("resume") {
            case 0: resume = nil
            case 1:
                resume = CheckpointInfo(
                    step: try r.i64("resume.step"), sha256: try r.sha256("resume.sha256", allowEmpty: false),
                    size: try r.u64("resume.size"))
            case let tag: throw r.error(.malformed, "resume", "option tag must be 0 or 1, got \(tag)")
            }
            let totalSteps = try r.i64("totalSteps")
            return .dispatch(
                Dispatch(
                    ref: ref, kind: kind, algorithm: algorithm, seed: seed, spec: spec, slice: slice, resume: resume,
                    totalSteps: totalSteps))
        case .cancel:
            return .cancel(Cancel(ref: try r.ref("ref"), reason: try r.string("reason")))
        case .metrics:
            let ref = try r.ref("ref")
            let sequence = try r.u64("sequence")
            let points = try r.array("points", minimumSize: 20) { (r) throws(ProtocolError) in
                MetricPoint(name: try r.string("points.name"), step: try r.i64("points.step"), value: try r.f64("points.value"))
            }
            return .metrics(MetricsBatch(ref: ref, sequence: sequence, points: points))
        case .logs:
            let ref = try r.ref("ref")
            let sequence = try r.u64("sequence")
            let lines = try r.array("lines", minimumSize: 13) { (r) throws(ProtocolError) in
                let time = try r.f64("lines.time")
                let raw = try r.u8("lines.level")
                guard let level = LogLevel(rawValue: raw) else {
                    throw r.error(.malformed, "lines.level", "unknown log level \(raw)")
                }
                return LogLine(time: time, level: level, message: try r.string("lines.message"))
            }
            return .logs(LogBatch(ref: ref, sequence: sequence, lines: lines))
        case .chunk:
            let ref = try r.ref("ref")
            let transferID = try r.u64("transferID")
            let kindRaw = try r.u8("kind")
            guard let kind = BlobKind(rawValue: kindRaw) else {
                throw r.error(.malformed, "kind", "unknown blob kind \(kindRaw)")
            }
            let step = try r.i64("step")
            let offset = try r.u64("offset")
            let totalSize = try r.u64("totalSize")
            let isLast = try r.bool("isLast")
            let sha256 = try r.sha256("sha256", allowEmpty: !isLast)
            guard isLast || sha256.isEmpty else {
                throw r.error(.malformed, "sha256", "must be empty unless isLast")
            }
            let (end, overflow) = offset.addingReportingOverflow(UInt64(blob.count))
            guard !overflow, end <= totalSize else {
                throw r.error(.malformed, "offset", "offset + data length exceeds totalSize")
            }
            guard !isLast || end == totalSize else {
                throw r.error(.malformed, "isLast", "last chunk must end at totalSize")
            }
            return .chunk(
                BlobChunk(
                    ref: ref, transferID: transferID, kind: kind, step: step, offset: offset, totalSize: totalSize,
                    isLast: isLast, sha256: sha256, data: blob))
        case .shardDone:
            return .shardDone(
                ShardDone(
                    ref: try r.ref("ref"), summary: try r.byteArray("summary"),
                    resultSHA256: try r.sha256("resultSHA256", allowEmpty: true)))
        case .shardFailed:
            return .shardFailed(
                ShardFailed(ref: try r.ref("ref"), reason: try r.string("reason"), failure: try r.failureKind("failure")))
        case .ack:
            let ref = try r.ref("ref")
            let kindRaw = try r.u8("kind")
            guard let kind = AckKind(rawValue: kindRaw) else {
                throw r.error(.malformed, "kind", "unknown ack kind \(kindRaw)")
            }
            return .ack(
                Ack(
                    ref: ref, kind: kind, sequence: try r.u64("sequence"), offset: try r.u64("offset"),
                    status: try r.ackStatus("status")))
        case .fetch:
            return .fetch(
                Fetch(
                    requestID: try r.u64("requestID"), sha256: try r.sha256("sha256", allowEmpty: false),
                    offset: try r.u64("offset"), length: try r.u32("length")))
        case .fetchReply:
            let requestID = try r.u64("requestID")
            let sha256 = try r.sha256("sha256", allowEmpty: false)
            let offset = try r.u64("offset")
            let totalSize = try r.u64("totalSize")
            let error = try r.string("error")
            return .fetchReply(
                FetchReply(
                    requestID: requestID, sha256: sha256, offset: offset, totalSize: totalSize, data: blob,
                    error: error))
        case .request:
            return .request(
                ClientRequest(requestID: try r.u64("requestID"), method: try r.string("method"), body: try r.byteArray("body")))
        case .reply:
            return .reply(
                ClientReply(
                    requestID: try r.u64("requestID"), status: try r.u16("status"), body: try r.byteArray("body"),
                    blob: blob))
        case .error:
            return .error(ErrorMessage(code: try r.u16("code"), message: try r.string("message")))
        }
    }

    /// Splits a message received on a ROUTER socket, `[identity][empty][header][body][blob?]`, into the
    /// identity and the frames for `decode`.
    public static func splitRouterEnvelope(_ frames: [[UInt8]]) throws(ProtocolError) -> (identity: [UInt8], frames: [[UInt8]]) {
        guard frames.count >= 2, frames[1].isEmpty else {
            throw ProtocolError(code: .badEnvelope, message: "expected [identity][empty][header]...")
        }
        return (frames[0], Array(frames[2...]))
    }

    /// Strips the empty delimiter from a message received on a DEALER socket, `[empty][header][body][blob?]`.
    public static func splitDealerEnvelope(_ frames: [[UInt8]]) throws(ProtocolError) -> [[UInt8]] {
        guard let first = frames.first, first.isEmpty else {
            throw ProtocolError(code: .badEnvelope, message: "expected [empty][header]...")
        }
        return Array(frames.dropFirst())
    }
}
