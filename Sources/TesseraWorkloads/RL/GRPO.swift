// `kind: rl`, `algorithm: grpo`: Group Relative Policy Optimization as TRL's GRPOTrainer computes it (WORKLOADS.md
// §2 R1; huggingface/trl trl/trainer/grpo_trainer.py `_generate_and_score_completions` and `_compute_loss`), on the
// toy LM.
//
// Each step draws G responses per context from the current policy pi_old (all M contexts: N = M G samples) and
// scores them with the raw reward r (no KL in the reward). Advantages (TRL `scale_rewards`):
//   A_i = r_i - mean_g r                              (the group of context x: its G samples)
//   group: A_i /= std_g r + 1e-4   batch: A_i /= std_batch r + 1e-4   none: no scaling
// (std is torch's unbiased std: of the group for group/none, of all N rewards for batch). Then, `num_iterations`
// times, the per-token loss
//   l_{i,t} = -min(rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps, 1 + eps_high) A_i) + beta k3_{i,t},
//   rho_{i,t} = pi_theta(y_t | x, y_<t) / pi_old(y_t | x, y_<t)            (TRL importance_sampling_level "token")
//   k3_{i,t} = e^{q - l} - (q - l) - 1,  q = log pi_ref(y_t | x, y_<t), l = log pi_theta(y_t | x, y_<t)
// is aggregated by `loss_type` (TRL names; |o_i| = the completion's length, here always L):
//   grpo:    loss = (1/N) sum_i (1/|o_i|) sum_t l_{i,t}
//   bnpo:    loss = sum_{i,t} l_{i,t} / sum_i |o_i|
//   dr_grpo: loss = sum_{i,t} l_{i,t} / (N max_completion_length)       (max_completion_length = L here)
//   dapo:    loss = sum_{i,t} l_{i,t} / num_items_in_batch             (the batch's completion tokens, N L)
// Every toy-LM response has exactly L tokens, so the four agree up to rounding: they differ only where completion
// lengths do.
//
// What GRPO optimises (L = 1, scale_rewards: none, derived in WORKLOADS.md §2 and checked in GRPOTests): the
// expected loss gradient is -((G-1)/G) grad E_pi r + beta grad KL(pi_ref || pi) -- the group mean includes r_i, which
// scales the policy gradient by (G-1)/G, and k3 differentiated at a sample drawn from pi (the sampling not being
// differentiated) has expectation (1 - pi_ref/pi) grad log pi, the gradient of the FORWARD KL, although E_pi k3 is the
// reverse KL(pi || pi_ref). Its fixed point is pi(y|x) = b' pi_ref(y|x) / (lam(x) - r(x,y)) with b' = beta G/(G-1)
// and lam(x) > max_y r the root of sum_y b' pi_ref / (lam - r) = 1: not the Gibbs optimum pi_ref e^{r/beta}/Z that
// the exact metrics measure against (and that RLOO and PPO reach). With group or batch scaling the effective
// coefficient depends on the reward spread and there is no closed form.
//
// Randomness: the batch of step k as `ToyLMRollout` draws it (Philox stream 5, index x G + g, step k).
//
// Metrics (TRL names; each describes the step's batch): reward (mean of the group means of r), reward_std (mean over
// samples of the std used by scale_rewards: the group's, or the batch's for batch), frac_reward_zero_std (share of
// samples whose std is 0, torch.isclose), completions/mean_length (= L), kl (mean per-token k3 at the samples, under
// pi_theta of the update), entropy (mean per-token entropy of pi_theta at the samples' prefixes),
// clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean (shares of tokens), loss, grad_norm,
// learning_rate; quantities of one optimiser update are averaged over the step's `num_iterations` updates.

import Foundation
import TesseraCompute
import TesseraCore

public struct GRPO: TypedAlgorithm {
    public var kind: JobKind { .rl }
    public var name: String { "grpo" }
    public var summary: String {
        "GRPO (TRL): group-relative advantages, a clipped token ratio and the k3 KL penalty, on the toy LM"
    }

    public init() {}

    /// beta = 0.04 is TRL's default before v0.16 (it is 0 now, which the exact metrics cannot take: they measure
    /// against the Gibbs optimum of beta > 0).
    static let defaults = ToyLMTrainingConfig.Defaults(
        beta: 0.04, steps: 2000, learningRate: 0.01, schedule: "cosine", maxGradNorm: 1.0)

    /// A GRPO job's validated params: the shared toy-LM training settings and the GRPO step.
    public struct Config: Sendable {
        public var training: ToyLMTrainingConfig
        var rule: GRPORule
        /// `params.rollout_shards`: each step a round of rollout shards and a learner (ToyLMRounds.swift).
        var rounds: ToyLMRounds?
    }

    /// Reads and validates `params`; every error carries the line of the key at fault.
    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let settings = try OnPolicySettings.parse(p, generations: 8)
        let scale = GRPORule.ScaleRewards(
            rawValue: try p.string(
                "scale_rewards", default: "group", allowed: GRPORule.ScaleRewards.allCases.map(\.rawValue)))!
        let lossType = GRPORule.LossType(
            rawValue: try p.string("loss_type", default: "dapo", allowed: GRPORule.LossType.allCases.map(\.rawValue)))!
        let config = try ToyLMTrainingConfig.parse(
            spec, algorithmKeys: OnPolicySettings.keys + ["scale_rewards", "loss_type", ToyLMRounds.key], defaults: Self.defaults,
            updatesPerStep: settings.numIterations)
        try settings.check(config, p)
        return Config(
            training: config,
            rule: GRPORule(
                numGenerations: settings.numGenerations, numIterations: settings.numIterations,
                surrogate: settings.surrogate, scaleRewards: scale, lossType: lossType),
            rounds: try ToyLMRounds.parse(p, config: config, numGenerations: settings.numGenerations))
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<OnPolicySlice>] {
        ToyLMRounds.plan(config.training, rounds: config.rounds)
    }

    public func run(_ slice: OnPolicySlice, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<OnPolicySummary>
    {
        try ToyLMRounds.shard(
            rule: config.rule, config: config.training, rounds: config.rounds, slice: slice, task: task, sink: sink)
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<OnPolicySummary> {
        ToyLMRounds.reducer(algorithm: name, config: config.training, rounds: config.rounds)
    }
}

/// One GRPO training step.
struct GRPORule: ToyLMPolicyStepRule, ToyLMRoundRule {
    /// TRL's `scale_rewards`.
    enum ScaleRewards: String, Sendable, CaseIterable {
        case group, batch, none
    }

    /// TRL's `loss_type`: how the per-token losses are averaged (see the file comment).
    enum LossType: String, Sendable, CaseIterable {
        case grpo, bnpo, drGRPO = "dr_grpo", dapo
    }

    /// G, responses per context (TRL num_generations).
    var numGenerations: Int
    /// Optimiser updates per generated batch (TRL num_iterations).
    var numIterations: Int
    var surrogate: ClippedSurrogate
    var scaleRewards: ScaleRewards
    var lossType: LossType
    /// The step's responses when rollout shards drew them (`ToyLMRounds`).
    var givenResponses: [Int]? = nil

    var name: String { "grpo" }
    var updatesPerStep: Int { numIterations }

    /// The weight of each token's loss in the aggregate, for N completions of L tokens each.
    func tokenWeight(completions N: Int, length L: Int) -> Double {
        switch lossType {
        case .grpo: 1 / Double(L) / Double(N)  // mean over completions of the per-completion token mean
        case .bnpo, .dapo: 1 / Double(N * L)  // over all completion tokens of the batch
        case .drGRPO: 1 / Double(N * L)  // N x max_completion_length, which is L for the toy LM
        }
    }

    /// Group-relative advantages and the statistics TRL logs with them.
    func advantages(_ rewards: [Double]) -> (advantages: [Double], std: [Double], reward: Double) {
        let G = numGenerations, M = rewards.count / G
        let groups = ToyLMStatistics.groupStatistics(rewards, groupSize: G)
        var std = [Double](repeating: 0, count: rewards.count)
        switch scaleRewards {
        case .group, .none:
            for i in rewards.indices { std[i] = groups[i / G].std }
        case .batch:
            let s = ToyLMStatistics.meanAndStd(rewards).1
            for i in rewards.indices { std[i] = s }
        }
        var a = [Double](repeating: 0, count: rewards.count)
        for i in rewards.indices {
            a[i] = rewards[i] - groups[i / G].mean
            if scaleRewards != .none { a[i] /= std[i] + 1e-4 }
        }
        return (a, std, groups.reduce(0) { $0 + $1.mean } / Double(M))
    }

    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer
    ) throws -> [(String, Double)] {
        let problem = policy.problem
        let M = problem.contexts, V = problem.vocabulary, L = problem.length, G = numGenerations
        let N = M * G
        let beta = point.beta
        try policy.evaluate()

        // Generate and score; the rows and tokens of every sample, and pi_old per token.
        let batch = ToyLMRollout(policy: policy, point: point, step: step, groupSize: G, given: givenResponses)
        var rows = [Int](repeating: 0, count: N * L)  // row * V + token, per (i, t)
        var oldTokenLogProb = [Double](repeating: 0, count: N * L)
        for i in 0..<N {
            let x = batch.context(i), y = batch.responses[i]
            for t in 0..<L {
                let r = problem.row(context: x, level: t, node: problem.prefix(y, length: t))
                rows[i * L + t] = r * V + problem.token(y, at: t)
                oldTokenLogProb[i * L + t] = policy.tokenLogProb[rows[i * L + t]]
            }
        }
        let (advantages, std, rewardMean) = advantages(batch.scores)
        // torch.isclose(std, 0): |std| <= 1e-8.
        let zeroStd = std.reduce(0) { $0 + ($1 <= 1e-8 ? 1 : 0) }

        // num_iterations updates of the per-token loss on this batch.
        let w = tokenWeight(completions: N, length: L)
        var averages = UpdateAverages()
        var klMean = 0.0
        var gradient = [Double](repeating: 0, count: policy.tokenLogProb.count)
        for iteration in 0..<numIterations {
            if iteration > 0 { try policy.evaluate() }
            for j in gradient.indices { gradient[j] = 0 }
            var lossSum = 0.0, entropySum = 0.0, klSum = 0.0
            var clip = ClipCounts()
            var entropies = EntropyCache(policy)
            for i in 0..<N {
                for t in 0..<L {
                    let j = rows[i * L + t]
                    let l = policy.tokenLogProb[j], q = problem.referenceTokenLogProb[j]
                    let term = surrogate.term(rho: exp(l - oldTokenLogProb[i * L + t]), advantage: advantages[i])
                    let ratio = exp(q - l)
                    let k3 = ratio - (q - l) - 1
                    lossSum += w * (beta * k3 - term.objective)
                    // d/dl of -min(rho A, clip(rho) A) + beta k3 = -(rho A if unclipped) + beta (1 - pi_ref/pi).
                    gradient[j] += w * (beta * (1 - ratio) - term.logProbDerivative)
                    klSum += k3
                    clip.record(term)
                    entropySum += entropies.entropy(row: j / V, of: policy)
                }
            }
            try policy.backward(tokenGradient: gradient)
            averages.add(
                loss: lossSum, entropySum: entropySum, entropyCount: N * L, clip: clip, clipCount: N * L,
                update: optimizer.update(&policy))
            klMean += klSum / Double(N * L)
        }
        let a = averages.rows
        return [
            ("loss", a.loss), ("reward", rewardMean), ("reward_std", std.reduce(0, +) / Double(N)),
            ("frac_reward_zero_std", Double(zeroStd) / Double(N)), ("completions/mean_length", Double(L)),
            ("kl", klMean / Double(numIterations)), ("entropy", a.entropy), ("clip_ratio/low_mean", a.low),
            ("clip_ratio/high_mean", a.high), ("clip_ratio/region_mean", a.region), ("grad_norm", a.gradNorm),
            ("learning_rate", a.learningRate),
        ]
    }
}
