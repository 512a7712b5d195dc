// What the on-policy RL algorithms of the toy LM share (WORKLOADS.md §2 R1): their common params (G, updates per
// batch, clip ranges), the generation of a batch of G responses per context, the clipped surrogate of one sample (or
// token) with TRL's clip accounting, and torch's mean / unbiased std. `rloo` and `grpo` are built from these; each
// keeps its own advantage and loss.

import Foundation
import TesseraCompute
import TesseraCore

/// The params every on-policy toy-LM algorithm reads the same way (TRL names).
struct OnPolicySettings: Sendable {
    /// G, responses per context (num_generations).
    var numGenerations: Int
    /// Optimiser updates per generated batch (num_iterations, TRL's mu).
    var numIterations: Int
    /// The clip ranges epsilon (low) and epsilon_high.
    var surrogate: ClippedSurrogate

    static let keys = ["num_generations", "num_iterations", "epsilon", "epsilon_high"]

    /// Reads `keys` from `p`; `generations` is the algorithm's default G.
    static func parse(_ p: Params, generations: Int) throws -> OnPolicySettings {
        let g = try p.int("num_generations", default: generations, range: 2...4096)
        let iterations = try p.int("num_iterations", default: 1, range: 1...64)
        let epsilon = try p.double("epsilon", range: 0...1, default: 0.2)
        let epsilonHigh = try p.double("epsilon_high", range: 0...100, default: epsilon)
        return OnPolicySettings(
            numGenerations: g, numIterations: iterations,
            surrogate: ClippedSurrogate(epsilonLow: epsilon, epsilonHigh: epsilonHigh))
    }

    /// Sample indices x G + g are Philox indices: the batch must fit 32 bits.
    func check(_ config: ToyLMTrainingConfig, _ p: Params) throws {
        guard config.problem.contexts * numGenerations <= Int(UInt32.max) else {
            throw p.error("num_generations", "params.num_generations x contexts must fit 32 bits")
        }
    }
}

/// One generated batch: G responses for every context, drawn from the policy of the last `evaluate()`.
///
/// Response i = x G + g of training step k uses Philox(point seed; index i, step k, stream 5 "action"), one uniform
/// per token (inverse CDF in vocabulary order), so a batch is a pure function of (seed, step, policy).
struct ToyLMRollout {
    /// G, responses per context.
    let groupSize: Int
    /// y_i, [N = M G].
    var responses: [Int]
    /// log pi_old(y_i | x), the sequence log-probability under the sampling policy, [N].
    var logProb: [Double]
    /// r(x, y_i), [N].
    var scores: [Double]

    init(policy: ToyLMPolicy, point: ToyLMSweepPoint, step: Int, groupSize G: Int) {
        let problem = policy.problem
        let M = problem.contexts, K = problem.responses
        let N = M * G
        groupSize = G
        responses = [Int](repeating: 0, count: N)
        logProb = [Double](repeating: 0, count: N)
        scores = [Double](repeating: 0, count: N)
        for x in 0..<M {
            for g in 0..<G {
                let i = x * G + g
                let y = Self.draw(policy: policy, point: point, step: step, index: i, context: x)
                responses[i] = y
                logProb[i] = policy.logProb[x * K + y]
                scores[i] = problem.reward[x * K + y]
            }
        }
    }

    /// Sample i (of context x) of training step `step`: the draw every batch of that step makes for it, wherever
    /// it is made (here, or in a rollout shard of `ToyLMRounds`).
    static func draw(policy: ToyLMPolicy, point: ToyLMSweepPoint, step: Int, index i: Int, context x: Int) -> Int {
        var stream = PhiloxStream(
            seed: point.seed, index: UInt32(i), step: UInt32(truncatingIfNeeded: step), stream: .action)
        return policy.sample(context: x, stream: &stream)
    }

    /// A batch of `responses` ([M G], drawn from `policy` elsewhere), scored here: log pi_old from `policy`'s last
    /// `evaluate()` and r from the problem.
    init(policy: ToyLMPolicy, responses: [Int], groupSize G: Int) {
        let problem = policy.problem
        let K = problem.responses
        groupSize = G
        self.responses = responses
        logProb = responses.indices.map { policy.logProb[($0 / G) * K + responses[$0]] }
        scores = responses.indices.map { problem.reward[($0 / G) * K + responses[$0]] }
    }

    var count: Int { responses.count }
    /// The context of sample i.
    func context(_ i: Int) -> Int { i / groupSize }
}

/// The entropy of each row of a policy's token table, computed the first time a sample asks for it: a batch of N
/// samples visits at most M P distinct rows, so a large batch pays V exps per row instead of per token. The values
/// (and so every sum of them) are bitwise those of `ToyLMPolicy.entropy(row:)`.
struct EntropyCache {
    private var values: [Double]

    /// For the policy of its last `evaluate()`; a new evaluation needs a new cache.
    init(_ policy: ToyLMPolicy) {
        values = [Double](repeating: .nan, count: policy.tokenLogProb.count / policy.problem.vocabulary)
    }

    mutating func entropy(row: Int, of policy: ToyLMPolicy) -> Double {
        if values[row].isNaN { values[row] = policy.entropy(row: row) }
        return values[row]
    }
}

/// PPO's clipped surrogate of one sample or token: objective min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A).
struct ClippedSurrogate: Sendable {
    var epsilonLow: Double
    var epsilonHigh: Double

    struct Term {
        /// min(rho A, clip(rho) A).
        var objective: Double
        /// d objective / d log pi: rho A where the unclipped term is the minimum (ties included: there clip is
        /// inactive and both terms have that derivative), else 0.
        var logProbDerivative: Double
        /// The clipped term is the smaller objective (TRL PPO's pg_losses2 > pg_losses: clipping acts).
        var clipped: Bool
        /// TRL's is_low_clipped (rho < 1 - eps_low and A < 0) and is_high_clipped (rho > 1 + eps_high and A > 0).
        var isLow: Bool
        var isHigh: Bool
    }

    func term(rho: Double, advantage a: Double) -> Term {
        let clipped = min(max(rho, 1 - epsilonLow), 1 + epsilonHigh)
        let unclippedTerm = rho * a, clippedTerm = clipped * a
        let active = unclippedTerm <= clippedTerm
        return Term(
            objective: min(unclippedTerm, clippedTerm), logProbDerivative: active ? unclippedTerm : 0,
            clipped: clippedTerm < unclippedTerm,
            isLow: rho < 1 - epsilonLow && a < 0, isHigh: rho > 1 + epsilonHigh && a > 0)
    }
}

/// TRL's clip_ratio counts over one update.
struct ClipCounts {
    var low = 0, high = 0, region = 0

    mutating func record(_ t: ClippedSurrogate.Term) {
        if t.isLow { low += 1 }
        if t.isHigh { high += 1 }
        if t.isLow || t.isHigh { region += 1 }
    }
}

/// The step metrics averaged over the step's optimiser updates (TRL logs one value per update; a step reports their
/// mean).
struct UpdateAverages {
    var loss = 0.0, entropy = 0.0, low = 0.0, high = 0.0, region = 0.0, gradNorm = 0.0, learningRate = 0.0
    var updates = 0

    /// One update: its loss, the entropy summed over `entropyCount` tokens, the clip counts over `clipCount`
    /// samples or tokens, and what the optimiser reported.
    mutating func add(
        loss l: Double, entropySum: Double, entropyCount: Int, clip: ClipCounts, clipCount: Int,
        update: (gradNorm: Double, learningRate: Double)
    ) {
        loss += l
        entropy += entropySum / Double(entropyCount)
        low += Double(clip.low) / Double(clipCount)
        high += Double(clip.high) / Double(clipCount)
        region += Double(clip.region) / Double(clipCount)
        gradNorm += update.gradNorm
        learningRate += update.learningRate
        updates += 1
    }

    /// The TRL-named rows of the averages, in this order.
    var rows: (loss: Double, entropy: Double, low: Double, high: Double, region: Double, gradNorm: Double,
        learningRate: Double)
    {
        let u = Double(updates)
        return (loss / u, entropy / u, low / u, high / u, region / u, gradNorm / u, learningRate / u)
    }
}

enum ToyLMStatistics {
    /// Sum, mean and unbiased std of one group of samples.
    struct Group {
        var sum: Double, mean: Double, std: Double
    }

    /// The statistics of each group of `values` ([M G], each context's G samples contiguous); std as torch's
    /// `view(-1, G).std(dim=1)`.
    static func groupStatistics(_ values: [Double], groupSize G: Int) -> [Group] {
        stride(from: 0, to: values.count, by: G).map { base in
            var sum = 0.0
            for g in 0..<G { sum += values[base + g] }
            let mean = sum / Double(G)
            var ss = 0.0
            for g in 0..<G { ss += (values[base + g] - mean) * (values[base + g] - mean) }
            return Group(sum: sum, mean: mean, std: (ss / Double(G - 1)).squareRoot())
        }
    }

    /// Mean and unbiased (n - 1) standard deviation, as torch's `mean()` and `std()`.
    static func meanAndStd(_ v: [Double]) -> (Double, Double) {
        let n = Double(v.count)
        let mean = v.reduce(0, +) / n
        let ss = v.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }
        return (mean, v.count > 1 ? (ss / (n - 1)).squareRoot() : .nan)
    }
}
