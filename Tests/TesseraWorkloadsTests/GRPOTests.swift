// `kind: rl`, `algorithm: grpo` (WORKLOADS.md §2 R1): the sampled gradient has the expectation the GRPO loss defines
// (computed here by enumerating every group of samples), with scale_rewards: none that expectation is
// -((G-1)/G) grad E r + beta grad KL(pi_ref || pi), training reaches that update's own fixed point, which is far from
// the Gibbs optimum of the KL-regularised objective, and a stopped shard resumed from its checkpoint is bitwise the
// uninterrupted run.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("GRPO on the toy LM")
struct GRPOTests {
    static func yaml(_ params: String, checkpointEvery: Int? = nil, seed: Int = 3) -> String {
        """
        name: grpo-test
        kind: rl
        algorithm: grpo
        seed: \(seed)
        \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
        params:
        \(params)
        """
    }

    /// The population fixed point of GRPO's expected update with scale_rewards: none on a one-token problem,
    /// computed from the stationarity equation alone: for each context, pi(y) = b' pi_ref(y) / (lam - r(y)) with
    /// b' = beta G / (G - 1), lam in (max r, max r + b'] the root of sum_y b' pi_ref(y) / (lam - r(y)) = 1 (the sum
    /// falls from +inf to at most 1 on that interval). Bisection to the last bit: the error in pi is a few ulps.
    static func forwardKLFixedPoint(problem: ToyLMProblem, beta: Double, groupSize G: Int) -> [Double] {
        let K = problem.responses
        let b = beta * Double(G) / Double(G - 1)
        var pi = [Double](repeating: 0, count: problem.contexts * K)
        for x in 0..<problem.contexts {
            let r = (0..<K).map { problem.reward[x * K + $0] }
            let ref = (0..<K).map { exp(problem.referenceLogProb[x * K + $0]) }
            func mass(_ lam: Double) -> Double { (0..<K).reduce(0) { $0 + b * ref[$1] / (lam - r[$1]) } }
            var lo = r.max()!, hi = r.max()! + b
            for _ in 0..<200 {
                let mid = (lo + hi) / 2
                if mid <= lo || mid >= hi { break }
                if mass(mid) > 1 { lo = mid } else { hi = mid }
            }
            let lam = hi
            let total = mass(lam)
            for y in 0..<K { pi[x * K + y] = b * ref[y] / (lam - r[y]) / total }
        }
        return pi
    }

    /// E_x KL(p || q) for probability tables [M, K].
    static func kl(_ p: [Double], _ q: [Double], contexts M: Int) -> Double {
        var s = 0.0
        for i in p.indices where p[i] > 0 { s += p[i] * log(p[i] / q[i]) }
        return s / Double(M)
    }

    /// The exact expected gradient of the GRPO loss (L = 1, one update, loss weight 1/N per sample) with respect to
    /// the logits of context x, by enumerating all V^G groups: per group, dLoss/dz_v = (1/N) sum_g [-A_g +
    /// beta (1 - pi_ref(y_g)/pi(y_g))] (1[y_g = v] - pi_v), with A_g = r_g - mean r (none) or that over
    /// (std r + 1e-4) (group).
    static func enumeratedGradient(
        pi: [Double], ref: [Double], reward: [Double], beta: Double, groupSize G: Int, contexts M: Int,
        scaled: Bool
    ) -> [Double] {
        let V = pi.count
        var out = [Double](repeating: 0, count: V)
        var tuple = [Int](repeating: 0, count: G)
        for code in 0..<Int(pow(Double(V), Double(G))) {
            var c = code, p = 1.0
            for g in 0..<G {
                tuple[g] = c % V
                c /= V
                p *= pi[tuple[g]]
            }
            let r = tuple.map { reward[$0] }
            let mean = r.reduce(0, +) / Double(G)
            let std = (r.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(G - 1)).squareRoot()
            for g in 0..<G {
                let a = scaled ? (r[g] - mean) / (std + 1e-4) : r[g] - mean
                let coefficient = (-a + beta * (1 - ref[tuple[g]] / pi[tuple[g]])) / Double(M * G)
                for v in 0..<V { out[v] += p * coefficient * ((v == tuple[g] ? 1 : 0) - pi[v]) }
            }
        }
        return out
    }

    @Test(
        "the sampled gradient has the enumerated expectation; with scale_rewards: none it is ((G-1)/G) PG plus the forward-KL gradient",
        arguments: [GRPORule.ScaleRewards.none, .group])
    func expectedGradient(scale: GRPORule.ScaleRewards) throws {
        let problem = ToyLMProblem(try ToyLMSpec(contexts: 3, vocabulary: 4, seed: 5))
        var policy = try ToyLMPolicy(problem: problem, hidden: [], activation: .relu, seed: 1)
        // Start away from pi_ref so that the KL term matters.
        var s = PhiloxStream(seed: 2, index: 0, step: 0, stream: .minibatch)
        policy.model.parameters = s.normals(policy.model.parameterCount).map { 0.7 * $0 }
        try policy.evaluate()
        let beta = 0.3, M = 3, V = 4, G = 3
        var expected = [Double](repeating: 0, count: M * V)  // d(mean loss)/dlogit[x, v]
        for x in 0..<M {
            let pi = (0..<V).map { exp(policy.logProb[x * V + $0]) }
            let ref = (0..<V).map { exp(problem.referenceLogProb[x * V + $0]) }
            let r = (0..<V).map { problem.reward[x * V + $0] }
            let e = Self.enumeratedGradient(
                pi: pi, ref: ref, reward: r, beta: beta, groupSize: G, contexts: M, scaled: scale == .group)
            for v in 0..<V { expected[x * V + v] = e[v] }
            if scale == .none {
                // The closed form the fixed point rests on: (1/M)[-((G-1)/G) pi_v (r_v - E_pi r) + beta (pi_v -
                // pi_ref,v)]. Both sides are sums of O(1) terms in float64: they agree to ~1e-15.
                let mean = zip(pi, r).reduce(0) { $0 + $1.0 * $1.1 }
                for v in 0..<V {
                    let closed =
                        (-Double(G - 1) / Double(G) * pi[v] * (r[v] - mean) + beta * (pi[v] - ref[v])) / Double(M)
                    #expect(abs(closed - e[v]) < 1e-12, "context \(x), token \(v): \(closed) vs \(e[v])")
                }
            }
        }
        let rule = GRPORule(
            numGenerations: G, numIterations: 1, surrogate: ClippedSurrogate(epsilonLow: 0.2, epsilonHigh: 0.2),
            scaleRewards: scale, lossType: .grpo)
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
        // 5 standard errors: 12 logits, so a correct gradient fails with probability < 1e-5.
        for i in 0..<(M * V) {
            let mean = sum[i] / Double(steps)
            let se = ((sumSq[i] / Double(steps) - mean * mean) / Double(steps)).squareRoot()
            #expect(abs(mean - expected[i]) < 5 * se + 1e-12, "logit \(i): \(mean) vs \(expected[i]) (se \(se))")
        }
    }

    /// Seed 7 is the problem of examples/rl-grpo-toy.yaml.
    @Test(
        "scale_rewards: none reaches GRPO's own fixed point (KL < 1e-3), which is >= 0.1 from the Gibbs optimum",
        arguments: [3, 7])
    func reachesItsOwnFixedPoint(seed: Int) throws {
        let beta = 0.3, G = 8
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 32, vocab: 16, length: 1}
                  beta: \(beta)
                  num_generations: \(G)
                  scale_rewards: none
                  loss_type: grpo
                  steps: 12000
                  learning_rate: 0.01
                  log_every: 100
                """, seed: seed))
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        let summary = try #require(output?.summary)
        let config = try GRPO().configure(spec).training
        let problem = ToyLMProblem(config.problem)
        let M = problem.contexts

        // The trained policy, rebuilt from the final checkpoint.
        let file = try SafeTensorsFile.parse(try #require(sink.checkpoints.last).bytes)
        #expect(file.metadata["algo"] == "grpo")
        var policy = try ToyLMPolicy(problem: problem, model: try TrainingCheckpoint<Double>(file: file).model)
        try policy.evaluate()
        let trained = policy.logProb.map { exp($0) }

        let fixedPoint = Self.forwardKLFixedPoint(problem: problem, beta: beta, groupSize: G)
        // The Gibbs optimum of E r - beta KL(pi || pi_ref), computed here: pi_ref e^{r/beta} / Z.
        var gibbs = [Double](repeating: 0, count: trained.count)
        let K = problem.responses
        for x in 0..<M {
            let w = (0..<K).map { problem.referenceLogProb[x * K + $0] + problem.reward[x * K + $0] / beta }
            let m = w.max()!
            let z = w.reduce(0) { $0 + exp($1 - m) }
            for y in 0..<K { gibbs[x * K + y] = exp(w[y] - m) / z }
        }
        let toFixedPoint = Self.kl(trained, fixedPoint, contexts: M)
        let fixedPointToGibbs = Self.kl(fixedPoint, gibbs, contexts: M)
        let trainedToGibbs = Self.kl(trained, gibbs, contexts: M)
        print(
            "GRPO none, problem seed \(seed), M=32 V=16 beta=0.3 G=8 12000 steps: KL(pi||fwd*) = \(toFixedPoint), KL(fwd*||Gibbs) = \(fixedPointToGibbs), KL(pi||Gibbs) = \(trainedToGibbs)"
        )
        // The bound is WORKLOADS.md's criterion. The fixed point is exact to a few ulps (bisection), so what remains
        // is the training's own error: unlike RLOO at pi*, GRPO's advantages do not vanish at its fixed point, so
        // every step's gradient carries sampling noise, which the cosine schedule (learning rate -> 0) averages out:
        // the residual falls with the run's length (seed 3: 1.9e-4 after 3000 steps, 7.9e-5 after 12000; seed 7:
        // 7.4e-4 and 2.1e-4; the gradient norm stays below 0.2, so max_grad_norm = 1 never clips).
        // KL >= 0 up to the rounding of 512 float64 terms (1e-15).
        #expect(toFixedPoint >= -1e-15 && toFixedPoint < 1e-3)
        #expect(fixedPointToGibbs >= 0.1)
        #expect(trainedToGibbs >= 0.1, "the policy is at GRPO's fixed point, not at the Gibbs optimum")
        // The trainer's own exact metric against the Gibbs optimum says the same.
        let reported = try #require(summary["kl_to_optimum"]?.doubleValue)
        #expect(abs(reported - trainedToGibbs) < 1e-9 * max(1, trainedToGibbs))

        let names = Set(sink.rows.filter { $0.step == 12000 }.map(\.name))
        for name in [
            "loss", "reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "kl", "entropy",
            "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "grad_norm", "learning_rate",
            "exact/kl_to_optimum",
        ] {
            #expect(names.contains(name), "missing metric \(name)")
        }
        #expect(sink.last("completions/mean_length") == 1)
        #expect(
            sink.rows.filter { $0.name == "clip_ratio/region_mean" }.allSatisfy { $0.value == 0 },
            "one iteration: rho = 1")
        // TRL's kl is the sampled k3, whose expectation under pi is KL(pi || pi_ref) (per token).
        let sampledKL = try #require(sink.last("kl")), exactKL = try #require(sink.last("exact/kl_to_ref"))
        #expect(abs(sampledKL - exactKL) < 0.2)
    }

    @Test("the loss types agree on fixed-length completions; group and batch scaling differ")
    func lossTypesAndScaling() throws {
        func gradient(_ loss: GRPORule.LossType, _ scale: GRPORule.ScaleRewards) throws -> [Double] {
            let problem = ToyLMProblem(try ToyLMSpec(contexts: 4, vocabulary: 3, length: 2, seed: 5))
            var policy = try ToyLMPolicy(problem: problem, hidden: [6], activation: .silu, seed: 1)
            var optimizer = ToyLMOptimizer(
                adam: try Adam(
                    configuration: AdamConfiguration(learningRate: 0), parameterCount: policy.model.parameterCount),
                maxGradNorm: nil)
            let rule = GRPORule(
                numGenerations: 4, numIterations: 1, surrogate: ClippedSurrogate(epsilonLow: 0.2, epsilonHigh: 0.2),
                scaleRewards: scale, lossType: loss)
            _ = try rule.step(
                1, point: ToyLMSweepPoint(index: 0, beta: 0.2, seed: 4), policy: &policy, optimizer: &optimizer)
            return policy.model.gradients
        }
        let base = try gradient(.grpo, .group)
        let norm = base.reduce(0) { $0 + $1 * $1 }.squareRoot()
        #expect(norm > 1e-3)
        // The weights 1/L/N and 1/(N L) differ by at most an ulp each: agreement to 1e-14 of the gradient's size.
        for loss in [GRPORule.LossType.bnpo, .drGRPO, .dapo] {
            let g = try gradient(loss, .group)
            #expect(zip(g, base).allSatisfy { abs($0 - $1) <= 1e-14 * norm }, "\(loss)")
        }
        let batch = try gradient(.grpo, .batch), none = try gradient(.grpo, .none)
        #expect(zip(batch, base).contains { abs($0 - $1) > 1e-6 * norm })
        #expect(zip(none, base).contains { abs($0 - $1) > 1e-6 * norm })
    }

    @Test("a shard stopped after a checkpoint and resumed from it is bitwise the uninterrupted run")
    func stopAndResumeIsBitwise() throws {
        func spec(scale: String) throws -> JobSpec {
            try ToyLMFixtures.spec(
                Self.yaml(
                    """
                      problem: {contexts: 6, vocab: 5, length: 2}
                      policy: {hidden: [8]}
                      beta: 0.4
                      num_generations: 4
                      num_iterations: 2
                      epsilon: 0.05
                      scale_rewards: \(scale)
                      steps: 150
                      log_every: 1
                    """, checkpointEvery: 40))
        }
        let (full, resumeFrom) = try ToyLMFixtures.expectBitwiseResume(try spec(scale: "batch"))
        // Two updates per batch with a small clip range: tokens are clipped.
        #expect(full.rows.contains { $0.name == "clip_ratio/region_mean" && $0.value > 0 })
        for row in full.rows where row.name == "clip_ratio/region_mean" {
            let low = full.rows.first { $0.name == "clip_ratio/low_mean" && $0.step == row.step }!.value
            let high = full.rows.first { $0.name == "clip_ratio/high_mean" && $0.step == row.step }!.value
            #expect(abs(row.value - low - high) < 1e-12)
        }
        let file = try SafeTensorsFile.parse(full.checkpoints.last!.bytes)
        #expect(
            file.metadata["algo"] == "grpo" && file.metadata["step"] == "150" && file.metadata["rng_counter"] == "150")
        #expect(file["optim.step"].flatMap { try? $0.int64Values() } == [300], "two updates per step")

        // A checkpoint of another configuration, or of RLOO, is refused.
        #expect(throws: ToyLMError.self) { _ = try ToyLMFixtures.runShard(try spec(scale: "group"), resume: resumeFrom) }
        let rloo = try ToyLMFixtures.spec(
            RLOOTests.yaml(
                """
                  problem: {contexts: 6, vocab: 5, length: 2}
                  policy: {hidden: [8]}
                  beta: 0.4
                  num_generations: 4
                  num_iterations: 2
                  steps: 150
                """, checkpointEvery: 40))
        #expect(throws: ToyLMError.self) { _ = try ToyLMFixtures.runShard(rloo, resume: resumeFrom) }
    }

    @Test("parameters are validated with the line of the key at fault; the example spec plans its shards")
    func validationAndExample() throws {
        func error(_ params: String) -> String? { ToyLMFixtures.validationError(Self.yaml(params), file: "g.yaml") }
        #expect(error("  scale_rewards: true")?.hasPrefix("g.yaml:7: params.scale_rewards") == true)
        #expect(error("  loss_type: sapo")?.hasPrefix("g.yaml:7: params.loss_type") == true)
        #expect(error("  num_generations: 1")?.hasPrefix("g.yaml:7: params.num_generations must be between 2") == true)
        #expect(error("  normalize_advantages: true")?.hasPrefix("g.yaml:7: unknown key 'normalize_advantages'") == true)
        #expect(error("  scale_rewards: none\n  loss_type: dr_grpo\n  sweep: {beta: [0.3, 1], seed: [1, 2]}") == nil)
        #expect(Workloads.catalogue.capabilities.contains("rl/grpo"))

        let (algorithm, shards) = try ToyLMFixtures.example("rl-grpo-toy.yaml")
        #expect(algorithm == "grpo")
        #expect(shards == 4, "2 betas x 2 seeds")
    }
}
