// The slice and the summary parts every sampling algorithm shares, as Codable types whose JSON is what the shards
// have always stored (TesseraCore/TypedAlgorithm.swift).

import TesseraCore

/// A ddpm/ddim/langevin slice: the sample (chain) indices `start..<end`, `{"start", "end"}`.
public struct SampleRangeSlice: Codable, Sendable, Hashable {
    public var start: Int
    public var end: Int

    public init(_ range: Range<Int>) {
        start = range.lowerBound
        end = range.upperBound
    }

    public var range: Range<Int> { start..<end }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(try decodeRange(c, .start, .end))
    }
}

/// Decodes `lower..<upper` from two keys of `c`, refusing an empty or negative range (the error names `upper`).
func decodeRange<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ lower: K, _ upper: K) throws -> Range<Int> {
    let a = try c.decode(Int.self, forKey: lower)
    let b = try c.decode(Int.self, forKey: upper)
    guard a >= 0, a < b else {
        throw DecodingError.dataCorruptedError(forKey: upper, in: c, debugDescription: "the range \(a)..<\(b) is empty or negative")
    }
    return a..<b
}

/// A sampling shard's summary: the shared statistics, then the algorithm's own keys (`Detail`, whose synthesized
/// coding writes them after the statistics, at the same level, in declaration order).
public struct SamplingShardSummary<Detail: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
    public var statistics: SamplingShardStatistics
    public var detail: Detail

    init(statistics: SamplingShardStatistics, detail: Detail) {
        self.statistics = statistics
        self.detail = detail
    }

    public func encode(to encoder: any Encoder) throws {
        try statistics.encode(to: encoder)
        try detail.encode(to: encoder)
    }

    public init(from decoder: any Decoder) throws {
        statistics = try SamplingShardStatistics(from: decoder)
        detail = try Detail(from: decoder)
    }
}

/// The statistics at the head of every sampling shard's summary. Its keys come in the byte order of their names
/// (finite, mean_sq_norm, mode_weight_0, mode_weight_1, mode_weight_10, …, n, nan_count, out_of_range), as the
/// summaries have always listed them; non-finite values are `null`.
public struct SamplingShardStatistics: Codable, Sendable, Equatable {
    public var n: Int64
    public var finite: Int64
    public var nanCount: Int64
    public var meanSquaredNorm: Double
    public var outOfRange: Int64
    /// The shard's own mode frequencies, `mode_weight_<k>` (NaN without finite samples).
    public var modeWeights: [Double]

    public init(n: Int64, finite: Int64, nanCount: Int64, meanSquaredNorm: Double, outOfRange: Int64, modeWeights: [Double]) {
        self.n = n
        self.finite = finite
        self.nanCount = nanCount
        self.meanSquaredNorm = meanSquaredNorm
        self.outOfRange = outOfRange
        self.modeWeights = modeWeights
    }

    static let modeWeightPrefix = "mode_weight_"

    public func encode(to encoder: any Encoder) throws {
        var fields: [(String, Double)] = [
            ("n", Double(n)), ("finite", Double(finite)), ("nan_count", Double(nanCount)),
            ("mean_sq_norm", meanSquaredNorm), ("out_of_range", Double(outOfRange)),
        ]
        for (k, w) in modeWeights.enumerated() { fields.append(("\(Self.modeWeightPrefix)\(k)", w)) }
        var c = encoder.container(keyedBy: JSONCodingKey.self)
        for (key, value) in fields.sorted(by: { $0.0 < $1.0 }) { try c.encode(value, forKey: JSONCodingKey(key)) }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: JSONCodingKey.self)
        n = try c.decode(Int64.self, forKey: JSONCodingKey("n"))
        finite = try c.decode(Int64.self, forKey: JSONCodingKey("finite"))
        nanCount = try c.decode(Int64.self, forKey: JSONCodingKey("nan_count"))
        meanSquaredNorm = try c.decode(Double.self, forKey: JSONCodingKey("mean_sq_norm"))
        outOfRange = try c.decode(Int64.self, forKey: JSONCodingKey("out_of_range"))
        var weights: [Double] = []
        while c.contains(JSONCodingKey("\(Self.modeWeightPrefix)\(weights.count)")) {
            weights.append(try c.decode(Double.self, forKey: JSONCodingKey("\(Self.modeWeightPrefix)\(weights.count)")))
        }
        modeWeights = weights
    }
}

/// What a sampling algorithm merges its shards with: each shard's deserialized result and summary in shard order,
/// then the job result.
protocol SamplingMerge<Summary> {
    associatedtype Summary
    mutating func add(_ shard: SamplingShardResult, summary: Summary) throws
    func result() throws -> JSONValue
}

/// A merge that needs only the result blobs (langevin, smc): it reads no summary and its result is a sampling
/// result's JSON.
protocol ResultBlobMerge: SamplingMerge {
    associatedtype Result: SamplingResultJSON
    mutating func add(_ shard: SamplingShardResult) throws
    func finish() throws -> Result
}

extension ResultBlobMerge {
    mutating func add(_ shard: SamplingShardResult, summary: Summary) throws { try add(shard) }
    func result() throws -> JSONValue { try finish().json(spelling: .shortest) }
}

/// Deserializes each shard's result blob as it comes and hands it, with the shard's summary, to the algorithm's
/// `SamplingMerge`. Shared by the sampling algorithms, whose results are all `tessera.sampling.shard/2` files.
public struct SamplingShardReducer<Summary>: TypedShardReducer {
    private var merge: any SamplingMerge<Summary>
    private var shards = 0

    init(_ merge: some SamplingMerge<Summary>) { self.merge = merge }

    public mutating func add(_ summary: Summary, result: [UInt8]?) throws {
        guard let bytes = result else { throw ShardError("shard \(shards) has no result blob") }
        try merge.add(try SamplingShardResult.deserialize(bytes), summary: summary)
        shards += 1
    }

    public func finish() throws -> JSONValue { try merge.result() }
}
