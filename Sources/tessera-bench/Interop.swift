// `tessera-bench interop safetensors-write DIR` / `safetensors-read FILE`: the Swift half of the safetensors interop
// test (ops/interop/safetensors_interop.py drives it; hidden from help). Not a benchmark, but it needs an executable
// that links TesseraCompute and nothing else, which this is.
//
// write: DIR/tessera.safetensors holds tensors whose values follow formulas the Python side recomputes
//        independently: value(i) = ((i * 37) % 101 - 50) / 8 (exact in every float type), integers i * 37 % 101 - 50.
// read:  prints one JSON object per tensor, in name order ({"name","dtype","shape","values"}), then the metadata as
//        {"__metadata__": {...}}; exits 1 with the SafeTensorsError on stderr if the file is rejected.

import ArgumentParser
import Foundation
import TesseraCompute

struct Interop: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "interop",
        abstract: "Swift side of the safetensors interop test (used by ops/interop/safetensors_interop.py).",
        shouldDisplay: false
    )

    @Argument(help: "safetensors-write or safetensors-read") var action: String
    @Argument(help: "Directory (write) or file (read).") var path: String

    static func value(_ i: Int) -> Double { Double((i * 37) % 101 - 50) / 8 }
    static func int(_ i: Int) -> Int64 { Int64((i * 37) % 101 - 50) }

    func run() throws {
        switch action {
        case "safetensors-write": try write()
        case "safetensors-read": try read()
        default: throw ValidationError("unknown action \(action)")
        }
    }

    func write() throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let f32 = (0..<24).map { Float(Self.value($0)) }
        let f64 = (0..<6).map { Self.value($0) }
        let tensors = [
            try SafeTensor(name: "layers.0.weight", float32: f32, shape: [4, 6]),
            try SafeTensor(name: "layers.0.bias", float32: Array(f32.prefix(4)), shape: [4]),
            try SafeTensor(name: "schedule.betas", float64: f64, shape: [2, 3]),
            try SafeTensor(name: "optim.step", int64: [Self.int(5)], shape: []),
            try SafeTensor(name: "empty", float32: [], shape: [0, 3]),
            try SafeTensor(name: "mask", dtype: .U8, shape: [5], bytes: [0, 1, 2, 254, 255]),
            try SafeTensor(name: "idx", dtype: .I32, shape: [3], bytes: [1, 0, 0, 0, 255, 255, 255, 255, 7, 0, 0, 0]),
            try SafeTensor(name: "nonascii.é", float32: [1.5], shape: [1]),
        ]
        let meta = ["format": "worker-ckpt/1", "config": "{\"lr\": 0.001, \"note\": \"ü\\n\"}", "seed": "42"]
        try SafeTensorsFile(tensors: tensors, metadata: meta).write(toPath: "\(path)/tessera.safetensors")
        // The same tensors with one metadata entry, for a byte-for-byte comparison with Python's writer.
        try SafeTensorsFile(tensors: tensors, metadata: ["format": "pt"]).write(toPath: "\(path)/tessera_canonical.safetensors")
    }

    func read() throws {
        let file: SafeTensorsFile
        do {
            file = try SafeTensorsFile.read(path: path)
        } catch let e as SafeTensorsError {
            FileHandle.standardError.write(Data("\(e)\n".utf8))
            throw ExitCode(1)
        }
        func json(_ s: String) -> String {
            String(data: try! JSONSerialization.data(withJSONObject: s, options: [.fragmentsAllowed]), encoding: .utf8)!
        }
        // Python's json accepts these spellings of the non-finite values.
        func num(_ d: Double) -> String { d.isNaN ? "NaN" : d.isInfinite ? (d < 0 ? "-Infinity" : "Infinity") : d.description }
        for t in file.tensors.sorted(by: { $0.name < $1.name }) {
            let values: [String]
            switch t.dtype {
            case .F32: values = try t.float32Values().map { num(Double($0)) }
            case .F64: values = try t.float64Values().map(num)
            case .I64: values = try t.int64Values().map { $0.description }
            default: values = t.bytes.map { $0.description }  // raw bytes for other dtypes
            }
            let shape = t.shape.map(String.init).joined(separator: ",")
            print("{\"name\":\(json(t.name)),\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(shape)],\"values\":[\(values.joined(separator: ","))]}")
        }
        let meta = file.metadata.sorted { $0.key < $1.key }.map { "\(json($0.key)):\(json($0.value))" }
        print("{\"__metadata__\":{\(meta.joined(separator: ","))}}")
    }
}
