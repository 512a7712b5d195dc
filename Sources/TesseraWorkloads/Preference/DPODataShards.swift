// Preference-data shards feeding training shards (`params.data.generation_shards: K` of dpo with `source: annotator`;
// WORKLOADS.md §4 (d), issue 13).
//
// Without it, every training shard draws its N annotator pairs itself. With it, the plan starts with K **data
// shards** per distinct data seed (`data.seed`, else each point's seed): data shard (seed, w) labels pairs
// [⌊wN/K⌋, ⌊(w+1)N/K⌋) with the Bradley-Terry annotator (pair i from Philox(seed; i, 0, stream 6), as always) and
// returns them as its result blob. Then one **training shard** per sweep point, depending on the K data shards of its
// seed, trains on their pairs concatenated in part order: the very pairs, in the very order, that it would have drawn
// itself, so its training is bitwise the unsharded job's. A β sweep with a fixed `data.seed` labels its data once for
// every point, and the data are stored (and reusable by their sha256) like any shard result.

import Foundation
import TesseraCompute
import TesseraCore

/// The slice of a dpo shard: a sweep point's training, or a data shard.
/// JSON: the point's keys (`point`, `beta`, `seed`), or `{"role": "data", "data_seed", "part", "first", "end"}`.
public enum DPOSlice: Codable, Sendable, Hashable {
    case training(ToyLMSweepPoint)
    case data(DPODataPart)

    enum CodingKeys: String, CodingKey { case role }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .training(let p): try p.encode(to: encoder)
        case .data(let d): try d.encode(to: encoder)
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        switch try c.decodeIfPresent(String.self, forKey: .role) {
        case nil: self = .training(try ToyLMSweepPoint(from: decoder))
        case "data": self = .data(try DPODataPart(from: decoder))
        case let other?: throw DecodingError.dataCorruptedError(forKey: .role, in: c, debugDescription: "unknown role \(other)")
        }
    }
}

/// Pairs [first, end) of the annotator data of `seed`, labelled by data shard `part`.
public struct DPODataPart: Codable, Sendable, Hashable {
    public var seed: UInt64
    public var part: Int
    public var first: Int
    public var end: Int

    enum CodingKeys: String, CodingKey { case role, seed = "data_seed", part, first, end }

    public init(seed: UInt64, part: Int, first: Int, end: Int) {
        self.seed = seed
        self.part = part
        self.first = first
        self.end = end
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode("data", forKey: .role)
        try c.encode(ToyLMSweepPoint(index: 0, beta: 1, seed: seed).seedJSON, forKey: .seed)
        try c.encode(part, forKey: .part)
        try c.encode(first, forKey: .first)
        try c.encode(end, forKey: .end)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        seed = try c.decodeSeed(forKey: .seed)
        part = try c.decode(Int.self, forKey: .part)
        first = try c.decode(Int.self, forKey: .first)
        end = try c.decode(Int.self, forKey: .end)
    }
}

/// The summary of a dpo shard: a training state, or what a data shard labelled.
public enum DPOSummary: Codable, Sendable, Equatable {
    case training(ToyLMShardSummary)
    /// A data shard: its part and how many pairs it labelled.
    case data(DPODataPart, pairs: Int)

    enum CodingKeys: String, CodingKey { case role, pairs }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .training(let s): try s.encode(to: encoder)
        case .data(let d, let pairs):
            try d.encode(to: encoder)
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(pairs, forKey: .pairs)
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        switch try c.decodeIfPresent(String.self, forKey: .role) {
        case nil: self = .training(try ToyLMShardSummary(from: decoder))
        case "data": self = .data(try DPODataPart(from: decoder), pairs: try c.decode(Int.self, forKey: .pairs))
        case let other?: throw DecodingError.dataCorruptedError(forKey: .role, in: c, debugDescription: "unknown role \(other)")
        }
    }
}

/// `params.data.generation_shards` and the plan and runs of a job that has it.
struct DPODataShards: Sendable {
    /// K, data shards per data seed.
    var shards: Int

    static let key = "generation_shards"

    /// The distinct data seeds of the points, in order of first use, and each point's.
    static func seeds(_ config: ToyLMTrainingConfig, dataSeed: UInt64?) -> (distinct: [UInt64], ofPoint: [Int]) {
        var distinct: [UInt64] = []
        var ofPoint: [Int] = []
        for point in config.points {
            let s = dataSeed ?? point.seed
            if let i = distinct.firstIndex(of: s) { ofPoint.append(i) } else {
                distinct.append(s)
                ofPoint.append(distinct.count - 1)
            }
        }
        return (distinct, ofPoint)
    }

    /// The plan: K data shards per distinct data seed, then one training shard per point on its seed's data.
    static func plan(_ config: ToyLMTrainingConfig, settings: DPOSettings) -> [TypedShardSlice<DPOSlice>] {
        guard let generation = settings.generation, case .annotator(_, let n, let dataSeed) = settings.data else {
            return config.slices.map { TypedShardSlice(.training($0.slice), totalSteps: $0.totalSteps) }
        }
        let K = generation.shards
        let (distinct, ofPoint) = seeds(config, dataSeed: dataSeed)
        var out: [TypedShardSlice<DPOSlice>] = []
        for s in distinct {
            for w in 0..<K {
                out.append(TypedShardSlice(.data(DPODataPart(seed: s, part: w, first: w * n / K, end: (w + 1) * n / K)), totalSteps: 1))
            }
        }
        for (point, s) in zip(config.points, ofPoint) {
            out.append(
                TypedShardSlice(.training(point), totalSteps: Int64(config.steps), dependsOn: Array((s * K)..<((s + 1) * K))))
        }
        return out
    }

    /// A data shard: its pairs, 3 little-endian uint32 each (context, chosen, rejected).
    static func label(_ part: DPODataPart, settings: DPOSettings, problem: ToyLMProblem, sink: any ShardSink) throws
        -> TypedShardOutput<DPOSummary>
    {
        guard case .annotator(let proposal, let n, _) = settings.data, part.first >= 0, part.first <= part.end,
            part.end <= n
        else { throw ShardError("data part \(part) is not a range of this job's annotator pairs", permanent: true) }
        let annotator = BradleyTerryAnnotator(problem: problem, proposal: proposal, seed: part.seed, labelNoise: settings.labelNoise)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(12 * (part.end - part.first))
        for i in part.first..<part.end {
            if (i - part.first) % 65_536 == 0, sink.shouldStop { throw ShardStopped() }
            let q = annotator.pair(i)
            for v in [q.context, q.chosen, q.rejected] {
                withUnsafeBytes(of: UInt32(v).littleEndian) { bytes.append(contentsOf: $0) }
            }
        }
        sink.progress(step: 1)
        return TypedShardOutput(summary: .data(part, pairs: part.end - part.first), result: bytes)
    }

    /// The pairs a training shard's inputs carry, checked against the parts it was to receive.
    static func pairs(_ inputs: [ShardInput], seed: UInt64, settings: DPOSettings, problem: ToyLMProblem) throws
        -> [ToyLMPreferencePair]
    {
        guard let generation = settings.generation, case .annotator(_, let n, _) = settings.data else { return [] }
        let K = generation.shards
        guard inputs.count == K else {
            throw ShardError("the training shard has \(inputs.count) data inputs, not \(K)", permanent: true)
        }
        var out: [ToyLMPreferencePair] = []
        out.reserveCapacity(n)
        let M = problem.contexts, R = problem.responses
        for (w, input) in inputs.enumerated() {
            let what = "input shard \(input.shardIndex)"
            let expected = DPODataPart(seed: seed, part: w, first: w * n / K, end: (w + 1) * n / K)
            let summary = try TypedCoding.decode(DPOSummary.self, from: input.summary, "the summary of \(what)")
            guard case .data(let part, let count) = summary, part == expected, count == part.end - part.first else {
                throw ShardError("\(what) is not data part \(w) of seed \(seed) (pairs \(expected.first)..<\(expected.end))", permanent: true)
            }
            guard let bytes = input.result, bytes.count == 12 * count else {
                throw ShardError("\(what) carries \(input.result?.count ?? 0) bytes, not \(count) pairs", permanent: true)
            }
            func word(_ j: Int) -> Int {
                var v: UInt32 = 0
                for b in 0..<4 { v |= UInt32(bytes[4 * j + b]) << (8 * b) }
                return Int(v)
            }
            for j in 0..<count {
                let q = ToyLMPreferencePair(context: word(3 * j), chosen: word(3 * j + 1), rejected: word(3 * j + 2))
                guard q.context < M, q.chosen < R, q.rejected < R else {
                    throw ShardError("\(what): pair \(part.first + j) is not a pair of this problem", permanent: true)
                }
                out.append(q)
            }
        }
        return out
    }
}
