// TensorBoard event files for `tessera metrics JOB --tensorboard DIR`: one file per shard, which TensorBoard (and
// anything that reads its format: tbparse, the W&B and MLflow importers) shows as a run of scalar series.
//
// The format, as TensorBoard reads it (tensorboard/compat/proto/event.proto, summary.proto; the TFRecord framing of
// tensorboard/compat/tensorflow_stub/pywrap_tensorflow.py):
//   file   = record*
//   record = length: UInt64 LE, masked_crc32c(length bytes): UInt32 LE, data, masked_crc32c(data): UInt32 LE
//   masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8, c = CRC-32C (Castagnoli) of x
//   data   = a serialized `Event`: wall_time (field 1, double), step (2, int64), file_version (3, string: the first
//            event of a file says "brain.Event:2"), summary (5, message Summary { repeated Value value = 1 }),
//            Value { tag = 1 (string), simple_value = 2 (float) }.
// Scalars are float32 in this format (`simple_value`), so a double metric is rounded to the nearest float.
// ops/interop/tensorboard_check.py reads what this writes with TensorBoard's own reader.

public enum TensorBoard {
    /// One file's bytes: the version event, then one event per scalar, in the order they are added.
    public struct EventFile: Sendable {
        public private(set) var bytes: [UInt8] = []
        public let wallTime: Double

        public init(wallTime: Double) {
            self.wallTime = wallTime
            var e = ProtoWriter()
            e.double(field: 1, wallTime)
            e.string(field: 3, "brain.Event:2")
            bytes += TensorBoard.record(e.bytes)
        }

        /// Adds `tag` = `value` at `step` (the value rounded to a float, as `simple_value` holds it).
        public mutating func addScalar(tag: String, step: Int64, value: Double) {
            var v = ProtoWriter()
            v.string(field: 1, tag)
            v.float(field: 2, Float(value))
            var s = ProtoWriter()
            s.message(field: 1, v.bytes)
            var e = ProtoWriter()
            e.double(field: 1, wallTime)
            e.int64(field: 2, step)
            e.message(field: 5, s.bytes)
            bytes += TensorBoard.record(e.bytes)
        }
    }

    /// One TFRecord: the data framed by its length and the two masked CRC-32Cs.
    public static func record(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.count + 16)
        let length = UInt64(data.count)
        let lengthBytes = (0..<8).map { UInt8(truncatingIfNeeded: length >> (8 * $0)) }
        out += lengthBytes
        appendLE(maskedCRC32C(lengthBytes), to: &out)
        out += data
        appendLE(maskedCRC32C(data), to: &out)
        return out
    }

    /// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses it.
    public static func crc32c(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    public static func maskedCRC32C(_ bytes: [UInt8]) -> UInt32 {
        let c = crc32c(bytes)
        return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
    }

    private static let crcTable: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        return c
    }

    private static func appendLE(_ v: UInt32, to out: inout [UInt8]) {
        for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
    }
}

/// The few protobuf encodings an Event needs (proto3 wire format: a key = field << 3 | wire type, then the value).
struct ProtoWriter {
    var bytes: [UInt8] = []

    mutating func varint(_ v: UInt64) {
        var v = v
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func key(_ field: Int, _ wireType: UInt64) { varint(UInt64(field) << 3 | wireType) }

    /// int64: a varint of the two's-complement bits (a negative step takes 10 bytes).
    mutating func int64(field: Int, _ v: Int64) {
        key(field, 0)
        varint(UInt64(bitPattern: v))
    }

    mutating func double(field: Int, _ v: Double) {
        key(field, 1)
        let b = v.bitPattern
        for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: b >> (8 * i))) }
    }

    mutating func float(field: Int, _ v: Float) {
        key(field, 5)
        let b = v.bitPattern
        for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: b >> (8 * i))) }
    }

    mutating func bytesField(field: Int, _ data: [UInt8]) {
        key(field, 2)
        varint(UInt64(data.count))
        bytes += data
    }

    mutating func string(field: Int, _ s: String) { bytesField(field: field, Array(s.utf8)) }
    mutating func message(field: Int, _ m: [UInt8]) { bytesField(field: field, m) }
}
