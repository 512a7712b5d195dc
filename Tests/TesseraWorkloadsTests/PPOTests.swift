// `kind: rl`, `algorithm: ppo` (WORKLOADS.md §2 R1): PPO with the KL in the reward and a value head reaches the Gibbs
// optimum of E r - beta KL(pi || pi_ref) (computed here from the problem's tables), and a stopped shard resumed from
// its checkpoint -- value head included -- is bitwise the uninterrupted run.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("PPO on the toy LM")
struct PPOTests {
    static func yaml(_ params: String, checkpointEvery: Int? = nil, seed: Int = 3) -> String {
        """
        name: ppo-test
        kind: rl
        algorithm: ppo
        seed: \(seed)
        \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
        params:
        \(params)
        """
    }

    @Test("PPO reaches the Gibbs optimum: KL(pi || pi*) < 1e-3 and J* - J < 1e-3 (M = 32, V = 16)")
    func reachesTheGibbsOptimum() throws {
        let beta = 0.5
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 32, vocab: 16, length: 1}
                  beta: \(beta)
                  num_generations: 16
                  num_ppo_epochs: 2
                  steps: 2000
                  learning_rate: 0.01
                  log_every: 100
                """))
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        let summary = try #require(output?.summary)
        let problem = ToyLMProblem(try PPO().configure(spec).training.problem)
        let M = problem.contexts, K = problem.responses

        let file = try SafeTensorsFile.parse(try #require(sink.checkpoints.last).bytes)
        var policy = try ToyLMPolicy(problem: problem, model: try TrainingCheckpoint<Double>(file: file).model)
        try policy.evaluate()
        // The Gibbs optimum and J*, from the problem's tables: log pi* = log pi_ref + r/beta - log Z,
        // J* = beta E_x log Z, J(pi) = E_x [E_pi r - beta KL(pi || pi_ref)].
        var kl = 0.0, objective = 0.0, optimal = 0.0
        for x in 0..<M {
            let w = (0..<K).map { problem.referenceLogProb[x * K + $0] + problem.reward[x * K + $0] / beta }
            let m = w.max()!
            let logZ = m + log(w.reduce(0) { $0 + exp($1 - m) })
            optimal += beta * logZ
            for y in 0..<K {
                let lp = policy.logProb[x * K + y], p = exp(lp)
                kl += p * (lp - (w[y] - logZ))
                objective += p * (problem.reward[x * K + y] - beta * (lp - problem.referenceLogProb[x * K + y]))
            }
        }
        kl /= Double(M)
        let gap = (optimal - objective) / Double(M)
        print("PPO M=32 V=16 beta=0.5 G=16 2 epochs 2000 steps: KL(pi||pi*) = \(kl), J* - J = \(gap)")
        // WORKLOADS.md's criteria. Two epochs per batch, so the ratio moves off 1 and the clip acts (below). With TRL's
        // 4 epochs and cliprange 0.2 this problem stops at KL = 8.6e-4 whatever the steps (2000, 4000) or learning
        // rate (0.01, 0.003), and reaches 2.6e-5 with cliprange 1: a bias of the clipped surrogate on whitened
        // advantages that the cosine schedule does not remove (docs/training.md §6). J* - J = beta KL exactly, so the two agree to the rounding of 512 terms (1e-15).
        #expect(kl >= -1e-15 && kl < 1e-3)
        #expect(gap >= -1e-14 && gap < 1e-3)
        #expect(abs(gap - beta * kl) < 1e-12)
        #expect(abs(try #require(summary["kl_to_optimum"]?.doubleValue) - kl) < 1e-12)

        let names = Set(sink.rows.filter { $0.step == 2000 }.map(\.name))
        for name in [
            "objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
            "objective/scores", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg",
            "val/clipfrac_avg", "policy/entropy_avg", "val/ratio", "val/ratio_var", "grad_norm", "lr", "episode",
        ] {
            #expect(names.contains(name), "missing metric \(name)")
        }
        #expect(sink.last("episode") == Double(2000 * 32 * 16))
        #expect(sink.rows.contains { $0.name == "policy/clipfrac_avg" && $0.value > 0 }, "the clip acts")
        #expect(file.tensors.contains { $0.name == "value.weight" } && file.tensors.contains { $0.name == "value.bias" })
    }

    @Test("a shard stopped after a checkpoint and resumed from it is bitwise the uninterrupted run, value head included")
    func stopAndResumeIsBitwise() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 6, context_type: features, feature_dim: 3, vocab: 5, length: 2}
                  policy: {hidden: [8]}
                  beta: 0.4
                  num_generations: 4
                  num_ppo_epochs: 3
                  cliprange: 0.05
                  cliprange_value: 0.05
                  steps: 150
                  log_every: 1
                """, checkpointEvery: 40))
        let (full, _) = try ToyLMFixtures.expectBitwiseResume(spec)
        #expect(full.rows.contains { $0.name == "policy/clipfrac_avg" && $0.value > 0 })
        #expect(full.rows.contains { $0.name == "val/clipfrac_avg" && $0.value > 0 })

        let file = try SafeTensorsFile.parse(full.checkpoints.last!.bytes)
        #expect(file.metadata["algo"] == "ppo")
        #expect(file["optim.step"].flatMap { try? $0.int64Values() } == [450], "three updates per step")
        #expect(file["value.optim.step"].flatMap { try? $0.int64Values() } == [450])
        #expect(file["value.weight"]?.shape == [1, 3])

        // A checkpoint without the value head (RLOO's, same problem) is refused.
        let rloo = try ToyLMFixtures.spec(
            RLOOTests.yaml(
                """
                  problem: {contexts: 6, context_type: features, feature_dim: 3, vocab: 5, length: 2}
                  policy: {hidden: [8]}
                  beta: 0.4
                  steps: 150
                """, checkpointEvery: 40))
        let (_, rlooRun) = try ToyLMFixtures.runShard(rloo)
        #expect(throws: ToyLMError.self) { _ = try ToyLMFixtures.runShard(spec, resume: rlooRun.checkpoints[1]) }
    }

    @Test("parameters are validated with the line of the key at fault; the example spec plans its shards")
    func validationAndExample() throws {
        func error(_ params: String) -> String? { ToyLMFixtures.validationError(Self.yaml(params), file: "p.yaml") }
        #expect(error("  cliprange: 2")?.hasPrefix("p.yaml:7: params.cliprange") == true)
        #expect(error("  num_ppo_epochs: 0")?.hasPrefix("p.yaml:7: params.num_ppo_epochs") == true)
        #expect(error("  epsilon: 0.2")?.hasPrefix("p.yaml:7: unknown key 'epsilon'") == true)
        #expect(error("  vf_coef: 0.5\n  sweep: {beta: [0.5, 1], seed: [1, 2]}") == nil)
        #expect(Workloads.catalogue.capabilities.contains("rl/ppo"))

        let (algorithm, shards) = try ToyLMFixtures.example("rl-ppo-toy.yaml")
        #expect(algorithm == "ppo" && shards == 1)
    }
}
