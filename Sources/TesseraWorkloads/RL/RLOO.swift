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
        let settings = try OnPolicySettings.parse(p, generations: 2)
        let normalize = try p.bool("normalize_advantages", default: false)
        let config = try ToyLMTrainingConfig.parse(
            spec, algorithmKeys: OnPolicySettings.keys + ["normalize_advantages"], defaults: Self.defaults,
            updatesPerStep: settings.numIterations)
        try settings.check(config, p)
        return Config(
            training: config,
            rule: RLOORule(
                numGenerations: settings.numGenerations, numIterations: settings.numIterations,
                epsilonLow: settings.surrogate.epsilonLow, epsilonHigh: settings.surrogate.epsilonHigh,
                normalizeAdvantages: normalize))
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<ToyLMSweepPoint>] {
        config.training.slices
    }

    public func run(_ slice: ToyLMSweepPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<ToyLMShardSummary>
    {
        try ToyLMTrainer.shard(rule: { _ in config.rule }, config: config.training, slice: slice, task: task, sink: sink)
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<ToyLMShardSummary> {
        ToyLMTrainer.reducer(algorithm: name, config: config.training)
    }
}

/// One RLOO training step.
struct RLOORule: ToyLMPolicyStepRule {
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
        let batch = ToyLMRollout(policy: policy, point: point, step: step, groupSize: G)
        let responses = batch.responses, oldLogProb = batch.logProb, scores = batch.scores
        var rewards = [Double](repeating: 0, count: N)
        var klSum = 0.0
        for i in 0..<N {
            let kl = oldLogProb[i] - problem.referenceLogProb[batch.context(i) * K + responses[i]]
            klSum += kl
            rewards[i] = scores[i] - beta * kl
        }

        // Leave-one-out advantages.
        var advantages = [Double](repeating: 0, count: N)
        var zeroStdGroups = 0
        for (x, group) in ToyLMStatistics.groupStatistics(rewards, groupSize: G).enumerated() {
            for g in 0..<G {
                let i = x * G + g
                advantages[i] = rewards[i] - (group.sum - rewards[i]) / Double(G - 1)
            }
            if group.std <= 1e-8 { zeroStdGroups += 1 }  // torch.isclose(std, 0)
        }
        if normalizeAdvantages {
            let (mean, std) = ToyLMStatistics.meanAndStd(advantages)
            for i in 0..<N { advantages[i] = (advantages[i] - mean) / (std + 1e-4) }
        }

        // num_iterations updates of the clipped surrogate on this batch (sequence-level ratio).
        let surrogate = ClippedSurrogate(epsilonLow: epsilonLow, epsilonHigh: epsilonHigh)
        var averages = UpdateAverages()
        var gradient = [Double](repeating: 0, count: M * K)
        for iteration in 0..<numIterations {
            if iteration > 0 { try policy.evaluate() }
            for i in gradient.indices { gradient[i] = 0 }
            var lossSum = 0.0, entropySum = 0.0
            var clip = ClipCounts()
            var entropies = EntropyCache(policy)
            for i in 0..<N {
                let x = i / G, y = responses[i]
                let term = surrogate.term(
                    rho: exp(policy.logProb[x * K + y] - oldLogProb[i]), advantage: advantages[i])
                lossSum -= term.objective
                gradient[x * K + y] -= term.logProbDerivative / Double(N)
                clip.record(term)
                for t in 0..<L {
                    entropySum += entropies.entropy(
                        row: problem.row(context: x, level: t, node: problem.prefix(y, length: t)), of: policy)
                }
            }
            try policy.backward(sequenceGradient: gradient)
            averages.add(
                loss: lossSum / Double(N), entropySum: entropySum, entropyCount: N * L, clip: clip, clipCount: N,
                update: optimizer.update(&policy))
        }
        let (rewardMean, rewardStd) = ToyLMStatistics.meanAndStd(scores)
        let a = averages.rows
        return [
            ("loss", a.loss), ("reward", rewardMean), ("reward_std", rewardStd), ("kl", klSum / Double(N * L)),
            ("entropy", a.entropy), ("clip_ratio/low_mean", a.low), ("clip_ratio/high_mean", a.high),
            ("clip_ratio/region_mean", a.region), ("frac_reward_zero_std", Double(zeroStdGroups) / Double(M)),
            ("grad_norm", a.gradNorm), ("learning_rate", a.learningRate),
        ]
    }
}
