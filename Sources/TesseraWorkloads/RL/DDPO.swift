// `kind: rl`, `algorithm: ddpo`: RL fine-tuning of the diffusion sampler (WORKLOADS.md §2 R2; Black et al.,
// "Training Diffusion Models with Reinforcement Learning", 2023, after kvablack/ddpo-pytorch's scripts/train.py and
// diffusers_patch/ddim_with_logprob.py).
//
// Policy. The S1 sampler (`algorithm: ddim`, the same `SamplerEngine` update and leading timesteps) with eta = 1 and
// eps_th(x, t) = eps_ref(x, t) + Delta_th(x, t), eps_ref the exact score of the target and Delta_th an MLP on
// [x, temb(t)] (SiLU, `hidden`, the sinusoidal embedding of width `time_embedding`) whose last layer starts at zero,
// so the run starts at the reference sampler bit for bit. DDIM's mean is linear in eps, so
//     mu_th(x_t) = mu_ref(x_t) + g_t Delta_th(x_t, t),   g_t = sqrt(1 - a_p - sig_t^2) - sqrt(a_p) sqrt(1 - a_t)/sqrt(a_t),
// and each step is pi_th(x_p | x_t) = N(mu_th, sig_t^2 I), log-prob SUMMED over the d coordinates (ddpo-pytorch
// averages; the sum is what the KL theory needs). The last step (prev < 0, a_p = 1) has sig = 0: it is the
// reference's deterministic map and carries no Delta (a policy-gradient method cannot move a step without noise).
//
// Objective (beta = `beta`, r(x0) = -(lambda/2) |x0 - c|^2):
//     J(th) = E r(x0) - beta KL_path,   KL_path = E sum_t ||mu_th - mu_ref||^2 / (2 sig_t^2),
// the exact KL of the path laws. Its maximiser over all path laws is P* ∝ P_ref e^{r/beta}, so
//     J(th) <= J* = beta log E_{p_ref} e^{r(x0)/beta}
// for every th (Donsker-Varadhan), p_ref the REFERENCE SAMPLER's own output law. The family (a mean shift with the
// reference variance) does not contain P* exactly -- the optimal step is Gaussian with a slightly smaller variance --
// so J* - J has a floor that shrinks with the per-step variances (docs/training.md §13).
//
// Round k (1-based; `rollout`, then `update`, two functions so that rounds can later be spread over workers):
// B = `batch_size` trajectories of the current policy, trajectory i keyed by (point seed, round k, index i) through
// Philox: x_T = d normals of Philox(seed; i, step k (S + 1), stream 0), the noise of reverse step s (0-based) d normals
// of Philox(seed; i, step k (S + 1) + s + 1, stream 1). Round 0 is the evaluation (`eval_samples` trajectories).
// Returns r~_i = r_i - beta KL_i (the path KL of trajectory i folded into its reward, as RLOO does), advantages
// A_i = clip((r~_i - mean) / (std + eps), +-adv_clip_max) from the batch (`advantages: batch`, eps 1e-8) or from
// ddpo-pytorch's stat tracker (`advantages: tracker`: the last `tracker_buffer` r~'s; the batch's own statistics
// until it holds `tracker_min_count`; eps 1e-6). Then `inner_epochs` passes over `minibatches` contiguous slices,
// one Adam step each on
//     sf: L = (1/(m S')) sum_i sum_t [ -A_i log pi_th(x_p | x_t) + (beta/s) ||mu_th - mu_ref||^2 / (2 sig_t^2) ]
//     is: L = (1/(m S')) sum_i sum_t [ max(-A_i rho, -A_i clip(rho, 1 - eps, 1 + eps)) + (same KL term) ],
// rho = pi_th / pi_old per step, S' the noisy steps, s the std the advantages were divided by, and the gradient
// clipped to `max_grad_norm`. Why the KL appears twice: d/dth of E_P[K] has a score-function part
// E[grad log P K] (the states move with th) and a direct part E[grad K]; the fold gives the first, the loss term
// the second. With both, the expected gradient of L at rho = 1 is -grad J / (s S'), zero exactly where grad J is
// (the loss term alone would miss the first part and optimise another objective).
//
// Metrics (every `log_every` rounds and the last; ddpo-pytorch's names): reward_mean, reward_std, kl_path,
// objective (mean r~), approx_kl (mean over steps and updates of (rho - 1) - log rho), clipfrac (|rho - 1| > eps),
// loss, grad_norm, lr, advantage_std (the s above); with a single-Gaussian target exact/optimal_objective (J*) and
// exact/objective_gap (J* - the batch's J estimate). The summary evaluates the final policy on round 0.
// Checkpoint: `TrainingCheckpoint<Double>` (Delta_th as layers.<l>.*, Adam, step = rng_counter) plus
// `stat_tracker.buffer` (F64, the tracker's rewards, oldest first).

import Foundation
import TesseraCompute
import TesseraCore

public struct DDPO: TypedAlgorithm {
    public var kind: JobKind { .rl }
    public var name: String { "ddpo" }
    public var summary: String {
        "DDPO: the eta=1 DDIM sampler with eps_ref + Delta_th, score-function or clipped importance-sampling policy gradient, per-step Gaussian KL"
    }

    public init() {}

    public enum Variant: String, Sendable { case sf, `is` }

    /// A ddpo job's validated params.
    public struct Config: Sendable {
        var target: GaussianMixture
        var schedule: BetaSchedule
        var samplingSteps: Int
        var reward: QuadraticReward
        var variant: Variant
        var clipRange: Double
        var advClipMax: Double
        /// nil: batch normalisation; else (buffer, min count) of the stat tracker.
        var tracker: (buffer: Int, minCount: Int)?
        var batchSize: Int
        var minibatches: Int
        var innerEpochs: Int
        var steps: Int
        var hidden: [Int]
        var timeEmbedding: Int
        var maxGradNorm: Double?
        var optimizer: AdamConfiguration
        var evalSamples: Int
        var logEvery: Int
        var checkpointEvery: Int?
        var points: [ToyLMSweepPoint]
    }

    static let keys =
        [
            "target", "schedule", "sampling_steps", "beta", "lambda", "center", "variant", "clip_range",
            "adv_clip_max", "advantages", "tracker_buffer", "tracker_min_count", "batch_size", "minibatches",
            "inner_epochs", "steps", "hidden", "time_embedding", "max_grad_norm", "eval_samples", "log_every", "sweep",
        ] + GaussianPolicySweep.optimizerKeys

    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        try p.rejectUnknown(Self.keys)
        let target = try DiffusionSampling.target(p)
        let schedule = try DiffusionSampling.schedule(p)
        let samplingSteps = try p.int("sampling_steps", default: 20, range: 2...schedule.steps)
        let reward = try QuadraticReward.parse(p, dimension: target.dimension)
        let variant = Variant(rawValue: try p.string("variant", default: "is", allowed: ["sf", "is"]))!
        let clip = try p.double("clip_range", range: 0...1e6, default: 1e-4)
        let advClip = try p.double("adv_clip_max", range: 0...1e6, default: 5)
        let advantages = try p.string("advantages", default: "batch", allowed: ["batch", "tracker"])
        for key in ["tracker_buffer", "tracker_min_count"] where advantages == "batch" && p.has(key) {
            throw p.error(key, "params.\(key) needs advantages: tracker")
        }
        var tracker: (Int, Int)?
        if advantages == "tracker" {
            let buffer = try p.int("tracker_buffer", default: 16, range: 1...10_000_000)
            tracker = (buffer, try p.int("tracker_min_count", default: 16, range: 1...buffer))
        }
        let batch = try p.int("batch_size", default: 256, range: 2...1_000_000)
        let minibatches = try p.int("minibatches", default: 1, range: 1...batch)
        guard batch % minibatches == 0 else {
            throw p.error("minibatches", "params.minibatches (\(minibatches)) must divide batch_size (\(batch))")
        }
        let epochs = try p.int("inner_epochs", default: 1, range: 1...64)
        let steps = try p.int("steps", default: 300, range: 1...ToyLMTrainingConfig.maxSteps)
        guard (steps + 1) * (samplingSteps + 1) < Int(UInt32.max) else {
            throw p.error("steps", "params.steps x (sampling_steps + 1) must stay below 2^32 (Philox step numbers)")
        }
        var hidden = [64, 64]
        if p.has("hidden") {
            hidden = try p.array("hidden").enumerated().map { i, v in
                guard let w = v.intValue, (1...4096).contains(w) else {
                    throw p.source.error("params.hidden[\(i)]", "params.hidden[\(i)] must be a width from 1 to 4096")
                }
                return w
            }
            guard (1...4).contains(hidden.count) else {
                throw p.error("hidden", "params.hidden lists 1 to 4 hidden layer widths")
            }
        }
        let embedding = try p.int("time_embedding", default: 16, range: 2...1024)
        guard embedding % 2 == 0 else { throw p.error("time_embedding", "params.time_embedding must be even") }
        let maxGradNorm = try p.double("max_grad_norm", range: 0...1e12, default: 1)
        let optimizer = try GaussianPolicySweep.optimizer(
            p, steps: steps, updatesPerStep: epochs * minibatches, defaultLearningRate: 3e-3)
        let evalSamples = try p.int("eval_samples", default: 4096, range: 2...10_000_000)
        let logEvery = try p.int("log_every", default: 10, range: 1...ToyLMTrainingConfig.maxSteps)
        let points = try ToyLMSweepPoint.parse(spec, p, defaultBeta: 0.25)
        return Config(
            target: target, schedule: schedule, samplingSteps: samplingSteps, reward: reward, variant: variant,
            clipRange: clip, advClipMax: advClip, tracker: tracker, batchSize: batch, minibatches: minibatches,
            innerEpochs: epochs, steps: steps, hidden: hidden, timeEmbedding: embedding,
            maxGradNorm: maxGradNorm > 0 ? maxGradNorm : nil, optimizer: optimizer, evalSamples: evalSamples,
            logEvery: logEvery, checkpointEvery: spec.checkpointEvery, points: points)
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<ToyLMSweepPoint>] {
        config.points.map { TypedShardSlice($0, totalSteps: Int64(config.steps)) }
    }

    public func run(_ slice: ToyLMSweepPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<DDPOSummary>
    {
        let slice = try slice.checked(against: config.points)
        return TypedShardOutput(
            summary: try DDPOTrainer(config: config, point: slice, params: task.spec.params).run(
                resume: task.resume, sink: sink))
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<DDPOSummary> {
        SummaryReducer { try DDPOSummary.merge(summaries: $0) }
    }
}

/// The policy's sampler: the reference steps, their exact-score mixtures, the gains g_t and the time embeddings.
struct DDPOSampler: Sendable {
    let engine: SamplerEngine
    let steps: [SamplerStep]
    let mixtures: [NoisedMixture]
    /// g_t of the header (0 for the deterministic last step).
    let gains: [Double]
    /// temb(t) rows [S, D].
    let embedding: [Double]
    let dimension: Int
    let timeEmbedding: Int
    let reward: QuadraticReward

    init(target: GaussianMixture, schedule: BetaSchedule, samplingSteps: Int, timeEmbedding: Int, reward: QuadraticReward) {
        engine = SamplerEngine(target: target)
        steps = samplerSteps(schedule: schedule, sampler: .ddim(eta: 1), samplingSteps: samplingSteps)
        mixtures = steps.map { target.noised(alphaBar: $0.alphaBar) }
        gains = steps.map { s in
            s.sigma > 0 ? s.epsCoefficient - s.x0Coefficient * s.sqrtOneMinusAlphaBar * s.inverseSqrtAlphaBar : 0
        }
        embedding = try! Tensor<Double>.timeEmbedding(steps.map { Double($0.t) }, dimension: timeEmbedding).scalars
        dimension = target.dimension
        self.timeEmbedding = timeEmbedding
        self.reward = reward
    }

    var noisySteps: Int { steps.filter { $0.sigma > 0 }.count }

    /// The network's input rows [x_i, temb(t_s)] for rows `rows` of `x` ([n, d]).
    func input(_ x: [Double], rows: Range<Int>, step s: Int, into buffer: inout [Double]) {
        let d = dimension, D = timeEmbedding, w = d + D
        for (j, i) in rows.enumerated() {
            for c in 0..<d { buffer[j * w + c] = x[i * d + c] }
            for c in 0..<D { buffer[j * w + d + c] = embedding[s * D + c] }
        }
    }

    /// For a single-Gaussian target every reference step is affine, x_p = A x + B + sig z (A a number, B per
    /// coordinate): the output law N(m_0, V_0 I) from m' = A m + B, V' = A^2 V + sig^2, m = 0, V = 1 at x_T.
    func referenceLaw() -> (mean: [Double], variance: Double) {
        let d = dimension
        var m = [Double](repeating: 0, count: d), v = 1.0
        for (step, mixture) in zip(steps, mixtures) {
            var x = [Double](repeating: 0, count: d) + [Double](repeating: 1, count: d)
            x.withUnsafeMutableBufferPointer { engine.denoise($0.baseAddress!, count: 2, step: step, mixture: mixture) }
            let a = x[d] - x[0]
            for c in 0..<d { m[c] = a * m[c] + x[c] }
            v = a * a * v + step.sigma * step.sigma
        }
        return (m, v)
    }
}

/// One round's trajectories: every state, the reference means and the rollout policy's log-probs.
struct DDPOBatch: Sendable {
    let count: Int
    /// x before reverse step s, s = 0..<S, and x_0 at S: [S + 1][n d].
    var states: [[Double]]
    /// mu_ref(x) of each reverse step: [S][n d].
    var referenceMeans: [[Double]]
    /// log pi_old(x_p | x_t) of each noisy step, [n][S] (0 at the deterministic step).
    var logProbs: [Double]
    /// The path KL of each trajectory, [n].
    var pathKL: [Double]
    /// r(x_0), [n].
    var rewards: [Double]

    var finalStates: [Double] { states[states.count - 1] }
}

enum DDPORollout {
    /// log N(x_p; mu, sig^2 I) summed over d coordinates of the row, and the standardised residual n = (x_p - mu)/sig.
    @inline(__always)
    static func logProb(residualSquared: Double, sigma: Double, dimension d: Int) -> Double {
        -0.5 * residualSquared - Double(d) * (log(sigma) + 0.5 * log(2 * Double.pi))
    }

    /// The trajectories of indices `indices` for the policy `net` in round `round` (0 = evaluation).
    static func rollout(
        _ sampler: DDPOSampler, net: MLP<Double>, seed: UInt64, round: Int, indices: Range<Int>, chunk: Int = 1024
    ) throws -> DDPOBatch {
        let d = sampler.dimension, n = indices.count, S = sampler.steps.count
        let base = UInt32(round * (S + 1))
        var x = [Double](repeating: 0, count: n * d)
        x.withUnsafeMutableBufferPointer { xs in
            for (j, i) in indices.enumerated() {
                var stream = PhiloxStream(seed: seed, index: UInt32(i), step: base, stream: .initialNoise)
                stream.fillNormals(UnsafeMutableBufferPointer(start: xs.baseAddress! + j * d, count: d))
            }
        }
        var batch = DDPOBatch(
            count: n, states: [x], referenceMeans: [], logProbs: [Double](repeating: 0, count: n * S),
            pathKL: [Double](repeating: 0, count: n), rewards: [])
        let capacity = min(chunk, n)
        var ws = net.makeWorkspace(batchCapacity: capacity)
        var input = [Double](repeating: 0, count: capacity * net.inputSize)
        var delta = [Double](repeating: 0, count: n * d)
        var z = [Double](repeating: 0, count: d)
        for (s, step) in sampler.steps.enumerated() {
            var mean = x
            mean.withUnsafeMutableBufferPointer {
                sampler.engine.denoise($0.baseAddress!, count: n, step: step, mixture: sampler.mixtures[s])
            }
            batch.referenceMeans.append(mean)
            let sigma = step.sigma
            if sigma > 0 {
                var start = 0
                while start < n {
                    let m = min(capacity, n - start)
                    sampler.input(x, rows: start..<(start + m), step: s, into: &input)
                    try input.withUnsafeBufferPointer {
                        try net.forward(
                            UnsafeBufferPointer(rebasing: $0[0..<(m * net.inputSize)]), batch: m, workspace: &ws,
                            training: false)
                    }
                    ws.withOutput { out in for k in 0..<(m * d) { delta[start * d + k] = out[k] } }
                    start += m
                }
                let g = sampler.gains[s]
                for (j, i) in indices.enumerated() {
                    var stream = PhiloxStream(seed: seed, index: UInt32(i), step: base + UInt32(s + 1), stream: .stepNoise)
                    z.withUnsafeMutableBufferPointer { stream.fillNormals($0) }
                    var shift = 0.0, residual = 0.0
                    for c in 0..<d {
                        let k = j * d + c
                        let mu = mean[k] + g * delta[k]
                        x[k] = mu + sigma * z[c]
                        let u = (x[k] - mu) / sigma
                        residual += u * u
                        shift += g * g * delta[k] * delta[k]
                    }
                    batch.logProbs[j * S + s] = logProb(residualSquared: residual, sigma: sigma, dimension: d)
                    batch.pathKL[j] += shift / (2 * sigma * sigma)
                }
            } else {
                x = mean
            }
            batch.states.append(x)
        }
        batch.rewards = x.withUnsafeBufferPointer { xs in (0..<n).map { sampler.reward(xs.baseAddress! + $0 * d) } }
        return batch
    }
}

/// ddpo-pytorch's PerPromptStatTracker for the one "prompt" of a job: the last `buffer` rewards.
struct DDPOStatTracker: Sendable, Equatable {
    var buffer: Int
    var minCount: Int
    var rewards: [Double] = []

    /// Adds the batch, then (mean, std + 1e-6) of the buffer, or of the batch while the buffer is short.
    mutating func update(_ batch: [Double]) -> (mean: Double, std: Double) {
        rewards.append(contentsOf: batch)
        if rewards.count > buffer { rewards.removeFirst(rewards.count - buffer) }
        let (m, v) = FINDTrainer.meanAndVariance(rewards.count < minCount ? batch : rewards)
        return (m, v.squareRoot() + 1e-6)
    }
}

/// What one minibatch's loss needs besides the network.
struct DDPOLossInputs {
    var sampler: DDPOSampler
    var variant: DDPO.Variant
    var surrogate: ClippedSurrogate
    /// beta / s.
    var klWeight: Double
    var clipRange: Double
}

/// The loss statistics of one update, summed over its (row, noisy step) terms.
struct DDPOLossStatistics {
    var loss = 0.0
    var approxKL = 0.0
    var clipped = 0
    var terms = 0
}

enum DDPOUpdate {
    /// The loss of the header on rows `rows` of `batch` and its gradient in `net.gradients`.
    static func loss(
        _ net: inout MLP<Double>, workspace ws: inout MLPWorkspace<Double>, batch: DDPOBatch, rows: Range<Int>,
        advantages: [Double], inputs q: DDPOLossInputs, statistics: inout DDPOLossStatistics
    ) throws {
        let sampler = q.sampler, d = sampler.dimension, S = sampler.steps.count, m = rows.count
        let scale = 1 / Double(m * sampler.noisySteps)
        var input = [Double](repeating: 0, count: m * net.inputSize)
        var gradOut = [Double](repeating: 0, count: m * d)
        var first = true
        for (s, step) in sampler.steps.enumerated() where step.sigma > 0 {
            let sigma = step.sigma, g = sampler.gains[s]
            sampler.input(batch.states[s], rows: rows, step: s, into: &input)
            try input.withUnsafeBufferPointer { try net.forward($0, batch: m, workspace: &ws) }
            let next = batch.states[s + 1], mean = batch.referenceMeans[s]
            ws.withOutput { delta in
                for (j, i) in rows.enumerated() {
                    var residual = 0.0, shift = 0.0
                    for c in 0..<d {
                        let k = i * d + c
                        let u = (next[k] - (mean[k] + g * delta[j * d + c])) / sigma
                        residual += u * u
                        shift += delta[j * d + c] * delta[j * d + c]
                    }
                    let logRatio =
                        DDPORollout.logProb(residualSquared: residual, sigma: sigma, dimension: d)
                        - batch.logProbs[i * S + s]
                    let rho = exp(logRatio)
                    let a = advantages[i]
                    // dL/d log pi for this term, and the term's policy part of the loss.
                    var dLogProb: Double
                    switch q.variant {
                    case .sf:
                        dLogProb = -a
                        statistics.loss -= a * (logRatio + batch.logProbs[i * S + s]) * scale
                    case .is:
                        let term = q.surrogate.term(rho: rho, advantage: a)
                        dLogProb = -term.logProbDerivative
                        statistics.loss -= term.objective * scale
                    }
                    statistics.loss += q.klWeight * g * g * shift / (2 * sigma * sigma) * scale
                    statistics.approxKL += (rho - 1) - logRatio
                    if abs(rho - 1) > q.clipRange { statistics.clipped += 1 }
                    statistics.terms += 1
                    dLogProb *= scale
                    // d log pi / d Delta = g u / sig;  d KL term / d Delta = klWeight g^2 Delta / sig^2.
                    for c in 0..<d {
                        let k = i * d + c
                        let u = (next[k] - (mean[k] + g * delta[j * d + c])) / sigma
                        gradOut[j * d + c] =
                            dLogProb * g * u / sigma + q.klWeight * g * g * delta[j * d + c] / (sigma * sigma) * scale
                    }
                }
            }
            try gradOut.withUnsafeBufferPointer { try net.backward($0, workspace: &ws, accumulate: !first) }
            first = false
        }
    }
}

struct DDPOTrainer {
    let config: DDPO.Config
    let point: ToyLMSweepPoint
    let configText: String
    let sampler: DDPOSampler
    /// J* and the reference law, for a single-Gaussian target.
    let closedForm: (optimalObjective: Double, mean: [Double], variance: Double)?

    init(config: DDPO.Config, point: ToyLMSweepPoint, params: JSONObject) {
        self.config = config
        self.point = point
        configText = JSONValue.object(["params": .object(params), "point": point.slice]).render()
        sampler = DDPOSampler(
            target: config.target, schedule: config.schedule, samplingSteps: config.samplingSteps,
            timeEmbedding: config.timeEmbedding, reward: config.reward)
        if config.target.componentCount == 1 {
            let (m, v) = sampler.referenceLaw()
            closedForm = (Self.optimalObjective(mean: m, variance: v, reward: config.reward, beta: point.beta), m, v)
        } else {
            closedForm = nil
        }
    }

    /// J* = beta log E e^{r/beta} for x ~ N(m, v I), r = -(lambda/2)|x - c|^2: per coordinate
    /// -(beta/2) log(1 + lambda v/beta) - lambda beta (m - c)^2 / (2 (beta + lambda v)).
    static func optimalObjective(mean: [Double], variance v: Double, reward: QuadraticReward, beta: Double) -> Double {
        let l = reward.lambda
        var j = 0.0
        for c in mean.indices {
            let u = mean[c] - reward.center[c]
            j += -0.5 * beta * log(1 + l * v / beta) - l * beta * u * u / (2 * (beta + l * v))
        }
        return j
    }

    /// The tilted mixture's weights w_k' ∝ w_k N(c; mu_k, (s_k^2 + beta/lambda) I).
    static func tiltedWeights(_ target: GaussianMixture, reward: QuadraticReward, beta: Double) -> [Double] {
        let d = Double(target.dimension)
        let logits = (0..<target.componentCount).map { k -> Double in
            let v = target.stds[k] * target.stds[k] + beta / reward.lambda
            var dist = 0.0
            for c in 0..<target.dimension {
                let u = reward.center[c] - target.means[k][c]
                dist += u * u
            }
            return log(target.weights[k]) - 0.5 * d * log(v) - dist / (2 * v)
        }
        let top = logits.max()!
        let e = logits.map { exp($0 - top) }
        let total = e.reduce(0, +)
        return e.map { $0 / total }
    }

    func makeNetwork() throws -> MLP<Double> {
        let d = config.target.dimension
        var net = try MLP<Double>(
            sizes: [d + config.timeEmbedding] + config.hidden + [d], activation: .silu, seed: point.seed)
        let last = net.layerCount - 1
        for i in net.weightRange(last).lowerBound..<net.biasRange(last).upperBound { net.parameters[i] = 0 }
        return net
    }

    /// Advantages of r~ = r - beta KL, and the std s they were divided by.
    func advantages(_ batch: DDPOBatch, tracker: inout DDPOStatTracker?) -> (values: [Double], std: Double) {
        let penalised = (0..<batch.count).map { batch.rewards[$0] - point.beta * batch.pathKL[$0] }
        let stats: (mean: Double, std: Double)
        if tracker != nil {
            stats = tracker!.update(penalised)
        } else {
            let (m, v) = FINDTrainer.meanAndVariance(penalised)
            stats = (m, v.squareRoot() + 1e-8)
        }
        let c = config.advClipMax
        return (penalised.map { min(max(($0 - stats.mean) / stats.std, -c), c) }, stats.std)
    }

    /// One round's update: `inner_epochs` passes over the minibatches, an Adam step each.
    func update(
        _ net: inout MLP<Double>, adam: inout Adam<Double>, batch: DDPOBatch, advantages: [Double], std: Double
    ) throws -> (statistics: DDPOLossStatistics, gradNorm: Double, lr: Double) {
        let inputs = DDPOLossInputs(
            sampler: sampler, variant: config.variant,
            surrogate: ClippedSurrogate(epsilonLow: config.clipRange, epsilonHigh: config.clipRange),
            klWeight: point.beta / std, clipRange: config.clipRange)
        let m = config.batchSize / config.minibatches
        var ws = net.makeWorkspace(batchCapacity: m)
        var statistics = DDPOLossStatistics()
        var gradNorm = 0.0, lr = 0.0
        for _ in 0..<config.innerEpochs {
            for b in 0..<config.minibatches {
                try DDPOUpdate.loss(
                    &net, workspace: &ws, batch: batch, rows: (b * m)..<((b + 1) * m), advantages: advantages,
                    inputs: inputs, statistics: &statistics)
                gradNorm += config.maxGradNorm.map { net.clipGradientNorm(maxNorm: $0) } ?? net.gradientNorm()
                lr += adam.nextLearningRate
                adam.update(&net)
            }
        }
        let updates = Double(config.innerEpochs * config.minibatches)
        statistics.loss /= updates
        return (statistics, gradNorm / updates, lr / updates)
    }

    func run(resume: (step: Int64, bytes: [UInt8])?, sink: any ShardSink) throws -> DDPOSummary {
        let updatesPerRound = config.innerEpochs * config.minibatches
        var net = try makeNetwork()
        var adam = try Adam<Double>(configuration: config.optimizer, parameterCount: net.parameterCount)
        var tracker = config.tracker.map { DDPOStatTracker(buffer: $0.buffer, minCount: $0.minCount) }
        var start = 0
        let label = "ddpo β=\(point.beta) seed \(point.seed)"
        if let resume {
            let checkpoint = try TrainingCheckpoint<Double>.resuming(
                resume, algo: "ddpo", config: configText, configName: "configuration or sweep point", sizes: net.sizes,
                optimizer: config.optimizer)
            let mismatch = checkpoint.refusal
            guard checkpoint.step >= 0, checkpoint.step <= config.steps, checkpoint.rngCounter == UInt64(checkpoint.step),
                checkpoint.optimizer.step == checkpoint.step * updatesPerRound
            else { throw mismatch("is not a resumable state of a \(config.steps)-round run") }
            if tracker != nil {
                guard let t = checkpoint.extraTensors.first(where: { $0.name == "stat_tracker.buffer" }),
                    let v = try? t.float64Values(), v.count <= tracker!.buffer
                else { throw mismatch("has no stat_tracker.buffer") }
                tracker!.rewards = v
            }
            net = checkpoint.model
            adam = checkpoint.optimizer
            start = checkpoint.step
            sink.log("\(label): resumed from the checkpoint at round \(start) of \(config.steps)")
        } else {
            sink.log(
                "\(label): \(config.variant.rawValue), \(config.steps) rounds of \(config.batchSize) trajectories, S = \(config.samplingSteps)")
        }
        sink.progress(step: Int64(start))

        var step = start
        while step < config.steps {
            if sink.shouldStop { throw ShardStopped() }
            step += 1
            let batch = try DDPORollout.rollout(
                sampler, net: net, seed: point.seed, round: step, indices: 0..<config.batchSize)
            let (advantages, std) = advantages(batch, tracker: &tracker)
            let (statistics, gradNorm, lr) = try update(
                &net, adam: &adam, batch: batch, advantages: advantages, std: std)

            let log = step % config.logEvery == 0 || step == config.steps
            let save = step == config.steps || config.checkpointEvery.map { step % $0 == 0 } == true
            if log || save {
                let (rewardMean, rewardVariance) = FINDTrainer.meanAndVariance(batch.rewards)
                let kl = batch.pathKL.reduce(0, +) / Double(batch.count)
                let objective = rewardMean - point.beta * kl
                let terms = Double(max(statistics.terms, 1))
                var rows: [(String, Double)] = [
                    ("reward_mean", rewardMean), ("reward_std", rewardVariance.squareRoot()), ("kl_path", kl),
                    ("objective", objective), ("approx_kl", statistics.approxKL / terms),
                    ("clipfrac", Double(statistics.clipped) / terms), ("loss", statistics.loss),
                    ("grad_norm", gradNorm), ("lr", lr), ("advantage_std", std),
                ]
                if config.target.componentCount > 1 {
                    let weights = modeWeights(batch)
                    rows += weights.indices.map { ("mode_weight/\($0)", weights[$0]) }
                }
                if let closedForm {
                    rows += [
                        ("exact/optimal_objective", closedForm.optimalObjective),
                        ("exact/objective_gap", closedForm.optimalObjective - objective),
                    ]
                }
                if log { for (name, value) in rows { sink.metric(name, step: Int64(step), value: value) } }
                if save {
                    var last = JSONObject()
                    for (name, value) in rows { last[name] = .number(value) }
                    let extra = try tracker.map {
                        [try SafeTensor(name: "stat_tracker.buffer", float64: $0.rewards, shape: [$0.rewards.count])]
                    } ?? []
                    let checkpoint = TrainingCheckpoint(
                        model: net, optimizer: adam, seed: point.seed, rngCounter: UInt64(step), step: step,
                        algo: "ddpo", config: configText, metricsLast: JSONValue.object(last).render(),
                        extraTensors: extra)
                    try sink.blob(.checkpoint, step: Int64(step), bytes: try checkpoint.safeTensorsFile().serialize())
                }
            }
            sink.progress(step: Int64(step))
        }
        let summary = try evaluate(net)
        sink.log(
            "\(label): J = \(summary.objective) ± \(summary.objectiveStandardError)"
                + (summary.optimalObjective.map { ", J* = \($0)" } ?? "") + ", mode weights \(summary.modeWeights)")
        return summary
    }

    /// The fraction of the batch's x_0 in each mode (argmax posterior under the target).
    func modeWeights(_ batch: DDPOBatch) -> [Double] {
        let classifier = ModeClassifier(config.target), d = config.target.dimension
        var counts = [Double](repeating: 0, count: config.target.componentCount)
        batch.finalStates.withUnsafeBufferPointer { xs in
            for i in 0..<batch.count { counts[classifier.mode(xs.baseAddress! + i * d)] += 1 }
        }
        return counts.map { $0 / Double(batch.count) }
    }

    /// The final policy on round 0's `eval_samples` trajectories.
    func evaluate(_ net: MLP<Double>) throws -> DDPOSummary {
        let n = config.evalSamples
        let batch = try DDPORollout.rollout(sampler, net: net, seed: point.seed, round: 0, indices: 0..<n)
        let penalised = (0..<n).map { batch.rewards[$0] - point.beta * batch.pathKL[$0] }
        let (objective, variance) = FINDTrainer.meanAndVariance(penalised)
        let (rewardMean, rewardVariance) = FINDTrainer.meanAndVariance(batch.rewards)
        return DDPOSummary(
            point: point, steps: config.steps, evalSamples: n, rewardMean: rewardMean,
            rewardStd: rewardVariance.squareRoot(), klPath: batch.pathKL.reduce(0, +) / Double(n),
            objective: objective, objectiveStandardError: (variance / Double(n - 1)).squareRoot(),
            optimalObjective: closedForm?.optimalObjective, referenceMean: closedForm?.mean,
            referenceVariance: closedForm?.variance, modeWeights: modeWeights(batch),
            tiltedWeights: Self.tiltedWeights(config.target, reward: config.reward, beta: point.beta))
    }
}

/// One shard's summary: the point and the final policy's evaluation: `{"point", "beta", "seed", "steps",
/// "eval_samples", "reward_mean", "reward_std", "kl_path", "objective", "objective_se", "mode_weights",
/// "tilted_weights", "mode_weight_error"}`, plus for a single-Gaussian target `"optimal_objective"`,
/// `"objective_gap"`, `"relative_gap"` ((J* - J)/|J*|), `"reference_mean"` and `"reference_variance"` (the reference
/// sampler's output law N(m_0, V_0 I)).
public struct DDPOSummary: Codable, Sendable, Equatable {
    public var point: ToyLMSweepPoint
    public var steps: Int
    public var evalSamples: Int
    public var rewardMean: Double
    public var rewardStd: Double
    public var klPath: Double
    public var objective: Double
    public var objectiveStandardError: Double
    public var optimalObjective: Double?
    public var objectiveGap: Double?
    public var relativeGap: Double?
    public var referenceMean: [Double]?
    public var referenceVariance: Double?
    public var modeWeights: [Double]
    /// w_k' of the tilted mixture (exact when the reference sampler's law is the target).
    public var tiltedWeights: [Double]
    public var modeWeightError: Double

    enum CodingKeys: String, CodingKey {
        case steps, evalSamples = "eval_samples", rewardMean = "reward_mean", rewardStd = "reward_std"
        case klPath = "kl_path", objective, objectiveStandardError = "objective_se"
        case optimalObjective = "optimal_objective", objectiveGap = "objective_gap", relativeGap = "relative_gap"
        case referenceMean = "reference_mean", referenceVariance = "reference_variance"
        case modeWeights = "mode_weights", tiltedWeights = "tilted_weights", modeWeightError = "mode_weight_error"
    }

    init(
        point: ToyLMSweepPoint, steps: Int, evalSamples: Int, rewardMean: Double, rewardStd: Double, klPath: Double,
        objective: Double, objectiveStandardError: Double, optimalObjective: Double?, referenceMean: [Double]?,
        referenceVariance: Double?, modeWeights: [Double], tiltedWeights: [Double]
    ) {
        self.point = point
        self.steps = steps
        self.evalSamples = evalSamples
        self.rewardMean = rewardMean
        self.rewardStd = rewardStd
        self.klPath = klPath
        self.objective = objective
        self.objectiveStandardError = objectiveStandardError
        self.optimalObjective = optimalObjective
        if let optimalObjective {
            objectiveGap = optimalObjective - objective
            relativeGap = (optimalObjective - objective) / abs(optimalObjective)
        }
        self.referenceMean = referenceMean
        self.referenceVariance = referenceVariance
        self.modeWeights = modeWeights
        self.tiltedWeights = tiltedWeights
        modeWeightError = zip(modeWeights, tiltedWeights).map { abs($0 - $1) }.max() ?? 0
    }

    public func encode(to encoder: any Encoder) throws {
        try point.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(steps, forKey: .steps)
        try c.encode(evalSamples, forKey: .evalSamples)
        try c.encode(rewardMean, forKey: .rewardMean)
        try c.encode(rewardStd, forKey: .rewardStd)
        try c.encode(klPath, forKey: .klPath)
        try c.encode(objective, forKey: .objective)
        try c.encode(objectiveStandardError, forKey: .objectiveStandardError)
        try c.encodeIfPresent(optimalObjective, forKey: .optimalObjective)
        try c.encodeIfPresent(objectiveGap, forKey: .objectiveGap)
        try c.encodeIfPresent(relativeGap, forKey: .relativeGap)
        try c.encodeIfPresent(referenceMean, forKey: .referenceMean)
        try c.encodeIfPresent(referenceVariance, forKey: .referenceVariance)
        try c.encode(modeWeights, forKey: .modeWeights)
        try c.encode(tiltedWeights, forKey: .tiltedWeights)
        try c.encode(modeWeightError, forKey: .modeWeightError)
    }

    public init(from decoder: any Decoder) throws {
        point = try ToyLMSweepPoint(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        steps = try c.decode(Int.self, forKey: .steps)
        evalSamples = try c.decode(Int.self, forKey: .evalSamples)
        rewardMean = try c.decode(Double.self, forKey: .rewardMean)
        rewardStd = try c.decode(Double.self, forKey: .rewardStd)
        klPath = try c.decode(Double.self, forKey: .klPath)
        objective = try c.decode(Double.self, forKey: .objective)
        objectiveStandardError = try c.decode(Double.self, forKey: .objectiveStandardError)
        optimalObjective = try c.decodeIfPresent(Double.self, forKey: .optimalObjective)
        objectiveGap = try c.decodeIfPresent(Double.self, forKey: .objectiveGap)
        relativeGap = try c.decodeIfPresent(Double.self, forKey: .relativeGap)
        referenceMean = try c.decodeIfPresent([Double].self, forKey: .referenceMean)
        referenceVariance = try c.decodeIfPresent(Double.self, forKey: .referenceVariance)
        modeWeights = try c.decode([Double].self, forKey: .modeWeights)
        tiltedWeights = try c.decode([Double].self, forKey: .tiltedWeights)
        modeWeightError = try c.decode(Double.self, forKey: .modeWeightError)
    }

    /// The merged result: every point's summary and the worst gaps over the points.
    static func merge(summaries: [DDPOSummary]) throws -> JSONValue {
        var result: JSONObject = ["algorithm": .string("ddpo"), "points": try TypedCoding.encode(summaries, "summaries")]
        if let worst = summaries.compactMap(\.relativeGap).max() { result["max_relative_gap"] = .number(worst) }
        result["max_mode_weight_error"] = .number(summaries.map(\.modeWeightError).max() ?? 0)
        return .object(result)
    }
}

extension TrainingCheckpoint where Scalar == Double {
    /// A resume checkpoint read and checked against the shard: written by `algo` for `config` (the job's params and
    /// this shard's point or seed, named `configName` in the refusal), with a network of `sizes` and `optimizer`.
    /// What else makes it resumable (steps, extra tensors) the caller checks, refusing with `refusal`.
    static func resuming(
        _ resume: (step: Int64, bytes: [UInt8]), algo: String, config: String, configName: String, sizes: [Int],
        optimizer: AdamConfiguration
    ) throws -> TrainingCheckpoint {
        let checkpoint: TrainingCheckpoint
        do {
            checkpoint = try TrainingCheckpoint(file: SafeTensorsFile.parse(resume.bytes))
        } catch {
            throw ShardError("the resume checkpoint (step \(resume.step)) cannot be read: \(error)")
        }
        let mismatch = checkpoint.refusal
        guard checkpoint.algo == algo else { throw mismatch("was written by \(checkpoint.algo), not \(algo)") }
        guard checkpoint.config == config else { throw mismatch("belongs to another \(configName)") }
        guard checkpoint.model.sizes == sizes, checkpoint.optimizer.configuration == optimizer else {
            throw mismatch("has another network or optimiser")
        }
        return checkpoint
    }

    /// The error that refuses this checkpoint as a resume state, saying `why`.
    func refusal(_ why: String) -> ShardError { ShardError("the resume checkpoint at step \(step) \(why)") }
}
