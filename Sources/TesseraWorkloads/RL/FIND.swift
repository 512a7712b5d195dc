// `kind: rl`, `algorithm: find`: FIND, policy optimisation of DDIM's initial noise (WORKLOADS.md §2 R3; Chen et
// al., "FIND: Fine-tuning Initial Noise Distribution with Policy Optimization for Diffusion Models", 2024).
//
// The policy is q_phi(z) = N(m, diag s^2) over x_T (phi = [m | log s], d = the target's dimension), starting at the
// prior N(0, I). The "environment" is the deterministic DDIM map Phi (eta = 0) with the exact score of the sampling
// target: x_0 = Phi(z), the same `SamplerEngine` update and leading timesteps as `algorithm: ddim` (S1). The
// problem is a one-step MDP: action z, reward r(Phi(z)) = -(lambda/2) |Phi(z) - c|^2. Objective
//     J(phi) = E_q r(Phi(z)) - beta KL(q || N(0, I)),   KL = 1/2 sum_j (s_j^2 + m_j^2 - 1 - 2 log s_j) in closed form.
//
// Step k (1-based): draw B actions z_i = m + s eps_i (eps_i: d normals of Philox(point seed; i, step k, stream 5)),
// run Phi, score them. Dynamic reward calibration (on by default): A_i = (r_i - mu^) / (sigma^ + 1e-8), with mu^ and
// sigma^ the running reward mean and std of the PREVIOUS steps' batches (an exponential moving mixture with
// `calibration_momentum` kappa: mu' = kappa mu + (1 - kappa) m_b, var' = kappa var + (1 - kappa) v_b
// + kappa (1 - kappa) (m_b - mu)^2, the moments of the mixture of the two laws; step 1 uses its own batch). Then
// `ppo_epochs` times, on the whole batch, with rho_i = q_phi(z_i) / q_old(z_i):
//     loss = -mean_i min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i) + w beta KL(q_phi || N(0, I)),
// w = 1 / (sigma^ + 1e-8) with calibration, else 1 (and A_i = r_i), and one Adam step on phi.
//
// Fixed point. mu^ and sigma^ come from earlier batches, so they are independent of the current one: the mean is a
// baseline (E_q grad log q = 0) and 1/sigma^ scales the reward AND the KL term, so the expected first-epoch gradient
// is -grad J / sigma^, zero exactly where grad J is. Later epochs differ from it only by the ratio's and the clip's
// effect, which vanishes with the step size. So the algorithm's fixed point is argmax J. (Scaling only the reward by
// 1/sigma^ would move the optimum to that of a reward scaled by a state-dependent factor.)
//
// Closed form (single-Gaussian target N(mu, s0^2 I)): the exact eps is linear in x, so every DDIM step is affine and
// Phi(z) = a z + b per coordinate; with r quadratic, q* = N(lambda a (c - b) / (beta P), 1/P), P = 1 + lambda a^2/beta,
// inside the family. Here a and b are measured by running Phi on z = 0 and z = 1 (the test derives them from the S1
// recursion instead). A mixture target has no closed form; then only the sampled metrics are reported.
//
// Metrics (every `log_every` steps and the last; the batch of the step, drawn before its update, and the policy
// after it): reward_mean, reward_std, approx_kl (mean (rho - 1) - log rho, averaged over the epochs), clipfrac,
// loss, kl_to_prior, calibration/mean, calibration/std, lr; with a closed form also exact/mean_error
// (max_j |m_j - m*_j|), exact/std_ratio_error (max_j |s_j/s*_j - 1|), exact/objective (J) and exact/objective_gap
// (J* - J). Checkpoint: GaussianPolicy.swift's, plus `calibration.state` F64 [3] = (batches seen, mean, variance).

import Foundation
import TesseraCompute
import TesseraCore

public struct FIND: TypedAlgorithm {
    public var kind: JobKind { .rl }
    public var name: String { "find" }
    public var summary: String {
        "FIND: a Gaussian policy over DDIM's initial noise (exact score), PPO-clip with dynamic reward calibration"
    }

    public init() {}

    /// A find job's validated params.
    public struct Config: Sendable {
        var target: GaussianMixture
        var schedule: BetaSchedule
        var samplingSteps: Int
        var reward: QuadraticReward
        var steps: Int
        var batchSize: Int
        var epochs: Int
        var clipRange: Double
        var calibration: Bool
        var calibrationMomentum: Double
        var optimizer: AdamConfiguration
        var logEvery: Int
        var checkpointEvery: Int?
        var points: [ToyLMSweepPoint]
    }

    static let keys =
        [
            "target", "schedule", "sampling_steps", "beta", "lambda", "center", "steps", "batch_size", "ppo_epochs",
            "clip_range", "calibration", "calibration_momentum", "log_every", "sweep",
        ] + GaussianPolicySweep.optimizerKeys

    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        try p.rejectUnknown(Self.keys)
        let target = try DiffusionSampling.target(p)
        let schedule = try DiffusionSampling.schedule(p)
        let samplingSteps = try p.int("sampling_steps", default: 20, range: 1...schedule.steps)
        let reward = try QuadraticReward.parse(p, dimension: target.dimension)
        let steps = try p.int("steps", default: 400, range: 1...ToyLMTrainingConfig.maxSteps)
        let batch = try p.int("batch_size", default: 256, range: 2...1_000_000)
        let epochs = try p.int("ppo_epochs", default: 4, range: 1...64)
        let clip = try p.double("clip_range", range: 0...1e6, default: 0.2)
        let calibration = try p.bool("calibration", default: true)
        let momentum = try p.double("calibration_momentum", range: 0...1, default: 0.9)
        let optimizer = try GaussianPolicySweep.optimizer(
            p, steps: steps, updatesPerStep: epochs, defaultLearningRate: 0.01)
        let logEvery = try p.int("log_every", default: 10, range: 1...ToyLMTrainingConfig.maxSteps)
        let points = try ToyLMSweepPoint.parse(spec, p, defaultBeta: 1)
        return Config(
            target: target, schedule: schedule, samplingSteps: samplingSteps, reward: reward, steps: steps,
            batchSize: batch, epochs: epochs, clipRange: clip, calibration: calibration,
            calibrationMomentum: momentum, optimizer: optimizer, logEvery: logEvery,
            checkpointEvery: spec.checkpointEvery, points: points)
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<ToyLMSweepPoint>] {
        config.points.map { TypedShardSlice($0, totalSteps: Int64(config.steps)) }
    }

    public func run(_ slice: ToyLMSweepPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<GaussianPolicySummary>
    {
        let slice = try slice.checked(against: config.points)
        return TypedShardOutput(
            summary: try FINDTrainer(config: config, point: slice, params: task.spec.params).run(
                resume: task.resume, sink: sink))
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<GaussianPolicySummary> {
        SummaryReducer { try GaussianPolicySummary.merge(algorithm: "find", summaries: $0) }
    }
}

/// Phi: the deterministic DDIM (eta = 0) map with the exact score of a mixture, on rows of x_T in place. The update
/// is `SamplerEngine.denoise`, the timesteps `samplerSteps`, exactly as `algorithm: ddim` with eta 0 runs them.
struct DDIMNoiseMap: Sendable {
    let engine: SamplerEngine
    let steps: [SamplerStep]
    let mixtures: [NoisedMixture]
    let dimension: Int

    init(target: GaussianMixture, schedule: BetaSchedule, samplingSteps: Int) {
        engine = SamplerEngine(target: target)
        steps = samplerSteps(schedule: schedule, sampler: .ddim(eta: 0), samplingSteps: samplingSteps)
        mixtures = steps.map { target.noised(alphaBar: $0.alphaBar) }
        dimension = target.dimension
    }

    /// x_T -> x_0 for `count` rows of `x` ([count, d]).
    func apply(_ x: UnsafeMutablePointer<Double>, count: Int) {
        for (step, mixture) in zip(steps, mixtures) {
            engine.denoise(x, count: count, step: step, mixture: mixture)
        }
    }

    /// For a single-Gaussian target, Phi(z) = a z + b per coordinate: b = Phi(0), a = Phi(1) - Phi(0).
    func affineCoefficients() -> (a: [Double], b: [Double]) {
        let d = dimension
        var x = [Double](repeating: 0, count: d) + [Double](repeating: 1, count: d)
        x.withUnsafeMutableBufferPointer { apply($0.baseAddress!, count: 2) }
        let b = Array(x[0..<d])
        return ((0..<d).map { x[d + $0] - b[$0] }, b)
    }
}

/// The closed form of a Gaussian target: Phi(z) = a z + b, and q*.
struct FINDClosedForm: Sendable {
    var a: [Double]
    var b: [Double]
    var reward: QuadraticReward
    var beta: Double

    /// q* = N(lambda a (c - b) / (beta P), 1/P), P = 1 + lambda a^2 / beta, per coordinate.
    var optimum: GaussianOptimum {
        let l = reward.lambda
        var mean: [Double] = [], std: [Double] = []
        for j in a.indices {
            let P = 1 + l * a[j] * a[j] / beta
            mean.append(l * a[j] * (reward.center[j] - b[j]) / (beta * P))
            std.append(1 / P.squareRoot())
        }
        return GaussianOptimum(mean: mean, std: std)
    }

    /// J* = J(q*).
    var optimalObjective: Double {
        let o = optimum
        return objective(DiagonalGaussian(mean: o.mean, logStd: o.std.map { log($0) }))
    }

    /// J(m, s) = sum_j -(lambda/2) ((a m + b - c)^2 + a^2 s^2) - beta KL.
    func objective(_ q: DiagonalGaussian) -> Double {
        var j = 0.0
        let m = q.mean, s = q.std
        for i in a.indices {
            let u = a[i] * m[i] + b[i] - reward.center[i]
            j -= 0.5 * reward.lambda * (u * u + a[i] * a[i] * s[i] * s[i])
        }
        return j - beta * q.klToStandardNormal
    }
}

/// The running reward statistics of the dynamic reward calibration.
struct RewardCalibration: Sendable, Equatable {
    var batches = 0.0
    var mean = 0.0
    var variance = 0.0

    /// (mu^, sigma^) for a step whose batch has mean `m` and variance `v`: the previous batches', or the batch's
    /// own at the first step.
    func statistics(batchMean m: Double, batchVariance v: Double) -> (mean: Double, std: Double) {
        batches == 0 ? (m, v.squareRoot()) : (mean, variance.squareRoot())
    }

    /// Folds a batch in: the moments of the mixture kappa (old) + (1 - kappa) (batch).
    mutating func add(batchMean m: Double, batchVariance v: Double, momentum kappa: Double) {
        if batches == 0 {
            mean = m
            variance = v
        } else {
            let delta = m - mean
            variance = kappa * variance + (1 - kappa) * v + kappa * (1 - kappa) * delta * delta
            mean = kappa * mean + (1 - kappa) * m
        }
        batches += 1
    }

    var tensor: SafeTensor { get throws { try SafeTensor(name: "calibration.state", float64: [batches, mean, variance], shape: [3]) } }
}

struct FINDTrainer {
    let config: FIND.Config
    let point: ToyLMSweepPoint
    let configText: String
    let map: DDIMNoiseMap
    let closedForm: FINDClosedForm?
    let surrogate: ClippedSurrogate

    init(config: FIND.Config, point: ToyLMSweepPoint, params: JSONObject) {
        self.config = config
        self.point = point
        configText = JSONValue.object(["params": .object(params), "point": point.slice]).render()
        map = DDIMNoiseMap(target: config.target, schedule: config.schedule, samplingSteps: config.samplingSteps)
        if config.target.componentCount == 1 {
            let (a, b) = map.affineCoefficients()
            closedForm = FINDClosedForm(a: a, b: b, reward: config.reward, beta: point.beta)
        } else {
            closedForm = nil
        }
        surrogate = ClippedSurrogate(epsilonLow: config.clipRange, epsilonHigh: config.clipRange)
    }

    func run(resume: (step: Int64, bytes: [UInt8])?, sink: any ShardSink) throws -> GaussianPolicySummary {
        let d = config.target.dimension
        var policy = DiagonalGaussian(
            mean: [Double](repeating: 0, count: d), logStd: [Double](repeating: 0, count: d))
        var adam = try Adam<Double>(configuration: config.optimizer, parameterCount: 2 * d)
        var calibration = RewardCalibration()
        var start = 0
        let optimum = closedForm?.optimum
        if let resume {
            let c = try GaussianPolicyCheckpoint.resume(
                resume, algo: "find", config: configText, optimizer: config.optimizer, dimension: d,
                steps: config.steps)
            guard c.adam.step == c.step * config.epochs,
                let state = c.extraTensors.first(where: { $0.name == "calibration.state" }),
                let v = try? state.float64Values(), v.count == 3
            else { throw ShardError("the resume checkpoint (step \(resume.step)) is not a find state of this job") }
            policy = c.policy
            adam = c.adam
            calibration = RewardCalibration(batches: v[0], mean: v[1], variance: v[2])
            start = c.step
            sink.log("find β=\(point.beta) seed \(point.seed): resumed from the checkpoint at step \(start) of \(config.steps)")
        } else {
            for (name, value) in exactRows(policy) { sink.metric(name, step: 0, value: value) }
            sink.log("find β=\(point.beta) seed \(point.seed): from the prior N(0, I), \(config.steps) steps of \(config.batchSize) draws")
        }
        sink.progress(step: Int64(start))

        let B = config.batchSize
        var eps = [Double](repeating: 0, count: B * d)
        var z = eps, x = eps
        var rewards = [Double](repeating: 0, count: B), oldLogProb = rewards, advantages = rewards
        var lastRewardMean = Double.nan
        var step = start
        while step < config.steps {
            if sink.shouldStop { throw ShardStopped() }
            step += 1
            // The batch: z_i = m + s eps_i, x_i = Phi(z_i), r_i.
            let m = policy.mean, s = policy.std
            eps.withUnsafeMutableBufferPointer { e in
                for i in 0..<B {
                    var stream = PhiloxStream(seed: point.seed, index: UInt32(i), step: UInt32(step), stream: .action)
                    stream.fillNormals(UnsafeMutableBufferPointer(start: e.baseAddress! + i * d, count: d))
                }
            }
            for i in 0..<B {
                for j in 0..<d { z[i * d + j] = m[j] + s[j] * eps[i * d + j] }
            }
            x = z
            x.withUnsafeMutableBufferPointer { map.apply($0.baseAddress!, count: B) }
            x.withUnsafeBufferPointer { xs in
                for i in 0..<B { rewards[i] = config.reward(xs.baseAddress! + i * d) }
            }
            for i in 0..<B { oldLogProb[i] = Self.logDensity(z, row: i, policy) }
            let (rewardMean, rewardVariance) = Self.meanAndVariance(rewards)
            lastRewardMean = rewardMean

            // Calibration from the previous batches, then the PPO epochs.
            var klWeight = point.beta
            var used = (mean: 0.0, std: 1.0)
            if config.calibration {
                used = calibration.statistics(batchMean: rewardMean, batchVariance: rewardVariance)
                let scale = 1 / (used.std + 1e-8)
                for i in 0..<B { advantages[i] = (rewards[i] - used.mean) * scale }
                klWeight *= scale
            } else {
                advantages = rewards
            }
            var approxKL = 0.0, clipFraction = 0.0, lossSum = 0.0, lr = 0.0
            var gradient = [Double](repeating: 0, count: 2 * d)
            for _ in 0..<config.epochs {
                for j in gradient.indices { gradient[j] = 0 }
                let mean = policy.mean, std = policy.std
                var kl = 0.0, clipped = 0, objective = 0.0
                for i in 0..<B {
                    let logRatio = Self.logDensity(z, row: i, policy) - oldLogProb[i]
                    let rho = exp(logRatio)
                    kl += (rho - 1) - logRatio
                    let term = surrogate.term(rho: rho, advantage: advantages[i])
                    objective += term.objective
                    if term.clipped { clipped += 1 }
                    // d(-term)/d phi = -term.logProbDerivative * grad log q(z_i).
                    let w = -term.logProbDerivative / Double(B)
                    if w != 0 {
                        for j in 0..<d {
                            let u = (z[i * d + j] - mean[j]) / std[j]
                            gradient[j] += w * u / std[j]
                            gradient[d + j] += w * (u * u - 1)
                        }
                    }
                }
                // + w beta KL: d/dm = m, d/d log s = s^2 - 1.
                for j in 0..<d {
                    gradient[j] += klWeight * mean[j]
                    gradient[d + j] += klWeight * (std[j] * std[j] - 1)
                }
                lr += adam.nextLearningRate
                adam.update(&policy.parameters, gradients: gradient)
                approxKL += kl / Double(B)
                clipFraction += Double(clipped) / Double(B)
                lossSum += -objective / Double(B) + klWeight * Self.kl(mean: mean, std: std)
            }
            calibration.add(batchMean: rewardMean, batchVariance: rewardVariance, momentum: config.calibrationMomentum)

            let log = step % config.logEvery == 0 || step == config.steps
            let save = step == config.steps || config.checkpointEvery.map { step % $0 == 0 } == true
            if log || save {
                let e = Double(config.epochs)
                let rows: [(String, Double)] =
                    [
                        ("reward_mean", rewardMean), ("reward_std", rewardVariance.squareRoot()),
                        ("approx_kl", approxKL / e), ("clipfrac", clipFraction / e), ("loss", lossSum / e),
                        ("kl_to_prior", policy.klToStandardNormal), ("calibration/mean", used.mean),
                        ("calibration/std", used.std), ("lr", lr / e),
                    ] + exactRows(policy)
                if log { for (name, value) in rows { sink.metric(name, step: Int64(step), value: value) } }
                if save {
                    var last = JSONObject()
                    for (name, value) in rows { last[name] = .number(value) }
                    let checkpoint = GaussianPolicyCheckpoint(
                        policy: policy, adam: adam, step: step, seed: point.seed, algo: "find", config: configText,
                        metricsLast: JSONValue.object(last).render(), extraTensors: [try calibration.tensor])
                    try sink.blob(.checkpoint, step: Int64(step), bytes: try checkpoint.serialize())
                }
            }
            sink.progress(step: Int64(step))
        }
        if let optimum {
            sink.log("find β=\(point.beta) seed \(point.seed): m = \(policy.mean), s = \(policy.std); q* = N(\(optimum.mean), \(optimum.std)^2)")
        }
        return GaussianPolicySummary(
            point: point, steps: config.steps, policy: policy, rewardMean: lastRewardMean, optimum: optimum,
            objective: closedForm?.objective(policy), optimalObjective: closedForm?.optimalObjective)
    }

    /// The closed-form rows (a single-Gaussian target only).
    func exactRows(_ q: DiagonalGaussian) -> [(String, Double)] {
        guard let closedForm else { return [] }
        let optimum = closedForm.optimum
        let j = closedForm.objective(q), best = closedForm.optimalObjective
        return [
            ("exact/mean_error", optimum.meanError(q)), ("exact/std_ratio_error", optimum.stdRatioError(q)),
            ("exact/objective", j), ("exact/objective_gap", best - j),
        ]
    }

    /// log q(z_i) up to the constant -(d/2) log 2 pi, which cancels in every ratio.
    static func logDensity(_ z: [Double], row i: Int, _ q: DiagonalGaussian) -> Double {
        let d = q.dimension
        var l = 0.0
        for j in 0..<d {
            let logStd = q.parameters[d + j]
            let u = (z[i * d + j] - q.parameters[j]) / exp(logStd)
            l -= 0.5 * u * u + logStd
        }
        return l
    }

    static func kl(mean: [Double], std: [Double]) -> Double {
        var kl = 0.0
        for j in mean.indices { kl += 0.5 * (std[j] * std[j] + mean[j] * mean[j] - 1 - 2 * log(std[j])) }
        return kl
    }

    /// Mean and population variance.
    static func meanAndVariance(_ v: [Double]) -> (Double, Double) {
        let n = Double(v.count)
        let mean = v.reduce(0, +) / n
        var ss = 0.0
        for x in v { ss += (x - mean) * (x - mean) }
        return (mean, ss / n)
    }
}
