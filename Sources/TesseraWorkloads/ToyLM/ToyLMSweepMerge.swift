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
    static func interval(_ values: [Double]) -> JSONValue {
        let n = values.count
        let mean = values.reduce(0, +) / Double(n)
        var o: JSONObject = ["mean": .number(mean), "n": .int(n)]
        if n >= 2 {
            let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n - 1)
            let sd = variance.squareRoot()
            let half = studentT975(degreesOfFreedom: n - 1) * sd / Double(n).squareRoot()
            o["std"] = .number(sd)
            o["ci95"] = .array([.number(mean - half), .number(mean + half)])
        }
        return .object(o)
    }

    /// The 0.975 quantile of Student's t: a table for 1...30 degrees of freedom, then the Cornish-Fisher expansion
    /// (error < 1e-4 from 30 on).
    static func studentT975(degreesOfFreedom nu: Int) -> Double {
        let table = [
            12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
            2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
            2.0518, 2.0484, 2.0452, 2.0423,
        ]
        precondition(nu >= 1)
        if nu <= table.count { return table[nu - 1] }
        let z = 1.959963984540054, v = Double(nu)
        let z3 = z * z * z, z5 = z3 * z * z, z7 = z5 * z * z
        return z + (z3 + z) / (4 * v) + (5 * z5 + 16 * z3 + 3 * z) / (96 * v * v)
            + (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * v * v * v)
    }
}
