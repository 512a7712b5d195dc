// `kind: rl`, `algorithm: ppo`: PPO with the KL in the reward, as TRL's (removed, 2026) PPOTrainer computes it
// (WORKLOADS.md §2 R1; huggingface/trl trl/trainer/ppo_trainer.py `train`), on the toy LM, with single-step episodes.
//
// Each step draws G responses per context from pi_old (all M contexts: N = M G samples; response i = x G + g as
// `ToyLMRollout` draws it) and folds the KL into the reward (TRL's k1 estimator, summed over the response's tokens):
//   r~_i = r_i - beta (log pi_old(y_i) - log pi_ref(y_i)).
// An episode is one step -- the whole response is one action -- so GAE (gamma, lam) reduces to A_i = r~_i - V_old(x_i)
// and the return to R_i = r~_i, where V is the value head: V(x) = w . c(x) + b on the context part c(x) of the network
// input (one-hot: a table of M values; features: linear in phi(x)), zero-initialised. The advantages are whitened
// over the batch as TRL does (masked_whiten: (A - mean) / sqrt(var + 1e-8), var unbiased). Then `num_ppo_epochs`
// times, on the whole batch:
//   loss = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - cliprange, 1 + cliprange))                    (pg_loss)
//        + vf_coef 0.5 mean_i max((V(x_i) - R_i)^2, (V_old + clip(V(x_i) - V_old, +-cliprange_value) - R_i)^2)
// with rho_i = pi_theta(y_i) / pi_old(y_i) (sequence level). The policy and the value head have an AdamW each (same
// settings); max_grad_norm clips the policy's gradient (TRL clips the two models' joint gradient).
//
// Fixed point: V(x) does not depend on y, so E[A grad log pi] = E[r~ grad log pi] = grad J, J = E r - beta KL(pi ||
// pi_ref), as for RLOO; whitening subtracts a batch mean and divides by a batch std, and at the Gibbs optimum
// pi* = pi_ref e^{r/beta} / Z the KL-folded reward is beta log Z(x) for every y, so the advantages do not depend on
// the sampled responses and the expected update vanishes. PPO's fixed point is pi*.
//
// Metrics (TRL PPOTrainer names; each describes the step's batch): objective/kl (mean of sum_t log pi_old - log
// pi_ref), objective/entropy (mean summed per-token entropy of pi_old along the sample), objective/non_score_reward
// (mean -beta kl), objective/rlhf_reward (mean r~), objective/scores (mean r), policy/approxkl_avg (0.5 mean (log
// rho)^2), policy/clipfrac_avg (share of samples whose clipped term is the larger loss), loss/policy_avg,
// loss/value_avg, val/clipfrac_avg, policy/entropy_avg (mean per-token entropy of pi_theta), val/ratio and
// val/ratio_var (mean and variance of rho), grad_norm, lr, episode (responses generated so far); quantities of one
// update are averaged over the step's `num_ppo_epochs` updates.

import Foundation
import TesseraCompute
import TesseraCore

public struct PPO: TypedAlgorithm {
    public var kind: JobKind { .rl }
    public var name: String { "ppo" }
    public var summary: String {
        "PPO (TRL): KL-in-reward clipped surrogate with a value head, single-step episodes, on the toy LM"
    }

    public init() {}

    /// beta = 0.05 is TRL's kl_coef.
    static let defaults = ToyLMTrainingConfig.Defaults(
        beta: 0.05, steps: 2000, learningRate: 0.01, schedule: "cosine", maxGradNorm: 1.0)

    /// A PPO job's validated params: the shared toy-LM training settings and the PPO step.
    public struct Config: Sendable {
        public var training: ToyLMTrainingConfig
        var rule: PPORule
        /// `params.rollout_shards`: each step a round of rollout shards and a learner (ToyLMRounds.swift).
        var rounds: ToyLMRounds?
    }

    static let keys = ["num_generations", "num_ppo_epochs", "cliprange", "cliprange_value", "vf_coef", ToyLMRounds.key]

    /// Reads and validates `params`; every error carries the line of the key at fault.
    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let g = try p.int("num_generations", default: 4, range: 1...4096)
        let epochs = try p.int("num_ppo_epochs", default: 4, range: 1...64)
        let clip = try p.double("cliprange", range: 0...1, default: 0.2)
        let clipValue = try p.double("cliprange_value", range: 0...1e6, default: 0.2)
        let vfCoef = try p.double("vf_coef", range: 0...1e6, default: 0.1)
        let config = try ToyLMTrainingConfig.parse(
            spec, algorithmKeys: Self.keys, defaults: Self.defaults, updatesPerStep: epochs)
        let settings = OnPolicySettings(
            numGenerations: g, numIterations: epochs, surrogate: ClippedSurrogate(epsilonLow: clip, epsilonHigh: clip))
        try settings.check(config, p)
        guard config.problem.contexts * g >= 2 else {
            throw p.error("num_generations", "params.num_generations x contexts must be at least 2 (advantages are whitened over the batch)")
        }
        return Config(
            training: config,
            rule: PPORule(settings: settings, clipRangeValue: clipValue, valueCoefficient: vfCoef),
            rounds: try ToyLMRounds.parse(p, config: config, numGenerations: g))
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

/// PPO's value head: V(x) = w . c(x) + b on the context part of the policy's input, with its own AdamW.
/// Checkpointed as `value.weight` [1, in], `value.bias` [1], `value.optim.exp_avg`, `value.optim.exp_avg_sq` and
/// `value.optim.step`.
struct ValueHead: ToyLMAuxiliaryState {
    /// [w (in) | b].
    var parameters: [Double]
    var adam: Adam<Double>
    /// c(x) for every context, [M, in].
    let contextInputs: [Double]
    let width: Int

    init(problem: ToyLMProblem, optimizer: AdamConfiguration) throws {
        let M = problem.contexts
        if problem.spec.contextKind == .tabular {
            width = M
            var c = [Double](repeating: 0, count: M * M)
            for x in 0..<M { c[x * M + x] = 1 }
            contextInputs = c
        } else {
            width = problem.spec.featureDimension
            contextInputs = problem.features
        }
        parameters = [Double](repeating: 0, count: width + 1)
        adam = try Adam(configuration: optimizer, parameterCount: width + 1)
    }

    func value(_ x: Int) -> Double {
        var v = parameters[width]
        for j in 0..<width { v += parameters[j] * contextInputs[x * width + j] }
        return v
    }

    /// Adds dLoss/dV(x) = `g` to `gradient` ([w | b]).
    func accumulate(_ g: Double, context x: Int, into gradient: inout [Double]) {
        for j in 0..<width { gradient[j] += g * contextInputs[x * width + j] }
        gradient[width] += g
    }

    var tensors: [SafeTensor] {
        get throws {
            [
                try SafeTensor(name: "value.weight", float64: Array(parameters[0..<width]), shape: [1, width]),
                try SafeTensor(name: "value.bias", float64: [parameters[width]], shape: [1]),
                try SafeTensor(name: "value.optim.exp_avg", float64: adam.expAvg, shape: [width + 1]),
                try SafeTensor(name: "value.optim.exp_avg_sq", float64: adam.expAvgSq, shape: [width + 1]),
                try SafeTensor(name: "value.optim.step", int64: [Int64(adam.step)], shape: []),
            ]
        }
    }

    mutating func restore(from tensors: [SafeTensor]) throws {
        func values(_ name: String, _ count: Int) throws -> [Double] {
            guard let t = tensors.first(where: { $0.name == name }), let v = try? t.float64Values(), v.count == count
            else {
                throw ToyLMError(.checkpointMismatch, "the resume checkpoint has no value-head tensor \(name) of \(count)")
            }
            return v
        }
        let weight = try values("value.weight", width), bias = try values("value.bias", 1)
        let m = try values("value.optim.exp_avg", width + 1), v = try values("value.optim.exp_avg_sq", width + 1)
        guard let s = tensors.first(where: { $0.name == "value.optim.step" }), let step = try? s.int64Values(),
            step.count == 1
        else { throw ToyLMError(.checkpointMismatch, "the resume checkpoint has no value.optim.step") }
        parameters = weight + bias
        adam = try Adam(configuration: adam.configuration, step: Int(step[0]), expAvg: m, expAvgSq: v)
    }
}

/// One PPO training step.
struct PPORule: ToyLMRoundRule {
    var settings: OnPolicySettings
    var clipRangeValue: Double
    var valueCoefficient: Double
    /// The step's responses when rollout shards drew them (`ToyLMRounds`).
    var givenResponses: [Int]? = nil

    var name: String { "ppo" }
    var numGenerations: Int { settings.numGenerations }
    var updatesPerStep: Int { settings.numIterations }

    func makeAuxiliary(problem: ToyLMProblem, optimizer: AdamConfiguration) throws -> ValueHead {
        try ValueHead(problem: problem, optimizer: optimizer)
    }

    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer,
        auxiliary value: inout ValueHead
    ) throws -> [(String, Double)] {
        let problem = policy.problem
        let M = problem.contexts, K = problem.responses, L = problem.length, G = settings.numGenerations
        let N = M * G
        let beta = point.beta
        try policy.evaluate()

        // Generate, fold the KL into the reward, and take the one-step advantage r~ - V_old(x).
        let batch = ToyLMRollout(policy: policy, point: point, step: step, groupSize: G, given: givenResponses)
        var kl = [Double](repeating: 0, count: N), rewards = kl, advantages = kl
        var oldEntropy = 0.0
        var oldEntropies = EntropyCache(policy)
        let oldValue = (0..<M).map { value.value($0) }
        for i in 0..<N {
            let x = batch.context(i), y = batch.responses[i]
            kl[i] = batch.logProb[i] - problem.referenceLogProb[x * K + y]
            rewards[i] = batch.scores[i] - beta * kl[i]
            advantages[i] = rewards[i] - oldValue[x]
            for t in 0..<L {
                oldEntropy += oldEntropies.entropy(
                    row: problem.row(context: x, level: t, node: problem.prefix(y, length: t)), of: policy)
            }
        }
        // masked_whiten: (A - mean) * rsqrt(var + 1e-8), var unbiased.
        let (mean, std) = ToyLMStatistics.meanAndStd(advantages)
        let scale = 1 / (std * std + 1e-8).squareRoot()
        for i in 0..<N { advantages[i] = (advantages[i] - mean) * scale }

        var averages = UpdateAverages()
        var approxKL = 0.0, valueLoss = 0.0, valueClip = 0.0, ratioMean = 0.0, ratioVar = 0.0
        var gradient = [Double](repeating: 0, count: M * K)
        var valueGradient = [Double](repeating: 0, count: value.parameters.count)
        for epoch in 0..<settings.numIterations {
            if epoch > 0 { try policy.evaluate() }
            for j in gradient.indices { gradient[j] = 0 }
            for j in valueGradient.indices { valueGradient[j] = 0 }
            var pgSum = 0.0, vfSum = 0.0, entropySum = 0.0, approxSum = 0.0
            var rhos = [Double](repeating: 0, count: N)
            var clip = ClipCounts(), valueClipped = 0
            var entropies = EntropyCache(policy)
            for i in 0..<N {
                let x = batch.context(i), y = batch.responses[i]
                let logRatio = policy.logProb[x * K + y] - batch.logProb[i]
                rhos[i] = exp(logRatio)
                approxSum += 0.5 * logRatio * logRatio
                let term = settings.surrogate.term(rho: rhos[i], advantage: advantages[i])
                pgSum -= term.objective
                gradient[x * K + y] -= term.logProbDerivative / Double(N)
                if term.clipped { clip.region += 1 }
                // The clipped value loss 0.5 max((V - R)^2, (V_old + clip(V - V_old) - R)^2).
                let v = value.value(x), r = rewards[i]
                let delta = v - oldValue[x]
                let clippedValue = oldValue[x] + min(max(delta, -clipRangeValue), clipRangeValue)
                let l1 = (v - r) * (v - r), l2 = (clippedValue - r) * (clippedValue - r)
                vfSum += 0.5 * max(l1, l2)
                if l2 > l1 { valueClipped += 1 }
                // d/dV: (V - R) from the unclipped branch; (Vclip - R) where clip is inactive, else 0.
                let dv = l1 >= l2 ? v - r : (abs(delta) < clipRangeValue ? clippedValue - r : 0)
                value.accumulate(valueCoefficient * dv / Double(N), context: x, into: &valueGradient)
                for t in 0..<L {
                    entropySum += entropies.entropy(
                        row: problem.row(context: x, level: t, node: problem.prefix(y, length: t)), of: policy)
                }
            }
            try policy.backward(sequenceGradient: gradient)
            let pgLoss = pgSum / Double(N), vfLoss = vfSum / Double(N)
            averages.add(
                loss: pgLoss, entropySum: entropySum, entropyCount: N * L, clip: clip, clipCount: N,
                update: optimizer.update(&policy))
            value.adam.update(&value.parameters, gradients: valueGradient)
            approxKL += approxSum / Double(N)
            valueLoss += vfLoss
            valueClip += Double(valueClipped) / Double(N)
            let (rm, rs) = ToyLMStatistics.meanAndStd(rhos)
            ratioMean += rm
            ratioVar += rs * rs
        }
        let a = averages.rows, u = Double(settings.numIterations)
        let klMean = kl.reduce(0, +) / Double(N)
        return [
            ("objective/kl", klMean), ("objective/entropy", oldEntropy / Double(N)),
            ("objective/non_score_reward", -beta * klMean),
            ("objective/rlhf_reward", rewards.reduce(0, +) / Double(N)),
            ("objective/scores", batch.scores.reduce(0, +) / Double(N)), ("policy/approxkl_avg", approxKL / u),
            ("policy/clipfrac_avg", a.region), ("loss/policy_avg", a.loss), ("loss/value_avg", valueLoss / u),
            ("val/clipfrac_avg", valueClip / u), ("policy/entropy_avg", a.entropy), ("val/ratio", ratioMean / u),
            ("val/ratio_var", ratioVar / u), ("grad_norm", a.gradNorm), ("lr", a.learningRate),
            ("episode", Double(step * N)),
        ]
    }
}
