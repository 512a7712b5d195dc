// Issue 4 (sampling catalogue): classifier-free guidance, langevin and smc run sharded through the real coordinator
// and worker processes on real PostgreSQL, reach `succeeded`, and their merged results show each algorithm's
// headline number; langevin and smc results do not depend on the shard count.

import Foundation
import LibPQ
import Testing

@Suite(
    .serialized,
    .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct SamplingCatalogueTests {
    /// Waits for `job` to succeed and returns its merged result.
    private func succeeded(_ c: Cluster, _ job: Int) throws -> [String: Any] {
        let wait = try c.cli(["wait", String(job), "--timeout", "600"])
        #expect(wait.status == 0, "wait: \(wait.stdout) \(wait.stderr)\n\(c.log("coordinator"))")
        let status = try #require(try c.json(["status", String(job)]) as? [String: Any])
        #expect(status["state"] as? String == "succeeded")
        return try #require(try c.json(["result", String(job)]) as? [String: Any])
    }

    /// How many distinct workers leased shards of `job`.
    private func workersUsed(_ c: Cluster, _ job: Int) throws -> Int64? {
        try c.query(
            "SELECT count(DISTINCT worker_id) AS n FROM tessera_events WHERE job_id = $1 AND kind = 'shard.leased'",
            [.int(Int64(job))]
        ).int(0, "n")
    }

    private func resultText(_ c: Cluster, _ job: Int) throws -> String {
        let wait = try c.cli(["wait", String(job), "--timeout", "600"])
        #expect(wait.status == 0, "\(wait.stderr)")
        let r = try c.cli(["result", String(job), "--json"])
        #expect(r.status == 0)
        return r.stdout
    }

    @Test func guidedDDIMOnTheRingPutsTheMassInTheClass() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let job = try c.submit(IntegrationEnv.example("sampling-cfg-ring.yaml"))
        let result = try succeeded(c, job)
        #expect(try workersUsed(c, job) == 2)
        #expect(result["n"] as? Int == 20_000)
        let weights = try #require(result["mode_weights"] as? [Double])
        #expect(weights.count == 8)
        #expect(weights[2] > 0.999, "mode weights \(weights)")
        let sampler = try #require(result["sampler"] as? [String: Any])
        let guidance = try #require(sampler["guidance"] as? [String: Any])
        #expect(guidance["class"] as? Int == 2)
        #expect(guidance["guidance_scale"] as? Double == 3)
        // The noise floor is exact draws of component 2 alone.
        let floor = try #require(result["noise_floor"] as? [String: Any])
        #expect((floor["mode_weight_error"] as? Double ?? 1) < 1e-3)
    }

    @Test func langevinDataInitKeepsTheEmpiricalWeightsAndIsShardCountInvariant() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        // The example: 2 shards, chains start at 4096 exact draws, 200 ULA steps.
        let job = try c.submit(IntegrationEnv.example("sampling-langevin-data-init.yaml"))
        let result = try succeeded(c, job)
        #expect(try workersUsed(c, job) == 2)
        let weights = try #require(result["mode_weights"] as? [Double])
        let initial = try #require(result["init_mode_weights"] as? [Double])
        #expect(abs(weights[0] - initial[0]) < 0.01, "w_hat \(weights) vs w_emp \(initial)")
        #expect(abs(initial[0] - 0.8) < 0.03)
        #expect((result["sampler"] as? [String: Any])?["init"] as? String == "data")

        // MALA from N(0,1): the merged result is byte-identical for 1, 2 and 3 shards.
        func spec(_ shards: Int) -> String {
            """
            name: langevin-mala-\(shards)
            kind: sampling
            algorithm: langevin
            seed: 5
            shards: \(shards)
            params:
              target: {means: [[1, 0], [-1, 0.5], [0, -1.5]], stds: [0.3, 0.2, 0.4], weights: [0.5, 0.3, 0.2]}
              method: mala
              steps: 40
              step_size: 0.02
              samples: \(3 * 4096)
            """
        }
        var texts: [Int: String] = [:]
        for shards in [1, 2, 3] {
            let id = try c.submit(text: spec(shards), name: "mala-\(shards).yaml")
            texts[shards] = try resultText(c, id)
        }
        #expect(texts[1] == texts[2], "1 vs 2 shards differ")
        #expect(texts[1] == texts[3], "1 vs 3 shards differ")
        #expect(texts[1]?.contains("\"accept_rate\":") == true)
        let rate = try #require(
            (try JSONSerialization.jsonObject(with: Data(texts[1]!.utf8)) as? [String: Any])?["accept_rate"] as? Double)
        #expect(rate > 0.5 && rate <= 1)
        // Accept-rate metrics were streamed per step.
        let metrics = try c.query(
            "SELECT count(*) AS n FROM tessera_metrics m JOIN tessera_jobs j ON j.id = m.job_id WHERE j.name = 'langevin-mala-3' AND m.name = 'accept_rate'"
        )
        #expect(metrics.int(0, "n") == Int64(3 * 40))
    }

    @Test func smcCorrectsTheWrongModelAndIsShardCountInvariant() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        // The example: 4 populations of 4096 particles on 2 shards; the proposal is .5/.5, the truth .8/.2.
        let job = try c.submit(IntegrationEnv.example("sampling-smc-correction.yaml"))
        let result = try succeeded(c, job)
        #expect(try workersUsed(c, job) == 2)
        #expect(result["n"] as? Int == 4 * 4096)
        let weights = try #require(result["mode_weights"] as? [Double])
        #expect(abs(weights[0] - 0.8) < 0.02, "after SMC: \(weights)")
        let weighted = try #require(result["weighted_mode_weights"] as? [Double])
        #expect(abs(weighted[0] - 0.8) < 0.02, "weighted: \(weighted)")
        #expect(result["ess"] as? Double != nil)
        #expect(result["resample_count"] as? Int != nil)
        #expect((result["population_ess"] as? [Double])?.count == 4)

        // A resampling-heavy layout (proposal .9/.1, truth .2/.8): identical results on 1 and 3 shards.
        func spec(_ shards: Int) -> String {
            """
            name: smc-\(shards)
            kind: sampling
            algorithm: smc
            seed: 9
            shards: \(shards)
            params:
              target: {means: [[4], [-4]], stds: [0.5, 0.5], weights: [0.2, 0.8]}
              proposal: {weights: [0.9, 0.1]}
              sampling_steps: 25
              populations: 3
            """
        }
        let one = try resultText(c, try c.submit(text: spec(1), name: "smc-1.yaml"))
        let three = try resultText(c, try c.submit(text: spec(3), name: "smc-3.yaml"))
        #expect(one == three, "1 vs 3 shards differ")
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(one.utf8)) as? [String: Any])
        #expect((parsed["resample_count"] as? Int ?? 0) > 0)
        // ESS was streamed per step by every shard.
        let ess = try c.query(
            "SELECT count(*) AS n FROM tessera_metrics m JOIN tessera_jobs j ON j.id = m.job_id WHERE j.name = 'smc-3' AND m.name = 'ess'"
        )
        #expect(ess.int(0, "n") == Int64(3 * 25))
    }

    @Test func smcWithADiscriminatorTrainsTheSameNetworkOnEveryWorker() throws {
        // Two worker processes each train the discriminator for their population; the merge refuses shards whose
        // networks differ in a single bit, so `succeeded` means both trained the same one.
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let spec = """
            name: smc-discriminator
            kind: sampling
            algorithm: smc
            seed: 13
            shards: 2
            params:
              target: {means: [[4], [-4]], stds: [0.5, 0.5], weights: [0.8, 0.2]}
              proposal: {weights: [0.5, 0.5]}
              sampling_steps: 50
              populations: 2
              correction: discriminator
              discriminator: {width: 32, steps: 300, batch: 256, eval_samples: 2048}
            """
        let job = try c.submit(text: spec, name: "smc-discriminator.yaml")
        let result = try succeeded(c, job)
        #expect(try workersUsed(c, job) == 2)
        let rmse = try #require(result["discriminator_log_ratio_rmse"] as? Double)
        #expect(rmse > 0 && rmse < 0.5, "log-ratio RMSE \(rmse)")
        let weighted = try #require(result["weighted_mode_weights"] as? [Double])
        #expect(abs(weighted[0] - 0.8) < 0.1, "weighted: \(weighted)")
    }

    @Test func smcRejectsMoreShardsThanPopulations() throws {
        let c = try Cluster(workers: 0)
        defer { c.shutdown() }
        let spec = """
            name: smc-bad
            kind: sampling
            algorithm: smc
            seed: 1
            shards: 3
            params:
              target: {means: [[4], [-4]], stds: [0.5, 0.5], weights: [0.8, 0.2]}
              proposal: {weights: [0.5, 0.5]}
              populations: 2
            """
        let r = try c.cli(["submit", "-"], stdin: spec)
        #expect(r.status != 0)
        #expect(r.stderr.contains("<stdin>:5: shards: 3 is more than populations: 2"), "\(r.stderr)")
    }
}
