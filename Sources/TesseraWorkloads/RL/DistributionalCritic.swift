// The training loop the distributional critics share (`qr-dqn`, `c51`; WORKLOADS.md §2 R4, §4 (a), §7), on the MDP
// of DistributionalMDP.swift.
//
// Network: an MLP on the one-hot state (H inputs; hidden widths `network.hidden`, ReLU; by default none: one Linear
// layer, a table of the 2H laws plus a shared bias) with A x n outputs, n per action (QR-DQN: the N quantile values; C51: the logits of the atoms). PyTorch's default initialisation from
// Philox(shard seed; stream 8). A target network (a copy of the online one, synced after every
// `target_update_period`-th update) gives the bootstrap. Each training step draws a batch of `batch_size`
// transitions (default 1024, Dopamine's is 32: learning Z(8, a) to W1 0.1 needs P(win) at each of the 8 levels to
// about 2e-3, i.e. ~1e5 samples per (h, a), which 3000 steps of 32 cannot give) (DistributionalMDP.swift: Philox stream 3, index b, step k), computes the algorithm's loss and its
// gradient in the online network's outputs, and makes one Adam update (Dopamine: optax.adam, eps outside the sqrt,
// as PyTorch; eps 3.125e-4 as Dopamine's). The learning rate decays to 0 on a cosine by default (`lr_schedule`;
// Dopamine keeps it constant): the pinball gradient has the same size at any distance from the quantile, so a
// constant rate leaves the quantiles jittering by about the step size.
//
// Metrics, every `log_every`-th step and at the last: `loss` (the step's batch loss, before its update), and for
// the online network after the update, against the exact laws Z(h, a) of the risk-neutral optimal policy:
// `w1_max` and `w1_mean` (W1 over the 2H pairs (h, a)), `q_error_max` (max |E learned - E Z|) and
// `policy_agreement` (share of the H states whose greedy action on the learned means is the optimal one).
//
// Checkpoint (`TrainingCheckpoint<Double>`, safetensors): the online network `layers.<l>.weight|bias` (F64),
// `optim.*` (Adam), `target.layers.<l>.weight|bias` (the target network), metadata algo, config (params and the
// shard's point), seed, step, rng_counter (= step: step k + 1 draws its batch with Philox step k + 1; there is no
// replay buffer to save), metrics_last and env. A shard stopped after a checkpoint and resumed from it is bitwise
// the uninterrupted run.

import Foundation
import TesseraCompute
import TesseraCore

/// One shard: a seed of the sweep. Its JSON `{"point", "seed"}` is the slice.
public struct CriticPoint: Codable, Sendable, Hashable {
    public var index: Int
    public var seed: UInt64

    enum CodingKeys: String, CodingKey {
        case index = "point", seed
    }

    init(index: Int, seed: UInt64) {
        self.index = index
        self.seed = seed
    }

    var seedJSON: JSONValue { seed <= (1 << 53) ? .number(Double(seed)) : .string(String(seed)) }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(seedJSON, forKey: .seed)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        index = try c.decode(Int.self, forKey: .index)
        seed = try c.decodeSeed(forKey: .seed)
    }
}

/// The validated settings every critic shares.
public struct CriticConfig: Sendable {
    var mdp: DistributionalMDP
    var hidden: [Int]
    var steps: Int
    var batchSize: Int
    var targetUpdatePeriod: Int
    var optimizer: AdamConfiguration
    var logEvery: Int
    var checkpointEvery: Int?
    var points: [CriticPoint]

    static let sharedKeys = [
        "horizon", "gamma", "network", "steps", "batch_size", "target_update_period", "learning_rate",
        "lr_schedule", "adam_epsilon", "log_every", "sweep",
    ]

    struct Defaults {
        var steps: Int
        var learningRate: Double
    }

    /// Reads the shared keys (rejecting any key outside `sharedKeys + algorithmKeys`).
    static func parse(_ spec: JobSpec, algorithmKeys: [String], defaults: Defaults) throws -> CriticConfig {
        let p = spec.paramsReader
        try p.rejectUnknown(sharedKeys + algorithmKeys)
        let horizon = try p.int("horizon", default: 8, range: 1...16)
        let gamma = try p.double("gamma", range: 0...1, default: 1)
        var hidden: [Int] = []
        if p.has("network") {
            let q = try p.object("network")
            try q.rejectUnknown(["hidden"])
            if q.has("hidden") {
                hidden = try q.array("hidden").enumerated().map { i, v in
                    guard let w = v.intValue, (1...1024).contains(w) else {
                        throw q.source.error(
                            "\(q.keyPath("hidden"))[\(i)]", "\(q.keyPath("hidden"))[\(i)] must be a width from 1 to 1024")
                    }
                    return w
                }
                guard hidden.count <= 4 else {
                    throw q.error("hidden", "\(q.keyPath("hidden")) may list at most 4 hidden layers")
                }
            }
        }
        let steps = try p.int("steps", default: defaults.steps, range: 1...10_000_000)
        let batch = try p.int("batch_size", default: 1024, range: 1...65536)
        let period = try p.int("target_update_period", default: 10, range: 1...10_000_000)
        let lr = try p.double("learning_rate", range: 0...10, default: defaults.learningRate)
        let scheduleName = try p.string("lr_schedule", default: "cosine", allowed: ["constant", "cosine"])
        let schedule: LRSchedule =
            scheduleName == "cosine" ? .cosine(warmupSteps: 0, totalSteps: steps, minFactor: 0) : .constant
        let eps = try p.double("adam_epsilon", range: 0...1, default: 3.125e-4)
        let logEvery = try p.int("log_every", default: 100, range: 1...10_000_000)
        var seeds = [spec.seed]
        if p.has("sweep") {
            let s = try p.object("sweep")
            try s.rejectUnknown(["seed"])
            seeds = try s.array("seed").enumerated().map { i, v in
                if let n = v.intValue, n >= 0 { return UInt64(n) }
                if let t = v.stringValue, let u = UInt64(t) { return u }
                let path = "\(s.keyPath("seed"))[\(i)]"
                throw s.source.error(path, "\(path) must be a whole number from 0 to 2^64-1")
            }
            guard !seeds.isEmpty else { throw s.error("seed", "\(s.keyPath("seed")) must not be empty") }
            guard Set(seeds).count == seeds.count else {
                throw s.error("seed", "\(s.keyPath("seed")) lists a value twice")
            }
            guard seeds.count <= 10_000 else { throw s.error("seed", "\(s.keyPath("seed")) lists more than 10000 seeds") }
        }
        guard spec.shards == 1 || spec.shards == seeds.count else {
            throw spec.source.error(
                "shards",
                "shards: \(spec.shards) does not match the \(seeds.count) seed(s) (one shard per seed); "
                    + "remove shards or set it to \(seeds.count)")
        }
        return CriticConfig(
            mdp: DistributionalMDP(horizon: horizon, gamma: gamma), hidden: hidden, steps: steps, batchSize: batch,
            targetUpdatePeriod: period, optimizer: AdamConfiguration.adam(learningRate: lr, eps: eps, schedule: schedule),
            logEvery: logEvery, checkpointEvery: spec.checkpointEvery,
            points: seeds.enumerated().map { CriticPoint(index: $0, seed: $1) })
    }

    var slices: [TypedShardSlice<CriticPoint>] { points.map { TypedShardSlice($0, totalSteps: Int64(steps)) } }

    func point(_ slice: CriticPoint) throws -> CriticPoint {
        guard points.indices.contains(slice.index), points[slice.index] == slice else {
            throw ShardError("slice point \(slice.index) (seed \(slice.seed)) is not a point of this job's sweep")
        }
        return slice
    }

    var envJSON: JSONValue { .object(["horizon": .int(mdp.horizon), "gamma": .number(mdp.gamma)]) }
}

/// What one critic contributes: the size of its output head, its loss, and how to read a law from its outputs.
protocol CriticRule: Sendable {
    var name: String { get }
    /// Network outputs per action.
    var outputsPerAction: Int { get }
    /// The batch loss, sum over the distinct transitions of weight x loss (weight = the transition's share of the
    /// batch), given the online outputs of every state (row h - 1, [H, A n]) and the target network's (same rows;
    /// a transition to h' = 0 reads none); adds weight x d loss / d online output into `gradient` ([H, A n]).
    func loss(
        transitions: [(Transition, Double)], online: UnsafeBufferPointer<Double>, target: UnsafeBufferPointer<Double>,
        gamma: Double, gradient: inout [Double]
    ) -> Double
    /// The learned law of one action from its n outputs.
    func law(_ outputs: ArraySlice<Double>) -> DiscreteLaw
}

/// The final state of a shard: `{"point", "seed", "steps", "w1_max", "w1_mean", "q_error_max", "policy_agreement",
/// "w1": [[safe, risky] per h = 1...H], "mean": [[safe, risky]], "exact_mean": [[safe, risky]], "greedy_policy",
/// "optimal_policy"}` (policies: the action name per h = 1...H).
public struct CriticShardSummary: Codable, Sendable, Equatable {
    public var point: Int
    public var seed: UInt64
    public var steps: Int
    public var w1Max: Double
    public var w1Mean: Double
    public var qErrorMax: Double
    public var policyAgreement: Double
    public var w1: [[Double]]
    public var mean: [[Double]]
    public var exactMean: [[Double]]
    public var greedyPolicy: [String]
    public var optimalPolicy: [String]

    enum CodingKeys: String, CodingKey {
        case point, seed, steps, w1Max = "w1_max", w1Mean = "w1_mean", qErrorMax = "q_error_max"
        case policyAgreement = "policy_agreement", w1, mean, exactMean = "exact_mean"
        case greedyPolicy = "greedy_policy", optimalPolicy = "optimal_policy"
    }
}

/// The critic's evaluation against the exact laws.
struct CriticEvaluation {
    var laws: [[DiscreteLaw]]
    var w1: [[Double]]
    var mean: [[Double]]
    var exactMean: [[Double]]
    var greedy: [Int]
    var optimal: [Int]

    var w1Max: Double { w1.flatMap { $0 }.max()! }
    var w1Mean: Double { w1.flatMap { $0 }.reduce(0, +) / Double(w1.count * DistributionalMDP.actions) }
    var qErrorMax: Double { zip(mean.flatMap { $0 }, exactMean.flatMap { $0 }).map { abs($0 - $1) }.max()! }
    var policyAgreement: Double {
        Double(zip(greedy, optimal).filter { $0 == $1 }.count) / Double(greedy.count)
    }

    var metrics: [(String, Double)] {
        [("w1_max", w1Max), ("w1_mean", w1Mean), ("q_error_max", qErrorMax), ("policy_agreement", policyAgreement)]
    }
}

enum CriticTrainer {
    static func reducer(algorithm: String, config: CriticConfig) -> SummaryReducer<CriticShardSummary> {
        SummaryReducer { try merge(algorithm: algorithm, config: config, summaries: $0) }
    }

    /// Every seed's summary, and across seeds the worst W1, the mean and 95% interval of `w1_max`, and the lowest
    /// policy agreement.
    static func merge(algorithm: String, config: CriticConfig, summaries: [CriticShardSummary]) throws -> JSONValue {
        guard summaries.count == config.points.count else {
            throw ShardError("\(summaries.count) shard outputs for \(config.points.count) seeds")
        }
        var points: [JSONValue] = []
        for (i, (s, point)) in zip(summaries, config.points).enumerated() {
            guard s.point == point.index, s.seed == point.seed else {
                throw ShardError("shard \(i)'s summary is not sweep point \(i)")
            }
            guard s.w1Max.isFinite else { throw ShardError("shard \(i)'s summary has no number w1_max") }
            points.append(try TypedCoding.encode(s, "shard \(i)'s summary"))
        }
        return .object([
            "algorithm": .string(algorithm),
            "env": config.envJSON,
            "steps": .int(config.steps),
            "points": .array(points),
            "w1_max": .number(summaries.map(\.w1Max).max() ?? .nan),
            "w1_max_across_seeds": ToyLMSweepMerge.interval(summaries.map(\.w1Max)),
            "policy_agreement_min": .number(summaries.map(\.policyAgreement).min() ?? .nan),
        ])
    }

    static func makeNetwork(_ config: CriticConfig, rule: some CriticRule, seed: UInt64) throws -> MLP<Double> {
        try MLP<Double>(
            sizes: [config.mdp.horizon] + config.hidden + [DistributionalMDP.actions * rule.outputsPerAction],
            activation: .relu, seed: seed)
    }

    /// The online network's laws for every (h, a), and their distances to the exact ones.
    static func evaluate(
        _ model: MLP<Double>, rule: some CriticRule, mdp: DistributionalMDP, exact: [[DiscreteLaw]], optimal: [Int]
    ) throws -> CriticEvaluation {
        let H = mdp.horizon, n = rule.outputsPerAction
        var input = [Double](repeating: 0, count: H * H)
        for h in 1...H { mdp.encode(h, into: &input, row: h - 1) }
        let out = try model.predict(try Tensor(shape: [H, H], scalars: input)).scalars
        var laws: [[DiscreteLaw]] = [], w1: [[Double]] = [], mean: [[Double]] = [], exactMean: [[Double]] = []
        var greedy: [Int] = []
        for h in 1...H {
            let row = (0..<DistributionalMDP.actions).map { a in
                rule.law(out[((h - 1) * 2 + a) * n..<((h - 1) * 2 + a + 1) * n])
            }
            laws.append(row)
            w1.append((0..<2).map { DiscreteLaw.wasserstein1(row[$0], exact[h - 1][$0]) })
            mean.append(row.map(\.mean))
            exactMean.append(exact[h - 1].map(\.mean))
            greedy.append(row[1].mean > row[0].mean ? 1 : 0)
        }
        return CriticEvaluation(laws: laws, w1: w1, mean: mean, exactMean: exactMean, greedy: greedy, optimal: optimal)
    }

    static func targetTensors(_ target: MLP<Double>) throws -> [SafeTensor] {
        try target.namedParameters.map { name, range, shape in
            try SafeTensor(name: "target.\(name)", float64: Array(target.parameters[range]), shape: shape)
        }
    }

    /// Runs one shard (resuming from `resume` if given).
    static func run(
        rule: some CriticRule, config: CriticConfig, slice: CriticPoint, task: ShardTask, sink: any ShardSink
    ) throws -> CriticShardSummary {
        let point = try config.point(slice)
        let mdp = config.mdp, H = mdp.horizon, B = config.batchSize
        let width = DistributionalMDP.actions * rule.outputsPerAction
        let configText = JSONValue.object(["params": .object(task.spec.params), "point": .int(point.index), "seed": point.seedJSON]).render()
        let optimal = mdp.optimalPolicy
        let exact = mdp.laws(policy: optimal)

        var online = try makeNetwork(config, rule: rule, seed: point.seed)
        var target = online
        var adam = try Adam<Double>(configuration: config.optimizer, parameterCount: online.parameterCount)
        var start = 0
        if let resume = task.resume {
            let checkpoint = try TrainingCheckpoint<Double>.resuming(
                resume, algo: rule.name, config: configText, configName: "configuration or seed", sizes: online.sizes,
                optimizer: config.optimizer)
            let mismatch = checkpoint.refusal
            guard checkpoint.step >= 0, checkpoint.step <= config.steps, checkpoint.rngCounter == UInt64(checkpoint.step),
                checkpoint.optimizer.step == checkpoint.step
            else { throw mismatch("is not a resumable state of a \(config.steps)-step run") }
            online = checkpoint.model
            adam = checkpoint.optimizer
            for (name, range, shape) in target.namedParameters {
                guard let t = checkpoint.extraTensors.first(where: { $0.name == "target.\(name)" }), t.shape == shape,
                    let v = try? t.float64Values()
                else { throw mismatch("has no target network tensor target.\(name)") }
                target.parameters.replaceSubrange(range, with: v)
            }
            start = checkpoint.step
            sink.log("\(rule.name) seed \(point.seed): resumed from the checkpoint at step \(start) of \(config.steps)")
        } else {
            sink.log("\(rule.name) seed \(point.seed): training \(config.steps) steps, batch \(B)")
        }
        sink.progress(step: Int64(start))

        // A batch has at most 3H distinct transitions (h, a, r): the loss is computed once per distinct one, weighted
        // by its count / B, on the H states' outputs -- the batch mean, summed in a fixed order.
        var onlineWS = online.makeWorkspace(batchCapacity: H)
        var targetWS = target.makeWorkspace(batchCapacity: H)
        var input = [Double](repeating: 0, count: H * H)
        for h in 1...H { mdp.encode(h, into: &input, row: h - 1) }
        var gradient = [Double](repeating: 0, count: H * width)
        var step = start
        while step < config.steps {
            if sink.shouldStop { throw ShardStopped() }
            step += 1
            // counts[(h - 1) 3 + outcome], outcome 0 safe, 1 risky +3, 2 risky -1.
            var counts = [Int](repeating: 0, count: 3 * H)
            var firsts = [Transition?](repeating: nil, count: 3 * H)
            for b in 0..<B {
                let t = Transition(seed: point.seed, step: step, index: b, horizon: H)
                let k = (t.h - 1) * 3 + (t.action == 0 ? 0 : (t.reward > 0 ? 1 : 2))
                counts[k] += 1
                if firsts[k] == nil { firsts[k] = t }
            }
            var transitions: [(Transition, Double)] = []
            for k in 0..<(3 * H) where counts[k] > 0 { transitions.append((firsts[k]!, Double(counts[k]) / Double(B))) }
            try input.withUnsafeBufferPointer { try online.forward($0, batch: H, workspace: &onlineWS) }
            try input.withUnsafeBufferPointer { try target.forward($0, batch: H, workspace: &targetWS, training: false) }
            for i in gradient.indices { gradient[i] = 0 }
            let loss = onlineWS.withOutput { o in
                targetWS.withOutput { t in
                    rule.loss(transitions: transitions, online: o, target: t, gamma: mdp.gamma, gradient: &gradient)
                }
            }
            try gradient.withUnsafeBufferPointer { try online.backward($0, workspace: &onlineWS) }
            adam.update(&online)
            if step % config.targetUpdatePeriod == 0 { target.parameters = online.parameters }

            let log = step % config.logEvery == 0 || step == config.steps
            let save = step == config.steps || config.checkpointEvery.map { step % $0 == 0 } == true
            if log || save {
                let e = try evaluate(online, rule: rule, mdp: mdp, exact: exact, optimal: optimal)
                let rows = [("loss", loss)] + e.metrics
                if log { for (name, value) in rows { sink.metric(name, step: Int64(step), value: value) } }
                if save {
                    var last = JSONObject()
                    for (name, value) in rows { last[name] = .number(value) }
                    let checkpoint = TrainingCheckpoint(
                        model: online, optimizer: adam, seed: point.seed, rngCounter: UInt64(step), step: step,
                        algo: rule.name, config: configText, metricsLast: JSONValue.object(last).render(),
                        extraTensors: try targetTensors(target), extraMetadata: ["env": config.envJSON.render()])
                    try sink.blob(.checkpoint, step: Int64(step), bytes: try checkpoint.safeTensorsFile().serialize())
                }
            }
            sink.progress(step: Int64(step))
        }

        let e = try evaluate(online, rule: rule, mdp: mdp, exact: exact, optimal: optimal)
        sink.log("\(rule.name) seed \(point.seed): trained, W1 max \(e.w1Max), policy agreement \(e.policyAgreement)")
        let names = DistributionalMDP.actionNames
        return CriticShardSummary(
            point: point.index, seed: point.seed, steps: config.steps, w1Max: e.w1Max, w1Mean: e.w1Mean,
            qErrorMax: e.qErrorMax, policyAgreement: e.policyAgreement, w1: e.w1, mean: e.mean,
            exactMean: e.exactMean, greedyPolicy: e.greedy.map { names[$0] }, optimalPolicy: e.optimal.map { names[$0] })
    }
}
