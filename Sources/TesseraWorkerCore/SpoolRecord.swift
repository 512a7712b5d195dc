// The worker spool's record: one piece of a shard's output (metric points, blobs, digests, the outcome) as bytes, so
// output the coordinator cannot take now (it is away or slow) can wait in an append-only file instead of memory
// (docs/operations.md, "The worker spool"). The file is local, written and read by the same process: no versioning.
//
// Little-endian:
//   u32 points;  per point:  u16 name length, name (UTF-8), i64 step, u64 value bits
//   u32 blobs;   per blob:   u8 kind, i64 step, u16 sha256 length, sha256, u64 size, bytes
//   u32 digests; per digest: u16 length, digest
//   u8 outcome:  0 none; 1 done: u32 length, summary; 2 failed: u8 failure kind, u32 length, reason

import TesseraModel

public enum SpoolRecord {
    public struct Malformed: Error, CustomStringConvertible {
        public var description: String
    }

    /// The output's data (its `step`, `fetch` and `request` are not data and are not kept).
    public static func encode(_ o: WorkerStateMachine.ComputeOutput) -> [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(16 + o.points.count * 30 + o.blobs.reduce(0) { $0 + $1.bytes.count + 96 })
        func u8(_ v: UInt8) { b.append(v) }
        func u16(_ v: Int) { withUnsafeBytes(of: UInt16(v).littleEndian) { b.append(contentsOf: $0) } }
        func u32(_ v: Int) { withUnsafeBytes(of: UInt32(v).littleEndian) { b.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) } }
        func short(_ s: String) {
            let u = Array(s.utf8)
            u16(u.count)
            b.append(contentsOf: u)
        }
        u32(o.points.count)
        for p in o.points {
            short(p.name)
            u64(UInt64(bitPattern: p.step))
            u64(p.value.bitPattern)
        }
        u32(o.blobs.count)
        for blob in o.blobs {
            u8(blob.kind.rawValue)
            u64(UInt64(bitPattern: blob.step))
            short(blob.sha256)
            u64(UInt64(blob.bytes.count))
            b.append(contentsOf: blob.bytes)
        }
        u32(o.digests.count)
        for d in o.digests { short(d) }
        switch o.outcome {
        case nil: u8(0)
        case .done(let summary):
            u8(1)
            u32(summary.count)
            b.append(contentsOf: summary)
        case .failed(let reason, let failure):
            u8(2)
            u8(failure.rawValue)
            let r = Array(reason.utf8)
            u32(r.count)
            b.append(contentsOf: r)
        }
        return b
    }

    public static func decode(_ bytes: [UInt8]) throws -> WorkerStateMachine.ComputeOutput {
        var i = 0
        func need(_ n: Int) throws {
            guard n >= 0, bytes.count - i >= n else { throw Malformed(description: "spool record truncated at byte \(i)") }
        }
        func int(_ width: Int) throws -> UInt64 {
            try need(width)
            var v: UInt64 = 0
            for k in 0..<width { v |= UInt64(bytes[i + k]) << (8 * k) }
            i += width
            return v
        }
        func raw(_ n: Int) throws -> [UInt8] {
            try need(n)
            defer { i += n }
            return Array(bytes[i..<i + n])
        }
        func short() throws -> String { String(decoding: try raw(Int(try int(2))), as: UTF8.self) }

        var o = WorkerStateMachine.ComputeOutput(step: 0)
        let points = Int(try int(4))
        o.points.reserveCapacity(min(points, bytes.count / 18))
        for _ in 0..<points {
            let name = try short()
            let step = Int64(bitPattern: try int(8))
            o.points.append(MetricPoint(name: name, step: step, value: Double(bitPattern: try int(8))))
        }
        for _ in 0..<Int(try int(4)) {
            guard let kind = BlobKind(rawValue: UInt8(try int(1))) else { throw Malformed(description: "spool record: bad blob kind") }
            let step = Int64(bitPattern: try int(8))
            let sha = try short()
            let size = try int(8)
            guard size <= UInt64(bytes.count) else { throw Malformed(description: "spool record: blob size \(size) past the record") }
            o.blobs.append(WorkerStateMachine.Blob(kind: kind, step: step, bytes: try raw(Int(size)), sha256: sha))
        }
        for _ in 0..<Int(try int(4)) { o.digests.append(try short()) }
        switch try int(1) {
        case 0: break
        case 1: o.outcome = .done(summary: try raw(Int(try int(4))))
        case 2:
            guard let failure = ShardFailureKind(rawValue: UInt8(try int(1))) else {
                throw Malformed(description: "spool record: bad failure kind")
            }
            o.outcome = .failed(reason: String(decoding: try raw(Int(try int(4))), as: UTF8.self), failure: failure)
        default: throw Malformed(description: "spool record: bad outcome tag")
        }
        guard i == bytes.count else { throw Malformed(description: "spool record: \(bytes.count - i) trailing bytes") }
        return o
    }

    /// What the output weighs in memory, roughly (for the spool's memory cap).
    public static func memoryBytes(_ o: WorkerStateMachine.ComputeOutput) -> Int {
        o.points.count * 48 + o.blobs.reduce(0) { $0 + $1.bytes.count + 64 } + o.digests.count * 80
            + (o.outcome == nil ? 0 : 256)
    }
}
