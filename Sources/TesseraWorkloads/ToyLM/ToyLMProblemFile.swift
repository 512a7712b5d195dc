// Bring your own toy problem: `params.problem.file: NAME` names a job file (`files:`, docs/jobspec.md) in safetensors
// format whose tensors replace the tables ToyLMProblem would derive from the seed:
//
//   reward            [M, K]     r(x, y) for every context and response (K = V^L), as given (reward_scale unused)
//   reference_logits  [M P, V]   the frozen reference policy's logits, one row per (context, prefix) in the model's
//                                row order (ToyLMProblem.swift; with L = 1 simply [M, V]), as given (reference_scale
//                                unused)
//   features          [M, d]     the context feature vectors (context_type: features only); the derived tables that
//                                are not given are then computed from these
//
// Each may be F64 or F32 and must be finite; any subset of one or more may be given, the rest is derived from the
// seed as usual. The sizes the tensors imply (M, V, L, d) are the defaults of the problem's keys, and must agree with
// the keys that are given. Every response is still enumerable (K ≤ 4096), so the exact figures (KL to the optimum,
// frontier distance) are computed for the problem as brought. The problem's JSON (in the result and in every
// checkpoint's metadata) names the file: its name, path, sha256 and tensors.

import Foundation
import TesseraCompute
import TesseraCore

/// Tables of a toy problem brought in a job file. Two are equal when they come from the same file contents.
public struct ToyLMTables: Sendable, Hashable {
    public var name: String
    public var path: String
    public var sha256: String
    public var features: [Double]?
    public var referenceLogits: [Double]?
    public var reward: [Double]?

    var tensorNames: [String] {
        [("features", features), ("reference_logits", referenceLogits), ("reward", reward)].compactMap {
            $0.1 == nil ? nil : $0.0
        }
    }

    var json: JSONValue {
        .object([
            "name": .string(name), "path": .string(path), "sha256": .string(sha256),
            "tensors": .array(tensorNames.map { .string($0) }),
        ])
    }

    public static func == (a: ToyLMTables, b: ToyLMTables) -> Bool {
        a.sha256 == b.sha256 && a.tensorNames == b.tensorNames
    }
    public func hash(into h: inout Hasher) { h.combine(sha256) }
}

enum ToyLMProblemFile {
    static let tensorNames = ["reward", "reference_logits", "features"]

    /// Sizes a problem file implies (nil: it says nothing about that one).
    struct Sizes {
        var contexts: Int?
        var vocabulary: Int?
        var length: Int?
        var featureDimension: Int?
    }

    struct Read {
        var tables: ToyLMTables
        var sizes: Sizes
        var shapes: [String: [Int]]
        var path: String

        /// Every tensor has exactly the shape `spec` needs.
        func check(against spec: ToyLMSpec, params p: Params) throws {
            let M = spec.contexts, V = spec.vocabulary, K = spec.responses, P = spec.prefixes
            var want: [String: [Int]] = ["reward": [M, K], "reference_logits": [M * P, V]]
            if spec.contextKind == .features { want["features"] = [M, spec.featureDimension] }
            for (name, shape) in shapes.sorted(by: { $0.key < $1.key }) {
                guard let w = want[name], w == shape else {
                    throw p.error(
                        "file",
                        "\(path): tensor '\(name)' is \(shape); the problem (contexts \(M), vocab \(V), length \(spec.length)\(spec.contextKind == .features ? ", feature_dim \(spec.featureDimension)" : "")) needs \(want[name].map { "\($0)" } ?? "none")")
                }
            }
        }
    }

    static func read(_ p: Params, contextKind: ToyLMSpec.ContextKind) throws -> Read {
        let (file, bytes) = try p.file("file")
        func fail(_ m: String) -> SpecError { p.error("file", "\(file.path) (files.\(file.name)): \(m)") }
        let st: SafeTensorsFile
        do {
            st = try SafeTensorsFile.parse(bytes)
        } catch {
            throw fail("not a safetensors file: \(error)")
        }
        var values: [String: [Double]] = [:]
        var shapes: [String: [Int]] = [:]
        for t in st.tensors {
            guard tensorNames.contains(t.name) else {
                throw fail("unknown tensor '\(t.name)'; a problem file may hold \(tensorNames.joined(separator: ", "))")
            }
            if t.name == "features", contextKind != .features {
                throw fail("tensor 'features' needs params.problem.context_type: features")
            }
            guard t.shape.count == 2, t.shape.allSatisfy({ $0 > 0 }) else {
                throw fail("tensor '\(t.name)' has shape \(t.shape); it must be a non-empty matrix")
            }
            let v: [Double]
            switch t.dtype {
            case .F64: v = try t.float64Values()
            case .F32: v = try t.float32Values().map(Double.init)
            default: throw fail("tensor '\(t.name)' is \(t.dtype.rawValue); it must be F64 or F32")
            }
            if let i = v.firstIndex(where: { !$0.isFinite }) {
                throw fail("tensor '\(t.name)' has a non-finite value (\(v[i])) at flat index \(i)")
            }
            values[t.name] = v
            shapes[t.name] = t.shape
        }
        guard !values.isEmpty else { throw fail("no tensors; a problem file holds one or more of \(tensorNames.joined(separator: ", "))") }

        // Sizes: the keys given win; the tensors fill in the rest (and check() holds them to the result).
        var sizes = Sizes()
        var V = p.has("vocab") ? try p.int("vocab", range: 2...ToyLMSpec.maxResponses) : shapes["reference_logits"]?[1]
        var L = p.has("length") ? try p.int("length", range: 1...12) : nil
        if let K = shapes["reward"]?[1] {
            switch (V, L) {
            case (nil, nil): (V, L) = (K, 1)
            case (nil, let l?): V = integerRoot(K, l)
            case (let v?, nil): L = integerLog(K, base: v)
            default: break
            }
            if V == nil || L == nil {
                throw fail("tensor 'reward' has \(K) responses, which is not vocab^length for the vocab and length given")
            }
        }
        sizes.vocabulary = V
        sizes.length = L
        if let rows = shapes["reference_logits"]?[0], let v = V {
            let l = L ?? 1
            let prefixes = (0..<l).reduce((sum: 0, width: 1)) { a, _ in (a.sum + a.width, a.width * v) }.sum
            if rows % prefixes == 0 { sizes.contexts = rows / prefixes }
        }
        sizes.contexts = shapes["reward"]?[0] ?? shapes["features"]?[0] ?? sizes.contexts
        sizes.featureDimension = shapes["features"]?[1]
        return Read(
            tables: ToyLMTables(
                name: file.name, path: file.path, sha256: file.sha256 ?? "", features: values["features"],
                referenceLogits: values["reference_logits"], reward: values["reward"]),
            sizes: sizes, shapes: shapes, path: file.path)
    }

    static func integerRoot(_ k: Int, _ l: Int) -> Int? {
        guard l >= 1 else { return nil }
        let guess = Int((pow(Double(k), 1 / Double(l))).rounded())
        for v in max(2, guess - 1)...(guess + 1) where integerLog(k, base: v) == l { return v }
        return nil
    }

    static func integerLog(_ k: Int, base v: Int) -> Int? {
        guard v >= 2 else { return nil }
        var n = 1, l = 0
        while n < k {
            n *= v
            l += 1
        }
        return n == k && l >= 1 ? l : nil
    }
}
