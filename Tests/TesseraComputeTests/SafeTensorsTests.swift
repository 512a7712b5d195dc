import Testing
import TesseraCompute

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@Suite struct SafeTensorsTests {
    /// Builds a raw file: 8-byte length, the header text exactly as given, then `data`.
    static func raw(_ header: String, data: [UInt8] = []) -> [UInt8] {
        let h = Array(header.utf8)
        var out: [UInt8] = []
        var n = UInt64(h.count)
        for _ in 0..<8 {
            out.append(UInt8(n & 0xFF))
            n >>= 8
        }
        return out + h + data
    }

    static func expectCode(_ code: SafeTensorsError.Code, _ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try SafeTensorsFile.parse(bytes)
            Issue.record("expected \(code), parse succeeded", sourceLocation: sourceLocation)
        } catch let e as SafeTensorsError {
            #expect(e.code == code, "\(e)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func roundTripMixedDtypes() throws {
        let file = SafeTensorsFile(
            tensors: [
                try SafeTensor(name: "layers.0.weight", float32: [1, -2, 3.5, .infinity, -0.0, .leastNonzeroMagnitude], shape: [2, 3]),
                try SafeTensor(name: "optim.step", int64: [42], shape: []),
                try SafeTensor(name: "schedule.betas", float64: [1e-4, 0.02], shape: [2]),
                try SafeTensor(name: "mask", dtype: .U8, shape: [3], bytes: [0, 1, 255]),
                try SafeTensor(name: "empty", float32: [], shape: [0, 4]),
            ],
            metadata: ["format": "worker-ckpt/1", "config": "{\"a\": \"b\\n\"}\n\u{1}é"]
        )
        let bytes = file.serialize()
        let back = try SafeTensorsFile.parse(bytes)
        #expect(back == file)
        #expect(try back["layers.0.weight"]!.float32Values().map(\.bitPattern)
            == ([1, -2, 3.5, .infinity, -0.0, .leastNonzeroMagnitude] as [Float]).map(\.bitPattern))
        #expect(try back["optim.step"]!.int64Values() == [42])
        #expect(back["optim.step"]!.shape == [])
        #expect(try back["schedule.betas"]!.float64Values() == [1e-4, 0.02])
        #expect(back.metadata["config"] == "{\"a\": \"b\\n\"}\n\u{1}é")
        // Re-serializing is byte-identical (canonical output).
        #expect(back.serialize() == bytes)
        // Header length is a multiple of 8 and data is 8-aligned.
        let n = bytes[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        #expect(n % 8 == 0)
    }

    @Test func writerOrderIsAlignmentThenName() throws {
        let file = SafeTensorsFile(tensors: [
            try SafeTensor(name: "a", dtype: .U8, shape: [1], bytes: [7]),
            try SafeTensor(name: "z", float64: [1], shape: [1]),
            try SafeTensor(name: "b", float32: [1], shape: [1]),
            try SafeTensor(name: "c", int64: [1], shape: [1]),
            try SafeTensor(name: "a2", float32: [1], shape: [1]),
        ])
        #expect(file.writerOrder.map(\.name) == ["c", "z", "a2", "b", "a"])
        let parsed = try SafeTensorsFile.parse(file.serialize())
        #expect(parsed.tensors.map(\.name) == ["c", "z", "a2", "b", "a"])
    }

    /// Byte-exact against the Rust writer's own unit tests (huggingface/safetensors tensor.rs, test_serialization,
    /// test_empty): same header text, same padding.
    @Test func matchesRustWriterBytes() throws {
        let t = try SafeTensor(name: "attn.0", float32: [0, 1, 2, 3, 4, 5], shape: [1, 2, 3])
        let out = SafeTensorsFile(tensors: [t]).serialize()
        let header = "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}"
        #expect(out.count == 8 + 64 + 24)
        #expect(Array(out[0..<8]) == [64, 0, 0, 0, 0, 0, 0, 0])
        #expect(Array(out[8..<(8 + header.utf8.count)]) == Array(header.utf8))
        #expect(Array(out[(8 + header.utf8.count)..<72]) == [UInt8](repeating: 0x20, count: 64 - header.utf8.count))

        #expect(SafeTensorsFile(tensors: []).serialize() == [8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32])
        let meta = SafeTensorsFile(tensors: [], metadata: ["framework": "pt"]).serialize()
        #expect(meta == Self.raw("{\"__metadata__\":{\"framework\":\"pt\"}}     "))
    }

    @Test func readsForeignLayouts() throws {
        // Name-ordered (not alignment-ordered) offsets, null metadata, whitespace and an unknown field: all valid.
        let data = SafeTensor.bytesOf(float32: [1, 2]) + [9]
        let header = """
            { "__metadata__" : null, "w": {"shape": [2], "dtype": "F32", "data_offsets": [0, 8], "extra": true},
              "b\\u00e9\\ud83d\\ude00": {"dtype":"U8","shape":[1],"data_offsets":[8,9]} }\t\n
            """
        let f = try SafeTensorsFile.parse(Self.raw(header, data: data))
        #expect(f.metadata.isEmpty)
        #expect(try f["w"]!.float32Values() == [1, 2])
        #expect(f["bé😀"]!.bytes == [9])
    }

    @Test func rejectsMalformedCorpus() throws {
        let f32x2 = SafeTensor.bytesOf(float32: [1, 2])
        let good = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"
        #expect(throws: Never.self) { try SafeTensorsFile.parse(Self.raw(good, data: f32x2)) }

        Self.expectCode(.headerTooSmall, [])
        Self.expectCode(.headerTooSmall, [1, 0, 0])
        Self.expectCode(.headerTooLarge, [0, 0xE1, 0xF5, 0x05, 0x01, 0, 0, 0])  // 100,000,001 (+ high bits)
        Self.expectCode(.headerTooLarge, [UInt8](repeating: 0xFF, count: 8))
        Self.expectCode(.invalidHeaderLength, [100, 0, 0, 0, 0, 0, 0, 0] + Array("{}".utf8))
        Self.expectCode(.invalidHeaderUTF8, Self.raw("{\"\u{FF}\"}").enumerated().map { $0.offset == 10 ? 0xFF : $0.element })
        Self.expectCode(.invalidHeaderStart, Self.raw(" {}"))
        Self.expectCode(.invalidHeaderStart, Self.raw(""))
        Self.expectCode(.invalidHeaderStart, Self.raw("[]"))
        Self.expectCode(.invalidJSON, Self.raw("{"))
        Self.expectCode(.invalidJSON, Self.raw("{\"w\":}"))
        Self.expectCode(.invalidJSON, Self.raw("{} x"))
        Self.expectCode(.invalidJSON, Self.raw("{\"a\":\"\u{1}\"}"))
        Self.expectCode(.invalidJSON, Self.raw("{\"a\":\"\\ud800\"}"))
        Self.expectCode(.invalidJSON, Self.raw("{\"a\":" + String(repeating: "[", count: 200) + "}"))
        Self.expectCode(.duplicateKey, Self.raw("{\"w\":{},\"w\":{}}"))
        Self.expectCode(.invalidTensorInfo, Self.raw("{\"w\":3}"))
        Self.expectCode(.invalidTensorInfo, Self.raw("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", data: f32x2))
        Self.expectCode(.invalidTensorInfo, Self.raw("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", data: f32x2))
        Self.expectCode(.invalidTensorInfo, Self.raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", data: f32x2))
        Self.expectCode(.invalidTensorInfo, Self.raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", data: f32x2))
        Self.expectCode(.invalidTensorInfo, Self.raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", data: f32x2))
        Self.expectCode(.invalidTensorInfo, Self.raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", data: f32x2))
        Self.expectCode(.invalidTensorInfo, Self.raw("{\"w\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", data: f32x2))
        Self.expectCode(.unknownDtype, Self.raw("{\"w\":{\"dtype\":\"F31\",\"shape\":[2],\"data_offsets\":[0,8]}}", data: f32x2))
        Self.expectCode(.sizeMismatch, Self.raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", data: f32x2))
        Self.expectCode(.invalidOffsets, Self.raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", data: f32x2 + f32x2))
        Self.expectCode(.invalidOffsets, Self.raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", data: f32x2))
        Self.expectCode(.invalidOffsets, Self.raw(
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
            data: f32x2 + f32x2))
        Self.expectCode(.overflow, Self.raw(
            "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", data: f32x2))
        Self.expectCode(.incompleteBuffer, Self.raw(good, data: f32x2 + [0]))
        Self.expectCode(.incompleteBuffer, Self.raw(good, data: Array(f32x2.prefix(7))))
        Self.expectCode(.invalidMetadata, Self.raw("{\"__metadata__\":{\"a\":1}}"))
        Self.expectCode(.invalidMetadata, Self.raw("{\"__metadata__\":[]}"))

        // Every truncation of a valid file is rejected, never accepted or crashing.
        let valid = SafeTensorsFile(tensors: [try SafeTensor(name: "w", float32: [1, 2, 3], shape: [3])], metadata: ["k": "v"])
            .serialize()
        for cut in 0..<valid.count {
            #expect(throws: SafeTensorsError.self) { try SafeTensorsFile.parse(Array(valid.prefix(cut))) }
        }
    }

    @Test func tensorInitChecksByteCount() {
        #expect(throws: SafeTensorsError.self) { try SafeTensor(name: "w", float32: [1, 2, 3], shape: [2]) }
        #expect(throws: SafeTensorsError.self) { try SafeTensor(name: "w", dtype: .F32, shape: [-1], bytes: []) }
        #expect(throws: SafeTensorsError.self) { try SafeTensor(name: "__metadata__", float32: [], shape: [0]) }
        #expect(throws: SafeTensorsError.self) { try SafeTensor(name: "w", dtype: .F4, shape: [3], bytes: [0, 0]) }
        #expect(throws: Never.self) { try SafeTensor(name: "w", dtype: .F4, shape: [4], bytes: [0, 0]) }
        #expect(throws: SafeTensorsError.self) { try SafeTensor(name: "w", float32: [1], shape: [1]).float64Values() }
    }

    @Test func atomicWriteAndRead() throws {
        var template = Array("/tmp/tessera-st-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer {
            _ = unlink(dir + "/ckpt.safetensors")
            _ = rmdir(dir)
        }
        let path = dir + "/ckpt.safetensors"
        let a = SafeTensorsFile(tensors: [try SafeTensor(name: "w", float32: [1, 2], shape: [2])], metadata: ["step": "1"])
        try a.write(toPath: path)
        #expect(try SafeTensorsFile.read(path: path) == a)
        let b = SafeTensorsFile(tensors: [try SafeTensor(name: "w", float32: [3, 4, 5], shape: [3])], metadata: ["step": "2"])
        try b.write(toPath: path)
        #expect(try SafeTensorsFile.read(path: path) == b)
        // No temporary files left behind.
        let d = opendir(dir)!
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(d)
        #expect(names == ["ckpt.safetensors"])
        // Duplicate names are refused before anything touches the disk.
        let dup = SafeTensorsFile(tensors: a.tensors + a.tensors)
        #expect(throws: SafeTensorsError.self) { try dup.write(toPath: path) }
        #expect(throws: SafeTensorsError.self) { try SafeTensorsFile.read(path: dir + "/missing") }
    }
}

extension SafeTensor {
    static func bytesOf(float32 values: [Float]) -> [UInt8] {
        values.flatMap { v -> [UInt8] in
            let b = v.bitPattern
            return [UInt8(b & 0xFF), UInt8(b >> 8 & 0xFF), UInt8(b >> 16 & 0xFF), UInt8(b >> 24)]
        }
    }
}

@Suite("SafeTensors: counts")
struct SafeTensorCountsTests {
    @Test("counts take the narrowest unsigned dtype and read back exactly")
    func narrowest() throws {
        let cases: [([Int64], SafeTensorDType)] = [
            ([0, 3, 255], .U8), ([0, 256], .U16), ([65535, 1], .U16), ([65536], .U32),
            ([Int64(UInt32.max)], .U32), ([Int64(UInt32.max) + 1, 0], .I64), ([], .U8),
        ]
        for (values, dtype) in cases {
            let t = try SafeTensor(name: "h", counts: values, shape: [values.count])
            #expect(t.dtype == dtype)
            #expect(try t.countValues() == values)
        }
        #expect(throws: SafeTensorsError.self) { try SafeTensor(name: "h", counts: [-1], shape: [1]) }
        #expect(throws: SafeTensorsError.self) { try SafeTensor(name: "h", float64: [1], shape: [1]).countValues() }
    }
}
