// `kind: rl`, `algorithm: rloo` (WORKLOADS.md §2 R1): the sampled gradient is unbiased for the KL-regularised
// objective, training reaches the Gibbs optimum, and a stopped shard resumed from its checkpoint is bitwise the
// uninterrupted run.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("RLOO on the toy LM")
struct RLOOTests {
    static func yaml(_ params: String, checkpointEvery: Int? = nil, seed: Int = 3) -> String {
        """
        name: rloo-test
        kind: rl
        algorithm: rloo
        seed: \(seed)
        \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
        params:
        \(params)
        """
    }

    @Test("the expected RLOO gradient is the exact gradient of E r - beta KL(pi || pi_ref)")
    func unbiasedGradient() throws {
        let problem = ToyLMProblem(try ToyLMSpec(contexts: 3, vocabulary: 4, seed: 5))
        var policy = try ToyLMPolicy(problem: problem, hidden: [], activation: .relu, seed: 1)
        // Start away from pi_ref so that the KL term matters.
        var s = PhiloxStream(seed: 2, index: 0, step: 0, stream: .minibatch)
        policy.model.parameters = s.normals(policy.model.parameterCount).map { 0.7 * $0 }
        try policy.evaluate()
        let beta = 0.3, M = 3, V = 4
        var expected = [Double](repeating: 0, count: M * V)  // d(mean loss)/dlogit[x, v]
        for x in 0..<M {
            var shaped = [Double](repeating: 0, count: V), mean = 0.0
            for v in 0..<V {
                let i = x * V + v
                shaped[v] = problem.reward[i] - beta * (policy.logProb[i] - problem.referenceLogProb[i])
                mean += exp(policy.logProb[i]) * shaped[v]
            }
            for v in 0..<V { expected[x * V + v] = -exp(policy.logProb[x * V + v]) * (shaped[v] - mean) / Double(M) }
        }
        let rule = RLOORule(
            numGenerations: 2, numIterations: 1, epsilonLow: 0.2, epsilonHigh: 0.2, normalizeAdvantages: false)
        var optimizer = ToyLMOptimizer(
            adam: try Adam(
                configuration: AdamConfiguration(learningRate: 0), parameterCount: policy.model.parameterCount),
            maxGradNorm: nil)
        let frozen = policy.model.parameters
        let steps = 4000
        var sum = [Double](repeating: 0, count: M * V), sumSq = sum
        for k in 1...steps {
            _ = try rule.step(
                k, point: ToyLMSweepPoint(index: 0, beta: beta, seed: 8), policy: &policy, optimizer: &optimizer)
            // A single Linear layer on one-hot contexts: weight gradient [v, x] = dLoss/dlogit[x, v].
            for x in 0..<M {
                for v in 0..<V {
                    let g = policy.model.gradients[v * M + x]
                    sum[x * V + v] += g
                    sumSq[x * V + v] += g * g
                }
            }
        }
        #expect(policy.model.parameters == frozen, "learning rate 0 leaves the policy where it was")
        for i in 0..<(M * V) {
            let mean = sum[i] / Double(steps)
            let se = ((sumSq[i] / Double(steps) - mean * mean) / Double(steps)).squareRoot()
            #expect(abs(mean - expected[i]) < 5 * se + 1e-12, "logit \(i): \(mean) vs \(expected[i]) (se \(se))")
        }
    }

    @Test("RLOO reaches the Gibbs optimum: KL(pi || pi*) < 1e-3 and J* - J < 1e-3 (M = 32, V = 16)")
    func convergesToGibbsOptimum() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 32, vocab: 16, length: 1}
                  beta: 0.5
                  num_generations: 16
                  steps: 2000
                  learning_rate: 0.01
                  log_every: 100
                """))
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        let summary = try #require(output?.summary)
        let kl = try #require(summary["kl_to_optimum"]?.doubleValue)
        let gap = try #require(summary["objective_gap"]?.doubleValue)
        print("RLOO M=32 V=16 beta=0.5 G=16 2000 steps: KL(pi||pi*) = \(kl), J* - J = \(gap)")
        #expect(kl >= -1e-15 && kl < 1e-3)
        #expect(gap < 1e-3)
        #expect(try #require(summary["frontier_distance"]?.doubleValue) < 1e-3)
        // Streamed rows: step 0 (pi_ref, exact only), then every 100 steps with the TRL names and the exact ones.
        #expect(
            sink.rows.filter { $0.step == 0 }.map(\.name) == [
                "exact/kl_to_optimum", "exact/objective_gap", "exact/kl_to_ref", "exact/expected_reward",
            ])
        #expect(sink.last("exact/kl_to_optimum") == kl)
        let names = Set(sink.rows.filter { $0.step == 2000 }.map(\.name))
        for name in [
            "reward", "reward_std", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
            "clip_ratio/region_mean",
            "frac_reward_zero_std", "loss", "grad_norm", "learning_rate",
        ] {
            #expect(names.contains(name), "missing metric \(name)")
        }
        #expect(
            sink.rows.filter { $0.name == "clip_ratio/region_mean" }.allSatisfy { $0.value == 0 },
            "one iteration: rho = 1")
        #expect(sink.rows.allSatisfy { $0.step == 0 || $0.step % 100 == 0 })
        #expect(sink.progressStep == 2000)
        #expect(sink.checkpoints.map(\.step) == [2000], "without checkpoint_every only the final state is saved")
        // The sampled KL estimate tracks the exact one per token.
        let sampledKL = try #require(sink.last("kl")), exactKL = try #require(sink.last("exact/kl_to_ref"))
        #expect(abs(sampledKL - exactKL) < 0.2)
    }

    @Test("longer responses and feature contexts train too (L = 2, features, several iterations per batch)")
    func longerResponsesAndFeatures() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 8, context_type: features, feature_dim: 4, vocab: 4, length: 2}
                  policy: {hidden: [32], activation: silu}
                  beta: 1.0
                  num_generations: 8
                  num_iterations: 2
                  epsilon: 0.1
                  steps: 400
                  learning_rate: 0.01
                  log_every: 400
                """))
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        let start = try #require(sink.rows.first { $0.step == 0 && $0.name == "exact/kl_to_optimum" }?.value)
        let end = try #require(output?.summary["kl_to_optimum"]?.doubleValue)
        print("RLOO features L=2: KL(pi||pi*) \(start) -> \(end)")
        #expect(end < start / 20)
        let region = try #require(sink.last("clip_ratio/region_mean"))
        #expect(region >= 0 && region <= 1)
        #expect(abs(region - sink.last("clip_ratio/low_mean")! - sink.last("clip_ratio/high_mean")!) < 1e-12)
    }

    @Test("a shard stopped after a checkpoint and resumed from it is bitwise the uninterrupted run")
    func stopAndResumeIsBitwise() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 6, vocab: 5, length: 2}
                  policy: {hidden: [8]}
                  beta: 0.4
                  num_generations: 4
                  num_iterations: 2
                  steps: 150
                  log_every: 1
                """, checkpointEvery: 40))
        let (fullOutput, full) = try ToyLMFixtures.runShard(spec)
        #expect(full.checkpoints.map(\.step) == [40, 80, 120, 150])

        let (stoppedOutput, stopped) = try ToyLMFixtures.runShard(spec, stopAfter: 100)
        #expect(stoppedOutput == nil, "the shard stops between steps")
        #expect(stopped.progressStep == 100)
        #expect(stopped.rows == full.rows.filter { $0.step <= 100 })
        let resumeFrom = try #require(stopped.checkpoints.last)
        #expect(resumeFrom.step == 80)
        #expect(resumeFrom.bytes == full.checkpoints[1].bytes)

        let (resumedOutput, resumed) = try ToyLMFixtures.runShard(spec, resume: resumeFrom)
        #expect(resumedOutput == fullOutput)
        #expect(resumed.checkpoints.map(\.step) == [120, 150])
        #expect(resumed.checkpoints.map(\.bytes) == Array(full.checkpoints.suffix(2).map(\.bytes)))
        #expect(resumed.rows == full.rows.filter { $0.step > 80 }, "rows after the checkpoint repeat exactly")

        // The final checkpoint is a PyTorch-named safetensors file that rebuilds the trained policy.
        let file = try SafeTensorsFile.parse(full.checkpoints.last!.bytes)
        let names = Set(file.tensors.map(\.name))
        for n in [
            "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "optim.step", "ref.logits",
            "optim.layers.1.weight.exp_avg",
        ] {
            #expect(names.contains(n), "checkpoint lacks \(n)")
        }
        #expect(
            file.metadata["algo"] == "rloo" && file.metadata["step"] == "150" && file.metadata["rng_counter"] == "150")
        #expect(file["optim.step"].flatMap { try? $0.int64Values() } == [300], "two updates per step")
        #expect(try JSONValue.parse(file.metadata["problem"]!)["vocab"]?.intValue == 5)

        // A checkpoint of another configuration is refused.
        let other = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 6, vocab: 5, length: 2}
                  policy: {hidden: [8]}
                  beta: 0.5
                  num_generations: 4
                  num_iterations: 2
                  steps: 150
                  log_every: 1
                """, checkpointEvery: 40))
        #expect(throws: ToyLMError.self) { _ = try ToyLMFixtures.runShard(other, resume: resumeFrom) }
        #expect(throws: ShardError.self) { _ = try ToyLMFixtures.runShard(spec, resume: (80, [1, 2, 3])) }
    }

    @Test("parameters are validated with the line of the key at fault")
    func validation() throws {
        func error(_ params: String, shards: Int? = nil) -> String? {
            var text = Self.yaml(params)
            if let shards { text = text.replacingOccurrences(of: "seed: 3\n", with: "seed: 3\nshards: \(shards)\n") }
            do {
                let spec = try JobSpec.parse(text, file: "r.yaml")
                _ = try Workloads.catalogue.validate(spec)
                return nil
            } catch {
                return "\(error)"
            }
        }
        #expect(error("  num_generations: 1")?.hasPrefix("r.yaml:7: params.num_generations must be between 2") == true)
        #expect(error("  colour: red")?.hasPrefix("r.yaml:7: unknown key 'colour' in params") == true)
        #expect(error("  beta: 0")?.hasPrefix("r.yaml:7: params.beta must be a number in (0, 1e6]") == true)
        #expect(error("  problem: {vocab: 65, length: 2}")?.contains("more than 4096 responses") == true)
        #expect(
            error("  beta: 0.5\n  sweep: {beta: [1, 2]}")?.hasPrefix(
                "r.yaml:7: params.beta and params.sweep.beta are exclusive") == true)
        #expect(error("  sweep: {beta: [1, 1]}")?.hasPrefix("r.yaml:7: params.sweep.beta lists a value twice") == true)
        #expect(
            error("  sweep: {beta: [1, 2]}", shards: 3)?.contains("shards: 3 does not match the 2 sweep point(s)")
                == true)
        #expect(error("  sweep: {beta: [1, 2]}", shards: 2) == nil)
        #expect(error("  problem: {feature_dim: 4}")?.contains("only applies to context_type: features") == true)
        #expect(
            error("  lr_schedule: constant\n  min_lr_ratio: 0.1")?.hasPrefix(
                "r.yaml:8: params.min_lr_ratio only applies") == true)
    }
}
