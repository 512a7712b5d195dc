// The summary and merge of a toy-LM preference algorithm whose population optimum is not the Gibbs policy
// pi_ref e^{r/beta} / Z that the shared exact metrics measure against (`simpo`, `kto`; docs/training.md).
//
// A shard's summary is the toy-LM summary (its `kl_to_optimum` etc. stay relative to the Gibbs policy of beta, so
// runs of different algorithms remain comparable) plus `optimum_kl`: the divergence between the final policy and the
// algorithm's own optimum (each algorithm states which divergence; absent where the algorithm has no computed
// optimum, e.g. annotator data). The merged result is the toy-LM sweep merge with the full summaries as `points`,
// `optimum_kl` per beta (mean and 95% interval over the seeds) and `max_optimum_kl` over all points.

import Foundation
import TesseraCore

public struct OwnOptimumShardSummary: Codable, Sendable, Equatable {
    public var base: ToyLMShardSummary
    /// The algorithm's divergence to its own optimum at the final policy, if it has one.
    public var optimumKL: Double?

    enum CodingKeys: String, CodingKey { case optimumKL = "optimum_kl" }

    public init(base: ToyLMShardSummary, optimumKL: Double?) {
        self.base = base
        self.optimumKL = optimumKL
    }

    public func encode(to encoder: any Encoder) throws {
        try base.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(optimumKL, forKey: .optimumKL)
    }

    public init(from decoder: any Decoder) throws {
        base = try ToyLMShardSummary(from: decoder)
        optimumKL = try decoder.container(keyedBy: CodingKeys.self).decodeIfPresent(Double.self, forKey: .optimumKL)
    }
}

enum OwnOptimumMerge {
    static func reducer(algorithm: String, config: ToyLMTrainingConfig) -> SummaryReducer<OwnOptimumShardSummary> {
        SummaryReducer { summaries in
            let merged = try ToyLMSweepMerge.merge(algorithm: algorithm, config: config, summaries: summaries.map(\.base))
            guard case .object(var o) = merged else { return merged }
            o["points"] = .array(try summaries.enumerated().map { try TypedCoding.encode($1, "shard \($0)'s summary") })
            let values = summaries.compactMap(\.optimumKL)
            guard values.count == summaries.count else { return .object(o) }
            guard values.allSatisfy(\.isFinite) else {
                throw ToyLMError(.malformedSummary, "a shard's summary has no number optimum_kl")
            }
            if case .array(var byBeta) = o["by_beta"] {
                for i in byBeta.indices {
                    guard case .object(var row) = byBeta[i], let beta = row["beta"]?.doubleValue else { continue }
                    row["optimum_kl"] = ToyLMSweepMerge.interval(
                        summaries.filter { $0.base.point.beta == beta }.compactMap(\.optimumKL))
                    byBeta[i] = .object(row)
                }
                o["by_beta"] = .array(byBeta)
            }
            o["max_optimum_kl"] = .number(values.max() ?? .nan)
            return .object(o)
        }
    }
}
