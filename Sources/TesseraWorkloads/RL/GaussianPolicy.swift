// What `find` and `implicit-diffusion` share (WORKLOADS.md §2 R3): a diagonal Gaussian over R^d with parameters
// phi = (m, log s) and its Adam state, the quadratic reward r(x) = -(lambda/2) |x - c|^2, the (beta, seed) sweep,
// the checkpoint file and the shard summary and merge.
//
// Checkpoint (safetensors, WORKLOADS.md §7): `policy.mean` [d] and `policy.log_std` [d] (F64), the Adam state over
// the flat vector [m | log s] as `optim.policy.exp_avg` / `optim.policy.exp_avg_sq` [2d] (F64) and `optim.step`
// (I64 []), plus the algorithm's own state tensors; metadata format "worker-ckpt/1", algo, config (the job's
// params and this shard's point, JSON), seed (the point seed), rng_counter (= step: step k + 1 draws with Philox
// step k + 1), step and metrics_last. Doubles are stored bit for bit, so a resume continues exactly.

import Foundation
import TesseraCompute
import TesseraCore

/// The reward r(x) = -(lambda/2) |x - c|^2 of both algorithms (`lambda`, `center`).
struct QuadraticReward: Sendable, Equatable {
    var lambda: Double
    /// c, one number per coordinate.
    var center: [Double]

    func callAsFunction(_ x: UnsafePointer<Double>) -> Double {
        var s = 0.0
        for j in 0..<center.count {
            let u = x[j] - center[j]
            s += u * u
        }
        return -0.5 * lambda * s
    }

    /// `params.lambda` (default 1) and `params.center` (a number for every coordinate, or a list of d; default 1).
    static func parse(_ p: Params, dimension d: Int) throws -> QuadraticReward {
        let lambda = try p.double("lambda", range: 0...1e6, default: 1)
        var center = [Double](repeating: 1, count: d)
        if p.has("center") {
            if let v = p.object["center"]?.doubleValue, v.isFinite {
                center = [Double](repeating: v, count: d)
            } else {
                center = try p.doubles("center")
                guard center.count == d else {
                    throw p.error("center", "params.center has \(center.count) numbers; the problem has \(d) dimension(s)")
                }
            }
        }
        return QuadraticReward(lambda: lambda, center: center)
    }
}

/// The diagonal Gaussian N(m, diag s^2) with phi = [m (d) | log s (d)].
struct DiagonalGaussian: Sendable, Equatable {
    var parameters: [Double]
    let dimension: Int

    init(mean: [Double], logStd: [Double]) {
        precondition(mean.count == logStd.count)
        parameters = mean + logStd
        dimension = mean.count
    }

    var mean: [Double] { Array(parameters[0..<dimension]) }
    var logStd: [Double] { Array(parameters[dimension...]) }
    var std: [Double] { logStd.map { exp($0) } }

    /// KL(N(m, diag s^2) || N(0, I)) = 1/2 sum_j (s_j^2 + m_j^2 - 1 - 2 log s_j).
    var klToStandardNormal: Double {
        var kl = 0.0
        for j in 0..<dimension {
            let m = parameters[j], l = parameters[dimension + j]
            kl += 0.5 * (exp(2 * l) + m * m - 1 - 2 * l)
        }
        return kl
    }
}

/// The optimum's distance metrics: max_j |m_j - m*_j| and max_j |s_j / s*_j - 1|.
struct GaussianOptimum: Sendable, Equatable {
    var mean: [Double]
    var std: [Double]

    func meanError(_ q: DiagonalGaussian) -> Double {
        zip(q.mean, mean).map { abs($0 - $1) }.max() ?? 0
    }

    func stdRatioError(_ q: DiagonalGaussian) -> Double {
        zip(q.std, std).map { abs($0 / $1 - 1) }.max() ?? 0
    }
}

/// The settings both algorithms share: Adam and its schedule. Their (beta, seed) sweep is the toy-LM algorithms'
/// (`ToyLMSweepPoint.parse`, docs/training.md §8).
enum GaussianPolicySweep {
    /// Adam's settings: `learning_rate`, `lr_schedule` (constant | cosine, over steps x updates per step),
    /// `adam_beta1`, `adam_beta2`, `adam_epsilon` (PyTorch's defaults).
    static func optimizer(
        _ p: Params, steps: Int, updatesPerStep: Int, defaultLearningRate: Double
    ) throws -> AdamConfiguration {
        let lr = try p.double("learning_rate", range: 0...10, default: defaultLearningRate)
        let name = try p.string("lr_schedule", default: "cosine", allowed: ["constant", "cosine"])
        let schedule: LRSchedule =
            name == "cosine" ? .cosine(warmupSteps: 0, totalSteps: steps * updatesPerStep, minFactor: 0) : .constant
        return AdamConfiguration(
            learningRate: lr, beta1: try p.double("adam_beta1", range: 0...0.999999, default: 0.9),
            beta2: try p.double("adam_beta2", range: 0...0.999999999, default: 0.999),
            eps: try p.double("adam_epsilon", range: 0...1, default: 1e-8), weightDecay: 0,
            decoupledWeightDecay: false, schedule: schedule)
    }

    static let optimizerKeys = ["learning_rate", "lr_schedule", "adam_beta1", "adam_beta2", "adam_epsilon"]
}

/// A checkpoint of either algorithm (the file layout is in the header comment).
struct GaussianPolicyCheckpoint: Sendable {
    var policy: DiagonalGaussian
    var adam: Adam<Double>
    var step: Int
    var seed: UInt64
    var algo: String
    var config: String
    var metricsLast: String
    /// The algorithm's own state (`calibration.*`, `particles`).
    var extraTensors: [SafeTensor]

    func serialize() throws -> [UInt8] {
        let d = policy.dimension
        var tensors = [
            try SafeTensor(name: "policy.mean", float64: policy.mean, shape: [d]),
            try SafeTensor(name: "policy.log_std", float64: policy.logStd, shape: [d]),
            try SafeTensor(name: "optim.policy.exp_avg", float64: adam.expAvg, shape: [2 * d]),
            try SafeTensor(name: "optim.policy.exp_avg_sq", float64: adam.expAvgSq, shape: [2 * d]),
            try SafeTensor(name: "optim.step", int64: [Int64(adam.step)], shape: []),
        ]
        tensors += extraTensors
        let c = adam.configuration
        let metadata = [
            "format": "worker-ckpt/1", "algo": algo, "config": config, "seed": String(seed),
            "rng_counter": String(step), "step": String(step), "metrics_last": metricsLast,
            "optim.kind": "adam", "optim.lr": String(c.learningRate), "optim.beta1": String(c.beta1),
            "optim.beta2": String(c.beta2), "optim.eps": String(c.eps), "optim.schedule": c.schedule.text,
        ]
        return SafeTensorsFile(tensors: tensors, metadata: metadata).serialize()
    }

    /// Reads a resume checkpoint of `algo` written for `config` (the same job params and point), with `optimizer`
    /// (the job's) and `dimension`; anything else is refused with a ShardError that says why.
    static func resume(
        _ resume: (step: Int64, bytes: [UInt8]), algo: String, config: String, optimizer: AdamConfiguration,
        dimension d: Int, steps: Int
    ) throws -> GaussianPolicyCheckpoint {
        func refuse(_ why: String) -> ShardError {
            ShardError("the resume checkpoint (step \(resume.step)) \(why)")
        }
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile.parse(resume.bytes) } catch { throw refuse("cannot be read: \(error)") }
        let m = file.metadata
        guard m["format"] == "worker-ckpt/1" else { throw refuse("is not a worker-ckpt/1 file") }
        guard m["algo"] == algo else { throw refuse("was written by \(m["algo"] ?? "?"), not \(algo)") }
        guard m["config"] == config else { throw refuse("belongs to another configuration or sweep point") }
        func values(_ name: String, _ count: Int) throws -> [Double] {
            guard let t = file[name], let v = try? t.float64Values(), v.count == count else {
                throw refuse("has no F64 tensor \(name) of \(count) values")
            }
            return v
        }
        let mean = try values("policy.mean", d), logStd = try values("policy.log_std", d)
        let expAvg = try values("optim.policy.exp_avg", 2 * d), expAvgSq = try values("optim.policy.exp_avg_sq", 2 * d)
        guard let s = file["optim.step"], let optimStep = try? s.int64Values(), optimStep.count == 1 else {
            throw refuse("has no optim.step")
        }
        guard let stepText = m["step"], let step = Int(stepText), let seedText = m["seed"], let seed = UInt64(seedText),
            m["rng_counter"] == stepText, step >= 0, step <= steps
        else { throw refuse("is not a resumable state of a \(steps)-step run") }
        let adam = try Adam(
            configuration: optimizer, step: Int(optimStep[0]), expAvg: expAvg, expAvgSq: expAvgSq)
        let reserved: Set<String> = [
            "policy.mean", "policy.log_std", "optim.policy.exp_avg", "optim.policy.exp_avg_sq", "optim.step",
        ]
        return GaussianPolicyCheckpoint(
            policy: DiagonalGaussian(mean: mean, logStd: logStd), adam: adam, step: step, seed: seed, algo: algo,
            config: config, metricsLast: m["metrics_last"] ?? "{}",
            extraTensors: file.tensors.filter { !reserved.contains($0.name) })
    }
}

/// One shard's summary: the point, the final Gaussian, and -- where the problem has one -- its closed-form optimum
/// and the distances to it: `{"point", "beta", "seed", "steps", "mean", "std", "kl_to_prior", "reward_mean",
/// "optimal_mean", "optimal_std", "mean_error", "std_ratio_error", "objective", "optimal_objective",
/// "objective_gap"}` (the optimum's keys only with a closed form).
public struct GaussianPolicySummary: Codable, Sendable, Equatable {
    public var point: ToyLMSweepPoint
    public var steps: Int
    public var mean: [Double]
    public var std: [Double]
    public var klToPrior: Double
    /// The mean reward of the last step's batch (or particles).
    public var rewardMean: Double
    public var optimalMean: [Double]?
    public var optimalStd: [Double]?
    public var meanError: Double?
    public var stdRatioError: Double?
    public var objective: Double?
    public var optimalObjective: Double?
    public var objectiveGap: Double?

    enum CodingKeys: String, CodingKey {
        case steps, mean, std, klToPrior = "kl_to_prior", rewardMean = "reward_mean", optimalMean = "optimal_mean"
        case optimalStd = "optimal_std", meanError = "mean_error", stdRatioError = "std_ratio_error", objective
        case optimalObjective = "optimal_objective", objectiveGap = "objective_gap"
    }

    public func encode(to encoder: any Encoder) throws {
        try point.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(steps, forKey: .steps)
        try c.encode(mean, forKey: .mean)
        try c.encode(std, forKey: .std)
        try c.encode(klToPrior, forKey: .klToPrior)
        try c.encode(rewardMean, forKey: .rewardMean)
        try c.encodeIfPresent(optimalMean, forKey: .optimalMean)
        try c.encodeIfPresent(optimalStd, forKey: .optimalStd)
        try c.encodeIfPresent(meanError, forKey: .meanError)
        try c.encodeIfPresent(stdRatioError, forKey: .stdRatioError)
        try c.encodeIfPresent(objective, forKey: .objective)
        try c.encodeIfPresent(optimalObjective, forKey: .optimalObjective)
        try c.encodeIfPresent(objectiveGap, forKey: .objectiveGap)
    }

    public init(from decoder: any Decoder) throws {
        point = try ToyLMSweepPoint(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        steps = try c.decode(Int.self, forKey: .steps)
        mean = try c.decode([Double].self, forKey: .mean)
        std = try c.decode([Double].self, forKey: .std)
        klToPrior = try c.decode(Double.self, forKey: .klToPrior)
        rewardMean = try c.decode(Double.self, forKey: .rewardMean)
        optimalMean = try c.decodeIfPresent([Double].self, forKey: .optimalMean)
        optimalStd = try c.decodeIfPresent([Double].self, forKey: .optimalStd)
        meanError = try c.decodeIfPresent(Double.self, forKey: .meanError)
        stdRatioError = try c.decodeIfPresent(Double.self, forKey: .stdRatioError)
        objective = try c.decodeIfPresent(Double.self, forKey: .objective)
        optimalObjective = try c.decodeIfPresent(Double.self, forKey: .optimalObjective)
        objectiveGap = try c.decodeIfPresent(Double.self, forKey: .objectiveGap)
    }

    init(
        point: ToyLMSweepPoint, steps: Int, policy: DiagonalGaussian, rewardMean: Double,
        optimum: GaussianOptimum?, objective: Double?, optimalObjective: Double?
    ) {
        self.point = point
        self.steps = steps
        mean = policy.mean
        std = policy.std
        klToPrior = policy.klToStandardNormal
        self.rewardMean = rewardMean
        optimalMean = optimum?.mean
        optimalStd = optimum?.std
        meanError = optimum?.meanError(policy)
        stdRatioError = optimum?.stdRatioError(policy)
        self.objective = objective
        self.optimalObjective = optimalObjective
        if let objective, let optimalObjective { objectiveGap = optimalObjective - objective }
    }

    /// The merged result: every point's summary, and the worst distances to the optimum over the points.
    static func merge(algorithm: String, summaries: [GaussianPolicySummary]) throws -> JSONValue {
        var result: JSONObject = [
            "algorithm": .string(algorithm), "points": try TypedCoding.encode(summaries, "summaries"),
        ]
        let meanErrors = summaries.compactMap(\.meanError), stdErrors = summaries.compactMap(\.stdRatioError)
        if let worst = meanErrors.max() { result["max_mean_error"] = .number(worst) }
        if let worst = stdErrors.max() { result["max_std_ratio_error"] = .number(worst) }
        return .object(result)
    }
}
