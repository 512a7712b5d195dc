// Merging the shards of a toy-LM training job (WORKLOADS.md §4 (a)): every sweep point's final (KL to pi_ref,
// expected reward) and its distance to the analytic reward-KL frontier, then per beta the mean and 95% interval
// across seeds. Pure: reads only the shard summaries (which the workers computed with the same exact tools), so the
// coordinator does no numerical work beyond means.

import Foundation
import TesseraCore

enum ToyLMSweepMerge {
    /// Fields of a shard summary that are aggregated across seeds, in output order.
    static let aggregated = ["kl_to_ref", "expected_reward", "frontier_distance", "kl_to_optimum", "objective_gap"]

    /// The aggregated fields of a summary, by the names of `aggregated`.
    static func aggregatedValues(_ s: ToyLMShardSummary) -> [Double] {
        [s.exact.klToReference, s.exact.expectedReward, s.frontierDistance, s.exact.klToOptimum, s.exact.objectiveGap]
    }

    /// `summaries`: the shards' summaries in shard order (a `SummariesReducer` collects them; the blobs are not read).
    static func merge(algorithm: String, config: ToyLMTrainingConfig, summaries: [ToyLMShardSummary]) throws -> JSONValue {
        guard summaries.count == config.points.count else {
            throw ToyLMError(
                .malformedSummary, "\(summaries.count) shard outputs for \(config.points.count) sweep points")
        }
        var points: [JSONValue] = []
        for (i, (s, point)) in zip(summaries, config.points).enumerated() {
            guard s.point == point else {
                throw ToyLMError(.malformedSummary, "shard \(i)'s summary is not sweep point \(i): \(s.point.slice.render())")
            }
            // Stored, a non-finite number is null: it cannot be aggregated.
            for (key, value) in zip(aggregated + ["beta_point_distance"], aggregatedValues(s) + [s.betaPointDistance])
            where !value.isFinite {
                throw ToyLMError(.malformedSummary, "shard \(i)'s summary has no number \(key)")
            }
            points.append(try TypedCoding.encode(s, "shard \(i)'s summary"))
        }
        var byBeta: [JSONValue] = []
        var seen: [Double] = []
        for point in config.points where !seen.contains(point.beta) {
            seen.append(point.beta)
            let rows = summaries.filter { $0.point.beta == point.beta }
            var o: JSONObject = ["beta": .number(point.beta), "seeds": .int(rows.count)]
            if let f = rows.first?.frontier { o["frontier"] = try TypedCoding.encode(f, "the frontier point") }
            for (k, key) in aggregated.enumerated() {
                o[key] = interval(rows.map { aggregatedValues($0)[k] })
            }
            byBeta.append(.object(o))
        }
        let distances = summaries.map(\.frontierDistance)
        return .object([
            "algorithm": .string(algorithm),
            "problem": config.problem.json,
            "steps": .int(config.steps),
            "points": .array(points),
            "by_beta": .array(byBeta),
            "max_frontier_distance": .number(distances.max() ?? .nan),
        ])
    }

    /// {"mean", "std", "n", "ci95": [lo, hi]}: Student-t 95% interval of the mean (no interval for n = 1).
    static func interval(_ values: [Double]) -> JSONValue { MeanInterval.json(values) }

    static func studentT975(degreesOfFreedom nu: Int) -> Double { MeanInterval.studentT975(degreesOfFreedom: nu) }
}
