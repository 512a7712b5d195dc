// Little-endian primitives of the v1 body encoding (SPEC.md §2). Internal: only WireCodec uses them.

struct WireWriter {
    var bytes: [UInt8]

    init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    @inline(__always) mutating func u8(_ v: UInt8) { bytes.append(v) }
    @inline(__always) mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    @inline(__always) mutating func u16(_ v: UInt16) { integer(v) }
    @inline(__always) mutating func u32(_ v: UInt32) { integer(v) }
    @inline(__always) mutating func u64(_ v: UInt64) { integer(v) }
    @inline(__always) mutating func i32(_ v: Int32) { integer(v) }
    @inline(__always) mutating func i64(_ v: Int64) { integer(v) }
    @inline(__always) mutating func f64(_ v: Double) { integer(v.bitPattern) }

    @inline(__always) mutating func integer<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// u32 byte length, then the UTF-8 bytes (no terminator).
    mutating func string(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            u32(UInt32(truncatingIfNeeded: utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    /// u32 length, then the bytes.
    mutating func byteArray(_ b: [UInt8]) {
        u32(UInt32(truncatingIfNeeded: b.count))
        bytes.append(contentsOf: b)
    }

    mutating func array<T>(_ elements: [T], _ write: (inout WireWriter, T) -> Void) {
        u32(UInt32(truncatingIfNeeded: elements.count))
        for e in elements { write(&self, e) }
    }

    mutating func ref(_ r: ShardRef) {
        i64(r.jobID)
        i32(r.shardIndex)
        i32(r.attempt)
    }
}

struct WireReader {
    let bytes: [UInt8]
    private(set) var index: Int
    let type: MessageType
    let limits: ProtocolLimits

    init(_ bytes: [UInt8], type: MessageType, limits: ProtocolLimits) {
        self.bytes = bytes
        self.index = 0
        self.type = type
        self.limits = limits
    }

    var remaining: Int { bytes.count - index }

    func error(_ code: ProtocolError.Code, _ field: StaticString, _ detail: String) -> ProtocolError {
        ProtocolError(code: code, message: "\(type) \(field): \(detail)")
    }

    @inline(__always) mutating func need(_ n: Int, _ field: StaticString) throws(ProtocolError) {
        guard n <= remaining else {
            throw error(.truncated, field, "needs \(n) bytes at offset \(index), \(remaining) left")
        }
    }

    @inline(__always) mutating func integer<T: FixedWidthInteger>(_: T.Type, _ field: StaticString) throws(ProtocolError) -> T {
        let size = MemoryLayout<T>.size
        try need(size, field)
        let i = index
        let v = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: i, as: T.self) }
        index += size
        return T(littleEndian: v)
    }

    mutating func u8(_ f: StaticString) throws(ProtocolError) -> UInt8 { try integer(UInt8.self, f) }
    mutating func u16(_ f: StaticString) throws(ProtocolError) -> UInt16 { try integer(UInt16.self, f) }
    mutating func u32(_ f: StaticString) throws(ProtocolError) -> UInt32 { try integer(UInt32.self, f) }
    mutating func u64(_ f: StaticString) throws(ProtocolError) -> UInt64 { try integer(UInt64.self, f) }
    mutating func i32(_ f: StaticString) throws(ProtocolError) -> Int32 { try integer(Int32.self, f) }
    mutating func i64(_ f: StaticString) throws(ProtocolError) -> Int64 { try integer(Int64.self, f) }
    mutating func f64(_ f: StaticString) throws(ProtocolError) -> Double {
        Double(bitPattern: try integer(UInt64.self, f))
    }

    mutating func bool(_ f: StaticString) throws(ProtocolError) -> Bool {
        switch try u8(f) {
        case 0: return false
        case 1: return true
        case let v: throw error(.malformed, f, "bool must be 0 or 1, got \(v)")
        }
    }

    mutating func failureKind(_ f: StaticString) throws(ProtocolError) -> ShardFailureKind {
        let v = try u8(f)
        guard let k = ShardFailureKind(rawValue: v) else { throw error(.malformed, f, "failure must be 0, 1 or 2, got \(v)") }
        return k
    }

    mutating func ackStatus(_ f: StaticString) throws(ProtocolError) -> AckStatus {
        let v = try u8(f)
        guard let s = AckStatus(rawValue: v) else { throw error(.malformed, f, "status must be 0, 1 or 2, got \(v)") }
        return s
    }

    /// Reads a u32 length and checks it against `maximum` and the bytes left.
    mutating func length(_ f: StaticString, maximum: Int) throws(ProtocolError) -> Int {
        let n = Int(try u32(f))
        guard n <= maximum else { throw error(.oversize, f, "length \(n) exceeds limit \(maximum)") }
        try need(n, f)
        return n
    }

    mutating func string(_ f: StaticString) throws(ProtocolError) -> String {
        let n = try length(f, maximum: limits.maxStringBytes)
        let start = index
        index += n
        let s: String? = bytes.withUnsafeBufferPointer { buffer in
            let utf8 = UnsafeBufferPointer(rebasing: buffer[start..<start + n])
            // Fast path: ASCII needs no validation (the common case: names, reasons, hex digests).
            var ascii = true
            for b in utf8 where b >= 0x80 {
                ascii = false
                break
            }
            return ascii ? String(decoding: utf8, as: UTF8.self) : String(validating: utf8, as: UTF8.self)
        }
        guard let s else { throw error(.badUTF8, f, "invalid UTF-8 in \(n)-byte string") }
        return s
    }

    mutating func byteArray(_ f: StaticString) throws(ProtocolError) -> [UInt8] {
        let n = try length(f, maximum: limits.maxBodyBytes)
        let start = index
        index += n
        return Array(bytes[start..<start + n])
    }

    /// A sha256 as 64 lowercase hex characters; with `allowEmpty`, "" is accepted too.
    mutating func sha256(_ f: StaticString, allowEmpty: Bool) throws(ProtocolError) -> String {
        let n = try length(f, maximum: limits.maxStringBytes)
        if n == 0 && allowEmpty { return "" }
        let start = index
        index += n
        let valid = n == 64 && bytes.withUnsafeBufferPointer { buffer in
            for c in buffer[start..<start + 64] where !((c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66)) {
                return false
            }
            return true
        }
        guard valid else {
            throw error(.malformed, f, "must be 64 lowercase hex characters\(allowEmpty ? " or empty" : "")")
        }
        return bytes.withUnsafeBufferPointer { String(decoding: UnsafeBufferPointer(rebasing: $0[start..<start + 64]), as: UTF8.self) }
    }

    /// u32 count, then `count` elements; `minimumSize` is the smallest encoding of one element, so a
    /// huge count in a short frame fails before anything is allocated.
    mutating func array<T>(
        _ f: StaticString, minimumSize: Int, _ element: (inout WireReader) throws(ProtocolError) -> T
    ) throws(ProtocolError) -> [T] {
        let n = Int(try u32(f))
        guard n <= limits.maxArrayCount else {
            throw error(.oversize, f, "count \(n) exceeds limit \(limits.maxArrayCount)")
        }
        guard n * minimumSize <= remaining else {
            throw error(.truncated, f, "\(n) elements cannot fit in \(remaining) bytes")
        }
        var result: [T] = []
        result.reserveCapacity(n)
        for _ in 0..<n { result.append(try element(&self)) }
        return result
    }

    mutating func ref(_ f: StaticString) throws(ProtocolError) -> ShardRef {
        ShardRef(jobID: try i64(f), shardIndex: try i32(f), attempt: try i32(f))
    }

    func finish() throws(ProtocolError) {
        guard remaining == 0 else {
            throw ProtocolError(code: .trailingBytes, message: "\(type) body: \(remaining) bytes after the last field")
        }
    }
}
