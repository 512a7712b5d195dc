// `kind: preference`, `algorithm: dpo`, `loss: sigmoid` (WORKLOADS.md §3 P1): exact gradients of the TRL loss,
// the population loss reaching the Gibbs optimum, TRL's metrics, and bitwise resume.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("DPO on the toy LM")
struct DPOTests {
    static func yaml(_ params: String, checkpointEvery: Int? = nil) -> String {
        """
        name: dpo-test
        kind: preference
        algorithm: dpo
        seed: 21
        \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
        params:
        \(params)
        """
    }

    /// Runs one step of `rule` (dpo, simpo, kto, ...) at learning rate 0 and returns (loss, dLoss/dtheta).
    static func lossAndGradient(_ rule: some ToyLMPolicyStepRule, _ policy: ToyLMPolicy, beta: Double) throws -> (
        Double, [Double]
    ) {
        var p = policy
        var optimizer = ToyLMOptimizer(
            adam: try Adam(configuration: AdamConfiguration(learningRate: 0), parameterCount: p.model.parameterCount),
            maxGradNorm: nil)
        let metrics = try rule.step(
            1, point: ToyLMSweepPoint(index: 0, beta: beta, seed: 4), policy: &p, optimizer: &optimizer)
        return (metrics.first { $0.0 == "loss" }!.1, p.model.gradients)
    }

    @Test("the DPO gradient matches finite differences of its loss (population and annotator data, L = 2, MLP)")
    func gradientMatchesFiniteDifferences() throws {
        let problem = ToyLMProblem(try ToyLMSpec(contexts: 3, vocabulary: 3, length: 2, seed: 2))
        var policy = try ToyLMPolicy(problem: problem, hidden: [5], activation: .silu, seed: 3)
        var s = PhiloxStream(seed: 6, index: 0, step: 0, stream: .minibatch)
        let noise = s.normals(policy.model.parameterCount)
        for i in 0..<noise.count { policy.model.parameters[i] += 0.4 * noise[i] }
        let settings: [DPOSettings] = [
            DPOSettings(data: .population(proposal: .reference), batchSize: nil, labelSmoothing: 0),
            DPOSettings(data: .population(proposal: .uniform), batchSize: nil, labelSmoothing: 0.1),
            DPOSettings(data: .annotator(proposal: .reference, pairs: 500, seed: 1), batchSize: nil, labelSmoothing: 0),
            DPOSettings(data: .annotator(proposal: .uniform, pairs: 500, seed: 1), batchSize: 64, labelSmoothing: 0.2),
        ]
        for setting in settings {
            let rule = DPORule(
                settings: setting, problem: problem, point: ToyLMSweepPoint(index: 0, beta: 0.7, seed: 4))
            let (_, gradient) = try Self.lossAndGradient(rule, policy, beta: 0.7)
            for i in stride(from: 0, to: gradient.count, by: 3) {
                var plus = policy, minus = policy
                plus.model.parameters[i] += 1e-6
                minus.model.parameters[i] -= 1e-6
                let fd =
                    (try Self.lossAndGradient(rule, plus, beta: 0.7).0 - Self.lossAndGradient(rule, minus, beta: 0.7).0)
                    / 2e-6
                #expect(
                    abs(fd - gradient[i]) < 1e-7 * max(1, abs(fd)),
                    "\(setting.data) parameter \(i): \(fd) vs \(gradient[i])")
            }
        }
    }

    @Test("full-batch annotator data: the distinct-pair weights are the pairs' shares")
    func distinctPairWeights() throws {
        let problem = ToyLMProblem(try ToyLMSpec(contexts: 4, vocabulary: 3, seed: 2))
        let rule = DPORule(
            settings: DPOSettings(
                data: .annotator(proposal: .reference, pairs: 1000, seed: 9), batchSize: nil, labelSmoothing: 0),
            problem: problem, point: ToyLMSweepPoint(index: 0, beta: 1, seed: 4))
        #expect(rule.pairs.count == 1000)
        #expect(abs(rule.distinctPairs.map(\.weight).reduce(0, +) - 1) < 1e-12)
        for (pair, weight) in rule.distinctPairs {
            #expect(weight == Double(rule.pairs.filter { $0 == pair }.count) / 1000)
        }
        let annotator = BradleyTerryAnnotator(problem: problem, proposal: .reference, seed: 9)
        #expect(rule.pairs == (0..<1000).map(annotator.pair), "data.seed keys the data set")
    }

    @Test("on the population loss DPO reaches the Gibbs optimum: KL(pi || pi*) < 1e-4 (M = 32, V = 16)")
    func populationReachesGibbsOptimum() throws {
        for (beta, proposal) in [(0.5, "reference"), (0.1, "uniform")] {
            let spec = try ToyLMFixtures.spec(
                Self.yaml(
                    """
                      problem: {contexts: 32, vocab: 16, length: 1}
                      beta: \(beta)
                      data: {source: population, proposal: \(proposal)}
                      steps: 1000
                      learning_rate: 0.02
                      log_every: 1000
                    """))
            let (output, sink) = try ToyLMFixtures.runShard(spec)
            let kl = try #require(output?.summary["kl_to_optimum"]?.doubleValue)
            print("DPO population beta=\(beta) mu=\(proposal), 1000 steps: KL(pi||pi*) = \(kl)")
            #expect(abs(kl) < 1e-4)
            #expect(try #require(output?.summary["frontier_distance"]?.doubleValue) < 1e-4)
            // At the optimum the implicit reward margin of the expected pair is the reward's: accuracies near the
            // BT agreement, and the loss at its floor (the BT entropy) is below log 2.
            #expect(try #require(sink.last("loss")) < log(2))
            #expect(try #require(sink.last("rewards/accuracies")) > 0.5)
        }
    }

    @Test("TRL metrics at the reference policy: zero implicit rewards, log 2 loss, no accuracy")
    func metricsAtReference() throws {
        for data in ["{source: population}", "{pairs: 2000}"] {
            let spec = try ToyLMFixtures.spec(
                Self.yaml(
                    """
                      problem: {contexts: 4, vocab: 6}
                      data: \(data)
                      steps: 3
                      log_every: 1
                    """))
            let (_, sink) = try ToyLMFixtures.runShard(spec)
            let first = Dictionary(uniqueKeysWithValues: sink.rows.filter { $0.step == 1 }.map { ($0.name, $0.value) })
            #expect(abs(first["loss"]! - log(2)) < 1e-12)
            for name in ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"] {
                #expect(first[name] == 0, "\(name) at pi_ref")
            }
            #expect(first["logps/chosen"]! < 0 && first["logps/rejected"]! < 0)
            #expect(first["learning_rate"] != nil && first["grad_norm"]! > 0)
            // After an update the chosen responses gain implicit reward over the rejected ones.
            let third = Dictionary(uniqueKeysWithValues: sink.rows.filter { $0.step == 3 }.map { ($0.name, $0.value) })
            #expect(third["rewards/margins"]! > 0 && third["rewards/accuracies"]! > 0)
        }
    }

    @Test("a DPO shard on minibatches stopped and resumed from its checkpoint is bitwise the uninterrupted run")
    func stopAndResumeIsBitwise() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 5, vocab: 7}
                  data: {source: annotator, proposal: uniform, pairs: 3000}
                  batch_size: 64
                  steps: 90
                  log_every: 1
                """, checkpointEvery: 25))
        try Self.expectBitwiseResume(spec)
    }

    /// Runs `spec` (90 steps, checkpoints every 25) whole, and stopped after step 60 then resumed from its step-50
    /// checkpoint: output, last checkpoint and the metric rows after step 50 must be equal bit for bit.
    static func expectBitwiseResume(_ spec: JobSpec) throws {
        let (fullOutput, full) = try ToyLMFixtures.runShard(spec)
        let (_, stopped) = try ToyLMFixtures.runShard(spec, stopAfter: 60)
        let from = try #require(stopped.checkpoints.last)
        #expect(from.step == 50)
        let (resumedOutput, resumed) = try ToyLMFixtures.runShard(spec, resume: from)
        #expect(resumedOutput == fullOutput)
        #expect(resumed.checkpoints.last?.bytes == full.checkpoints.last?.bytes)
        #expect(resumed.rows == full.rows.filter { $0.step > 50 })
    }

    /// The validation error of a DPO spec with these params (file d.yaml, params from line 7), or nil.
    static func specError(_ params: String) -> String? {
        do {
            _ = try Workloads.catalogue.validate(try JobSpec.parse(yaml(params), file: "d.yaml"))
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test("DPO parameters are validated")
    func validation() throws {
        let error = Self.specError
        #expect(error("  loss: slic")?.hasPrefix("d.yaml:7: params.loss must be one of sigmoid") == true)
        #expect(
            error("  data: {source: population}\n  batch_size: 8")?.hasPrefix(
                "d.yaml:8: params.batch_size applies to data.source: annotator or file only") == true)
        #expect(
            error("  data: {source: population, pairs: 10}")?.hasPrefix("d.yaml:7: unknown key 'pairs' in params.data")
                == true)
        #expect(
            error("  problem: {vocab: 64, length: 2}\n  data: {source: population}")?.contains("use source: annotator")
                == true)
        #expect(error("  label_smoothing: 0.5")?.hasPrefix("d.yaml:7: params.label_smoothing must be in") == true)
        #expect(
            error("  data: {pairs: 100}\n  batch_size: 101")?.hasPrefix(
                "d.yaml:8: params.batch_size must be between 1 and 100") == true)
    }
}
