// Issue 5's integration tests: training shards (kind rl / preference) through the real coordinator, PostgreSQL and
// worker processes: beta sweeps that land on the analytic reward-KL frontier, and a training shard that survives
// its worker's SIGKILL by resuming from its checkpoint on the other worker, bitwise.

import Foundation
import LibPQ
import TesseraCompute
import Testing

@Suite(
    .serialized,
    .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct TrainingTests {
    /// DPO on the population loss of the same problem, with the same betas as examples/rl-rloo-beta-sweep.yaml.
    static let dpoSweep = """
        name: dpo-beta-sweep
        kind: preference
        algorithm: dpo
        seed: 7
        params:
          problem: {contexts: 32, vocab: 16, length: 1}
          sweep:
            beta: [0.5, 1.0, 2.0, 4.0]
          data: {source: population}
          steps: 600
          learning_rate: 0.02
          log_every: 50
        """

    func result(_ c: Cluster, _ job: Int) throws -> [String: Any] {
        try #require(try c.json(["result", String(job)]) as? [String: Any])
    }

    /// A number as the CLI's tables print it (%.6g unless whole).
    static func format(_ d: Double) -> String { d == d.rounded() ? String(Int64(d)) : String(format: "%.6g", d) }

    @Test func betaSweepsOfRLOOAndDPOLandOnTheFrontierAndCoincide() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let started = Date()
        let rloo = try c.submit(IntegrationEnv.example("rl-rloo-beta-sweep.yaml"))
        let dpo = try c.submit(text: Self.dpoSweep, name: "dpo-sweep.yaml")
        for job in [rloo, dpo] {
            let wait = try c.cli(["wait", String(job), "--timeout", "900"])
            #expect(
                wait.status == 0, "job \(job): \(wait.stdout) \(wait.stderr)\n\(c.log("coordinator"))\n\(c.log("w1"))")
        }
        print("RLOO (8 shards) and DPO (4 shards) sweeps on 2 workers: \(Date().timeIntervalSince(started)) s")
        // `status JOB` labels each sweep shard with its point, and --json carries the slice.
        let shown = try c.cli(["status", String(rloo)])
        let status = try #require(try c.json(["status", String(rloo)]) as? [String: Any])
        let slices = try #require(status["shards"] as? [[String: Any]]).map { $0["slice"] as? [String: Any] }
        #expect(slices.count == 8)
        let rows = shown.stdout.split(separator: "\n").map(String.init)
        for (i, s) in slices.enumerated() {
            let s = try #require(s)
            // The shard's row (it starts with its index) names its sweep point, in the stored slice's key order.
            let row = try #require(rows.first { $0.hasPrefix("\(i) ") }, "no row for shard \(i) in\n\(shown.stdout)")
            for token in ["point=\(s["point"]!)", "beta=\(Self.format(s["beta"] as! Double))", "seed=\(s["seed"]!)"] {
                #expect(row.contains(token), "no '\(token)' in '\(row)'")
            }
        }

        let a = try result(c, rloo), b = try result(c, dpo)
        let pa = try #require(a["points"] as? [[String: Any]]), pb = try #require(b["points"] as? [[String: Any]])
        #expect(pa.count == 8 && pb.count == 4)
        for p in pa + pb {
            let d = try #require(p["frontier_distance"] as? Double)
            print(
                "beta \(p["beta"]!) seed \(p["seed"]!): KL to ref \(p["kl_to_ref"]!), reward \(p["expected_reward"]!), frontier distance \(d)"
            )
            #expect(d < 1e-2)
        }
        // Per beta, RLOO's seeds and DPO's point coincide within the tolerance, at the same analytic frontier point.
        for q in pb {
            let beta = try #require(q["beta"] as? Double)
            for p in pa where p["beta"] as? Double == beta {
                let dk = (p["kl_to_ref"] as! Double) - (q["kl_to_ref"] as! Double)
                let dr = (p["expected_reward"] as! Double) - (q["expected_reward"] as! Double)
                #expect((dk * dk + dr * dr).squareRoot() < 1e-2, "beta \(beta)")
                #expect(
                    NSDictionary(dictionary: p["frontier"] as! [String: Any])
                        == NSDictionary(dictionary: q["frontier"] as! [String: Any]))
            }
        }
        // RLOO's by-beta rows aggregate its two seeds with a 95% interval.
        let byBeta = try #require(a["by_beta"] as? [[String: Any]])
        #expect(byBeta.count == 4)
        for row in byBeta {
            #expect(row["seeds"] as? Int == 2)
            let kl = try #require(row["kl_to_ref"] as? [String: Any])
            #expect((kl["ci95"] as? [Double])?.count == 2)
        }
        #expect(try #require(a["max_frontier_distance"] as? Double) < 1e-2)

        // Both workers took part; every shard streamed TRL-named and exact metrics and saved a final checkpoint.
        let workers = try c.query(
            "SELECT count(DISTINCT worker_id) AS n FROM tessera_events WHERE job_id = $1 AND kind = 'shard.leased'",
            [.int(Int64(rloo))])
        #expect(workers.int(0, "n") == 2)
        let names = try c.query(
            "SELECT DISTINCT name FROM tessera_metrics WHERE job_id = $1 ORDER BY name", [.int(Int64(rloo))])
        let metricNames = Set((0..<names.rowCount).compactMap { names[$0, "name"] })
        for n in [
            "reward", "reward_std", "kl", "entropy", "clip_ratio/region_mean", "exact/kl_to_optimum",
            "exact/objective_gap",
        ] {
            #expect(metricNames.contains(n), "RLOO metric \(n)")
        }
        let dpoNames = try c.query("SELECT DISTINCT name FROM tessera_metrics WHERE job_id = $1", [.int(Int64(dpo))])
        let dpoMetricNames = Set((0..<dpoNames.rowCount).compactMap { dpoNames[$0, "name"] })
        for n in ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "exact/kl_to_optimum"]
        {
            #expect(dpoMetricNames.contains(n), "DPO metric \(n)")
        }
        let finals = try c.query(
            "SELECT count(*) AS n FROM tessera_checkpoints WHERE job_id = $1 AND kind = 'checkpoint' AND step = 2000",
            [.int(Int64(rloo))])
        #expect(finals.int(0, "n") == 8)
    }

    /// examples/rl-grpo-toy.yaml through the coordinator and 2 workers: 4 shards (2 betas x 2 seeds) that stay away
    /// from the Gibbs optimum, at GRPO's own fixed point (GRPOTests checks that point on this problem, seed 7: its
    /// KL to the Gibbs optimum at beta = 0.3 is 0.41, and a run is within 1e-3 of it).
    @Test func grpoExampleRunsShardedAndStaysAtItsOwnFixedPoint() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let started = Date()
        let job = try c.submit(IntegrationEnv.example("rl-grpo-toy.yaml"))
        let wait = try c.cli(["wait", String(job), "--timeout", "900"])
        #expect(wait.status == 0, "job \(job): \(wait.stdout) \(wait.stderr)\n\(c.log("coordinator"))")
        print("GRPO example (4 shards x 6000 steps) on 2 workers: \(Date().timeIntervalSince(started)) s")

        let r = try result(c, job)
        #expect(r["algorithm"] as? String == "grpo")
        let points = try #require(r["points"] as? [[String: Any]])
        #expect(points.count == 4)
        for p in points {
            let kl = try #require(p["kl_to_optimum"] as? Double)
            print("GRPO beta \(p["beta"]!) seed \(p["seed"]!): KL(pi || Gibbs) \(kl)")
            // GRPOTests: on this problem GRPO's fixed point is 0.41 from the Gibbs optimum, and so is a trained
            // policy; 0.1 is the separation WORKLOADS.md §2 asks for.
            if p["beta"] as? Double == 0.3 { #expect(kl >= 0.1) }
        }
        let byBeta = try #require(r["by_beta"] as? [[String: Any]])
        #expect(byBeta.count == 2 && byBeta.allSatisfy { $0["seeds"] as? Int == 2 })
        let names = try c.query(
            "SELECT DISTINCT name FROM tessera_metrics WHERE job_id = $1 ORDER BY name", [.int(Int64(job))])
        let metricNames = Set((0..<names.rowCount).compactMap { names[$0, "name"] })
        for n in [
            "reward", "reward_std", "kl", "entropy", "completions/mean_length", "frac_reward_zero_std",
            "clip_ratio/region_mean", "exact/kl_to_optimum",
        ] {
            #expect(metricNames.contains(n), "GRPO metric \(n)")
        }
        let finals = try c.query(
            "SELECT count(*) AS n FROM tessera_checkpoints WHERE job_id = $1 AND kind = 'checkpoint' AND step = 6000",
            [.int(Int64(job))])
        #expect(finals.int(0, "n") == 4)
    }

    /// examples/rl-ppo-toy.yaml through the coordinator: PPO reaches the Gibbs optimum (WORKLOADS.md §2's criteria).
    @Test func ppoExampleReachesTheGibbsOptimum() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let started = Date()
        let job = try c.submit(IntegrationEnv.example("rl-ppo-toy.yaml"))
        let wait = try c.cli(["wait", String(job), "--timeout", "900"])
        #expect(wait.status == 0, "job \(job): \(wait.stdout) \(wait.stderr)\n\(c.log("coordinator"))")
        print("PPO example (1 shard x 2000 steps): \(Date().timeIntervalSince(started)) s")
        let r = try result(c, job)
        #expect(r["algorithm"] as? String == "ppo")
        let point = try #require((r["points"] as? [[String: Any]])?.first)
        let kl = try #require(point["kl_to_optimum"] as? Double), gap = try #require(point["objective_gap"] as? Double)
        print("PPO example: KL(pi || pi*) \(kl), J* - J \(gap)")
        #expect(kl < 1e-3 && gap < 1e-3)
        let names = try c.query("SELECT DISTINCT name FROM tessera_metrics WHERE job_id = $1", [.int(Int64(job))])
        let metricNames = Set((0..<names.rowCount).compactMap { names[$0, "name"] })
        for n in ["objective/kl", "objective/rlhf_reward", "policy/clipfrac_avg", "loss/value_avg", "val/ratio", "lr"] {
            #expect(metricNames.contains(n), "PPO metric \(n)")
        }
    }

    /// A single RLOO shard long enough to be killed mid-run in a debug build.
    static let victim = """
        name: rloo-victim
        kind: rl
        algorithm: rloo
        seed: 11
        checkpoint_every: 200
        params:
          problem: {contexts: 32, vocab: 16, length: 1}
          beta: 0.5
          num_generations: 16
          steps: 6000
          learning_rate: 0.01
          log_every: 10
        """

    @Test func killedTrainingShardResumesFromItsCheckpointBitwise() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let job = try c.submit(text: Self.victim, name: "victim.yaml")
        // Wait for a checkpoint past step 400, then SIGKILL the worker holding the shard. The last checkpoint the
        // first attempt registered is where the second attempt started: every metric row after it was (re)written
        // by the last attempt, every row up to it is still the first attempt's.
        let (attempt, resumeStep) = try c.killHolderAfterCheckpoint(job: job, atLeast: 400)
        #expect(resumeStep >= 400 && resumeStep < 6000)
        let split = try c.query(
            """
            SELECT count(*) FILTER (WHERE attempt = 1 AND step <= $2) AS kept,
                   count(*) FILTER (WHERE attempt = $3 AND step > $2) AS rewritten,
                   count(*) AS total
            FROM tessera_metrics WHERE job_id = $1
            """, [.int(Int64(job)), .int(resumeStep), .int(attempt)])
        #expect(
            split.int(0, "kept")! + split.int(0, "rewritten")! == split.int(0, "total")!,
            "resumed at step \(resumeStep), not from scratch")
        #expect(split.int(0, "kept")! > 0 && split.int(0, "rewritten")! > 0)

        // The same spec undisturbed on the surviving worker: the same final checkpoint bytes, merged result and
        // metric rows.
        let started = Date()
        let again = try c.submit(
            text: Self.victim.replacingOccurrences(of: "rloo-victim", with: "rloo-undisturbed"), name: "again.yaml")
        #expect(try c.cli(["wait", String(again), "--timeout", "900"]).status == 0)
        print(
            "RLOO 6000 steps on one worker, undisturbed: \(Date().timeIntervalSince(started)) s; the killed run resumed from step \(resumeStep)"
        )
        let sha = try #require(try c.checkpointSHA(job: job, step: 6000))
        #expect(sha == (try c.checkpointSHA(job: again, step: 6000)))
        let ra = try c.cli(["result", String(job), "--json"]).stdout
        let rb = try c.cli(["result", String(again), "--json"]).stdout
        #expect(!ra.isEmpty && ra == rb)
        let metricsA = try c.metricRows(job: job), metricsB = try c.metricRows(job: again)
        #expect(metricsA.count == 601 * 15 - 11, "600 logged steps x 15 metrics + step 0's 4 exact rows")
        #expect(metricsA == metricsB)

        // The pulled final checkpoint is a PyTorch-named safetensors file of the trained policy.
        let path = "\(c.dir)/final.safetensors"
        let pull = try c.cli(["checkpoint", "pull", String(job), "-o", path])
        #expect(pull.status == 0, "\(pull.stderr)")
        let file = try SafeTensorsFile.read(path: path)
        #expect(file["layers.1.weight"]?.shape == [16, 64])
        #expect(file.metadata["step"] == "6000" && file.metadata["algo"] == "rloo")
    }
}
