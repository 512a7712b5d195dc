// safetensors reader and writer (WORKLOADS.md §7; huggingface/safetensors README "Format" and tensor.rs).
//
// File layout: 8 bytes N (u64 little-endian), N bytes of UTF-8 JSON header, then the byte buffer.
// The header maps tensor name -> {"dtype","shape","data_offsets":[begin,end]} (offsets relative to the buffer start)
// plus an optional "__metadata__" string -> string map. We write exactly what the Rust writer writes: tensors sorted by
// dtype alignment (descending) then by name, laid out back to back, "__metadata__" first in the header, compact JSON,
// padded with spaces to a multiple of 8 so every tensor's data is 8-aligned. The reader is strict: it rejects anything
// the Rust reader rejects (and duplicate keys, which serde would silently accept), with a precise reason.

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

    /// The JSON header, unpadded. Metadata keys are sorted (the Rust writer uses a HashMap, so any order is valid).
    func headerJSON(ordered: [SafeTensor]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64 + 96 * ordered.count)
        out.append(UInt8(ascii: "{"))
        var first = true
        if !metadata.isEmpty {
            JSONText.appendString("__metadata__", to: &out)
            out.append(UInt8(ascii: ":"))
            out.append(UInt8(ascii: "{"))
            for (i, key) in metadata.keys.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) })
                .enumerated()
            {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSONText.appendString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                JSONText.appendString(metadata[key]!, to: &out)
            }
            out.append(UInt8(ascii: "}"))
            first = false
        }
        var offset = 0
        for t in ordered {
            if !first { out.append(UInt8(ascii: ",")) }
            first = false
            JSONText.appendString(t.name, to: &out)
            out.append(contentsOf: Array(":{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[".utf8))
            out.append(contentsOf: Array(t.shape.map(String.init).joined(separator: ",").utf8))
            out.append(contentsOf: Array("],\"data_offsets\":[\(offset),\(offset + t.bytes.count)]}".utf8))
            offset += t.bytes.count
        }
        out.append(UInt8(ascii: "}"))
        return out
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
        var parser = JSONText.Parser(headerBytes)
        let root: JSONText.Value
        do { root = try parser.parseDocument() } catch let e as JSONText.ParseError {
            if e.duplicateKey != nil {
                throw SafeTensorsError(.duplicateKey, "duplicate key \"\(e.duplicateKey!)\" in header JSON at byte \(e.offset)")
            }
            throw SafeTensorsError(.invalidJSON, "header JSON: \(e.message) at byte \(e.offset)")
        }
        guard case .object(let entries) = root else {
            throw SafeTensorsError(.invalidJSON, "header JSON is not an object")
        }

        var metadata: [String: String] = [:]
        struct Info { var name: String; var dtype: SafeTensorDType; var shape: [Int]; var begin: Int; var end: Int }
        var infos: [Info] = []
        infos.reserveCapacity(entries.count)
        for (key, value) in entries {
            if key == "__metadata__" {
                switch value {
                case .null: break
                case .object(let pairs):
                    for (k, v) in pairs {
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
            for (f, v) in fields {
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

    private static func unsignedArray(_ v: JSONText.Value, tensor: String, field: String) throws -> [Int] {
        guard case .array(let items) = v else {
            throw SafeTensorsError(.invalidTensorInfo, "tensor \"\(tensor)\": \(field) is not an array")
        }
        return try items.map { item in
            guard case .number(let text) = item, let x = Int(text), x >= 0, text.allSatisfy({ $0.isASCII && $0.isNumber })
            else {
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

// MARK: - Minimal strict JSON (header only)

/// Just enough JSON for safetensors headers: it keeps object key order, rejects duplicate keys, keeps numbers as text,
/// and limits nesting depth so a hostile header cannot exhaust the stack.
enum JSONText {
    indirect enum Value {
        case object([(String, Value)])
        case array([Value])
        case string(String)
        case number(String)
        case bool(Bool)
        case null
    }

    struct ParseError: Error {
        var message: String
        var offset: Int
        var duplicateKey: String? = nil
    }

    static func appendString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
            case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
            case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
            case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: [0x5C, UInt8(ascii: "u"), 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 15)]])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    struct Parser {
        let bytes: UnsafeBufferPointer<UInt8>
        var i = 0
        static let maxDepth = 64

        init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        func error(_ message: String) -> ParseError { ParseError(message: message, offset: i) }

        mutating func skipSpace() {
            while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0A || bytes[i] == 0x0D {
                i += 1
            }
        }

        mutating func parseDocument() throws -> Value {
            skipSpace()
            let v = try parseValue(depth: 0)
            skipSpace()
            guard i == bytes.count else { throw error("trailing characters after the JSON value") }
            return v
        }

        mutating func parseValue(depth: Int) throws -> Value {
            guard depth < Parser.maxDepth else { throw error("nesting deeper than \(Parser.maxDepth)") }
            guard i < bytes.count else { throw error("unexpected end of header") }
            switch bytes[i] {
            case UInt8(ascii: "{"): return try parseObject(depth: depth)
            case UInt8(ascii: "["): return try parseArray(depth: depth)
            case UInt8(ascii: "\""): return .string(try parseString())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
            default: throw error("unexpected character '\(UnicodeScalar(bytes[i]))'")
            }
        }

        mutating func literal(_ word: String) throws {
            for b in word.utf8 {
                guard i < bytes.count, bytes[i] == b else { throw error("invalid literal, expected \(word)") }
                i += 1
            }
        }

        mutating func parseObject(depth: Int) throws -> Value {
            i += 1
            var pairs: [(String, Value)] = []
            var keys = Set<String>()
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
                i += 1
                return .object(pairs)
            }
            while true {
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw error("expected a string key") }
                let keyStart = i
                let key = try parseString()
                guard keys.insert(key).inserted else {
                    throw ParseError(message: "duplicate key", offset: keyStart, duplicateKey: key)
                }
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw error("expected ':'") }
                i += 1
                skipSpace()
                pairs.append((key, try parseValue(depth: depth + 1)))
                skipSpace()
                guard i < bytes.count else { throw error("unterminated object") }
                if bytes[i] == UInt8(ascii: ",") {
                    i += 1
                    continue
                }
                guard bytes[i] == UInt8(ascii: "}") else { throw error("expected ',' or '}'") }
                i += 1
                return .object(pairs)
            }
        }

        mutating func parseArray(depth: Int) throws -> Value {
            i += 1
            var items: [Value] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") {
                i += 1
                return .array(items)
            }
            while true {
                skipSpace()
                items.append(try parseValue(depth: depth + 1))
                skipSpace()
                guard i < bytes.count else { throw error("unterminated array") }
                if bytes[i] == UInt8(ascii: ",") {
                    i += 1
                    continue
                }
                guard bytes[i] == UInt8(ascii: "]") else { throw error("expected ',' or ']'") }
                i += 1
                return .array(items)
            }
        }

        mutating func hex4() throws -> UInt32 {
            guard i + 4 <= bytes.count else { throw error("truncated \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[i]
                let d: UInt32
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
                default: throw error("invalid hex digit in \\u escape")
                }
                v = v << 4 | d
                i += 1
            }
            return v
        }

        mutating func parseString() throws -> String {
            i += 1
            var out: [UInt8] = []
            while true {
                guard i < bytes.count else { throw error("unterminated string") }
                let c = bytes[i]
                if c == UInt8(ascii: "\"") {
                    i += 1
                    return String(decoding: out, as: UTF8.self)
                }
                if c < 0x20 { throw error("control character in string") }
                if c != UInt8(ascii: "\\") {
                    out.append(c)
                    i += 1
                    continue
                }
                i += 1
                guard i < bytes.count else { throw error("unterminated escape") }
                let e = bytes[i]
                i += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800..<0xDC00).contains(scalar) {
                        guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u")
                        else { throw error("lone high surrogate") }
                        i += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw error("invalid low surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..<0xE000).contains(scalar) {
                        throw error("lone low surrogate")
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw error("invalid unicode scalar") }
                    out.append(contentsOf: Array(String(Character(u)).utf8))
                default:
                    throw error("invalid escape '\\\(UnicodeScalar(e))'")
                }
            }
        }

        mutating func parseNumber() throws -> String {
            let start = i
            func digit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
            if bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard i < bytes.count, digit(bytes[i]) else { throw error("invalid number") }
            if bytes[i] == UInt8(ascii: "0") {
                i += 1
            } else {
                while i < bytes.count, digit(bytes[i]) { i += 1 }
            }
            if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
                i += 1
                guard i < bytes.count, digit(bytes[i]) else { throw error("invalid number fraction") }
                while i < bytes.count, digit(bytes[i]) { i += 1 }
            }
            if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
                i += 1
                if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
                guard i < bytes.count, digit(bytes[i]) else { throw error("invalid number exponent") }
                while i < bytes.count, digit(bytes[i]) { i += 1 }
            }
            return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
        }
    }
}
