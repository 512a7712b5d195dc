// safetensors reader and writer (WORKLOADS.md §7; huggingface/safetensors README "Format" and tensor.rs).
//
// File layout: 8 bytes N (u64 little-endian), N bytes of UTF-8 JSON header, then the byte buffer.
// The header maps tensor name -> {"dtype","shape","data_offsets":[begin,end]} (offsets relative to the buffer start)
// plus an optional "__metadata__" string -> string map. We write exactly what the Rust writer writes: tensors sorted by
// dtype alignment (descending) then by name, laid out back to back, "__metadata__" first in the header, compact JSON,
// padded with spaces to a multiple of 8 so every tensor's data is 8-aligned. The reader is strict: it rejects anything
// the Rust reader rejects (and duplicate keys, which serde would silently accept), with a precise reason.

import TesseraJSON

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Dtype

/// Element types of the safetensors format. Raw values are the header spellings.
public enum SafeTensorDType: String, Sendable, CaseIterable {
    case BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64
    case F8_E5M2, F8_E4M3, F8_E8M0, C64
    case F4, F6_E2M3, F6_E3M2

    /// Bits per element (sub-byte types F4/F6 pack elements; a tensor's bit count must then be a whole number of bytes).
    public var bitWidth: Int {
        switch self {
        case .F4: 4
        case .F6_E2M3, .F6_E3M2: 6
        case .BOOL, .U8, .I8, .F8_E5M2, .F8_E4M3, .F8_E8M0: 8
        case .I16, .U16, .F16, .BF16: 16
        case .I32, .U32, .F32: 32
        case .F64, .I64, .U64, .C64: 64
        }
    }

    /// Position in the Rust `Dtype` enum, which is declared in increasing alignment order; the writer sorts
    /// tensors by this rank, descending, then by name.
    var writerRank: Int {
        switch self {
        case .BOOL: 0
        case .F4: 1
        case .F6_E2M3: 2
        case .F6_E3M2: 3
        case .U8: 4
        case .I8: 5
        case .F8_E5M2: 6
        case .F8_E4M3: 7
        case .F8_E8M0: 8
        case .I16: 9
        case .U16: 10
        case .F16: 11
        case .BF16: 12
        case .I32: 13
        case .U32: 14
        case .F32: 15
        case .C64: 16
        case .F64: 17
        case .I64: 18
        case .U64: 19
        }
    }

    /// Byte count of `numel` elements, or nil on overflow or a partial trailing byte.
    func byteCount(numel: Int) -> Int? {
        let (bits, overflow) = numel.multipliedReportingOverflow(by: bitWidth)
        if overflow || bits % 8 != 0 { return nil }
        return bits / 8
    }
}

// MARK: - Error

/// Every failure of the safetensors reader, writer and accessors. `code` is stable; `message` names the offending
/// tensor, field or byte position.
public struct SafeTensorsError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case headerTooSmall, headerTooLarge, invalidHeaderLength, invalidHeaderUTF8, invalidHeaderStart
            case invalidJSON, duplicateKey, invalidTensorInfo, unknownDtype, invalidOffsets, sizeMismatch
            case incompleteBuffer, overflow, invalidMetadata, invalidTensor, dtypeMismatch, io
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// Fewer than 8 bytes: no room for the header length.
        public static let headerTooSmall = Code(.headerTooSmall)
        /// The declared header length exceeds 100,000,000 bytes.
        public static let headerTooLarge = Code(.headerTooLarge)
        /// The declared header runs past the end of the input.
        public static let invalidHeaderLength = Code(.invalidHeaderLength)
        /// The header is not valid UTF-8.
        public static let invalidHeaderUTF8 = Code(.invalidHeaderUTF8)
        /// The header does not start with '{'.
        public static let invalidHeaderStart = Code(.invalidHeaderStart)
        /// The header is not valid JSON (or not an object).
        public static let invalidJSON = Code(.invalidJSON)
        /// A key appears twice in a JSON object (or twice in the tensor list given to the writer).
        public static let duplicateKey = Code(.duplicateKey)
        /// A tensor entry lacks a field or has one of the wrong type.
        public static let invalidTensorInfo = Code(.invalidTensorInfo)
        /// A dtype name this reader cannot size.
        public static let unknownDtype = Code(.unknownDtype)
        /// Data offsets overlap, leave a hole, or end before they begin.
        public static let invalidOffsets = Code(.invalidOffsets)
        /// A tensor's byte range does not match numel x dtype size.
        public static let sizeMismatch = Code(.sizeMismatch)
        /// The buffer is not exactly covered: 8 + N + last end != input size.
        public static let incompleteBuffer = Code(.incompleteBuffer)
        /// numel or byte count overflows.
        public static let overflow = Code(.overflow)
        /// "__metadata__" is not a string -> string map.
        public static let invalidMetadata = Code(.invalidMetadata)
        /// A tensor built in memory is inconsistent (bad shape, byte count, reserved name).
        public static let invalidTensor = Code(.invalidTensor)
        /// A typed accessor was called on a tensor of another dtype.
        public static let dtypeMismatch = Code(.dtypeMismatch)
        /// A file-system call failed; `errno` is set.
        public static let io = Code(.io)

        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String
    /// The C errno for `.io` errors.
    public var errno: Int32?

    public init(_ code: Code, _ message: String, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    public var description: String {
        if let errno { return "safetensors \(code): \(message) (errno \(errno): \(String(cString: strerror(errno))))" }
        return "safetensors \(code): \(message)"
    }
}

// MARK: - Tensor

/// One named tensor: dtype, shape and its raw little-endian, row-major bytes.
public struct SafeTensor: Sendable, Equatable {
    public var name: String
    public var dtype: SafeTensorDType
    public var shape: [Int]
    public var bytes: [UInt8]

    /// Checks that every dimension is non-negative and `bytes.count == numel * dtype size`.
    public init(name: String, dtype: SafeTensorDType, shape: [Int], bytes: [UInt8]) throws {
        guard name != "__metadata__" else {
            throw SafeTensorsError(.invalidTensor, "the tensor name \"__metadata__\" is reserved")
        }
        guard let numel = SafeTensor.numel(shape) else {
            throw SafeTensorsError(.invalidTensor, "tensor \"\(name)\": invalid shape \(shape)")
        }
        guard let expected = dtype.byteCount(numel: numel) else {
            throw SafeTensorsError(.invalidTensor, "tensor \"\(name)\": \(numel) x \(dtype.rawValue) is not a whole byte count")
        }
        guard expected == bytes.count else {
            throw SafeTensorsError(
                .invalidTensor,
                "tensor \"\(name)\": shape \(shape) \(dtype.rawValue) needs \(expected) bytes, got \(bytes.count)"
            )
        }
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    public init(name: String, float32: [Float], shape: [Int]) throws {
        try self.init(name: name, dtype: .F32, shape: shape, bytes: SafeTensor.leBytes(float32.map(\.bitPattern)))
    }

    public init(name: String, float64: [Double], shape: [Int]) throws {
        try self.init(name: name, dtype: .F64, shape: shape, bytes: SafeTensor.leBytes(float64.map(\.bitPattern)))
    }

    public init(name: String, int64: [Int64], shape: [Int]) throws {
        try self.init(name: name, dtype: .I64, shape: shape, bytes: SafeTensor.leBytes(int64))
    }

    /// Non-negative integers (counts) in the narrowest dtype that holds the largest: U8, U16, U32, else I64.
    /// `countValues()` reads them back whatever that dtype is.
    public init(name: String, counts: [Int64], shape: [Int]) throws {
        let largest = counts.max() ?? 0
        guard counts.allSatisfy({ $0 >= 0 }) else {
            throw SafeTensorsError(.invalidTensor, "tensor \"\(name)\": counts must not be negative")
        }
        if largest <= Int64(UInt8.max) {
            try self.init(name: name, dtype: .U8, shape: shape, bytes: counts.map { UInt8($0) })
        } else if largest <= Int64(UInt16.max) {
            try self.init(name: name, dtype: .U16, shape: shape, bytes: SafeTensor.leBytes(counts.map { UInt16($0) }))
        } else if largest <= Int64(UInt32.max) {
            try self.init(name: name, dtype: .U32, shape: shape, bytes: SafeTensor.leBytes(counts.map { UInt32($0) }))
        } else {
            try self.init(name: name, int64: counts, shape: shape)
        }
    }

    /// The number of elements (1 for a scalar, shape []).
    public var elementCount: Int { shape.reduce(1, *) }

    public func float32Values() throws -> [Float] {
        try expect(.F32)
        return SafeTensor.fromLE(bytes, as: UInt32.self).map(Float.init(bitPattern:))
    }

    public func float64Values() throws -> [Double] {
        try expect(.F64)
        return SafeTensor.fromLE(bytes, as: UInt64.self).map(Double.init(bitPattern:))
    }

    public func int64Values() throws -> [Int64] {
        try expect(.I64)
        return SafeTensor.fromLE(bytes, as: Int64.self)
    }

    /// The values of a U8, U16, U32 or I64 tensor as Int64 (see `init(name:counts:shape:)`).
    public func countValues() throws -> [Int64] {
        switch dtype {
        case .U8: return bytes.map { Int64($0) }
        case .U16: return SafeTensor.fromLE(bytes, as: UInt16.self).map { Int64($0) }
        case .U32: return SafeTensor.fromLE(bytes, as: UInt32.self).map { Int64($0) }
        case .I64: return SafeTensor.fromLE(bytes, as: Int64.self)
        default:
            throw SafeTensorsError(
                .dtypeMismatch, "tensor \"\(name)\" is \(dtype.rawValue), not one of U8, U16, U32, I64")
        }
    }

    private func expect(_ dtype: SafeTensorDType) throws {
        guard self.dtype == dtype else {
            throw SafeTensorsError(
                .dtypeMismatch, "tensor \"\(name)\" is \(self.dtype.rawValue), not \(dtype.rawValue)")
        }
    }

    static func numel(_ shape: [Int]) -> Int? {
        var n = 1
        for d in shape {
            guard d >= 0 else { return nil }
            let (p, o) = n.multipliedReportingOverflow(by: d)
            if o { return nil }
            n = p
        }
        return n
    }

    static func leBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
        let size = MemoryLayout<T>.size
        var out = [UInt8](repeating: 0, count: values.count * size)
        out.withUnsafeMutableBytes { raw in
            for (i, v) in values.enumerated() {
                raw.storeBytes(of: v.littleEndian, toByteOffset: i * size, as: T.self)
            }
        }
        return out
    }

    static func fromLE<T: FixedWidthInteger>(_ bytes: [UInt8], as: T.Type) -> [T] {
        let size = MemoryLayout<T>.size
        let count = bytes.count / size
        return bytes.withUnsafeBytes { raw in
            (0..<count).map { T(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * size, as: T.self)) }
        }
    }
}

// MARK: - File

/// A safetensors file in memory: tensors plus the `__metadata__` map.
///
/// Equality treats the file as what it is on disk, a map: two files are equal when they have the same metadata and the
/// same tensors by name, whatever the order of `tensors`.
public struct SafeTensorsFile: Sendable, Equatable {
    public var tensors: [SafeTensor]
    public var metadata: [String: String]

    /// The spec's cap on the header length.
    public static let maxHeaderSize = 100_000_000

    public init(tensors: [SafeTensor], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    public subscript(name: String) -> SafeTensor? {
        tensors.first { $0.name == name }
    }

    public static func == (a: SafeTensorsFile, b: SafeTensorsFile) -> Bool {
        guard a.metadata == b.metadata, a.tensors.count == b.tensors.count else { return false }
        let sortedA = a.tensors.sorted { $0.name < $1.name }
        let sortedB = b.tensors.sorted { $0.name < $1.name }
        return sortedA == sortedB
    }

    /// Throws `.duplicateKey` or `.invalidTensor` if the file cannot be serialized.
    public func validate() throws {
        var seen = Set<String>()
        for t in tensors {
            guard seen.insert(t.name).inserted else {
                throw SafeTensorsError(.duplicateKey, "tensor name \"\(t.name)\" appears twice")
            }
            // Fields are public and mutable, so re-check what init checked.
            _ = try SafeTensor(name: t.name, dtype: t.dtype, shape: t.shape, bytes: t.bytes)
        }
    }

    /// The tensors in the order the Rust writer lays them out: dtype alignment descending, then name (byte order).
    public var writerOrder: [SafeTensor] {
        tensors.sorted { l, r in
            if l.dtype.writerRank != r.dtype.writerRank { return l.dtype.writerRank > r.dtype.writerRank }
            return Array(l.name.utf8).lexicographicallyPrecedes(Array(r.name.utf8))
        }
    }

    /// The JSON header, unpadded: what the Rust writer (serde_json) writes, byte for byte. Metadata keys are sorted
    /// (the Rust writer uses a HashMap, so any order is valid).
    func headerJSON(ordered: [SafeTensor]) -> [UInt8] {
        var header = JSONObject()
        if !metadata.isEmpty {
            var meta = JSONObject()
            for key in metadata.keys.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) {
                meta[key] = .string(metadata[key]!)
            }
            header["__metadata__"] = .object(meta)
        }
        var offset = 0
        for t in ordered {
            header[t.name] = .object([
                "dtype": .string(t.dtype.rawValue),
                "shape": .array(t.shape.map { .number(JSONNumber(exactly: $0)) }),
                "data_offsets": .array([
                    .number(JSONNumber(exactly: offset)), .number(JSONNumber(exactly: offset + t.bytes.count)),
                ]),
            ])
            offset += t.bytes.count
        }
        // serde_json spells U+0008 and U+000C as \b and \f.
        return Array(JSONValue.object(header).render(shortEscapes: true).utf8)
    }

    /// The complete file bytes. Precondition: `validate()` passes (unique names, consistent tensors); `write` checks it.
    public func serialize() -> [UInt8] {
        do { try validate() } catch { preconditionFailure("SafeTensorsFile.serialize: \(error)") }
        let ordered = writerOrder
        var header = headerJSON(ordered: ordered)
        while header.count % 8 != 0 { header.append(0x20) }
        let dataSize = ordered.reduce(0) { $0 + $1.bytes.count }
        var out: [UInt8] = []
        out.reserveCapacity(8 + header.count + dataSize)
        out.append(contentsOf: SafeTensor.leBytes([UInt64(header.count)]))
        out.append(contentsOf: header)
        for t in ordered { out.append(contentsOf: t.bytes) }
        return out
    }

    /// Parses and validates a complete file. Tensors come back in file (offset) order.
    public static func parse(_ bytes: [UInt8]) throws -> SafeTensorsFile {
        try bytes.withUnsafeBufferPointer { try parse(buffer: $0) }
    }

    static func parse(buffer: UnsafeBufferPointer<UInt8>) throws -> SafeTensorsFile {
        guard buffer.count >= 8 else {
            throw SafeTensorsError(.headerTooSmall, "input is \(buffer.count) bytes; the 8-byte header length is missing")
        }
        var n64: UInt64 = 0
        for i in 0..<8 { n64 |= UInt64(buffer[i]) << (8 * UInt64(i)) }
        guard n64 <= UInt64(maxHeaderSize) else {
            throw SafeTensorsError(.headerTooLarge, "header length \(n64) exceeds \(maxHeaderSize)")
        }
        let n = Int(n64)
        guard 8 + n <= buffer.count else {
            throw SafeTensorsError(
                .invalidHeaderLength, "header length \(n) runs past the end of the \(buffer.count)-byte input")
        }
        let headerBytes = UnsafeBufferPointer(rebasing: buffer[8..<(8 + n)])
        guard validUTF8(headerBytes) else {
            throw SafeTensorsError(.invalidHeaderUTF8, "header is not valid UTF-8")
        }
        guard n > 0, headerBytes[0] == UInt8(ascii: "{") else {
            throw SafeTensorsError(.invalidHeaderStart, "header must start with '{'")
        }
        // Strict: RFC 8259 numbers with their literals (shapes and offsets must be plain integers, read exactly), and
        // duplicate keys rejected, which serde would silently accept.
        let root: JSONValue
        do { root = try JSONValue.parse(buffer: headerBytes, options: .strict) } catch let e as JSONError {
            if let key = e.duplicateKey {
                throw SafeTensorsError(.duplicateKey, "duplicate key \"\(key)\" in header JSON at byte \(e.offset)")
            }
            throw SafeTensorsError(.invalidJSON, "header JSON: \(e.message) at byte \(e.offset)")
        }
        guard case .object(let entries) = root else {
            throw SafeTensorsError(.invalidJSON, "header JSON is not an object")
        }

        var metadata: [String: String] = [:]
        struct Info { var name: String; var dtype: SafeTensorDType; var shape: [Int]; var begin: Int; var end: Int }
        var infos: [Info] = []
        infos.reserveCapacity(entries.pairs.count)
        for (key, value) in entries.pairs {
            if key == "__metadata__" {
                switch value {
                case .null: break
                case .object(let pairs):
                    for (k, v) in pairs.pairs {
                        guard case .string(let s) = v else {
                            throw SafeTensorsError(.invalidMetadata, "__metadata__[\"\(k)\"] is not a string")
                        }
                        metadata[k] = s
                    }
                default:
                    throw SafeTensorsError(.invalidMetadata, "__metadata__ is not an object of strings")
                }
                continue
            }
            guard case .object(let fields) = value else {
                throw SafeTensorsError(.invalidTensorInfo, "tensor \"\(key)\": entry is not an object")
            }
            var dtype: SafeTensorDType?
            var shape: [Int]?
            var offsets: [Int]?
            for (f, v) in fields.pairs {
                switch f {
                case "dtype":
                    guard case .string(let s) = v else {
                        throw SafeTensorsError(.invalidTensorInfo, "tensor \"\(key)\": dtype is not a string")
                    }
                    guard let d = SafeTensorDType(rawValue: s) else {
                        throw SafeTensorsError(.unknownDtype, "tensor \"\(key)\": unknown dtype \"\(s)\"")
                    }
                    dtype = d
                case "shape":
                    shape = try unsignedArray(v, tensor: key, field: "shape")
                case "data_offsets":
                    let o = try unsignedArray(v, tensor: key, field: "data_offsets")
                    guard o.count == 2 else {
                        throw SafeTensorsError(
                            .invalidTensorInfo, "tensor \"\(key)\": data_offsets has \(o.count) entries, not 2")
                    }
                    offsets = o
                default:
                    break  // Unknown fields are ignored, as the Rust reader does.
                }
            }
            guard let dtype else { throw SafeTensorsError(.invalidTensorInfo, "tensor \"\(key)\": missing dtype") }
            guard let shape else { throw SafeTensorsError(.invalidTensorInfo, "tensor \"\(key)\": missing shape") }
            guard let offsets else {
                throw SafeTensorsError(.invalidTensorInfo, "tensor \"\(key)\": missing data_offsets")
            }
            infos.append(Info(name: key, dtype: dtype, shape: shape, begin: offsets[0], end: offsets[1]))
        }

        infos.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var position = 0
        for info in infos {
            guard info.begin == position, info.end >= info.begin else {
                throw SafeTensorsError(
                    .invalidOffsets,
                    "tensor \"\(info.name)\": data_offsets [\(info.begin), \(info.end)] do not start at \(position)"
                        + " (overlap or hole)")
            }
            guard let numel = SafeTensor.numel(info.shape), let size = info.dtype.byteCount(numel: numel) else {
                throw SafeTensorsError(.overflow, "tensor \"\(info.name)\": shape \(info.shape) overflows")
            }
            guard info.end - info.begin == size else {
                throw SafeTensorsError(
                    .sizeMismatch,
                    "tensor \"\(info.name)\": \(info.dtype.rawValue) \(info.shape) needs \(size) bytes,"
                        + " data_offsets span \(info.end - info.begin)")
            }
            position = info.end
        }
        let (total, overflow) = (8 + n).addingReportingOverflow(position)
        guard !overflow, total == buffer.count else {
            throw SafeTensorsError(
                .incompleteBuffer,
                "header declares \(position) data bytes, input holds \(buffer.count - 8 - n) after the header")
        }

        let base = 8 + n
        var tensors: [SafeTensor] = []
        tensors.reserveCapacity(infos.count)
        for info in infos {
            let data = Array(buffer[(base + info.begin)..<(base + info.end)])
            tensors.append(try SafeTensor(name: info.name, dtype: info.dtype, shape: info.shape, bytes: data))
        }
        return SafeTensorsFile(tensors: tensors, metadata: metadata)
    }

    private static func unsignedArray(_ v: JSONValue, tensor: String, field: String) throws -> [Int] {
        guard case .array(let items) = v else {
            throw SafeTensorsError(.invalidTensorInfo, "tensor \"\(tensor)\": \(field) is not an array")
        }
        return try items.map { item in
            // Digits only, as the Rust reader's usize fields demand: no sign, fraction or exponent (`2.0`, `2e0`).
            guard case .number(let n) = item, let u = n.unsignedIntegerLiteral, let x = Int(exactly: u) else {
                throw SafeTensorsError(
                    .invalidTensorInfo, "tensor \"\(tensor)\": \(field) holds a value that is not a non-negative integer")
            }
            return x
        }
    }

    private static func validUTF8(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var it = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&it) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    // MARK: Files

    /// Writes atomically: a temporary file in the same directory, fsync, rename over `path`, fsync the directory.
    public func write(toPath path: String) throws {
        try validate()
        let bytes = serialize()
        try FileIO.atomicWrite(bytes, toPath: path)
    }

    public static func read(path: String) throws -> SafeTensorsFile {
        try parse(FileIO.readAll(path: path))
    }
}

// MARK: - File I/O

enum FileIO {
    static func fail(_ what: String, _ path: String) -> SafeTensorsError {
        SafeTensorsError(.io, "\(what) \"\(path)\"", errno: errno)
    }

    static func readAll(path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw fail("cannot open", path) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw fail("cannot stat", path) }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        try out.withUnsafeMutableBytes { raw in
            while done < raw.count {
                let r = Glibc_read(fd, raw.baseAddress! + done, raw.count - done)
                if r < 0 {
                    if errno == EINTR { continue }
                    throw fail("cannot read", path)
                }
                if r == 0 { break }  // The file shrank while we read it.
                done += r
            }
        }
        if done < out.count { out.removeSubrange(done...) }
        // Pick up bytes appended after fstat, so the parser sees the whole file.
        var extra = [UInt8](repeating: 0, count: 65536)
        while true {
            let r = extra.withUnsafeMutableBytes { Glibc_read(fd, $0.baseAddress!, $0.count) }
            if r < 0 {
                if errno == EINTR { continue }
                throw fail("cannot read", path)
            }
            if r == 0 { break }
            out.append(contentsOf: extra[0..<r])
        }
        return out
    }

    static func atomicWrite(_ bytes: [UInt8], toPath path: String) throws {
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { String(path[..<$0]).isEmpty ? "/" : String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        var tmp = ""
        var fd: Int32 = -1
        for attempt in 0..<100 {
            tmp = "\(dir)/.\(base).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))-\(attempt)"
            fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            if fd >= 0 || errno != EEXIST { break }
        }
        guard fd >= 0 else { throw fail("cannot create temporary file", tmp) }
        var ok = false
        defer {
            if fd >= 0 { close(fd) }
            if !ok { unlink(tmp) }
        }
        var done = 0
        try bytes.withUnsafeBytes { raw in
            while done < raw.count {
                let w = Glibc_write(fd, raw.baseAddress! + done, raw.count - done)
                if w < 0 {
                    if errno == EINTR { continue }
                    throw fail("cannot write", tmp)
                }
                done += w
            }
        }
        guard fsync(fd) == 0 else { throw fail("cannot fsync", tmp) }
        guard close(fd) == 0 else {
            fd = -1
            throw fail("cannot close", tmp)
        }
        fd = -1
        guard rename(tmp, path) == 0 else { throw fail("cannot rename temporary file onto", path) }
        ok = true
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            // The rename is done; a failed directory fsync only weakens durability, so it is not an error here.
            _ = fsync(dfd)
            close(dfd)
        }
    }
}

@inline(__always) private func Glibc_read(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ n: Int) -> Int {
    read(fd, p, n)
}

@inline(__always) private func Glibc_write(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int {
    write(fd, p, n)
}
