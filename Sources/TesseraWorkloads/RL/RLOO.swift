// `kind: rl`, `algorithm: rloo`: REINFORCE Leave-One-Out as TRL's RLOOTrainer computes it (WORKLOADS.md §2 R1;
// huggingface/trl trl/trainer/rloo_trainer.py `_generate_and_score_completions` and `_compute_loss`), on the toy LM.
//
// Each step draws G responses per context from the current policy (all M contexts: a full batch of N = M G),
// folds the KL into the reward, r~_i = r_i - beta (log pi_old(y_i) - log pi_ref(y_i)) (sequence level: summed over
// tokens), takes the leave-one-out baseline b_i = (sum_j r~_j - r~_i) / (G - 1) within the context's group,
// A_i = r~_i - b_i (optionally normalised over the batch: (A - mean) / (std + 1e-4)), and then, `num_iterations`
// times, minimises the clipped surrogate mean_i -min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps_high) A_i) with
// rho_i = pi_theta(y_i) / pi_old(y_i) (sequence level). Its expected gradient is the gradient of
// E r - beta KL(pi || pi_ref), so the fixed point is the Gibbs policy pi* = pi_ref e^{r/beta} / Z.
//
// Randomness: response i = x G + g of step k uses Philox(point seed; index i, step k, stream 5 "action"), one uniform
// per token.
//
// Metrics (TRL names; each describes the step's batch): reward and reward_std (raw reward r, mean and unbiased std),
// kl (mean per-token log pi_old - log pi_ref at the samples), entropy (mean per-token entropy of pi_theta at the
// samples' prefixes), clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean, frac_reward_zero_std
// (share of groups whose KL-folded rewards are all equal), loss, grad_norm, learning_rate; quantities of one
// optimiser update are averaged over the step's `num_iterations` updates.

import Foundation
import TesseraCompute
import TesseraCore

public struct RLOO: TypedAlgorithm {
    public var kind: JobKind { .rl }
    public var name: String { "rloo" }
    public var summary: String {
        "RLOO (TRL): KL-in-reward REINFORCE with a leave-one-out baseline and a clipped ratio, on the toy LM"
    }

    public init() {}

    static let defaults = ToyLMTrainingConfig.Defaults(
        beta: 0.05, steps: 2000, learningRate: 0.01, schedule: "cosine", maxGradNorm: 1.0)

    /// An RLOO job's validated params: the shared toy-LM training settings and the RLOO step.
    public struct Config: Sendable {
        public var training: ToyLMTrainingConfig
        var rule: RLOORule
    }

    /// Reads and validates `params`; every error carries the line of the key at fault.
    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let g = try p.int("num_generations", default: 2, range: 2...4096)
        let iterations = try p.int("num_iterations", default: 1, range: 1...64)
        let epsilon = try p.double("epsilon", range: 0...1, default: 0.2)
        let epsilonHigh = try p.double("epsilon_high", range: 0...100, default: epsilon)
        let normalize = try p.bool("normalize_advantages", default: false)
        let config = try ToyLMTrainingConfig.parse(
            spec,
            algorithmKeys: ["num_generations", "num_iterations", "epsilon", "epsilon_high", "normalize_advantages"],
            defaults: Self.defaults, updatesPerStep: iterations)
        guard config.problem.contexts * g <= Int(UInt32.max) else {
            throw p.error("num_generations", "params.num_generations x contexts must fit 32 bits")
        }
        return Config(
            training: config,
            rule: RLOORule(
                numGenerations: g, numIterations: iterations, epsilonLow: epsilon, epsilonHigh: epsilonHigh,
                normalizeAdvantages: normalize))
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<ToyLMSweepPoint>] {
        config.training.slices
    }

    public func run(_ slice: ToyLMSweepPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<ToyLMShardSummary>
    {
        TypedShardOutput(
            summary: try ToyLMTrainer.run(
                rule: config.rule, config: config.training, params: task.spec.params,
                point: try config.training.point(slice), resume: task.resume, sink: sink))
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<ToyLMShardSummary> {
        let name = self.name
        return SummaryReducer { try ToyLMSweepMerge.merge(algorithm: name, config: config.training, summaries: $0) }
    }
}

/// One RLOO training step.
struct RLOORule: ToyLMStepRule {
    /// G, responses per context (TRL num_generations).
    var numGenerations: Int
    /// Optimiser updates per generated batch (TRL num_iterations).
    var numIterations: Int
    var epsilonLow: Double
    var epsilonHigh: Double
    var normalizeAdvantages: Bool

    var name: String { "rloo" }
    var updatesPerStep: Int { numIterations }

    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer
    ) throws -> [(String, Double)] {
        let problem = policy.problem
        let M = problem.contexts, K = problem.responses, L = problem.length, G = numGenerations
        let N = M * G
        let beta = point.beta
        try policy.evaluate()

        // Generate and score: the KL-folded reward of every sample.
        var responses = [Int](repeating: 0, count: N)
        var oldLogProb = [Double](repeating: 0, count: N)
        var scores = [Double](repeating: 0, count: N)
        var rewards = [Double](repeating: 0, count: N)
        var klSum = 0.0
        for x in 0..<M {
            for g in 0..<G {
                let i = x * G + g
                var stream = PhiloxStream(
                    seed: point.seed, index: UInt32(i), step: UInt32(truncatingIfNeeded: step), stream: .action)
                let y = policy.sample(context: x, stream: &stream)
                responses[i] = y
                oldLogProb[i] = policy.logProb[x * K + y]
                let kl = oldLogProb[i] - problem.referenceLogProb[x * K + y]
                klSum += kl
                scores[i] = problem.reward[x * K + y]
                rewards[i] = scores[i] - beta * kl
            }
        }

        // Leave-one-out advantages.
        var advantages = [Double](repeating: 0, count: N)
        var zeroStdGroups = 0
        for x in 0..<M {
            var sum = 0.0
            for g in 0..<G { sum += rewards[x * G + g] }
            let mean = sum / Double(G)
            var ss = 0.0
            for g in 0..<G {
                let i = x * G + g
                advantages[i] = rewards[i] - (sum - rewards[i]) / Double(G - 1)
                ss += (rewards[i] - mean) * (rewards[i] - mean)
            }
            if (ss / Double(G - 1)).squareRoot() <= 1e-8 { zeroStdGroups += 1 }  // torch.isclose(std, 0)
        }
        if normalizeAdvantages {
            let (mean, std) = Self.meanAndStd(advantages)
            for i in 0..<N { advantages[i] = (advantages[i] - mean) / (std + 1e-4) }
        }

        // num_iterations updates of the clipped surrogate on this batch.
        var loss = 0.0, entropy = 0.0, low = 0.0, high = 0.0, region = 0.0, gradNorm = 0.0, learningRate = 0.0
        var gradient = [Double](repeating: 0, count: M * K)
        for iteration in 0..<numIterations {
            if iteration > 0 { try policy.evaluate() }
            for i in gradient.indices { gradient[i] = 0 }
            var lossSum = 0.0, entropySum = 0.0
            var lowCount = 0, highCount = 0, regionCount = 0
            for i in 0..<N {
                let x = i / G, y = responses[i]
                let a = advantages[i]
                let rho = exp(policy.logProb[x * K + y] - oldLogProb[i])
                let clipped = min(max(rho, 1 - epsilonLow), 1 + epsilonHigh)
                let unclippedTerm = rho * a, clippedTerm = clipped * a
                lossSum -= min(unclippedTerm, clippedTerm)
                // d/dlog pi of -min(rho A, clip(rho) A): -rho A where the unclipped term is the minimum (ties
                // included: there clip is inactive and both terms have that derivative), else 0.
                if unclippedTerm <= clippedTerm { gradient[x * K + y] -= unclippedTerm / Double(N) }
                let isLow = rho < 1 - epsilonLow && a < 0, isHigh = rho > 1 + epsilonHigh && a > 0
                if isLow { lowCount += 1 }
                if isHigh { highCount += 1 }
                if isLow || isHigh { regionCount += 1 }
                for t in 0..<L {
                    entropySum += policy.entropy(
                        row: problem.row(context: x, level: t, node: problem.prefix(y, length: t)))
                }
            }
            try policy.backward(sequenceGradient: gradient)
            let update = optimizer.update(&policy)
            loss += lossSum / Double(N)
            entropy += entropySum / Double(N * L)
            low += Double(lowCount) / Double(N)
            high += Double(highCount) / Double(N)
            region += Double(regionCount) / Double(N)
            gradNorm += update.gradNorm
            learningRate += update.learningRate
        }
        let u = Double(numIterations)
        let (rewardMean, rewardStd) = Self.meanAndStd(scores)
        return [
            ("loss", loss / u), ("reward", rewardMean), ("reward_std", rewardStd), ("kl", klSum / Double(N * L)),
            ("entropy", entropy / u), ("clip_ratio/low_mean", low / u), ("clip_ratio/high_mean", high / u),
            ("clip_ratio/region_mean", region / u), ("frac_reward_zero_std", Double(zeroStdGroups) / Double(M)),
            ("grad_norm", gradNorm / u), ("learning_rate", learningRate / u),
        ]
    }

    /// Mean and unbiased (n - 1) standard deviation, as torch's `mean()` and `std()`.
    static func meanAndStd(_ v: [Double]) -> (Double, Double) {
        let n = Double(v.count)
        let mean = v.reduce(0, +) / n
        let ss = v.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }
        return (mean, v.count > 1 ? (ss / (n - 1)).squareRoot() : .nan)
    }
}
