// `kind: rl`, `algorithm: implicit-diffusion`: the single-loop "Implicit Diffusion" scheme (Marion et al.,
// "Implicit Diffusion: Efficient Optimization through Stochastic Sampling", 2024) on a Gaussian Langevin potential
// (WORKLOADS.md §2 R3, the variant).
//
// The sampler is Langevin dynamics on the potential V_theta(x) = sum_j (x_j - mu_j)^2 / (2 sigma_j^2), whose
// stationary law is pi_theta = N(mu, diag sigma^2); theta = [mu | log sigma], starting at (0, 1) = the reference
// p_ref = N(0, I). The objective is KL-regularised: maximising E_pi r alone, r(x) = -(lambda/2) |x - c|^2, sends
// sigma to 0 (no optimum inside the family), so
//     J(theta) = E_{pi_theta} r - beta KL(pi_theta || p_ref).
// With pi_theta = e^{-V_theta} / Z_theta, grad_theta log pi_theta = -grad_theta V + E_pi grad_theta V, hence for a
// fixed f, grad E_pi f = -Cov_pi(f, grad_theta V); the KL's own theta-dependence has E_pi grad log pi = 0, so
//     grad J = -Cov_pi(r + beta V_theta + beta log p_ref, grad_theta V_theta),
// a covariance over samples of pi_theta, with no derivative of the sampler.
//
// Single loop: N particles are kept across steps. Step k (1-based): `langevin_steps` ULA steps of every particle
// with the current theta, x <- x - h (x - mu)/sigma^2 + sqrt(2h) xi (xi: d normals of Philox(point seed; particle i,
// step (k - 1) L + l + 1, stream 1)); then the gradient above estimated by the particles' sample covariance
// (1/(N - 1)) with grad_mu_j V = -(x_j - mu_j)/sigma_j^2 and grad_{log sigma_j} V = -(x_j - mu_j)^2/sigma_j^2, and one
// Adam step on -J. Particles start as N(0, I) draws (Philox(point seed; i, step 0, stream 0)), i.e. at pi_theta_0.
//
// Closed-form optimum: pi* = p_ref e^{r/beta} / Z = N(lambda c / (lambda + beta), beta / (lambda + beta) I), inside
// the family, and the algorithm's fixed point is exactly theta* even though ULA's stationary law is not pi_theta:
// ULA on a Gaussian keeps the mean mu and inflates the variance to v = sigma^2 / (1 - h/(2 sigma^2)). f is a
// quadratic A/2 y^2 + (A mu + B) y + const in y = x - mu, A = beta/sigma^2 - lambda - beta, B = lambda c - beta mu/sigma^2,
// and for y ~ N(0, v) with any v > 0, Cov(f, y) = (A mu + B) v and Cov(f, y^2) = A v^2: both vanish iff A = 0 and
// B = 0, i.e. sigma^2 = beta/(lambda + beta), mu = lambda c/(lambda + beta). (This is `FINDClosedForm` with a = 1,
// b = 0.)
//
// Metrics (every `log_every` steps and the last): reward_mean, reward_std (over the particles after the step's
// Langevin moves), grad_norm, lr, kl_to_prior (closed form, theta after the update), particles/mean_error
// (max_j |mean_i x_ij - mu_j|), particles/variance_ratio (mean_j of the particles' variance / sigma_j^2; ULA's
// stationary value is 1/(1 - h/(2 sigma^2))), exact/mean_error, exact/std_ratio_error, exact/objective,
// exact/objective_gap. Checkpoint: GaussianPolicy.swift's (policy.* = theta), plus `particles` F64 [N, d].

import Foundation
import TesseraCompute
import TesseraCore

public struct ImplicitDiffusion: TypedAlgorithm {
    public var kind: JobKind { .rl }
    public var name: String { "implicit-diffusion" }
    public var summary: String {
        "Implicit Diffusion (single loop): a Gaussian Langevin potential optimised while sampling, gradient -Cov(r, grad V)"
    }

    public init() {}

    public struct Config: Sendable {
        var dimension: Int
        var reward: QuadraticReward
        var particles: Int
        var langevinStep: Double
        var langevinSteps: Int
        var steps: Int
        var optimizer: AdamConfiguration
        var logEvery: Int
        var checkpointEvery: Int?
        var points: [ToyLMSweepPoint]
    }

    static let keys =
        [
            "dimension", "beta", "lambda", "center", "particles", "langevin_step", "langevin_steps", "steps",
            "log_every", "sweep",
        ] + GaussianPolicySweep.optimizerKeys

    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        try p.rejectUnknown(Self.keys)
        let listed = p.object["center"]?.arrayValue?.count
        let d = try p.int("dimension", default: listed ?? 1, range: 1...1024)
        let reward = try QuadraticReward.parse(p, dimension: d)
        let n = try p.int("particles", default: 1024, range: 2...1_000_000)
        let h = try p.double("langevin_step", range: 1e-12...10, default: 0.02)
        let inner = try p.int("langevin_steps", default: 1, range: 1...1000)
        let steps = try p.int("steps", default: 2000, range: 1...ToyLMTrainingConfig.maxSteps)
        guard steps * inner < Int(UInt32.max) else {
            throw p.error("steps", "params.steps x langevin_steps must stay below 2^32 (Philox step numbers)")
        }
        let optimizer = try GaussianPolicySweep.optimizer(p, steps: steps, updatesPerStep: 1, defaultLearningRate: 0.01)
        let logEvery = try p.int("log_every", default: 10, range: 1...ToyLMTrainingConfig.maxSteps)
        let points = try ToyLMSweepPoint.parse(spec, p, defaultBeta: 1)
        // ULA on V_theta is stable only while h < 2 sigma^2; at the optimum sigma^2 = beta / (lambda + beta).
        for point in points where h >= 2 * point.beta / (reward.lambda + point.beta) {
            throw p.error(
                "langevin_step",
                "params.langevin_step \(h) is unstable at the optimum of beta = \(point.beta): ULA needs h < 2 sigma*^2 = \(2 * point.beta / (reward.lambda + point.beta))")
        }
        return Config(
            dimension: d, reward: reward, particles: n, langevinStep: h, langevinSteps: inner, steps: steps,
            optimizer: optimizer, logEvery: logEvery, checkpointEvery: spec.checkpointEvery, points: points)
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<ToyLMSweepPoint>] {
        config.points.map { TypedShardSlice($0, totalSteps: Int64(config.steps)) }
    }

    public func run(_ slice: ToyLMSweepPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<GaussianPolicySummary>
    {
        let slice = try slice.checked(against: config.points)
        return TypedShardOutput(
            summary: try ImplicitDiffusionTrainer(config: config, point: slice, params: task.spec.params).run(
                resume: task.resume, sink: sink))
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<GaussianPolicySummary> {
        SummaryReducer { try GaussianPolicySummary.merge(algorithm: "implicit-diffusion", summaries: $0) }
    }
}

struct ImplicitDiffusionTrainer {
    let config: ImplicitDiffusion.Config
    let point: ToyLMSweepPoint
    let configText: String
    let closedForm: FINDClosedForm

    init(config: ImplicitDiffusion.Config, point: ToyLMSweepPoint, params: JSONObject) {
        self.config = config
        self.point = point
        configText = JSONValue.object(["params": .object(params), "point": point.slice]).render()
        let d = config.dimension
        closedForm = FINDClosedForm(
            a: [Double](repeating: 1, count: d), b: [Double](repeating: 0, count: d), reward: config.reward,
            beta: point.beta)
    }

    func run(resume: (step: Int64, bytes: [UInt8])?, sink: any ShardSink) throws -> GaussianPolicySummary {
        let d = config.dimension, N = config.particles
        var theta = DiagonalGaussian(mean: [Double](repeating: 0, count: d), logStd: [Double](repeating: 0, count: d))
        var adam = try Adam<Double>(configuration: config.optimizer, parameterCount: 2 * d)
        var x = [Double](repeating: 0, count: N * d)
        var start = 0
        if let resume {
            let c = try GaussianPolicyCheckpoint.resume(
                resume, algo: "implicit-diffusion", config: configText, optimizer: config.optimizer, dimension: d,
                steps: config.steps)
            guard c.adam.step == c.step, let t = c.extraTensors.first(where: { $0.name == "particles" }),
                t.shape == [N, d], let v = try? t.float64Values()
            else {
                throw ShardError(
                    "the resume checkpoint (step \(resume.step)) is not an implicit-diffusion state of this job")
            }
            theta = c.policy
            adam = c.adam
            x = v
            start = c.step
            sink.log("implicit-diffusion β=\(point.beta) seed \(point.seed): resumed from the checkpoint at step \(start) of \(config.steps)")
        } else {
            x.withUnsafeMutableBufferPointer { xs in
                for i in 0..<N {
                    var stream = PhiloxStream(seed: point.seed, index: UInt32(i), step: 0, stream: .initialNoise)
                    stream.fillNormals(UnsafeMutableBufferPointer(start: xs.baseAddress! + i * d, count: d))
                }
            }
            for (name, value) in exactRows(theta) { sink.metric(name, step: 0, value: value) }
            sink.log("implicit-diffusion β=\(point.beta) seed \(point.seed): \(N) particles from N(0, I), \(config.steps) steps")
        }
        sink.progress(step: Int64(start))

        let h = config.langevinStep, noiseScale = (2 * h).squareRoot(), L = config.langevinSteps
        let beta = point.beta
        var noise = [Double](repeating: 0, count: d)
        var rewards = [Double](repeating: 0, count: N), f = rewards
        var features = [Double](repeating: 0, count: N * 2 * d)  // grad_theta V at each particle, [N, 2d]
        var lastRewardMean = Double.nan
        var step = start
        while step < config.steps {
            if sink.shouldStop { throw ShardStopped() }
            step += 1
            let mu = theta.mean, sigma = theta.std
            let precision = sigma.map { 1 / ($0 * $0) }
            // Langevin moves with the current theta.
            for l in 0..<L {
                let philoxStep = UInt32((step - 1) * L + l + 1)
                for i in 0..<N {
                    var stream = PhiloxStream(seed: point.seed, index: UInt32(i), step: philoxStep, stream: .stepNoise)
                    noise.withUnsafeMutableBufferPointer { stream.fillNormals($0) }
                    for j in 0..<d {
                        let k = i * d + j
                        x[k] = x[k] - h * (x[k] - mu[j]) * precision[j] + noiseScale * noise[j]
                    }
                }
            }
            // f = r + beta V + beta log p_ref and grad_theta V at every particle.
            x.withUnsafeBufferPointer { xs in
                for i in 0..<N { rewards[i] = config.reward(xs.baseAddress! + i * d) }
            }
            for i in 0..<N {
                var v = 0.0, logRef = 0.0
                for j in 0..<d {
                    let xj = x[i * d + j], y = xj - mu[j]
                    v += 0.5 * y * y * precision[j]
                    logRef -= 0.5 * xj * xj
                    features[i * 2 * d + j] = -y * precision[j]
                    features[i * 2 * d + d + j] = -y * y * precision[j]
                }
                f[i] = rewards[i] + beta * (v + logRef)
            }
            // Gradient of -J: Cov_hat(f, grad V) with 1/(N - 1).
            let fMean = f.reduce(0, +) / Double(N)
            var featureMean = [Double](repeating: 0, count: 2 * d)
            for i in 0..<N {
                for k in 0..<(2 * d) { featureMean[k] += features[i * 2 * d + k] }
            }
            for k in 0..<(2 * d) { featureMean[k] /= Double(N) }
            var gradient = [Double](repeating: 0, count: 2 * d)
            for i in 0..<N {
                let df = f[i] - fMean
                for k in 0..<(2 * d) { gradient[k] += df * (features[i * 2 * d + k] - featureMean[k]) }
            }
            for k in 0..<(2 * d) { gradient[k] /= Double(N - 1) }
            let gradNorm = gradient.reduce(0) { $0 + $1 * $1 }.squareRoot()
            let lr = adam.nextLearningRate
            adam.update(&theta.parameters, gradients: gradient)
            let (rewardMean, rewardVariance) = FINDTrainer.meanAndVariance(rewards)
            lastRewardMean = rewardMean

            let log = step % config.logEvery == 0 || step == config.steps
            let save = step == config.steps || config.checkpointEvery.map { step % $0 == 0 } == true
            if log || save {
                var meanError = 0.0, varianceRatio = 0.0
                for j in 0..<d {
                    var s = 0.0, ss = 0.0
                    for i in 0..<N { s += x[i * d + j] }
                    let m = s / Double(N)
                    for i in 0..<N { ss += (x[i * d + j] - m) * (x[i * d + j] - m) }
                    meanError = max(meanError, abs(m - mu[j]))
                    varianceRatio += ss / Double(N - 1) * precision[j] / Double(d)
                }
                let rows: [(String, Double)] =
                    [
                        ("reward_mean", rewardMean), ("reward_std", rewardVariance.squareRoot()),
                        ("grad_norm", gradNorm), ("lr", lr), ("kl_to_prior", theta.klToStandardNormal),
                        ("particles/mean_error", meanError), ("particles/variance_ratio", varianceRatio),
                    ] + exactRows(theta)
                if log { for (name, value) in rows { sink.metric(name, step: Int64(step), value: value) } }
                if save {
                    var last = JSONObject()
                    for (name, value) in rows { last[name] = .number(value) }
                    let checkpoint = GaussianPolicyCheckpoint(
                        policy: theta, adam: adam, step: step, seed: point.seed, algo: "implicit-diffusion",
                        config: configText, metricsLast: JSONValue.object(last).render(),
                        extraTensors: [try SafeTensor(name: "particles", float64: x, shape: [N, d])])
                    try sink.blob(.checkpoint, step: Int64(step), bytes: try checkpoint.serialize())
                }
            }
            sink.progress(step: Int64(step))
        }
        let optimum = closedForm.optimum
        sink.log("implicit-diffusion β=\(point.beta) seed \(point.seed): mu = \(theta.mean), sigma = \(theta.std); optimum N(\(optimum.mean), \(optimum.std)^2)")
        return GaussianPolicySummary(
            point: point, steps: config.steps, policy: theta, rewardMean: lastRewardMean, optimum: optimum,
            objective: closedForm.objective(theta), optimalObjective: closedForm.optimalObjective)
    }

    func exactRows(_ q: DiagonalGaussian) -> [(String, Double)] {
        let optimum = closedForm.optimum
        let j = closedForm.objective(q)
        return [
            ("exact/mean_error", optimum.meanError(q)), ("exact/std_ratio_error", optimum.stdRatioError(q)),
            ("exact/objective", j), ("exact/objective_gap", closedForm.optimalObjective - j),
        ]
    }
}
