// The parameters every toy-LM training algorithm shares (problem, policy network, optimiser, logging, sweep) and
// how a sweep becomes shards (WORKLOADS.md §4 (a)). Documented in docs/jobspec.md.

import Foundation
import TesseraCompute
import TesseraCore

/// One shard of a training job: a (beta, seed) point of the sweep. Its JSON, `{"point", "beta", "seed"}`, is the
/// shard's slice.
public struct ToyLMSweepPoint: Codable, Sendable, Hashable {
    /// Position in the sweep (beta-major: for each beta, each seed), = the shard index.
    public var index: Int
    /// The KL coefficient of the objective E r - beta KL(pi || pi_ref).
    public var beta: Double
    /// The Philox key of the shard's training randomness (network init, samples, pair draws).
    public var seed: UInt64

    public init(index: Int, beta: Double, seed: UInt64) {
        self.index = index
        self.beta = beta
        self.seed = seed
    }

    /// This point, if it is point `index` of the planned `points` (a dispatched slice, checked against the plan).
    func checked(against points: [ToyLMSweepPoint]) throws -> ToyLMSweepPoint {
        guard points.indices.contains(index), points[index] == self else {
            throw ShardError("slice \(slice.render()) is not a point of this job's sweep")
        }
        return self
    }

    /// The seed as the spec spells seeds: a number up to 2^53, above that a decimal string.
    var seedJSON: JSONValue { seed <= (1 << 53) ? .number(Double(seed)) : .string(String(seed)) }

    /// The shard slice (and the `point` of the checkpoints' config text).
    public var slice: JSONValue {
        // Encoding three numbers into a JSONValue has no way to fail.
        (try? JSONValueEncoder().encode(self)) ?? .null
    }

    enum CodingKeys: String, CodingKey {
        case index = "point", beta, seed
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(beta, forKey: .beta)
        try c.encode(seedJSON, forKey: .seed)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        index = try c.decode(Int.self, forKey: .index)
        beta = try c.decode(Double.self, forKey: .beta)
        seed = try c.decodeSeed(forKey: .seed)
    }
}

/// Settings shared by every toy-LM training algorithm, validated.
public struct ToyLMTrainingConfig: Sendable {
    public var problem: ToyLMSpec
    /// Hidden widths of Delta_theta ([] = a single Linear layer on the input).
    public var hidden: [Int]
    public var activation: Activation
    /// Training steps per shard.
    public var steps: Int
    /// Adam(W) hyper-parameters and learning-rate schedule (over `steps` x updates per step).
    public var optimizer: AdamConfiguration
    /// torch.nn.utils.clip_grad_norm_ bound, or nil for no clipping.
    public var maxGradNorm: Double?
    /// Metrics are streamed every `logEvery` steps and at the last step.
    public var logEvery: Int
    /// Checkpoint period in steps (`checkpoint_every` of the job); the last step always checkpoints.
    public var checkpointEvery: Int?
    /// The shards: one per (beta, seed).
    public var points: [ToyLMSweepPoint]

    /// Keys of `params` this file reads; an algorithm adds its own.
    static let sharedKeys = [
        "problem", "policy", "beta", "sweep", "steps", "learning_rate", "lr_schedule", "warmup_steps",
        "min_lr_ratio", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm", "log_every",
    ]
    public static let maxPoints = 10_000
    public static let maxSteps = 10_000_000

    /// Defaults that differ between algorithms.
    struct Defaults {
        var beta: Double
        var steps: Int
        var learningRate: Double
        var schedule: String
        var maxGradNorm: Double?
    }

    /// Reads the shared keys of `spec.params` (rejecting any key outside `sharedKeys + algorithmKeys`).
    /// `updatesPerStep` sizes the learning-rate schedule.
    static func parse(
        _ spec: JobSpec, algorithmKeys: [String], defaults: Defaults, updatesPerStep: Int
    ) throws -> ToyLMTrainingConfig {
        let p = spec.paramsReader
        try p.rejectUnknown(sharedKeys + algorithmKeys)
        let problem = try ToyLMSpec.parse(p.has("problem") ? try p.object("problem") : nil, jobSeed: spec.seed)

        var hidden = [64]
        var activation = Activation.relu
        if p.has("policy") {
            let q = try p.object("policy")
            try q.rejectUnknown(["hidden", "activation"])
            if q.has("hidden") {
                hidden = try q.array("hidden").enumerated().map { i, v in
                    guard let w = v.intValue, (1...4096).contains(w) else {
                        throw q.source.error(
                            "\(q.keyPath("hidden"))[\(i)]",
                            "\(q.keyPath("hidden"))[\(i)] must be a width from 1 to 4096")
                    }
                    return w
                }
                guard hidden.count <= 4 else {
                    throw q.error("hidden", "\(q.keyPath("hidden")) may list at most 4 hidden layers")
                }
            }
            activation = Activation(
                rawValue: try q.string("activation", default: "relu", allowed: ["relu", "silu"]))!
        }

        let steps = try p.int("steps", default: defaults.steps, range: 1...maxSteps)
        let lr = try p.double("learning_rate", range: 0...10, default: defaults.learningRate)
        let scheduleName = try p.string("lr_schedule", default: defaults.schedule, allowed: ["constant", "cosine"])
        let warmup = try p.int("warmup_steps", default: 0, range: 0...maxSteps)
        if scheduleName == "constant", p.has("min_lr_ratio") {
            throw p.error("min_lr_ratio", "params.min_lr_ratio only applies to lr_schedule: cosine")
        }
        let minRatio = try p.double("min_lr_ratio", range: 0...1, default: 0)
        let updates = steps * updatesPerStep
        let schedule: LRSchedule =
            scheduleName == "cosine"
            ? .cosine(warmupSteps: warmup * updatesPerStep, totalSteps: updates, minFactor: minRatio)
            : (warmup > 0 ? .linearWarmup(warmupSteps: warmup * updatesPerStep) : .constant)
        let weightDecay = try p.double("weight_decay", range: 0...1, default: 0)
        let optimizer = AdamConfiguration(
            learningRate: lr, beta1: try p.double("adam_beta1", range: 0...0.999999, default: 0.9),
            beta2: try p.double("adam_beta2", range: 0...0.999999999, default: 0.999),
            eps: try p.double("adam_epsilon", range: 0...1, default: 1e-8), weightDecay: weightDecay,
            decoupledWeightDecay: true, schedule: schedule)
        var maxGradNorm = defaults.maxGradNorm
        if p.has("max_grad_norm") { maxGradNorm = try p.double("max_grad_norm", range: 1e-12...1e12) }
        let logEvery = try p.int("log_every", default: 10, range: 1...maxSteps)

        let points = try ToyLMSweepPoint.parse(spec, p, defaultBeta: defaults.beta)
        return ToyLMTrainingConfig(
            problem: problem, hidden: hidden, activation: activation, steps: steps, optimizer: optimizer,
            maxGradNorm: maxGradNorm, logEvery: logEvery, checkpointEvery: spec.checkpointEvery, points: points)
    }

    /// The slices of `plan`: one per sweep point, `steps` each.
    var slices: [TypedShardSlice<ToyLMSweepPoint>] { points.map { TypedShardSlice($0, totalSteps: Int64(steps)) } }

    /// The sweep point a dispatched slice names, checked against the plan.
    func point(_ slice: ToyLMSweepPoint) throws -> ToyLMSweepPoint { try slice.checked(against: points) }
}

extension ToyLMSweepPoint {
    /// The (beta, seed) sweep of a toy-LM or Gaussian-policy job: `params.beta` (default `defaultBeta`) or
    /// `params.sweep.beta`, and `params.sweep.seed` (else the job seed); one point per (beta, seed), beta-major, and
    /// `shards` 1 or the number of points. Errors carry the key's line.
    static func parse(_ spec: JobSpec, _ p: Params, defaultBeta: Double) throws -> [ToyLMSweepPoint] {
        func betaValue(_ v: Double, _ path: String) throws -> Double {
            guard v > 0, v <= 1e6 else {
                throw spec.source.error(path, "\(path) must be a number in (0, 1e6], not \(v)")
            }
            return v
        }
        var betas = [try betaValue(try p.double("beta", default: defaultBeta), "params.beta")]
        var seeds = [spec.seed]
        if p.has("sweep") {
            let s = try p.object("sweep")
            try s.rejectUnknown(["beta", "seed"])
            guard s.has("beta") || s.has("seed") else {
                throw p.error("sweep", "params.sweep must list beta, seed or both")
            }
            if s.has("beta") {
                if p.has("beta") {
                    throw p.error("beta", "params.beta and params.sweep.beta are exclusive; put every beta in the sweep")
                }
                betas = try s.doubles("beta").enumerated().map { try betaValue($1, "\(s.keyPath("beta"))[\($0)]") }
            }
            if s.has("seed") {
                seeds = try s.array("seed").enumerated().map { i, v in
                    if let n = v.intValue, n >= 0 { return UInt64(n) }
                    if let t = v.stringValue, let u = UInt64(t) { return u }
                    let path = "\(s.keyPath("seed"))[\(i)]"
                    throw s.source.error(path, "\(path) must be a whole number from 0 to 2^64-1")
                }
            }
            for (key, count, distinct) in [
                ("beta", betas.count, Set(betas).count), ("seed", seeds.count, Set(seeds).count),
            ] where s.has(key) {
                guard count > 0 else { throw s.error(key, "\(s.keyPath(key)) must not be empty") }
                guard distinct == count else { throw s.error(key, "\(s.keyPath(key)) lists a value twice") }
            }
        }
        guard betas.count * seeds.count <= ToyLMTrainingConfig.maxPoints else {
            throw p.error("sweep", "params.sweep has \(betas.count * seeds.count) points; the limit is \(ToyLMTrainingConfig.maxPoints)")
        }
        var points: [ToyLMSweepPoint] = []
        for b in betas {
            for s in seeds { points.append(ToyLMSweepPoint(index: points.count, beta: b, seed: s)) }
        }
        guard spec.shards == 1 || spec.shards == points.count else {
            throw spec.source.error(
                "shards",
                "shards: \(spec.shards) does not match the \(points.count) sweep point(s) (one shard per beta x seed); "
                    + "remove shards or set it to \(points.count)")
        }
        return points
    }
}

extension KeyedDecodingContainer {
    /// A seed as slices and summaries store it: a JSON number up to 2^53, beyond that its decimal string (a JSON
    /// number is a double), so every UInt64 survives the store.
    func decodeSeed(forKey key: Key) throws -> UInt64 {
        guard let text = try? decode(String.self, forKey: key) else { return try decode(UInt64.self, forKey: key) }
        guard let u = UInt64(text) else {
            throw DecodingError.dataCorruptedError(
                forKey: key, in: self, debugDescription: "expected a whole number from 0 to 2^64-1, found \"\(text)\"")
        }
        return u
    }
}
