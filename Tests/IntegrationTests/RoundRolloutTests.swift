// Round-synchronous distributed rollouts (issue 12, `params.rollout_shards`) through the real coordinator,
// PostgreSQL and worker processes: a grpo job whose steps are rounds of rollout shards and a learner ends in the
// final policy of the same job trained as one shard -- bitwise, with 1, 2 or 4 workers, and when a worker is killed
// mid-round -- and writes the same metric rows.

import Foundation
import LibPQ
import TesseraCompute
import Testing

@Suite(
    .serialized,
    .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct RoundRolloutTests {
    static let steps = 8

    static func spec(name: String, rolloutShards: Int?) -> String {
        """
        name: \(name)
        kind: rl
        algorithm: grpo
        seed: 5
        params:
          problem: {contexts: 16, vocab: 8, length: 2}
          policy: {hidden: [16]}
          beta: 0.3
          scale_rewards: none
          num_generations: 64
          steps: \(steps)
          log_every: 1
        \(rolloutShards.map { "  rollout_shards: \($0)" } ?? "")
        """
    }

    /// Every metric row of a job, as "name step value" (whichever shard wrote it).
    static func rows(_ c: Cluster, _ job: Int) throws -> [String] {
        let r = try c.query(
            "SELECT name, step, value FROM tessera_metrics WHERE job_id = $1 ORDER BY name, step", [.int(Int64(job))])
        return (0..<r.rowCount).map { "\(r[$0, "name"]!) \(r[$0, "step"]!) \(r[$0, "value"]!)" }
    }

    /// The trained state in a job's final checkpoint: the network and Adam tensors (the metadata names the params,
    /// which differ by `rollout_shards`).
    static func finalState(_ c: Cluster, _ job: Int, shard: Int) throws -> [SafeTensor] {
        let path = "\(c.dir)/job-\(job).safetensors"
        let pull = try c.cli(["checkpoint", "pull", String(job), "--shard", String(shard), "-o", path])
        #expect(pull.status == 0, "\(pull.stderr)")
        let file = try SafeTensorsFile.read(path: path)
        #expect(file.metadata["step"] == String(steps))
        return file.tensors.filter { $0.name.hasPrefix("layers.") || $0.name.hasPrefix("optim.") }
            .sorted { $0.name < $1.name }
    }

    static func wait(_ c: Cluster, _ job: Int) throws {
        let wait = try c.cli(["wait", String(job), "--timeout", "600"])
        #expect(wait.status == 0, "\(wait.stderr)\n\(c.log("coordinator"))")
    }

    @Test func roundsOnOneTwoAndFourWorkersAndAfterAKillAreBitwiseTheSingleShard() throws {
        // One worker: the single-shard job, and the rounds job with 2 rollout shards.
        var reference: (rows: [String], state: [SafeTensor])
        var roundsSHA: String
        do {
            let c = try Cluster(workers: 1)
            defer { c.shutdown() }
            let single = try c.submit(text: Self.spec(name: "grpo-one-shard", rolloutShards: nil), name: "one.yaml")
            try Self.wait(c, single)
            reference = (try Self.rows(c, single), try Self.finalState(c, single, shard: 0))
            #expect(reference.rows.count > 100 && !reference.state.isEmpty)
            let started = Date()
            let job = try c.submit(text: Self.spec(name: "grpo-rounds-1", rolloutShards: 2), name: "r1.yaml")
            try Self.wait(c, job)
            print("grpo \(Self.steps) rounds x (2 rollouts + learner) on 1 worker: \(Date().timeIntervalSince(started)) s")
            #expect(try Self.rows(c, job) == reference.rows, "1 worker: metric rows")
            #expect(try Self.finalState(c, job, shard: 3 * Self.steps - 1) == reference.state, "1 worker: final state")
            let r = try c.query(
                "SELECT sha256 FROM tessera_checkpoints WHERE job_id = $1 AND kind = 'checkpoint' AND step = $2",
                [.int(Int64(job)), .int(Int64(Self.steps))])
            roundsSHA = try #require(r.rowCount == 1 ? r[0, "sha256"] : nil)
            let result = try #require(try c.json(["result", String(job), "--json"]) as? [String: Any])
            let rounds = try #require(result["rounds"] as? [String: Any])
            #expect(rounds["rollout_shards"] as? Int == 2 && rounds["shards"] as? Int == 3 * Self.steps)
        }

        // Two workers, one of them SIGKILLed while it holds a shard of the job mid-way.
        do {
            let c = try Cluster(workers: 2)
            defer { c.shutdown() }
            let job = try c.submit(text: Self.spec(name: "grpo-rounds-2", rolloutShards: 2), name: "r2.yaml")
            var victim: String?
            let deadline = Date().addingTimeInterval(120)
            while Date() < deadline, victim == nil {
                let r = try c.query(
                    """
                    SELECT w.name FROM tessera_shards s JOIN tessera_workers w ON w.id = s.worker_id
                    WHERE s.job_id = $1 AND s.state = 'leased' AND s.idx >= 6
                    """, [.int(Int64(job))])
                if r.rowCount >= 1 { victim = r[0, "name"] }
                Thread.sleep(forTimeInterval: 0.005)
            }
            let name = try #require(victim, "no shard of the job was seen leased:\n\(c.log("coordinator"))")
            c.signalWorker(name, SIGKILL)
            try Self.wait(c, job)
            let retried = try c.query(
                "SELECT count(*) AS n FROM tessera_shards WHERE job_id = $1 AND attempt >= 2", [.int(Int64(job))])
            #expect(retried.int(0, "n")! >= 1, "the killed worker's shard was leased again")
            #expect(try Self.rows(c, job) == reference.rows, "2 workers, one killed: metric rows")
            #expect(try Self.finalState(c, job, shard: 3 * Self.steps - 1) == reference.state, "2 workers: final state")
            let r = try c.query(
                "SELECT sha256 FROM tessera_checkpoints WHERE job_id = $1 AND kind = 'checkpoint' AND step = $2",
                [.int(Int64(job)), .int(Int64(Self.steps))])
            #expect(r.rowCount == 1 && r[0, "sha256"] == roundsSHA, "the same checkpoint file as on one worker")
        }

        // Four workers, four rollout shards a round.
        do {
            let c = try Cluster(workers: 4)
            defer { c.shutdown() }
            let started = Date()
            let job = try c.submit(text: Self.spec(name: "grpo-rounds-4", rolloutShards: 4), name: "r4.yaml")
            try Self.wait(c, job)
            print("grpo \(Self.steps) rounds x (4 rollouts + learner) on 4 workers: \(Date().timeIntervalSince(started)) s")
            #expect(try Self.rows(c, job) == reference.rows, "4 workers: metric rows")
            #expect(try Self.finalState(c, job, shard: 5 * Self.steps - 1) == reference.state, "4 workers: final state")
            let spread = try c.query(
                "SELECT count(DISTINCT last_worker_id) AS n FROM tessera_shards WHERE job_id = $1", [.int(Int64(job))])
            print("the 4-worker rounds job ran on \(spread.int(0, "n") ?? 0) workers")
        }
    }
}
