// `kind: preference`, `algorithm: iterative-dpo`: iterative DPO over a label budget with margin-based pair selection
// (WORKLOADS.md §3 P4; Yang et al., "Not All Preference Pairs Are Created Equal: A Recipe for Annotation-Efficient
// Iterative Preference Learning", arXiv 2406.17312), on the toy LM. docs/training.md §7.5.
//
// R = `rounds` rounds of S = `steps_per_round` DPO steps (sigmoid loss, TRL's formula). At the first step of round r
// (1-based), before that step's update:
//  1. C = `candidates_per_round` candidate pairs are drawn from the current policy pi_theta: candidate i is
//     Philox(data seed; index i, step r, stream 6), the word order of the annotator's pairs (`BradleyTerryAnnotator`):
//     one uniform for x = floor(u M), L uniforms for y1, L for y2 (token by token from pi_theta, inverse CDF), one
//     uniform t for the label. Candidates with y1 = y2 are not pairs and are never selected.
//  2. Each candidate's DPO implicit-reward margin m_i = |beta (u(y1) - u(y2))|, u = log pi_theta - log pi_ref.
//  3. The round's quota Q_r of them is selected: `small-margin` the Q_r smallest m (ties to the lower index),
//     `large-margin` the Q_r largest, `random` the first Q_r valid candidates (the candidates are i.i.d., so that is a
//     uniformly random subset). Q_r = (labels allotted to rounds 1..r) - (labels used so far): the budget B =
//     `label_budget` is allotted floor(B / R) per round plus one to each of the first B mod R rounds, and a round
//     short of valid candidates passes its remainder to the next one. So at most B labels are ever used, exactly B
//     when every round has enough valid candidates (`labels` in the summary says which).
//  4. The selected candidates are annotated by the Bradley-Terry annotator of the toy reward: y1 wins iff
//     t < sigma(r(x, y1) - r(x, y2)), and join the labelled set (kept across rounds).
// Every step is a full-batch DPO step on the mean loss over all pairs labelled so far; the reference stays pi_ref,
// so the target of every round is the Gibbs policy pi* = pi_ref e^{r/beta} / Z and exact/kl_to_optimum measures it.
//
// Metrics: TRL's loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
// logps/rejected, grad_norm, learning_rate (over the labelled set), iterative/round, iterative/labels (labels so
// far), iterative/selected_margin (the mean m of the round's selection, on the round's first step) and the exact ones.
// Summary: the toy-LM summary, then `labels` (used), `labels_by_round` and `kl_by_round`: labels and
// E_x KL(pi || pi*) at the reference policy (0 labels) and after each round (R + 1 entries).
// Checkpoint: the policy and Adam state, plus `iterative.pairs` (I64 [n, 3]: context, chosen, rejected in labelling
// order), `iterative.labels_by_round` (I64) and `iterative.kl_by_round` (F64), the figures of the rounds started.

import Foundation
import TesseraCompute
import TesseraCore

public struct IterativeDPO: TypedAlgorithm {
    public var kind: JobKind { .preference }
    public var name: String { "iterative-dpo" }
    public var summary: String {
        "iterative DPO over a label budget: each round annotates the candidate pairs of pi_theta with the smallest "
            + "(or largest, or random) implicit-reward margin, then retrains (arXiv 2406.17312), on the toy LM"
    }

    public init() {}

    public struct Config: Sendable {
        public var training: ToyLMTrainingConfig
        var settings: IterativeDPOSettings
    }

    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let selection = IterativeDPOSettings.Selection(
            rawValue: try p.string(
                "pair_selection", default: "small-margin",
                allowed: IterativeDPOSettings.Selection.allCases.map(\.rawValue)))!
        let rounds = try p.int("rounds", default: 4, range: 1...64)
        let budget = try p.int("label_budget", default: 512, range: 1...1_000_000)
        let candidates = try p.int("candidates_per_round", default: 2048, range: 1...1_000_000)
        let perRound = (budget + rounds - 1) / rounds
        guard candidates >= perRound else {
            throw p.error(
                "candidates_per_round",
                "params.candidates_per_round (\(candidates)) must be at least the labels of a round, ceil(label_budget / rounds) = \(perRound)"
            )
        }
        let stepsPerRound = try p.int("steps_per_round", default: 250, range: 1...1_000_000)
        if p.has("steps") {
            throw p.error("steps", "params.steps is rounds x steps_per_round for iterative-dpo; set steps_per_round")
        }
        var dataSeed: UInt64?
        if p.has("data") {
            let d = try p.object("data")
            try d.rejectUnknown(["seed"])
            dataSeed = d.has("seed") ? try d.seed("seed") : nil
        }
        let config = try ToyLMTrainingConfig.parse(
            spec,
            algorithmKeys: ["pair_selection", "rounds", "label_budget", "candidates_per_round", "steps_per_round", "data"],
            defaults: .init(
                beta: 0.5, steps: rounds * stepsPerRound, learningRate: 0.02, schedule: "constant", maxGradNorm: nil),
            updatesPerStep: 1)
        return Config(
            training: config,
            settings: IterativeDPOSettings(
                selection: selection, rounds: rounds, labelBudget: budget, candidatesPerRound: candidates,
                stepsPerRound: stepsPerRound, dataSeed: dataSeed))
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<ToyLMSweepPoint>] {
        config.training.slices
    }

    public func run(_ slice: ToyLMSweepPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<IterativeDPOShardSummary>
    {
        let point = try config.training.point(slice)
        let problem = ToyLMProblem(config.training.problem)
        let rule = IterativeDPORule(settings: config.settings, problem: problem)
        let (base, state, _) = try ToyLMTrainer.runKeepingState(
            rule: rule, config: config.training, params: task.spec.params, point: point, resume: task.resume,
            sink: sink)
        sink.log(
            "iterative-dpo \(config.settings.selection.rawValue) β=\(point.beta): \(state.pairs.count) labels of \(config.settings.labelBudget); "
                + "KL(π‖π*) by round \(state.klByRound + [base.exact.klToOptimum])")
        return TypedShardOutput(
            summary: IterativeDPOShardSummary(
                base: base, labels: state.pairs.count, labelsByRound: [0] + state.labelsByRound,
                klByRound: state.klByRound + [base.exact.klToOptimum]))
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<IterativeDPOShardSummary> {
        let training = config.training
        let settings = config.settings
        return SummaryReducer { summaries in
            let merged = try ToyLMSweepMerge.merge(
                algorithm: "iterative-dpo", config: training, summaries: summaries.map(\.base))
            guard case .object(var o) = merged, let first = summaries.first else { return merged }
            o["points"] = .array(try summaries.enumerated().map { try TypedCoding.encode($1, "shard \($0)'s summary") })
            o["pair_selection"] = .string(settings.selection.rawValue)
            o["label_budget"] = .int(settings.labelBudget)
            o["rounds"] = .int(settings.rounds)
            // Means over the shards (seeds and betas alike), per round: lists of at most 8 numbers show up in the
            // generic sweep's table as kl_by_round[i].
            let n = Double(summaries.count)
            o["labels"] = .number(summaries.reduce(0) { $0 + Double($1.labels) } / n)
            o["labels_by_round"] = .array(
                first.labelsByRound.indices.map { r in
                    .number(summaries.reduce(0) { $0 + Double($1.labelsByRound[r]) } / n)
                })
            o["kl_by_round"] = .array(
                first.klByRound.indices.map { r in .number(summaries.reduce(0) { $0 + $1.klByRound[r] } / n) })
            return .object(o)
        }
    }
}

/// iterative-dpo's own parameters.
struct IterativeDPOSettings: Sendable {
    enum Selection: String, Sendable, CaseIterable {
        case smallMargin = "small-margin"
        case largeMargin = "large-margin"
        case random
    }
    var selection: Selection
    var rounds: Int
    var labelBudget: Int
    var candidatesPerRound: Int
    var stepsPerRound: Int
    /// Key of the candidate draws and labels (nil: the shard's seed).
    var dataSeed: UInt64?

    /// Labels allotted to rounds 1...r together: floor(B / R) each, one more to each of the first B mod R rounds.
    func allotted(throughRound r: Int) -> Int {
        let base = labelBudget / rounds, extra = labelBudget % rounds
        return base * r + min(r, extra)
    }
}

/// An iterative-dpo shard's summary: the toy-LM summary, then `labels`, `labels_by_round`, `kl_by_round`.
public struct IterativeDPOShardSummary: Codable, Sendable, Equatable {
    public var base: ToyLMShardSummary
    /// Labels used (<= label_budget).
    public var labels: Int
    /// Labels so far at the reference policy (0) and after each round.
    public var labelsByRound: [Int]
    /// E_x KL(pi || pi*) at the reference policy and after each round.
    public var klByRound: [Double]

    enum CodingKeys: String, CodingKey {
        case labels, labelsByRound = "labels_by_round", klByRound = "kl_by_round"
    }

    init(base: ToyLMShardSummary, labels: Int, labelsByRound: [Int], klByRound: [Double]) {
        self.base = base
        self.labels = labels
        self.labelsByRound = labelsByRound
        self.klByRound = klByRound
    }

    public func encode(to encoder: any Encoder) throws {
        try base.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(labels, forKey: .labels)
        try c.encode(labelsByRound, forKey: .labelsByRound)
        try c.encode(klByRound, forKey: .klByRound)
    }

    public init(from decoder: any Decoder) throws {
        base = try ToyLMShardSummary(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        labels = try c.decode(Int.self, forKey: .labels)
        labelsByRound = try c.decode([Int].self, forKey: .labelsByRound)
        klByRound = try c.decode([Double].self, forKey: .klByRound)
    }
}

/// The labelled set and the figures of the rounds started so far, saved bit for bit in checkpoints.
struct IterativeDPOState: ToyLMAuxiliaryState {
    var pairs: [ToyLMPreferencePair] = []
    /// Labels so far after each started round.
    var labelsByRound: [Int] = []
    /// E_x KL(pi || pi*) at the start of each started round (= after the previous round).
    var klByRound: [Double] = []

    var tensors: [SafeTensor] {
        get throws {
            var out = [
                try SafeTensor(
                    name: "iterative.pairs",
                    int64: pairs.flatMap { [Int64($0.context), Int64($0.chosen), Int64($0.rejected)] },
                    shape: [pairs.count, 3])
            ]
            out.append(
                try SafeTensor(
                    name: "iterative.labels_by_round", int64: labelsByRound.map(Int64.init),
                    shape: [labelsByRound.count]))
            out.append(try SafeTensor(name: "iterative.kl_by_round", float64: klByRound, shape: [klByRound.count]))
            return out
        }
    }

    mutating func restore(from tensors: [SafeTensor]) throws {
        func tensor(_ name: String) throws -> SafeTensor {
            guard let t = tensors.first(where: { $0.name == name }) else {
                throw ToyLMError(.checkpointMismatch, "the resume checkpoint has no \(name)")
            }
            return t
        }
        let flat = try tensor("iterative.pairs").int64Values()
        guard flat.count % 3 == 0 else { throw ToyLMError(.checkpointMismatch, "iterative.pairs is not [n, 3]") }
        pairs = stride(from: 0, to: flat.count, by: 3).map {
            ToyLMPreferencePair(context: Int(flat[$0]), chosen: Int(flat[$0 + 1]), rejected: Int(flat[$0 + 2]))
        }
        labelsByRound = try tensor("iterative.labels_by_round").int64Values().map { Int($0) }
        klByRound = try tensor("iterative.kl_by_round").float64Values()
        guard labelsByRound.count == klByRound.count, labelsByRound.last ?? 0 == pairs.count else {
            throw ToyLMError(.checkpointMismatch, "the resume checkpoint's round figures do not match its pairs")
        }
    }
}

/// One candidate pair of a round.
struct IterativeDPOCandidate: Sendable, Equatable {
    var context: Int
    var first: Int
    var second: Int
    /// The label uniform t: `first` wins iff t < sigma(r(first) - r(second)).
    var labelUniform: Double
}

struct IterativeDPORule: ToyLMStepRule {
    let settings: IterativeDPOSettings
    let problem: ToyLMProblem

    var name: String { "iterative-dpo" }
    var updatesPerStep: Int { 1 }

    func makeAuxiliary(problem: ToyLMProblem, optimizer: AdamConfiguration) -> IterativeDPOState {
        IterativeDPOState()
    }

    /// Round r's candidates, drawn from `policy` (evaluated) with Philox(seed; i, step r, stream 6).
    func candidates(round r: Int, policy: ToyLMPolicy, seed: UInt64) -> [IterativeDPOCandidate] {
        let M = problem.contexts
        return (0..<settings.candidatesPerRound).map { i in
            var s = PhiloxStream(seed: seed, index: UInt32(i), step: UInt32(r), stream: .preferenceLabel)
            let x = min(M - 1, Int(s.nextUniform() * Double(M)))
            let y1 = policy.sample(context: x, stream: &s)
            let y2 = policy.sample(context: x, stream: &s)
            return IterativeDPOCandidate(context: x, first: y1, second: y2, labelUniform: s.nextUniform())
        }
    }

    /// m = |beta (u(first) - u(second))| at the policy `logProb`.
    func margin(_ c: IterativeDPOCandidate, logProb: [Double], beta: Double) -> Double {
        let K = problem.responses, ref = problem.referenceLogProb
        let a = c.context * K + c.first, b = c.context * K + c.second
        return abs(beta * ((logProb[a] - ref[a]) - (logProb[b] - ref[b])))
    }

    /// The indices of the `quota` candidates the strategy selects, in selection order.
    func select(_ candidates: [IterativeDPOCandidate], margins: [Double], quota: Int) -> [Int] {
        let valid = candidates.indices.filter { candidates[$0].first != candidates[$0].second }
        let ordered: [Int]
        switch settings.selection {
        case .random: ordered = valid
        case .smallMargin: ordered = valid.sorted { (margins[$0], $0) < (margins[$1], $1) }
        case .largeMargin: ordered = valid.sorted { margins[$0] > margins[$1] || (margins[$0] == margins[$1] && $0 < $1) }
        }
        return Array(ordered.prefix(max(0, quota)))
    }

    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer,
        auxiliary state: inout IterativeDPOState
    ) throws -> [(String, Double)] {
        try policy.evaluate()
        let beta = point.beta
        let K = problem.responses
        let round = (step - 1) / settings.stepsPerRound + 1
        var rows: [(String, Double)] = []
        if (step - 1) % settings.stepsPerRound == 0 {
            state.klByRound.append(problem.exactMetrics(logProb: policy.logProb, beta: beta).klToOptimum)
            let drawn = candidates(round: round, policy: policy, seed: settings.dataSeed ?? point.seed)
            let margins = drawn.map { margin($0, logProb: policy.logProb, beta: beta) }
            let chosen = select(drawn, margins: margins, quota: settings.allotted(throughRound: round) - state.pairs.count)
            var total = 0.0
            for i in chosen {
                let c = drawn[i]
                total += margins[i]
                let p = ToyLMMath.sigmoid(
                    problem.reward[c.context * K + c.first] - problem.reward[c.context * K + c.second])
                state.pairs.append(
                    c.labelUniform < p
                        ? ToyLMPreferencePair(context: c.context, chosen: c.first, rejected: c.second)
                        : ToyLMPreferencePair(context: c.context, chosen: c.second, rejected: c.first))
            }
            state.labelsByRound.append(state.pairs.count)
            if !chosen.isEmpty { rows.append(("iterative/selected_margin", total / Double(chosen.count))) }
        }
        let logProb = policy.logProb, ref = problem.referenceLogProb
        var gradient = [Double](repeating: 0, count: problem.contexts * K)
        var loss = 0.0, chosenReward = 0.0, rejected = 0.0, accuracy = 0.0, logpChosen = 0.0, logpRejected = 0.0
        let w = state.pairs.isEmpty ? 0 : 1 / Double(state.pairs.count)
        for pair in state.pairs {
            let c = pair.context * K + pair.chosen, r = pair.context * K + pair.rejected
            let uc = logProb[c] - ref[c], ur = logProb[r] - ref[r]
            let z = beta * (uc - ur)
            loss -= w * ToyLMMath.logSigmoid(z)
            let dz = w * beta * (ToyLMMath.sigmoid(z) - 1)
            gradient[c] += dz
            gradient[r] -= dz
            chosenReward += w * beta * uc
            rejected += w * beta * ur
            accuracy += w * (uc > ur ? 1 : 0)
            logpChosen += w * logProb[c]
            logpRejected += w * logProb[r]
        }
        try policy.backward(sequenceGradient: gradient)
        let update = optimizer.update(&policy)
        return [
            ("loss", loss), ("rewards/chosen", chosenReward), ("rewards/rejected", rejected),
            ("rewards/accuracies", accuracy), ("rewards/margins", chosenReward - rejected),
            ("logps/chosen", logpChosen), ("logps/rejected", logpRejected), ("grad_norm", update.gradNorm),
            ("learning_rate", update.learningRate), ("iterative/round", Double(round)),
            ("iterative/labels", Double(state.pairs.count)),
        ] + rows
    }
}
