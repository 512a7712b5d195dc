// `kind: preference`, `algorithm: reward-model`: an explicit Bradley-Terry reward model, the "density estimation"
// view of WORKLOADS.md §3 P2 (TRL's RewardTrainer loss and metric names).
//
// y in R^2. The annotator is a Luce chooser with a KNOWN density p (an isotropic 2-D Gaussian mixture,
// `params.annotator`): P(y_a beats y_b) = p(y_a) / (p(y_a) + p(y_b)) = sigma(log p(y_a) - log p(y_b)). Pairs are drawn
// from a proposal q = N(m, s^2 I) (`params.proposal`). The reward r_psi is an MLP R^2 -> R trained on
//   L(psi) = mean_b [ -t_b log sigma(d_b) - (1 - t_b) log sigma(-d_b) ],  d_b = r_psi(y_a) - r_psi(y_b),
// t_b the label of pair b (1: y_a was chosen, 0: y_b was chosen, or the soft label P(y_a beats y_b)). With a hard
// label this is TRL's -log sigma(r_chosen - r_rejected). Because the Luce probabilities are exactly BT with
// r = log p, the population loss (and, with soft labels, the loss on ANY finite pair set) is minimised by
// r = log p + c on supp q: the learned reward is the annotator's implicit density.
//
// Two annotators (`params.annotator_2`, the misspecification experiment): each pair is labelled by annotator 1 with
// probability lambda (`annotator_mix`) and by annotator 2 otherwise, so the expected label is
// lambda P_1 + (1 - lambda) P_2. That is not a BT probability in general, so the BT fit is NOT
// log(lambda p_1 + (1 - lambda) p_2); the shard reports the distance as `misspecification_gap`.
//
// Randomness (Philox4x32-10, WORKLOADS.md §0; sharding never changes a draw):
//  - pair i (0 <= i < N) of the data set: Philox(data seed; index i, step 0, stream 6 "preference label"),
//    4 Box-Muller normals (y_a = m + s z_0..1, y_b = m + s z_2..3), then a uniform for the annotator (annotator 1
//    iff u < lambda; drawn with one annotator too), then a uniform for the label (y_a chosen iff u < P). Soft labels
//    use the same points and ignore the two uniforms.
//  - minibatch slot b of step k (1-based): Philox(shard seed; index b, step k, stream 3), word 0, pair
//    floor(u N) (with replacement).
//  - evaluation sample j: Philox(shard seed; index j, step 0, stream 2), 2 normals, y = m + s z.
//  - network initialisation: PyTorch's nn.Linear default from Philox(shard seed, stream 8) (MLP.init).
// So a shard is a pure function of (spec, seed): a resumed run is bitwise the uninterrupted one.
//
// Evaluation (every `eval.every` steps, at step 0 and at the end), against p_bar = p (one annotator) or
// lambda p_1 + (1 - lambda) p_2:
//  - rmse: the centred RMSE of r_psi - log p_bar over the evaluation q-samples, sqrt(mean e^2 - (mean e)^2);
//  - tv: 1/2 sum_cells |e^{r_psi(g)} / Z - p_bar(g) h^2| + 1/2 (1 - sum_cells p_bar(g) h^2) on the midpoint grid of
//    n x n cells of side h = 2 L / n centred on m, Z = sum_cells e^{r_psi(g)} (the model density normalised on the
//    grid; p_bar's mass off the grid, where the model puts none, counts in full).
//
// Checkpoint (safetensors, WORKLOADS.md §7, `TrainingCheckpoint<Double>`): psi as `layers.<l>.weight|bias` (F64,
// PyTorch names), Adam `optim.*`, `annotator.weights|means|stds` (F64; `annotator_2.*` too with two),
// `proposal.mean` F64 [2], `proposal.std` F64 [], metadata algo, config (params + point), seed (the shard seed),
// rng_counter = step, step, metrics_last, data_seed, data_pairs, labels, annotator_mix.

import Foundation
import TesseraCompute
import TesseraCore

/// The validated parameters of a `reward-model` job (docs/jobspec.md).
public struct RewardModelConfig: Sendable {
    public enum Labels: String, Sendable, CaseIterable {
        /// t = the annotators' expected label, lambda P_1 + (1 - lambda) P_2.
        case soft
        /// t in {0, 1}: the annotator's Luce choice, drawn.
        case sampled
    }

    /// p_1 (and p_2), 2-D isotropic Gaussian mixtures.
    public var annotators: [GaussianMixture]
    /// lambda, the probability that annotator 1 labels a pair (1 with one annotator).
    public var annotatorMix: Double
    public var proposalMean: [Double]
    public var proposalStd: Double
    public var labels: Labels
    /// N, the pairs of the data set.
    public var pairs: Int
    /// Key of the pair draws; nil = the shard's seed.
    public var dataSeed: UInt64?
    /// Pairs per step (minibatch indices drawn with replacement).
    public var batchSize: Int
    public var hidden: [Int]
    public var activation: Activation
    public var steps: Int
    public var optimizer: AdamConfiguration
    public var maxGradNorm: Double?
    public var logEvery: Int
    public var evalEvery: Int
    public var evalSamples: Int
    /// n, cells per side of the TV grid, and L, its half-width.
    public var gridPoints: Int
    public var gridExtent: Double
    public var checkpointEvery: Int?
    /// One shard per seed.
    public var points: [RewardModel.Slice]

    public var sizes: [Int] { [2] + hidden + [1] }
}

public struct RewardModel: TypedAlgorithm {
    public var kind: JobKind { .preference }
    public var name: String { RewardModelTrainer.algorithmName }
    public var summary: String {
        "Bradley-Terry reward model (TRL RewardTrainer loss) on y in R^2 from a Luce annotator of known density: "
            + "the learned reward is log p + c"
    }

    public init() {}

    static let keys = [
        "annotator", "annotator_2", "annotator_mix", "proposal", "labels", "data", "batch_size", "network", "steps",
        "learning_rate", "lr_schedule", "warmup_steps", "min_lr_ratio", "adam_beta1", "adam_beta2", "adam_epsilon",
        "weight_decay", "max_grad_norm", "log_every", "eval", "sweep",
    ]
    public static let maxPoints = 10_000

    /// The default annotator density: w = (.4, .35, .25), means (-1.2, 0), (1, .8), (.5, -1.2), s = 1 each.
    public static let defaultAnnotator = try! GaussianMixture(
        weights: [0.4, 0.35, 0.25], means: [[-1.2, 0], [1, 0.8], [0.5, -1.2]], stds: [1, 1, 1])

    /// One shard: `{"point": i, "seed": s}` (the seed a number up to 2^53, above that a decimal string).
    public struct Slice: Codable, Sendable, Hashable {
        public var point: Int
        public var seed: UInt64

        public init(point: Int, seed: UInt64) {
            self.point = point
            self.seed = seed
        }

        enum CodingKeys: String, CodingKey { case point, seed }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(point, forKey: .point)
            if seed <= (1 << 53) { try c.encode(seed, forKey: .seed) } else { try c.encode(String(seed), forKey: .seed) }
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            point = try c.decode(Int.self, forKey: .point)
            seed = try c.decodeSeed(forKey: .seed)
        }
    }

    /// A shard's final state.
    public struct Summary: Codable, Sendable, Equatable {
        public var point: Int
        public var seed: UInt64
        public var steps: Int
        /// The last step's batch loss and accuracy.
        public var loss: Double
        public var accuracy: Double
        /// Centred RMSE of r_psi - log p_bar on the evaluation q-samples, and TV(e^r / Z, p_bar) on the grid.
        public var rmse: Double
        public var tv: Double
        /// Two annotators: = rmse (the distance of the BT fit to log of the annotators' mixture), and the centred
        /// RMSE to each annotator's log density.
        public var misspecificationGap: Double?
        public var rmseAnnotator1: Double?
        public var rmseAnnotator2: Double?
        public var parameters: Int

        enum CodingKeys: String, CodingKey {
            case point, seed, steps, loss, accuracy, rmse, tv, misspecificationGap = "misspecification_gap"
            case rmseAnnotator1 = "rmse_annotator_1", rmseAnnotator2 = "rmse_annotator_2", parameters
        }

        public func encode(to encoder: any Encoder) throws {
            try Slice(point: point, seed: seed).encode(to: encoder)
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(steps, forKey: .steps)
            try c.encode(loss, forKey: .loss)
            try c.encode(accuracy, forKey: .accuracy)
            try c.encode(rmse, forKey: .rmse)
            try c.encode(tv, forKey: .tv)
            try c.encodeIfPresent(misspecificationGap, forKey: .misspecificationGap)
            try c.encodeIfPresent(rmseAnnotator1, forKey: .rmseAnnotator1)
            try c.encodeIfPresent(rmseAnnotator2, forKey: .rmseAnnotator2)
            try c.encode(parameters, forKey: .parameters)
        }

        public init(from decoder: any Decoder) throws {
            let s = try Slice(from: decoder)
            point = s.point
            seed = s.seed
            let c = try decoder.container(keyedBy: CodingKeys.self)
            steps = try c.decode(Int.self, forKey: .steps)
            loss = try c.decode(Double.self, forKey: .loss)
            accuracy = try c.decode(Double.self, forKey: .accuracy)
            rmse = try c.decode(Double.self, forKey: .rmse)
            tv = try c.decode(Double.self, forKey: .tv)
            misspecificationGap = try c.decodeIfPresent(Double.self, forKey: .misspecificationGap)
            rmseAnnotator1 = try c.decodeIfPresent(Double.self, forKey: .rmseAnnotator1)
            rmseAnnotator2 = try c.decodeIfPresent(Double.self, forKey: .rmseAnnotator2)
            parameters = try c.decode(Int.self, forKey: .parameters)
        }

        init(point: Slice, steps: Int, last: RewardModelStepMetrics?, evaluation e: RewardModelEvaluation, parameters: Int) {
            self.point = point.point
            self.seed = point.seed
            self.steps = steps
            self.loss = last?.loss ?? .nan
            self.accuracy = last?.accuracy ?? .nan
            self.rmse = e.rmse
            self.tv = e.tv
            self.misspecificationGap = e.rmseAnnotators.count == 2 ? e.rmse : nil
            self.rmseAnnotator1 = e.rmseAnnotators.count == 2 ? e.rmseAnnotators[0] : nil
            self.rmseAnnotator2 = e.rmseAnnotators.count == 2 ? e.rmseAnnotators[1] : nil
            self.parameters = parameters
        }
    }

    // MARK: configure

    static func mixture(_ p: Params, _ key: String) throws -> GaussianMixture {
        let t = try p.object(key)
        try t.rejectUnknown(LearnedSpec.targetKeys)
        _ = try t.string("type", default: "gmm", allowed: ["gmm"])
        let means = try t.matrix("means")
        let stds = try t.doubles("stds")
        let weights = t.has("weights") ? try t.doubles("weights") : nil
        let m: GaussianMixture
        do {
            m = try GaussianMixture(weights: weights, means: means, stds: stds)
        } catch let e as SamplingError {
            throw t.source.error(t.path, "\(t.path): \(e.message)")
        }
        guard m.dimension == 2 else {
            throw t.error("means", "\(t.keyPath("means")): the reward model's y is in R^2, so every mean needs 2 coordinates, not \(m.dimension)")
        }
        return m
    }

    public func configure(_ spec: JobSpec) throws -> RewardModelConfig {
        let p = spec.paramsReader
        try p.rejectUnknown(Self.keys)
        var annotators = [p.has("annotator") ? try Self.mixture(p, "annotator") : Self.defaultAnnotator]
        if p.has("annotator_2") { annotators.append(try Self.mixture(p, "annotator_2")) }
        if annotators.count == 1, p.has("annotator_mix") {
            throw p.error("annotator_mix", "params.annotator_mix applies only with a second annotator (params.annotator_2)")
        }
        let mix = annotators.count == 2 ? try p.double("annotator_mix", range: 0...1, default: 0.5) : 1
        if annotators.count == 2, mix == 0 || mix == 1 {
            throw p.error("annotator_mix", "params.annotator_mix must be strictly between 0 and 1 with two annotators (one of them would never label)")
        }

        var mean = [0.0, 0.0], std = 1.2
        if p.has("proposal") {
            let q = try p.object("proposal")
            try q.rejectUnknown(["type", "mean", "std"])
            _ = try q.string("type", default: "gaussian", allowed: ["gaussian"])
            if q.has("mean") {
                mean = try q.doubles("mean")
                guard mean.count == 2 else {
                    throw q.error("mean", "\(q.keyPath("mean")) must have 2 coordinates (y is in R^2)")
                }
            }
            std = try q.double("std", range: 1e-3...1e3, default: 1.2)
        }
        let labels = RewardModelConfig.Labels(
            rawValue: try p.string("labels", default: "soft", allowed: RewardModelConfig.Labels.allCases.map(\.rawValue)))!

        var pairs = 65_536
        var dataSeed: UInt64? = nil
        if p.has("data") {
            let d = try p.object("data")
            try d.rejectUnknown(["pairs", "seed"])
            pairs = try d.int("pairs", default: 65_536, range: 1...4_000_000)
            if d.has("seed") { dataSeed = try d.seed("seed") }
        }
        let batch = try p.int("batch_size", default: 256, range: 1...65_536)

        var hidden = [32, 32]
        var activation = Activation.silu
        if p.has("network") {
            let n = try p.object("network")
            try n.rejectUnknown(["hidden", "activation"])
            if n.has("hidden") {
                hidden = try n.array("hidden").enumerated().map { i, v in
                    guard let w = v.intValue, (1...1024).contains(w) else {
                        throw n.source.error(
                            "\(n.keyPath("hidden"))[\(i)]", "\(n.keyPath("hidden"))[\(i)] must be a width from 1 to 1024")
                    }
                    return w
                }
                guard (1...4).contains(hidden.count) else {
                    throw n.error("hidden", "\(n.keyPath("hidden")) must list 1 to 4 hidden layers")
                }
            }
            activation = Activation(rawValue: try n.string("activation", default: "silu", allowed: ["silu", "relu"]))!
        }

        let steps = try p.int("steps", default: 2000, range: 1...10_000_000)
        let lr = try p.double("learning_rate", range: 0...10, default: 0.01)
        let scheduleName = try p.string("lr_schedule", default: "cosine", allowed: ["constant", "cosine"])
        let warmup = try p.int("warmup_steps", default: 0, range: 0...10_000_000)
        guard warmup < steps || warmup == 0 else {
            throw p.error("warmup_steps", "params.warmup_steps (\(warmup)) must be smaller than params.steps (\(steps))")
        }
        if scheduleName == "constant", p.has("min_lr_ratio") {
            throw p.error("min_lr_ratio", "params.min_lr_ratio only applies to lr_schedule: cosine")
        }
        let minRatio = try p.double("min_lr_ratio", range: 0...1, default: 0)
        let schedule: LRSchedule =
            scheduleName == "cosine"
            ? .cosine(warmupSteps: warmup, totalSteps: steps, minFactor: minRatio)
            : (warmup > 0 ? .linearWarmup(warmupSteps: warmup) : .constant)
        let optimizer = AdamConfiguration(
            learningRate: lr, beta1: try p.double("adam_beta1", range: 0...0.999999, default: 0.9),
            beta2: try p.double("adam_beta2", range: 0...0.999999999, default: 0.999),
            eps: try p.double("adam_epsilon", range: 0...1, default: 1e-8),
            weightDecay: try p.double("weight_decay", range: 0...1, default: 0), decoupledWeightDecay: true,
            schedule: schedule)
        let maxGradNorm = p.has("max_grad_norm") ? try p.double("max_grad_norm", range: 1e-12...1e12) : nil
        let logEvery = try p.int("log_every", default: 10, range: 1...10_000_000)

        var evalEvery = 500, evalSamples = 20_000, gridPoints = 200, gridExtent = 5.0
        if p.has("eval") {
            let e = try p.object("eval")
            try e.rejectUnknown(["every", "samples", "grid_points", "grid_extent"])
            evalEvery = try e.int("every", default: 500, range: 1...10_000_000)
            evalSamples = try e.int("samples", default: 20_000, range: 2...1_000_000)
            gridPoints = try e.int("grid_points", default: 200, range: 8...2048)
            gridExtent = try e.double("grid_extent", range: 1e-3...1e3, default: 5)
        }
        // The TV counts p_bar's mass off the grid in full; refuse a grid that leaves more than 1% of it out.
        for (k, a) in annotators.enumerated() {
            let tail = RewardModelMath.massOutsideSquare(a, centre: mean, halfWidth: gridExtent)
            guard tail <= 0.01 else {
                throw p.error(
                    "eval",
                    "params.eval.grid_extent: the grid [m - \(gridExtent), m + \(gridExtent)]^2 around the proposal mean "
                        + "leaves up to \(tail) of annotator \(k + 1)'s mass outside (the limit is 0.01); widen grid_extent")
            }
        }

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
            guard Set(seeds).count == seeds.count else { throw s.error("seed", "\(s.keyPath("seed")) lists a value twice") }
            guard seeds.count <= Self.maxPoints else {
                throw s.error("seed", "\(s.keyPath("seed")) has \(seeds.count) seeds; the limit is \(Self.maxPoints)")
            }
        }
        guard spec.shards == 1 || spec.shards == seeds.count else {
            throw spec.source.error(
                "shards",
                "shards: \(spec.shards) does not match the \(seeds.count) seed(s) (one shard per seed); remove shards "
                    + "or set it to \(seeds.count)")
        }
        return RewardModelConfig(
            annotators: annotators, annotatorMix: mix, proposalMean: mean, proposalStd: std, labels: labels,
            pairs: pairs, dataSeed: dataSeed, batchSize: batch, hidden: hidden, activation: activation, steps: steps,
            optimizer: optimizer, maxGradNorm: maxGradNorm, logEvery: logEvery, evalEvery: evalEvery,
            evalSamples: evalSamples, gridPoints: gridPoints, gridExtent: gridExtent,
            checkpointEvery: spec.checkpointEvery,
            points: seeds.enumerated().map { Slice(point: $0, seed: $1) })
    }

    public func plan(_ spec: JobSpec, config: RewardModelConfig) throws -> [TypedShardSlice<Slice>] {
        config.points.map { TypedShardSlice($0, totalSteps: Int64(config.steps)) }
    }

    public func run(_ slice: Slice, config c: RewardModelConfig, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<Summary>
    {
        guard c.points.indices.contains(slice.point), c.points[slice.point] == slice else {
            throw ShardError("slice {\"point\": \(slice.point), \"seed\": \(slice.seed)} is not a shard of this job's plan")
        }
        let text = JSONValue.object([
            "params": .object(task.spec.params),
            "point": (try? JSONValueEncoder().encode(slice)) ?? .null,
        ]).render()
        let trainer: RewardModelTrainer
        if let resume = task.resume {
            trainer = try RewardModelTrainer(config: c, point: slice, configText: text, checkpoint: resume.bytes)
            sink.log("resumed from the checkpoint at step \(trainer.step) of \(c.steps)")
        } else {
            trainer = try RewardModelTrainer(config: c, point: slice, configText: text)
            Self.emit(trainer.evaluate(), step: 0, sink: sink)
        }
        sink.progress(step: Int64(trainer.step))
        var final: RewardModelEvaluation? = nil
        while trainer.step < c.steps {
            if sink.shouldStop { throw ShardStopped() }
            let m = try trainer.trainStep()
            let k = m.step
            guard m.loss.isFinite else {
                throw ShardError("training diverged at step \(k): loss \(m.loss); lower params.learning_rate or set max_grad_norm")
            }
            if k % c.logEvery == 0 || k == c.steps {
                for (name, value) in m.named { sink.metric(name, step: Int64(k), value: value) }
            }
            if k % c.evalEvery == 0 || k == c.steps {
                let e = trainer.evaluate()
                Self.emit(e, step: k, sink: sink)
                if k == c.steps { final = e }
            }
            if k == c.steps || (c.checkpointEvery.map { k % $0 == 0 } ?? false) {
                try sink.blob(.checkpoint, step: Int64(k), bytes: try trainer.checkpoint())
            }
            sink.progress(step: Int64(k))
        }
        if sink.shouldStop { throw ShardStopped() }
        return TypedShardOutput(
            summary: Summary(
                point: slice, steps: c.steps, last: trainer.last, evaluation: final ?? trainer.evaluate(),
                parameters: trainer.network.parameterCount))
    }

    static func emit(_ e: RewardModelEvaluation, step: Int, sink: any ShardSink) {
        let k = Int64(step)
        sink.metric("eval/rmse", step: k, value: e.rmse)
        sink.metric("eval/tv", step: k, value: e.tv)
        if e.rmseAnnotators.count == 2 {
            sink.metric("eval/misspecification_gap", step: k, value: e.rmse)
            sink.metric("eval/rmse_annotator_1", step: k, value: e.rmseAnnotators[0])
            sink.metric("eval/rmse_annotator_2", step: k, value: e.rmseAnnotators[1])
        }
    }

    public func makeReducer(_ spec: JobSpec, config c: RewardModelConfig) throws -> SummaryReducer<Summary> {
        SummaryReducer { try Self.merge(c, summaries: $0) }
    }

    /// The result: every shard's summary under `points`, and across seeds the mean (with `std` and the Student-t
    /// `ci95` from two seeds on) of rmse, tv and, with two annotators, misspecification_gap.
    static func merge(_ c: RewardModelConfig, summaries: [Summary]) throws -> JSONValue {
        guard summaries.count == c.points.count else {
            throw ShardError("\(summaries.count) shard outputs for \(c.points.count) seeds")
        }
        var points: [JSONValue] = []
        for (i, s) in summaries.enumerated() {
            guard s.point == i, s.seed == c.points[i].seed else {
                throw ShardError("shard \(i)'s summary is not shard \(i) (point \(s.point), seed \(s.seed))")
            }
            for (key, v) in [("rmse", s.rmse), ("tv", s.tv)] where !v.isFinite {
                throw ShardError("shard \(i)'s summary has no number \(key)")
            }
            points.append(try TypedCoding.encode(s, "shard \(i)'s summary"))
        }
        let json = SamplingJSON(spelling: .shortest)
        var o: JSONObject = [
            "algorithm": .string(RewardModelTrainer.algorithmName),
            "steps": .int(c.steps),
            "labels": .string(c.labels.rawValue),
            "pairs": .int(c.pairs),
            "annotators": .array(c.annotators.map { json.target($0) }),
            "proposal": .object([
                "mean": .array(c.proposalMean.map { .number($0) }), "std": .number(c.proposalStd),
            ]),
            "points": .array(points),
            "rmse": ToyLMSweepMerge.interval(summaries.map(\.rmse)),
            "tv": ToyLMSweepMerge.interval(summaries.map(\.tv)),
        ]
        if c.annotators.count == 2 {
            o["annotator_mix"] = .number(c.annotatorMix)
            o["misspecification_gap"] = ToyLMSweepMerge.interval(summaries.map { $0.misspecificationGap ?? .nan })
        }
        return .object(o)
    }
}

// MARK: - Densities

/// log of an isotropic 2-D Gaussian mixture, with its constants precomputed (no allocation per point).
struct RewardModelDensity: Sendable {
    let logScale: [Double]  // log w_k - log(2 pi s_k^2)
    let inverseTwoVariance: [Double]  // 1 / (2 s_k^2)
    let means: [(Double, Double)]

    init(_ m: GaussianMixture) {
        var scale: [Double] = [], inverse: [Double] = []
        for k in 0..<m.componentCount {
            let s = m.stds[k]
            let variance: Double = s * s
            scale.append(Foundation.log(m.weights[k]) - Foundation.log(2 * Double.pi * variance))
            inverse.append(1 / (2 * variance))
        }
        logScale = scale
        inverseTwoVariance = inverse
        means = m.means.map { ($0[0], $0[1]) }
    }

    /// log p(x, y): two passes over the components (the max, then the shifted sum), so nothing is allocated.
    @inline(__always)
    func log(_ x: Double, _ y: Double) -> Double {
        @inline(__always) func term(_ k: Int) -> Double {
            let dx = x - means[k].0, dy = y - means[k].1
            return logScale[k] - (dx * dx + dy * dy) * inverseTwoVariance[k]
        }
        var top = -Double.infinity
        for k in 0..<means.count { top = Swift.max(top, term(k)) }
        var s = 0.0
        for k in 0..<means.count { s += Foundation.exp(term(k) - top) }
        return top + Foundation.log(s)
    }
}

enum RewardModelMath {
    @inline(__always)
    static func softplus(_ x: Double) -> Double { max(x, 0) + log1p(exp(-abs(x))) }

    /// An upper bound on the mass of the mixture outside the square [c - L, c + L]^2: by the union bound over the
    /// four sides, sum_k w_k sum_coordinates [Phi((c - L - mu) / s) + Phi((mu - c - L) / s)].
    static func massOutsideSquare(_ m: GaussianMixture, centre c: [Double], halfWidth L: Double) -> Double {
        var total = 0.0
        for k in 0..<m.componentCount {
            for d in 0..<2 {
                let mu = m.means[k][d], s = m.stds[k]
                total += m.weights[k] * 0.5 * (erfc((mu - (c[d] - L)) / (s * 2.0.squareRoot()))
                    + erfc((c[d] + L - mu) / (s * 2.0.squareRoot())))
            }
        }
        return total
    }
}

// MARK: - Training

/// What one step measured (TRL RewardTrainer names).
public struct RewardModelStepMetrics: Sendable, Equatable {
    public var step: Int
    /// The batch BT loss.
    public var loss: Double
    /// Fraction of the batch's pairs with r(chosen) > r(rejected) (chosen: the side with label >= 1/2).
    public var accuracy: Double
    /// Mean of r(chosen) - r(rejected).
    public var margin: Double
    /// Min, mean and max of the batch's 2B rewards.
    public var minReward: Double
    public var meanReward: Double
    public var maxReward: Double
    public var gradNorm: Double
    public var learningRate: Double

    var named: [(String, Double)] {
        [
            ("loss", loss), ("accuracy", accuracy), ("margin", margin), ("min_reward", minReward),
            ("mean_reward", meanReward), ("max_reward", maxReward), ("grad_norm", gradNorm),
            ("learning_rate", learningRate),
        ]
    }

    init(step: Int, loss: Double, accuracy: Double, margin: Double, minReward: Double, meanReward: Double,
        maxReward: Double, gradNorm: Double, learningRate: Double)
    {
        self.step = step
        self.loss = loss
        self.accuracy = accuracy
        self.margin = margin
        self.minReward = minReward
        self.meanReward = meanReward
        self.maxReward = maxReward
        self.gradNorm = gradNorm
        self.learningRate = learningRate
    }

    init?(step: Int, json: JSONValue) {
        func v(_ k: String) -> Double? { json[k]?.doubleValue }
        guard let loss = v("loss"), let acc = v("accuracy"), let margin = v("margin"), let lo = v("min_reward"),
            let mean = v("mean_reward"), let hi = v("max_reward"), let g = v("grad_norm"), let lr = v("learning_rate")
        else { return nil }
        self.init(
            step: step, loss: loss, accuracy: acc, margin: margin, minReward: lo, meanReward: mean, maxReward: hi,
            gradNorm: g, learningRate: lr)
    }
}

/// The evaluation numbers (see the file comment).
public struct RewardModelEvaluation: Sendable, Equatable {
    public var rmse: Double
    public var tv: Double
    /// Two annotators: the centred RMSE to each log p_j; empty with one.
    public var rmseAnnotators: [Double]
}

/// The labelled pairs: y_a, y_b ([N, 2] each, row-major) and the label t = P(y_a chosen) or its draw.
struct RewardModelPairs: Sendable {
    var a: [Double]
    var b: [Double]
    var label: [Double]
    var count: Int { label.count }

    init(config c: RewardModelConfig, seed: UInt64) {
        let N = c.pairs
        let densities = c.annotators.map(RewardModelDensity.init)
        a = [Double](repeating: 0, count: 2 * N)
        b = a
        label = [Double](repeating: 0, count: N)
        let m = c.proposalMean, s = c.proposalStd
        var z = [Double](repeating: 0, count: 4)
        for i in 0..<N {
            var stream = PhiloxStream(seed: seed, index: UInt32(i), step: 0, stream: .preferenceLabel)
            z.withUnsafeMutableBufferPointer { stream.fillNormals($0) }
            let ya = (m[0] + s * z[0], m[1] + s * z[1]), yb = (m[0] + s * z[2], m[1] + s * z[3])
            let uAnnotator = stream.nextUniform(), uLabel = stream.nextUniform()
            a[2 * i] = ya.0
            a[2 * i + 1] = ya.1
            b[2 * i] = yb.0
            b[2 * i + 1] = yb.1
            let luce = densities.map { ToyLMMath.sigmoid($0.log(ya.0, ya.1) - $0.log(yb.0, yb.1)) }
            switch c.labels {
            case .soft:
                label[i] = luce.count == 1 ? luce[0] : c.annotatorMix * luce[0] + (1 - c.annotatorMix) * luce[1]
            case .sampled:
                let j = luce.count == 1 || uAnnotator < c.annotatorMix ? 0 : 1
                label[i] = uLabel < luce[j] ? 1 : 0
            }
        }
    }
}

/// The BT loss of a batch and its gradient in psi, shared by training and the gradient check.
enum RewardModelLoss {
    struct Batch {
        var loss = 0.0, accuracy = 0.0, margin = 0.0
        var minReward = Double.infinity, maxReward = -Double.infinity, meanReward = 0.0
    }

    /// `input` holds the B first points then the B second points ([2B, 2]); `labels` [B]. Runs the forward pass
    /// and, with `gradient`, the backward pass (model.gradients = dL/dpsi, L the batch mean).
    static func evaluate(
        model: inout MLP<Double>, input: [Double], labels: [Double], workspace: inout MLPWorkspace<Double>,
        gradOutput: inout [Double], gradient: Bool
    ) throws -> Batch {
        let B = labels.count
        precondition(input.count == 4 * B && gradOutput.count >= 2 * B)
        try input.withUnsafeBufferPointer { try model.forward($0, batch: 2 * B, workspace: &workspace, training: gradient) }
        var r = Batch()
        let invB = 1 / Double(B)
        workspace.withOutput { out in
            for i in 0..<B {
                let d = out[i] - out[B + i], t = labels[i]
                r.loss += RewardModelMath.softplus(-d) + (1 - t) * d
                let g = (ToyLMMath.sigmoid(d) - t) * invB
                gradOutput[i] = g
                gradOutput[B + i] = -g
                let m = t >= 0.5 ? d : -d
                r.margin += m
                if m > 0 { r.accuracy += 1 }
            }
            for i in 0..<(2 * B) {
                r.minReward = min(r.minReward, out[i])
                r.maxReward = max(r.maxReward, out[i])
                r.meanReward += out[i]
            }
        }
        r.loss *= invB
        r.margin *= invB
        r.accuracy *= invB
        r.meanReward /= Double(2 * B)
        if gradient {
            try gradOutput.withUnsafeBufferPointer {
                try model.backward(UnsafeBufferPointer(rebasing: $0[0..<(2 * B)]), workspace: &workspace)
            }
        }
        return r
    }
}

/// One reward-model shard's training. Not thread-safe; lives on one compute thread.
public final class RewardModelTrainer {
    public static let algorithmName = "reward-model"

    public let config: RewardModelConfig
    public let point: RewardModel.Slice
    public let configText: String
    public private(set) var network: MLP<Double>
    public private(set) var optimizer: Adam<Double>
    public private(set) var step: Int
    public private(set) var last: RewardModelStepMetrics?

    let pairs: RewardModelPairs
    let dataSeed: UInt64
    var workspace: MLPWorkspace<Double>
    var input: [Double]
    var labels: [Double]
    var gradOutput: [Double]
    var evalSet: (points: [Double], logDensity: [Double], logAnnotators: [[Double]], grid: [Double], gridLogDensity: [Double])?

    static let evalChunk = 4096

    public init(config: RewardModelConfig, point: RewardModel.Slice, configText: String) throws {
        self.config = config
        self.point = point
        self.configText = configText
        network = try MLP<Double>(sizes: config.sizes, activation: config.activation, seed: point.seed)
        optimizer = try Adam<Double>(configuration: config.optimizer, parameterCount: network.parameterCount)
        step = 0
        last = nil
        dataSeed = config.dataSeed ?? point.seed
        pairs = RewardModelPairs(config: config, seed: dataSeed)
        workspace = network.makeWorkspace(batchCapacity: max(2 * config.batchSize, Self.evalChunk))
        input = [Double](repeating: 0, count: 4 * config.batchSize)
        labels = [Double](repeating: 0, count: config.batchSize)
        gradOutput = [Double](repeating: 0, count: max(2 * config.batchSize, Self.evalChunk))
    }

    /// Resumes from a checkpoint written by `checkpoint()` of the same shard.
    public convenience init(config: RewardModelConfig, point: RewardModel.Slice, configText: String, checkpoint bytes: [UInt8])
        throws
    {
        try self.init(config: config, point: point, configText: configText)
        let c: TrainingCheckpoint<Double>
        do {
            c = try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(bytes))
        } catch {
            throw ShardError("the resume checkpoint cannot be read: \(error)")
        }
        guard c.algo == Self.algorithmName else {
            throw ShardError("the resume checkpoint was written by \(c.algo), not \(Self.algorithmName)")
        }
        guard c.config == configText, c.seed == point.seed, c.model.sizes == config.sizes,
            c.model.activation == config.activation, c.optimizer.configuration == config.optimizer
        else {
            throw ShardError("the resume checkpoint belongs to another reward-model configuration or shard")
        }
        guard c.step >= 0, c.step <= config.steps, c.optimizer.step == c.step, c.rngCounter == UInt64(c.step) else {
            throw ShardError("the resume checkpoint at step \(c.step) is not a resumable state of a \(config.steps)-step run")
        }
        network = c.model
        optimizer = c.optimizer
        step = c.step
        if let m = try? JSONValue.parse(c.metricsLast) { last = RewardModelStepMetrics(step: c.step, json: m) }
    }

    /// One Adam update on the minibatch of step `step + 1`.
    @discardableResult
    public func trainStep() throws -> RewardModelStepMetrics {
        let k = step + 1
        let B = config.batchSize, N = pairs.count
        for j in 0..<B {
            let word = Philox4x32.words(
                seed: point.seed, index: UInt64(j), step: UInt32(truncatingIfNeeded: k),
                stream: PhiloxStreamID.minibatch.rawValue
            ).0
            let i = min(N - 1, Int(Philox4x32.uniform(word) * Double(N)))
            input[2 * j] = pairs.a[2 * i]
            input[2 * j + 1] = pairs.a[2 * i + 1]
            input[2 * (B + j)] = pairs.b[2 * i]
            input[2 * (B + j) + 1] = pairs.b[2 * i + 1]
            labels[j] = pairs.label[i]
        }
        let r = try RewardModelLoss.evaluate(
            model: &network, input: input, labels: labels, workspace: &workspace, gradOutput: &gradOutput,
            gradient: true)
        let norm = config.maxGradNorm.map { network.clipGradientNorm(maxNorm: $0) } ?? network.gradientNorm()
        let lr = optimizer.nextLearningRate
        optimizer.update(&network)
        step = k
        let m = RewardModelStepMetrics(
            step: k, loss: r.loss, accuracy: r.accuracy, margin: r.margin, minReward: r.minReward,
            meanReward: r.meanReward, maxReward: r.maxReward, gradNorm: norm, learningRate: lr)
        last = m
        return m
    }

    /// r_psi at `points` ([n, 2]).
    public func rewards(_ points: [Double]) throws -> [Double] {
        let n = points.count / 2
        var out = [Double](repeating: 0, count: n)
        var start = 0
        try points.withUnsafeBufferPointer { p in
            while start < n {
                let end = min(n, start + Self.evalChunk)
                try network.forward(
                    UnsafeBufferPointer(rebasing: p[(2 * start)..<(2 * end)]), batch: end - start,
                    workspace: &workspace, training: false)
                workspace.withOutput { o in for i in 0..<(end - start) { out[start + i] = o[i] } }
                start = end
            }
        }
        return out
    }

    /// rmse and tv against p_bar (see the file comment); the evaluation set is built on first use.
    public func evaluate() -> RewardModelEvaluation {
        let c = config
        let densities = c.annotators.map(RewardModelDensity.init)
        func logBar(_ x: Double, _ y: Double) -> Double {
            if densities.count == 1 { return densities[0].log(x, y) }
            let l1 = log(c.annotatorMix) + densities[0].log(x, y), l2 = log(1 - c.annotatorMix) + densities[1].log(x, y)
            let m = max(l1, l2)
            return m + log(exp(l1 - m) + exp(l2 - m))
        }
        if evalSet == nil {
            let E = c.evalSamples
            var pts = [Double](repeating: 0, count: 2 * E)
            var z = [Double](repeating: 0, count: 2)
            for j in 0..<E {
                var s = PhiloxStream(seed: point.seed, index: UInt32(j), step: 0, stream: .dataDraw)
                z.withUnsafeMutableBufferPointer { s.fillNormals($0) }
                pts[2 * j] = c.proposalMean[0] + c.proposalStd * z[0]
                pts[2 * j + 1] = c.proposalMean[1] + c.proposalStd * z[1]
            }
            let n = c.gridPoints, h = 2 * c.gridExtent / Double(n)
            var grid = [Double](repeating: 0, count: 2 * n * n)
            for i in 0..<n {
                for j in 0..<n {
                    grid[2 * (i * n + j)] = c.proposalMean[0] - c.gridExtent + (Double(i) + 0.5) * h
                    grid[2 * (i * n + j) + 1] = c.proposalMean[1] - c.gridExtent + (Double(j) + 0.5) * h
                }
            }
            evalSet = (
                pts, (0..<E).map { logBar(pts[2 * $0], pts[2 * $0 + 1]) },
                densities.count == 2 ? densities.map { d in (0..<E).map { d.log(pts[2 * $0], pts[2 * $0 + 1]) } } : [],
                grid, (0..<(n * n)).map { logBar(grid[2 * $0], grid[2 * $0 + 1]) }
            )
        }
        let e = evalSet!
        let r = (try? rewards(e.points)) ?? []
        func centredRMSE(_ target: [Double]) -> Double {
            var s = 0.0, s2 = 0.0
            for j in 0..<target.count {
                let d = r[j] - target[j]
                s += d
                s2 += d * d
            }
            let n = Double(target.count)
            return max(0, s2 / n - (s / n) * (s / n)).squareRoot()
        }
        let rg = (try? rewards(e.grid)) ?? []
        let top = rg.max() ?? 0
        let f = rg.map { exp($0 - top) }
        let Z = f.reduce(0, +)
        let h = 2 * c.gridExtent / Double(c.gridPoints)
        var tv = 0.0, mass = 0.0
        for i in 0..<f.count {
            let pc = exp(e.gridLogDensity[i]) * h * h
            tv += abs(f[i] / Z - pc)
            mass += pc
        }
        return RewardModelEvaluation(
            rmse: centredRMSE(e.logDensity), tv: 0.5 * tv + 0.5 * max(0, 1 - mass),
            rmseAnnotators: e.logAnnotators.map(centredRMSE))
    }

    /// The worker-ckpt/1 safetensors file of the current state (see the file comment).
    public func checkpoint() throws -> [UInt8] {
        var metrics = JSONObject()
        if let last { for (name, value) in last.named { metrics[name] = .number(value) } }
        var extra: [SafeTensor] = []
        for (j, a) in config.annotators.enumerated() {
            let prefix = j == 0 ? "annotator" : "annotator_2"
            extra += [
                try SafeTensor(name: "\(prefix).weights", float64: a.weights, shape: [a.componentCount]),
                try SafeTensor(name: "\(prefix).means", float64: a.means.flatMap { $0 }, shape: [a.componentCount, 2]),
                try SafeTensor(name: "\(prefix).stds", float64: a.stds, shape: [a.componentCount]),
            ]
        }
        extra += [
            try SafeTensor(name: "proposal.mean", float64: config.proposalMean, shape: [2]),
            try SafeTensor(name: "proposal.std", float64: [config.proposalStd], shape: []),
        ]
        let ckpt = TrainingCheckpoint(
            model: network, optimizer: optimizer, seed: point.seed, rngCounter: UInt64(step), step: step,
            algo: Self.algorithmName, config: configText, metricsLast: JSONValue.object(metrics).render(),
            extraTensors: extra,
            extraMetadata: [
                "data_seed": String(dataSeed), "data_pairs": String(config.pairs), "labels": config.labels.rawValue,
                "annotator_mix": String(config.annotatorMix), "input": "y (R^2)", "output": "reward r_psi(y)",
            ])
        return try ckpt.safeTensorsFile().serialize()
    }
}
