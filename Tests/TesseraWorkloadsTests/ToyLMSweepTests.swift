// Sweep shards (WORKLOADS.md §4 (a)): params.sweep expands to one shard per (beta, seed); the merge lists every
// point with its frontier distance and the per-beta mean and 95% interval across seeds; RLOO and DPO land on the
// same frontier points.

import Foundation
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("Toy LM: beta x seed sweeps and their merge")
struct ToyLMSweepTests {
    static let problem = "  problem: {contexts: 8, vocab: 8, seed: 99}"

    static func spec(_ kind: String, _ algorithm: String, _ params: String) throws -> JobSpec {
        try JobSpec.parse(
            """
            name: sweep
            kind: \(kind)
            algorithm: \(algorithm)
            seed: 5
            params:
            \(problem)
            \(params)
            """, file: "sweep.yaml")
    }

    @Test("the sweep plans one shard per (beta, seed), beta-major, with exact seeds")
    func plan() throws {
        let spec = try Self.spec(
            "rl", "rloo", "  sweep: {beta: [0.5, 2], seed: [1, 18446744073709551615, 3]}\n  steps: 7")
        let slices = try RLOO().plan(spec)
        #expect(slices.count == 6)
        #expect(slices.allSatisfy { $0.totalSteps == 7 })
        #expect(slices.map { $0.slice["beta"]!.doubleValue! } == [0.5, 0.5, 0.5, 2, 2, 2])
        #expect(slices[1].slice["seed"] == .string("18446744073709551615"))
        #expect(slices.map { $0.slice["point"]!.intValue! } == Array(0..<6))
        // A stored slice (PostgreSQL jsonb reorders keys) still names its point; a stale one is refused.
        let config = try RLOO().configure(spec).training
        func point(_ slice: JSONValue) throws -> ToyLMSweepPoint {
            try config.point(try TypedCoding.decodeExactly(ToyLMSweepPoint.self, from: slice, "slice"))
        }
        let reordered: JSONValue = .object([
            "seed": .string("18446744073709551615"), "beta": .number(0.5), "point": .int(1),
        ])
        #expect(try point(reordered) == config.points[1])
        #expect(throws: ShardError.self) {
            try point(.object(["seed": .int(1), "beta": .number(2), "point": .int(1)]))
        }
        #expect(throws: ShardError.self) { try point(.object(["point": .int(6)])) }
        // Without a sweep: one shard with params.beta and the job seed.
        let single = try RLOO().plan(try Self.spec("rl", "rloo", "  beta: 0.3"))
        #expect(single.map(\.slice) == [.object(["point": .int(0), "beta": .number(0.3), "seed": .int(5)])])
        // A seed-only sweep keeps params.beta.
        let seeds = try DPO().plan(try Self.spec("preference", "dpo", "  beta: 0.2\n  sweep: {seed: [4, 5]}"))
        #expect(seeds.map { $0.slice["beta"]!.doubleValue! } == [0.2, 0.2])
    }

    @Test("RLOO and DPO sweeps land on the analytic frontier and on each other; the merge aggregates across seeds")
    func sweepsLandOnTheFrontier() throws {
        let rloo = try Self.spec(
            "rl", "rloo",
            """
              sweep: {beta: [0.5, 2], seed: [1, 2]}
              num_generations: 16
              steps: 1500
              learning_rate: 0.01
              log_every: 500
            """)
        let dpo = try Self.spec(
            "preference", "dpo",
            """
              sweep: {beta: [0.5, 2], seed: [1, 2]}
              data: {source: population, proposal: uniform}
              steps: 600
              log_every: 600
            """)
        let (a, _) = try ToyLMFixtures.runJob(rloo)
        let (b, outputs) = try ToyLMFixtures.runJob(dpo)
        for result in [a, b] {
            let points = try #require(result["points"]?.arrayValue)
            #expect(points.count == 4)
            for p in points {
                #expect(try #require(p["frontier_distance"]?.doubleValue) < 1e-2)
            }
            let byBeta = try #require(result["by_beta"]?.arrayValue)
            #expect(byBeta.map { $0["beta"]!.doubleValue! } == [0.5, 2])
            for row in byBeta {
                #expect(row["seeds"]?.intValue == 2)
                let kl = try #require(row["kl_to_ref"])
                let ci = (kl["ci95"]?.arrayValue ?? []).compactMap(\.doubleValue)
                let mean = try #require(kl["mean"]?.doubleValue)
                #expect(ci.count == 2 && ci[0] <= mean && mean <= ci[1])
                #expect(row["frontier"]?["kl_to_ref"]?.doubleValue != nil)
            }
            #expect(try #require(result["max_frontier_distance"]?.doubleValue) < 1e-2)
        }
        #expect(a["algorithm"] == .string("rloo") && b["algorithm"] == .string("dpo"))
        #expect(a["problem"] == b["problem"])
        // Point by point, the two algorithms reach the same (KL, reward) within the tolerance.
        for (p, q) in zip(a["points"]!.arrayValue!, b["points"]!.arrayValue!) {
            let dk = p["kl_to_ref"]!.doubleValue! - q["kl_to_ref"]!.doubleValue!
            let dr = p["expected_reward"]!.doubleValue! - q["expected_reward"]!.doubleValue!
            #expect((dk * dk + dr * dr).squareRoot() < 1e-2)
            #expect(p["frontier"] == q["frontier"], "same problem, same analytic point")
        }
        // The merge is a function of the shard summaries in shard order; a wrong set is refused.
        #expect(try DPO().merge(dpo, outputs: outputs) == b)
        #expect(throws: ToyLMError.self) { try DPO().merge(dpo, outputs: Array(outputs.reversed())) }
        #expect(throws: ToyLMError.self) { try DPO().merge(dpo, outputs: Array(outputs.dropLast())) }
    }

    @Test("the 95% interval uses Student's t")
    func interval() throws {
        #expect(ToyLMSweepMerge.studentT975(degreesOfFreedom: 1) == 12.7062)
        #expect(abs(ToyLMSweepMerge.studentT975(degreesOfFreedom: 31) - 2.0395) < 1e-4)
        #expect(abs(ToyLMSweepMerge.studentT975(degreesOfFreedom: 1000) - 1.9623) < 1e-4)
        let v = ToyLMSweepMerge.interval([1, 2, 3])
        #expect(v["mean"] == .number(2) && v["n"] == .int(3) && v["std"] == .number(1))
        let half = 4.3027 / 3.0.squareRoot()
        #expect(v["ci95"] == .array([.number(2 - half), .number(2 + half)]))
        #expect(ToyLMSweepMerge.interval([4])["ci95"] == nil)
    }
}
