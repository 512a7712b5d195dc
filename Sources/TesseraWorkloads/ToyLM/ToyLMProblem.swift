// The toy language model of WORKLOADS.md §2 (shared by every RL and preference algorithm; docs/training.md).
//
// M contexts x (tabular, or Gaussian feature vectors), responses y = (y_0 ... y_{L-1}) of L tokens from a vocabulary
// of V, with K = V^L <= 4096 so that every distribution over responses can be enumerated exactly. The reference
// policy is autoregressive with frozen random logits; the reward has a bilinear context-token term plus pairwise
// terms between neighbouring tokens. Everything here is a pure function of `ToyLMSpec` (its `seed` above all), uses
// no BLAS, and is cheap enough for the coordinator's merge to rebuild.
//
// Indexing. A response is the integer y = sum_t y_t V^(L-1-t) (first token most significant), so its prefix of
// length t is y / V^(L-t) and its token t is (y / V^(L-1-t)) % V. The prefixes of length t are the "nodes" of level t
// (V^t of them, numbered the same way); the model sees one row per (context, node): row = x P + offset_t + node,
// with P = sum_{t<L} V^t prefixes per context and offset_t = sum_{s<t} V^s. Tables over responses are [M, K] and
// tables over rows are [M P, V], row-major.
//
// Randomness: Philox(spec.seed; index, step = table id, stream 2 "data draw"), one `PhiloxStream` per index:
// table 0 = context features (index x, d normals), 1 = reference logits (tabular: index row, V normals; features:
// index node, V d normals), 2 = reward token term (tabular: index x, V normals; features: index v, d normals),
// 3 = pairwise reward (index u, V normals).

import Foundation
import TesseraCompute
import TesseraCore

/// The sizes, scales and seed that define one toy problem. Two equal specs give bitwise-identical problems.
public struct ToyLMSpec: Sendable, Hashable {
    public enum ContextKind: String, Sendable, CaseIterable {
        /// Context x is an index 0..<M; the policy sees it one-hot.
        case tabular
        /// Context x carries a Philox Gaussian feature vector in R^d; the policy sees the vector.
        case features
    }

    /// M, the number of contexts (uniformly weighted in every expectation).
    public var contexts: Int
    public var contextKind: ContextKind
    /// d, the feature dimension (features only; 0 for tabular).
    public var featureDimension: Int
    /// V, the vocabulary size.
    public var vocabulary: Int
    /// L, the response length in tokens (L = 1 is a contextual bandit).
    public var length: Int
    /// The Philox key of the problem (reference logits, reward, features).
    public var seed: UInt64
    /// Standard deviation of the reference logits.
    public var referenceScale: Double
    /// Overall scale of the reward.
    public var rewardScale: Double
    /// Weight of the pairwise term relative to the token term (used when L >= 2).
    public var pairwiseScale: Double
    /// Tables brought in a job file (`params.problem.file`, ToyLMProblemFile.swift) that replace the derived ones.
    public var tables: ToyLMTables? = nil

    /// K = V^L must stay enumerable.
    public static let maxResponses = 4096
    /// M P rows go through the policy network in one batch.
    public static let maxRows = 65_536
    public static let maxContexts = 4096
    public static let maxFeatureDimension = 256

    public init(
        contexts: Int, contextKind: ContextKind = .tabular, featureDimension: Int = 8, vocabulary: Int, length: Int = 1,
        seed: UInt64, referenceScale: Double = 1, rewardScale: Double = 1, pairwiseScale: Double = 0.5
    ) throws {
        guard (1...Self.maxContexts).contains(contexts) else {
            throw ToyLMError(.invalidProblem, "contexts is \(contexts); it must be between 1 and \(Self.maxContexts)")
        }
        guard vocabulary >= 2 else {
            throw ToyLMError(.invalidProblem, "vocab is \(vocabulary); it must be at least 2")
        }
        guard length >= 1 else { throw ToyLMError(.invalidProblem, "length is \(length); it must be at least 1") }
        var k = 1
        for _ in 0..<length {
            k *= vocabulary
            guard k <= Self.maxResponses else {
                throw ToyLMError(
                    .invalidProblem,
                    "vocab^length = \(vocabulary)^\(length) is more than \(Self.maxResponses) responses, so distributions "
                        + "could not be enumerated exactly")
            }
        }
        let prefixes = (k - 1) / (vocabulary - 1)
        guard contexts * prefixes <= Self.maxRows else {
            throw ToyLMError(
                .invalidProblem,
                "contexts x prefixes = \(contexts) x \(prefixes) = \(contexts * prefixes) network rows; the limit is \(Self.maxRows)"
            )
        }
        if contextKind == .features {
            guard (1...Self.maxFeatureDimension).contains(featureDimension) else {
                throw ToyLMError(
                    .invalidProblem,
                    "feature_dim is \(featureDimension); it must be between 1 and \(Self.maxFeatureDimension)")
            }
        }
        for (name, v, positive) in [
            ("reference_scale", referenceScale, false), ("reward_scale", rewardScale, true),
            ("pairwise_scale", pairwiseScale, false),
        ] {
            guard v.isFinite, positive ? v > 0 : v >= 0, v <= 100 else {
                throw ToyLMError(.invalidProblem, "\(name) is \(v); it must be \(positive ? "in (0" : "in [0"), 100]")
            }
        }
        self.contexts = contexts
        self.contextKind = contextKind
        self.featureDimension = contextKind == .features ? featureDimension : 0
        self.vocabulary = vocabulary
        self.length = length
        self.seed = seed
        self.referenceScale = referenceScale
        self.rewardScale = rewardScale
        self.pairwiseScale = pairwiseScale
    }

    /// K = V^L.
    public var responses: Int { (0..<length).reduce(1) { r, _ in r * vocabulary } }
    /// P = sum_{t<L} V^t, the prefixes (model rows) per context.
    public var prefixes: Int { (responses - 1) / (vocabulary - 1) }

    /// The spec as JSON (echoed in results and checkpoints; `seed` as a string when above 2^53).
    public var json: JSONValue {
        var o: JSONObject = [
            "contexts": .int(contexts), "context_type": .string(contextKind.rawValue),
        ]
        if contextKind == .features { o["feature_dim"] = .int(featureDimension) }
        o["vocab"] = .int(vocabulary)
        o["length"] = .int(length)
        o["seed"] = seed <= (1 << 53) ? .number(Double(seed)) : .string(String(seed))
        o["reference_scale"] = .number(referenceScale)
        o["reward_scale"] = .number(rewardScale)
        o["pairwise_scale"] = .number(pairwiseScale)
        if let tables { o["file"] = tables.json }
        return .object(o)
    }

    static let keys = [
        "contexts", "context_type", "feature_dim", "vocab", "length", "seed", "reference_scale", "reward_scale",
        "pairwise_scale", "file",
    ]

    /// Reads `params.problem` (every key optional): contexts 32, context_type tabular, feature_dim 8, vocab 16,
    /// length 1, seed = the job seed, reference_scale 1, reward_scale 1, pairwise_scale 0.5.
    ///
    /// `file: NAME` names a job file (safetensors) whose tensors replace derived tables (ToyLMProblemFile.swift);
    /// the sizes it implies are the defaults of `contexts`, `vocab`, `length` and `feature_dim`, and must agree with
    /// them when they are given.
    public static func parse(_ p: Params?, jobSeed: UInt64) throws -> ToyLMSpec {
        guard let p else { return try ToyLMSpec(contexts: 32, vocabulary: 16, seed: jobSeed) }
        try p.rejectUnknown(keys)
        let kind = ContextKind(
            rawValue: try p.string("context_type", default: "tabular", allowed: ContextKind.allCases.map(\.rawValue)))!
        if kind == .tabular, p.has("feature_dim") {
            throw p.error("feature_dim", "\(p.keyPath("feature_dim")) only applies to context_type: features")
        }
        let file = p.has("file") ? try ToyLMProblemFile.read(p, contextKind: kind) : nil
        let sizes = file?.sizes ?? ToyLMProblemFile.Sizes()
        do {
            var spec = try ToyLMSpec(
                contexts: try p.int("contexts", default: sizes.contexts ?? 32, range: 1...maxContexts), contextKind: kind,
                featureDimension: try p.int("feature_dim", default: sizes.featureDimension ?? 8, range: 1...maxFeatureDimension),
                vocabulary: try p.int("vocab", default: sizes.vocabulary ?? 16, range: 2...maxResponses),
                length: try p.int("length", default: sizes.length ?? 1, range: 1...12),
                seed: p.has("seed") ? try p.seed("seed") : jobSeed,
                referenceScale: try p.double("reference_scale", range: 0...100, default: 1),
                rewardScale: try p.double("reward_scale", range: 1e-6...100, default: 1),
                pairwiseScale: try p.double("pairwise_scale", range: 0...100, default: 0.5))
            if let file {
                try file.check(against: spec, params: p)
                spec.tables = file.tables
            }
            return spec
        } catch let e as ToyLMError {
            throw p.source.error(p.path, "\(p.path): \(e.message)")
        }
    }
}

/// A toy problem with all its tables built: reference log-probabilities and rewards for every (context, response).
public struct ToyLMProblem: Sendable {
    public let spec: ToyLMSpec
    /// M, V, L, K = V^L, P = prefixes per context.
    public let contexts: Int, vocabulary: Int, length: Int, responses: Int, prefixes: Int
    /// offset_t = sum_{s<t} V^s, the first node of level t among a context's rows (t = 0...L).
    public let levelOffsets: [Int]
    /// V^(L-1-t): the place value of token t in a response index.
    let placeValues: [Int]
    /// Context features, [M, d] (features contexts only; empty for tabular).
    public let features: [Double]
    /// Frozen reference logits, [M P, V].
    public let referenceLogits: [Double]
    /// log pi_ref(v | x, prefix) = log_softmax of `referenceLogits`, [M P, V].
    public let referenceTokenLogProb: [Double]
    /// log pi_ref(y | x), [M, K].
    public let referenceLogProb: [Double]
    /// r(x, y), [M, K].
    public let reward: [Double]

    /// Philox table ids (the `step` word) of the problem's draws on stream 2.
    enum Table: UInt32 {
        case features = 0, referenceLogits = 1, tokenReward = 2, pairwiseReward = 3
    }

    public init(_ spec: ToyLMSpec) {
        self.spec = spec
        let M = spec.contexts, V = spec.vocabulary, L = spec.length
        let K = spec.responses, P = spec.prefixes, d = spec.featureDimension
        contexts = M
        vocabulary = V
        length = L
        responses = K
        prefixes = P
        var offsets = [0]
        var width = 1
        for _ in 0..<L {
            offsets.append(offsets.last! + width)
            width *= V
        }
        levelOffsets = offsets
        placeValues = (0..<L).map { t in (0..<(L - 1 - t)).reduce(1) { r, _ in r * V } }

        func normals(_ table: Table, index: Int, count: Int) -> [Double] {
            var s = PhiloxStream(seed: spec.seed, index: UInt32(index), step: table.rawValue, stream: .dataDraw)
            return s.normals(count)
        }
        let features: [Double] =
            spec.contextKind == .features
            ? spec.tables?.features ?? (0..<M).flatMap { normals(.features, index: $0, count: d) } : []
        let invSqrtD = d > 0 ? 1 / Double(d).squareRoot() : 0

        // Reference logits per row (a problem file's, as given).
        var refLogits = [Double](repeating: 0, count: M * P * V)
        switch spec.contextKind {
        case _ where spec.tables?.referenceLogits != nil:
            refLogits = spec.tables!.referenceLogits!
        case .tabular:
            for row in 0..<(M * P) {
                let z = normals(.referenceLogits, index: row, count: V)
                for v in 0..<V { refLogits[row * V + v] = spec.referenceScale * z[v] }
            }
        case .features:
            for node in 0..<P {
                let w = normals(.referenceLogits, index: node, count: V * d)
                for x in 0..<M {
                    for v in 0..<V {
                        var s = 0.0
                        for j in 0..<d { s += w[v * d + j] * features[x * d + j] }
                        refLogits[(x * P + node) * V + v] = spec.referenceScale * s * invSqrtD
                    }
                }
            }
        }

        // Reward: token term a(x)_v, pairwise term W[u, v].
        var tokenTerm = [Double](repeating: 0, count: M * V)
        switch spec.contextKind {
        case .tabular:
            for x in 0..<M {
                let z = normals(.tokenReward, index: x, count: V)
                for v in 0..<V { tokenTerm[x * V + v] = z[v] }
            }
        case .features:
            for v in 0..<V {
                let u = normals(.tokenReward, index: v, count: d)
                for x in 0..<M {
                    var s = 0.0
                    for j in 0..<d { s += u[j] * features[x * d + j] }
                    tokenTerm[x * V + v] = s * invSqrtD
                }
            }
        }
        let pairwise = L >= 2 ? (0..<V).flatMap { normals(.pairwiseReward, index: $0, count: V) } : []
        var reward = [Double](repeating: 0, count: M * K)
        let places = placeValues
        for x in 0..<M {
            for y in 0..<K {
                var tokens = 0.0, pairs = 0.0
                var previous = -1
                for t in 0..<L {
                    let v = (y / places[t]) % V
                    tokens += tokenTerm[x * V + v]
                    if previous >= 0 { pairs += pairwise[previous * V + v] }
                    previous = v
                }
                var r = tokens / Double(L)
                if L >= 2 { r += spec.pairwiseScale * pairs / Double(L - 1) }
                reward[x * K + y] = spec.rewardScale * r
            }
        }
        // A problem file's reward table, as given.
        if let table = spec.tables?.reward { reward = table }

        self.features = features
        self.referenceLogits = refLogits
        var tokenLogProb = refLogits
        ToyLMProblem.logSoftmaxRows(&tokenLogProb, width: V)
        self.referenceTokenLogProb = tokenLogProb
        self.reward = reward
        var refLogProb = [Double](repeating: 0, count: M * K)
        ToyLMProblem.sequenceLogProbs(
            tokenLogProb: tokenLogProb, contexts: M, vocabulary: V, length: L, prefixes: P, offsets: offsets,
            into: &refLogProb)
        self.referenceLogProb = refLogProb
    }

    // MARK: Indexing

    /// Token t of response y.
    @inline(__always)
    public func token(_ y: Int, at t: Int) -> Int { (y / placeValues[t]) % vocabulary }

    /// The prefix (level-t node) of response y: its first t tokens.
    @inline(__always)
    public func prefix(_ y: Int, length t: Int) -> Int { t == 0 ? 0 : y / placeValues[t - 1] }

    /// The model row of (context, level t, node).
    @inline(__always)
    public func row(context x: Int, level t: Int, node: Int) -> Int { x * prefixes + levelOffsets[t] + node }

    /// The rows of response y's L decisions: row(x, t, prefix(y, t)) for t = 0..<L.
    public func rows(context x: Int, response y: Int) -> [Int] {
        (0..<length).map { row(context: x, level: $0, node: prefix(y, length: $0)) }
    }

    // MARK: Shared numerics

    /// Row-wise log_softmax of a [n, width] table, in place (max-shifted, so no overflow).
    static func logSoftmaxRows(_ values: inout [Double], width: Int) {
        values.withUnsafeMutableBufferPointer { z in
            var base = 0
            while base < z.count {
                var m = -Double.infinity
                for v in 0..<width { m = max(m, z[base + v]) }
                var s = 0.0
                for v in 0..<width { s += exp(z[base + v] - m) }
                let lse = m + log(s)
                for v in 0..<width { z[base + v] -= lse }
                base += width
            }
        }
    }

    /// Draws a response for context x from an autoregressive policy given by its per-row token log-probs
    /// ([M P, V]): token by token, one `uniform()` each, by inverse CDF in vocabulary order.
    func drawResponse(context x: Int, tokenLogProb table: [Double], uniform: () -> Double) -> Int {
        let V = vocabulary
        var node = 0
        for t in 0..<length {
            let r = row(context: x, level: t, node: node) * V
            let u = uniform()
            var c = 0.0
            var v = 0
            while v < V - 1 {
                c += exp(table[r + v])
                if u < c { break }
                v += 1
            }
            node = node * V + v
        }
        return node
    }

    /// log pi(y | x) = sum_t log pi(y_t | x, y_<t) for every (x, y), from per-row token log-probs [M P, V], by a
    /// pass down the prefix tree: the log-prob of node (t+1, p V + v) is that of (t, p) plus row (x, t, p)'s entry v.
    static func sequenceLogProbs(
        tokenLogProb: [Double], contexts M: Int, vocabulary V: Int, length L: Int, prefixes P: Int, offsets: [Int],
        into out: inout [Double]
    ) {
        let K = out.count / M
        var current = [Double](repeating: 0, count: K)
        var next = [Double](repeating: 0, count: K)
        tokenLogProb.withUnsafeBufferPointer { tlp in
            out.withUnsafeMutableBufferPointer { o in
                for x in 0..<M {
                    current[0] = 0
                    var width = 1
                    for t in 0..<L {
                        let rowBase = (x * P + offsets[t]) * V
                        for p in 0..<width {
                            let lp = current[p]
                            let r = rowBase + p * V
                            for v in 0..<V { next[p * V + v] = lp + tlp[r + v] }
                        }
                        width *= V
                        swap(&current, &next)
                    }
                    for y in 0..<K { o[x * K + y] = current[y] }
                }
            }
        }
    }
}
