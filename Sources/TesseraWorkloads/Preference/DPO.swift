// `kind: preference`, `algorithm: dpo`: Direct Preference Optimization with TRL's loss types
// (WORKLOADS.md §3 P1; huggingface/trl trl/trainer/dpo_trainer.py), on the toy LM.
//
// With u(y) = log pi_theta(y|x) - log pi_ref(y|x) and delta = u(y_w) - u(y_l), a pair's loss is `loss:`'s
// (`DPOLoss`: sigmoid, robust, ipo, exo_pair, nca_pair, bco_pair, apo_zero, apo_down, hinge). The default, sigmoid, is
// -(1 - s) log sigma(beta delta) - s log sigma(-beta delta) (s = label_smoothing, TRL's conservative DPO); it keeps
// its own soft-label code path below, so its trajectories are bitwise those of the sigmoid-only version.
// The data come from the Bradley-Terry annotator of the toy reward (`BradleyTerryAnnotator`):
//  - `data.source: annotator`: N pairs drawn by index (Philox stream 6), each step on all of them (summed once per
//    distinct (x, chosen, rejected) with its share of the N pairs as weight: the same mean loss, at most M K^2 terms)
//    or on a minibatch of `batch_size` indices drawn with replacement (Philox(point seed; j, step, stream 3));
//  - `data.source: population`: the expected loss over x uniform, (y, y') ~ mu x mu and the BT label, i.e. every
//    ordered pair weighted by mu(y|x) mu(y'|x) / M with the soft label P(y > y'). Its minimiser is exactly the Gibbs
//    policy pi_ref e^{r/beta} / Z (beta u(y) - beta u(y') = r(y) - r(y') on every pair) for sigmoid.
//  - `data.label_noise: f` (either source) labels with the flipped law (1 - f) P + f (1 - P): the law of the BT label
//    flipped with probability f (what `robust` with label_smoothing = f is unbiased against).
// Other losses on population data: each ordered pair contributes P l(y, y') + (1 - P) l(y', y).
//
// Metrics (TRL names; population mode reports their expectations): loss, rewards/chosen (mean beta u(y_w)),
// rewards/rejected, rewards/accuracies (share with beta u(y_w) > beta u(y_l)), rewards/margins, logps/chosen,
// logps/rejected, grad_norm, learning_rate.

import Foundation
import TesseraCompute
import TesseraCore

public struct DPO: TypedAlgorithm {
    public var kind: JobKind { .preference }
    public var name: String { "dpo" }
    public var summary: String {
        "DPO (TRL loss types: sigmoid, robust, ipo, exo_pair, nca_pair, bco_pair, apo_zero, apo_down, hinge) on "
            + "Bradley-Terry preference pairs of the toy LM's reward"
    }

    public init() {}

    static let defaults = ToyLMTrainingConfig.Defaults(
        beta: 0.1, steps: 1000, learningRate: 0.02, schedule: "cosine", maxGradNorm: nil)
    static let maxPairs = 1_000_000
    /// Population mode enumerates M K^2 ordered pairs per step.
    static let maxPopulationPairs = 1 << 21

    /// A DPO job's validated params: the shared toy-LM training settings and DPO's own.
    public struct Config: Sendable {
        public var training: ToyLMTrainingConfig
        var settings: DPOSettings
    }

    /// Reads and validates `params`; every error carries the line of the key at fault.
    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let loss = DPOLoss(
            rawValue: try p.string("loss", default: "sigmoid", allowed: DPOLoss.allCases.map(\.rawValue)))!
        let smoothing: Double
        if loss == .exoPair {
            smoothing = try p.double("label_smoothing", range: 0...0.4999, default: DPOLoss.exoDefaultSmoothing)
            guard smoothing > 0 else {
                throw p.error(
                    "label_smoothing", "params.label_smoothing must be > 0 for loss exo_pair (it takes log eps)")
            }
        } else {
            smoothing = try p.double("label_smoothing", range: 0...0.4999, default: 0)
            if smoothing != 0, !loss.usesLabelSmoothing {
                throw p.error(
                    "label_smoothing",
                    "params.label_smoothing applies to loss sigmoid, robust or exo_pair, not \(loss.rawValue)")
            }
        }
        var (data, batchSize, labelNoise, generation) = try DPOSettings.parseData(p, allowFile: true, allowGeneration: true)
        let config = try ToyLMTrainingConfig.parse(
            spec, algorithmKeys: ["loss", "label_smoothing", "data", "batch_size"], defaults: Self.defaults,
            updatesPerStep: 1)
        data = try DPOSettings.parsingFile(data, problem: config.problem, batchSize: batchSize, params: p)
        try DPOSettings.checkPopulationSize(data, problem: config.problem, p)
        return Config(
            training: config,
            settings: DPOSettings(
                data: data, batchSize: batchSize, labelSmoothing: smoothing, loss: loss, labelNoise: labelNoise,
                generation: generation))
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<DPOSlice>] {
        DPODataShards.plan(config.training, settings: config.settings)
    }

    public func run(_ slice: DPOSlice, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<DPOSummary>
    {
        let problem = ToyLMProblem(config.training.problem)
        switch slice {
        case .data(let part):
            guard config.settings.generation != nil else {
                throw ShardError("a data slice, but this job has no data.generation_shards", permanent: true)
            }
            return try DPODataShards.label(part, settings: config.settings, problem: problem, sink: sink)
        case .training(let point):
            var given: [ToyLMPreferencePair]?
            if config.settings.generation != nil, case .annotator(_, _, let dataSeed) = config.settings.data {
                given = try DPODataShards.pairs(
                    task.inputs, seed: dataSeed ?? point.seed, settings: config.settings, problem: problem)
            }
            let output = try ToyLMTrainer.shard(
                rule: { DPORule(settings: config.settings, problem: problem, point: $0, givenPairs: given) },
                config: config.training, slice: point, task: task, sink: sink)
            return TypedShardOutput(summary: .training(output.summary), result: output.result)
        }
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<DPOSummary> {
        let config = config.training, name = name
        return SummaryReducer { summaries in
            try ToyLMSweepMerge.merge(
                algorithm: name, config: config,
                summaries: summaries.compactMap { if case .training(let s) = $0 { s } else { nil } })
        }
    }
}

/// DPO's own parameters.
struct DPOSettings: Sendable {
    enum Data: Sendable {
        case annotator(proposal: BradleyTerryAnnotator.Proposal, pairs: Int, seed: UInt64?)
        case population(proposal: BradleyTerryAnnotator.Proposal)
        /// Pairs from a job file (`data.source: file`), in file order: as the annotator's, with the file's counts.
        case file(pairs: [ToyLMPreferencePair])
        /// As read from the params, before the problem is known: the file's contents are parsed against it.
        case unparsedFile(JobFile, [UInt8])
    }
    var data: Data
    /// Minibatch size (annotator data); nil = every pair every step.
    var batchSize: Int?
    var labelSmoothing: Double
    var loss: DPOLoss = .sigmoid
    /// f: labels follow (1 - f) P + f (1 - P), the Bradley-Terry label flipped with probability f.
    var labelNoise: Double = 0
    /// `data.generation_shards` (dpo, annotator data): the pairs are labelled by data shards (DPODataShards.swift).
    var generation: DPODataShards? = nil
}

extension DPOSettings {
    /// Reads `params.data` and `params.batch_size` as `dpo` does (shared with `wrpo`, whose pairs are DPO's).
    ///
    /// `data.source: file` (with `allowFile`) names a job file of (context, chosen, rejected) pairs
    /// (ToyLMPairsFile.swift); `parsingFile` reads it once the problem is known.
    ///
    /// `data.generation_shards` (with `allowGeneration`) has the annotator's pairs labelled by that many data shards.
    static func parseData(_ p: Params, allowFile: Bool = false, allowGeneration: Bool = false) throws -> (
        data: Data, batchSize: Int?, labelNoise: Double, generation: DPODataShards?
    ) {
        var data = Data.annotator(proposal: .reference, pairs: 65_536, seed: nil)
        var generation: DPODataShards?
        var batchSize: Int?
        var labelNoise = 0.0
        if p.has("data") {
            let d = try p.object("data")
            let source = try d.string(
                "source", default: "annotator", allowed: allowFile ? ["annotator", "population", "file"] : ["annotator", "population"])
            let proposal = BradleyTerryAnnotator.Proposal(
                rawValue: try d.string(
                    "proposal", default: "reference", allowed: BradleyTerryAnnotator.Proposal.allCases.map(\.rawValue)))!
            labelNoise = try d.double("label_noise", range: 0...0.4999, default: 0)
            if source == "file" {
                try d.rejectUnknown(["source", "file"])
                let (file, bytes) = try d.file("file")
                data = .unparsedFile(file, bytes)
            } else if source == "population" {
                try d.rejectUnknown(["source", "proposal", "label_noise"])
                data = .population(proposal: proposal)
            } else {
                try d.rejectUnknown(["source", "proposal", "pairs", "seed", "label_noise"] + (allowGeneration ? [DPODataShards.key] : []))
                let pairs = try d.int("pairs", default: 65_536, range: 1...DPO.maxPairs)
                data = .annotator(proposal: proposal, pairs: pairs, seed: d.has("seed") ? try d.seed("seed") : nil)
                if d.has(DPODataShards.key) {
                    generation = DPODataShards(shards: try d.int(DPODataShards.key, range: 1...min(64, pairs)))
                }
            }
        }
        if p.has("batch_size") {
            switch data {
            case .annotator(_, let pairs, _): batchSize = try p.int("batch_size", range: 1...pairs)
            case .unparsedFile, .file: batchSize = try p.int("batch_size", range: 1...maxPairs)
            case .population:
                throw p.error("batch_size", "params.batch_size applies to data.source: annotator\(allowFile ? " or file" : "") only")
            }
        }
        return (data, batchSize, labelNoise, generation)
    }

    static let maxPairs = DPO.maxPairs

    /// `data` with a file's pairs parsed against `problem` (every malformed line reported); other sources as they are.
    static func parsingFile(_ data: Data, problem: ToyLMSpec, batchSize: Int?, params p: Params) throws -> Data {
        guard case .unparsedFile(let file, let bytes) = data else { return data }
        let pairs = try ToyLMPairsFile.parse(bytes, file: file, problem: problem, maxPairs: maxPairs)
        if let batchSize, batchSize > pairs.count {
            throw p.error("batch_size", "params.batch_size is \(batchSize), more than the \(pairs.count) pairs of \(file.path)")
        }
        return .file(pairs: pairs)
    }

    /// Population data enumerate M K^2 ordered pairs per step: at most `DPO.maxPopulationPairs`.
    static func checkPopulationSize(_ data: Data, problem: ToyLMSpec, _ p: Params) throws {
        guard case .population = data else { return }
        let n = problem.contexts * problem.responses * problem.responses
        guard n <= DPO.maxPopulationPairs else {
            throw p.error(
                "data",
                "data.source: population enumerates contexts x K^2 = \(n) pairs per step; the limit is \(DPO.maxPopulationPairs) (use source: annotator)"
            )
        }
    }
}

/// One DPO step on a fixed data set (built once per shard).
struct DPORule: ToyLMPolicyStepRule {
    let settings: DPOSettings
    let problem: ToyLMProblem
    /// Annotator pairs (empty in population mode).
    let pairs: [ToyLMPreferencePair]
    /// Full-batch annotator mode: the distinct (context, chosen, rejected) triples in that order, with their share
    /// of the pairs (the mean loss over all pairs, summed once per distinct triple).
    let distinctPairs: [(pair: ToyLMPreferencePair, weight: Double)]
    /// Population mode: mu(y|x) [M, K] and P(y > y' | x) [M, K, K].
    let proposal: [Double]
    let preference: [Double]

    var name: String { "dpo" }
    var updatesPerStep: Int { 1 }

    /// `givenPairs`: the annotator pairs as data shards labelled them (the same pairs `point` would draw).
    init(settings: DPOSettings, problem: ToyLMProblem, point: ToyLMSweepPoint, givenPairs: [ToyLMPreferencePair]? = nil) {
        self.settings = settings
        self.problem = problem
        let K = problem.responses
        switch settings.data {
        case .annotator, .file, .unparsedFile:
            if case .annotator(let proposal, let count, let seed) = settings.data {
                let annotator = BradleyTerryAnnotator(
                    problem: problem, proposal: proposal, seed: seed ?? point.seed, labelNoise: settings.labelNoise)
                pairs = givenPairs ?? (0..<count).map { annotator.pair($0) }
            } else if case .file(let filePairs) = settings.data {
                pairs = filePairs
            } else {
                preconditionFailure("DPO.configure parses a data file into pairs")
            }
            let count = pairs.count
            if settings.batchSize == nil {
                var counts: [Int: Int] = [:]
                for q in pairs { counts[(q.context * K + q.chosen) * K + q.rejected, default: 0] += 1 }
                distinctPairs = counts.keys.sorted().map { i in
                    (
                        ToyLMPreferencePair(context: i / (K * K), chosen: (i / K) % K, rejected: i % K),
                        Double(counts[i]!) / Double(count)
                    )
                }
            } else {
                distinctPairs = []
            }
            self.proposal = []
            preference = []
        case .population(let proposal):
            let annotator = BradleyTerryAnnotator(
                problem: problem, proposal: proposal, seed: point.seed, labelNoise: settings.labelNoise)
            pairs = []
            distinctPairs = []
            self.proposal = annotator.proposalProbabilities
            var p = [Double](repeating: 0, count: problem.contexts * K * K)
            for x in 0..<problem.contexts {
                for y in 0..<K {
                    for y2 in 0..<K {
                        p[(x * K + y) * K + y2] = annotator.labelProbability(context: x, y, over: y2)
                    }
                }
            }
            preference = p
        }
    }

    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer
    ) throws -> [(String, Double)] {
        try policy.evaluate()
        let beta = point.beta, s = settings.labelSmoothing
        let M = problem.contexts, K = problem.responses
        let logProb = policy.logProb, ref = problem.referenceLogProb
        var gradient = [Double](repeating: 0, count: M * K)
        var loss = 0.0, chosen = 0.0, rejected = 0.0, accuracy = 0.0, logpChosen = 0.0, logpRejected = 0.0

        if settings.loss != .sigmoid {
            (loss, chosen, rejected, accuracy, logpChosen, logpRejected) = genericStep(
                step, point: point, logProb: logProb, gradient: &gradient)
        } else if pairs.isEmpty {
            // Population: sum over ordered pairs, weights mu mu' / M summing to 1, soft labels.
            let invM = 1 / Double(M)
            for x in 0..<M {
                for y in 0..<K {
                    let wy = proposal[x * K + y] * invM
                    if wy == 0 { continue }
                    let uy = logProb[x * K + y] - ref[x * K + y]
                    for y2 in 0..<K {
                        let w = wy * proposal[x * K + y2]
                        if w == 0 { continue }
                        let u2 = logProb[x * K + y2] - ref[x * K + y2]
                        let p = preference[(x * K + y) * K + y2]
                        let q = p * (1 - s) + (1 - p) * s  // the smoothed weight of "y is chosen"
                        let z = beta * (uy - u2)
                        loss -= w * (q * ToyLMMath.logSigmoid(z) + (1 - q) * ToyLMMath.logSigmoid(-z))
                        let dz = w * beta * (ToyLMMath.sigmoid(z) - q)
                        gradient[x * K + y] += dz
                        gradient[x * K + y2] -= dz
                        chosen += w * beta * (p * uy + (1 - p) * u2)
                        rejected += w * beta * (p * u2 + (1 - p) * uy)
                        accuracy += w * (p * (uy > u2 ? 1 : 0) + (1 - p) * (u2 > uy ? 1 : 0))
                        logpChosen += w * (p * logProb[x * K + y] + (1 - p) * logProb[x * K + y2])
                        logpRejected += w * (p * logProb[x * K + y2] + (1 - p) * logProb[x * K + y])
                    }
                }
            }
        } else {
            let n = settings.batchSize ?? distinctPairs.count
            for j in 0..<n {
                let pair: ToyLMPreferencePair, w: Double
                if let batchSize = settings.batchSize {
                    pair = minibatchPair(j, step: step, seed: point.seed)
                    w = 1 / Double(batchSize)
                } else {
                    (pair, w) = distinctPairs[j]
                }
                let c = pair.context * K + pair.chosen, r = pair.context * K + pair.rejected
                let uc = logProb[c] - ref[c], ur = logProb[r] - ref[r]
                let z = beta * (uc - ur)
                loss -= w * ((1 - s) * ToyLMMath.logSigmoid(z) + s * ToyLMMath.logSigmoid(-z))
                let dz = w * beta * (ToyLMMath.sigmoid(z) - (1 - s))
                gradient[c] += dz
                gradient[r] -= dz
                chosen += w * beta * uc
                rejected += w * beta * ur
                accuracy += w * (beta * uc > beta * ur ? 1 : 0)
                logpChosen += w * logProb[c]
                logpRejected += w * logProb[r]
            }
        }
        try policy.backward(sequenceGradient: gradient)
        let update = optimizer.update(&policy)
        return [
            ("loss", loss), ("rewards/chosen", chosen), ("rewards/rejected", rejected),
            ("rewards/accuracies", accuracy), ("rewards/margins", chosen - rejected), ("logps/chosen", logpChosen),
            ("logps/rejected", logpRejected), ("grad_norm", update.gradNorm), ("learning_rate", update.learningRate),
        ]
    }

    /// The pair at minibatch slot j of `step` (annotator data with `batch_size`).
    func minibatchPair(_ j: Int, step: Int, seed: UInt64) -> ToyLMPreferencePair {
        let word = Philox4x32.words(
            seed: seed, index: UInt64(j), step: UInt32(truncatingIfNeeded: step),
            stream: PhiloxStreamID.minibatch.rawValue
        ).0
        return pairs[min(pairs.count - 1, Int(Philox4x32.uniform(word) * Double(pairs.count)))]
    }

    /// Every loss but sigmoid: the loss, its gradient in log pi(y|x) (added to `gradient`) and the TRL metrics.
    /// Population data: each ordered pair (y, y') with weight mu mu' / M contributes P l(y, y') + (1 - P) l(y', y).
    func genericStep(_ step: Int, point: ToyLMSweepPoint, logProb: [Double], gradient: inout [Double]) -> (
        Double, Double, Double, Double, Double, Double
    ) {
        let beta = point.beta, eps = settings.labelSmoothing, loss = settings.loss, L = problem.length
        let ref = problem.referenceLogProb
        var total = 0.0, chosen = 0.0, rejected = 0.0, accuracy = 0.0, logpChosen = 0.0, logpRejected = 0.0
        // One labelled pair (c chosen over r) with weight w.
        func add(_ c: Int, _ r: Int, _ w: Double) {
            let uc = logProb[c] - ref[c], ur = logProb[r] - ref[r]
            let l = loss.pair(chosen: uc, rejected: ur, beta: beta, smoothing: eps, length: L)
            total += w * l.loss
            gradient[c] += w * l.dChosen
            gradient[r] += w * l.dRejected
            chosen += w * beta * uc
            rejected += w * beta * ur
            accuracy += w * (beta * uc > beta * ur ? 1 : 0)
            logpChosen += w * logProb[c]
            logpRejected += w * logProb[r]
        }
        forEachPair(step: step, seed: point.seed, add)
        return (total, chosen, rejected, accuracy, logpChosen, logpRejected)
    }

    /// Every labelled pair of step `step`'s data as (chosen, rejected, weight), flat [M, K] indices, weights summing
    /// to 1: population data, each ordered pair (y, y') with weight mu mu' / M, chosen with probability P, then
    /// (y', y) with 1 - P; minibatch, the `batch_size` draws of the step, 1 / batch_size each; full batch, the
    /// distinct pairs with their shares. The order and arithmetic of the weights are fixed (`wrpo`'s bitwise
    /// equality with `dpo` and every checkpoint depend on them).
    func forEachPair(step: Int, seed: UInt64, _ body: (Int, Int, Double) -> Void) {
        let M = problem.contexts, K = problem.responses
        if pairs.isEmpty {
            let invM = 1 / Double(M)
            for x in 0..<M {
                for y in 0..<K {
                    let wy = proposal[x * K + y] * invM
                    if wy == 0 { continue }
                    for y2 in 0..<K {
                        let w = wy * proposal[x * K + y2]
                        if w == 0 { continue }
                        let p = preference[(x * K + y) * K + y2]
                        body(x * K + y, x * K + y2, w * p)
                        body(x * K + y2, x * K + y, w * (1 - p))
                    }
                }
            }
        } else if let batchSize = settings.batchSize {
            for j in 0..<batchSize {
                let pair = minibatchPair(j, step: step, seed: seed)
                body(pair.context * K + pair.chosen, pair.context * K + pair.rejected, 1 / Double(batchSize))
            }
        } else {
            for (pair, w) in distinctPairs {
                body(pair.context * K + pair.chosen, pair.context * K + pair.rejected, w)
            }
        }
    }
}
