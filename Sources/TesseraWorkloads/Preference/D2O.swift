// `kind: preference`, `algorithm: d2o`: Distributional Dispreference Optimization, negatives only (WORKLOADS.md §3 P4;
// Duan et al., "Negating Negatives", arXiv 2403.03419), on the toy LM. docs/training.md §7.4 has the derivation.
//
// A training example is a context x and a human negative y_l. With u(y) = log pi_theta(y|x) - log pi_ref(y|x),
//   loss(x, y_l) = -log sigma(z),  z = beta A(x) - alpha u(y_l),  A(x) = (1/K) sum_i u(y_i),
// with anchors y_i (the model's own "self-generated" responses) drawn from the anchor policy a(.|x):
//  - `anchor_policy: reference`: a = pi_ref(.|x) (the model's own "self-generated" responses; they can fall in N);
//  - `anchor_policy: not_negative`: a = pi_ref(.|x, not N), pi_ref restricted to the complement of N.
// `anchors: expected` (default) replaces the sample mean by its expectation, A(x) = sum_y a(y|x) u(y), enumerated;
// for a = pi_ref that is -KL(pi_ref || pi_theta). `anchors: sampled` draws K = `num_anchors` anchors per context
// per step: Philox(point seed; index x, step k, stream 5), one uniform each, inverse CDF over a(.|x) in response
// order. Both reference policies of the form (pi_r^- for the anchors, pi_r^+ for the negative) are pi_ref here.
// The form is WORKLOADS.md's, from a secondary source (agentsea/dark.rl D2O_README.md); the paper's equation could
// not be read (only its abstracts), so it is not verified against it (docs/training.md §7.4, "Source check").
//
// The negative set N(x): the ceil(f K) responses with the lowest reward r(x, .) (ties to the lower index), f =
// `negatives.fraction`. The human negatives are reference responses that fall in N: y_l ~ pi_ref(.|x, N), x uniform:
//  - `data.source: population` (default): the expected loss, each (x, y_l in N(x)) weighted by
//    pi_ref(y_l|x) / (M pi_ref(N|x));
//  - `data.source: annotator`: `data.negatives` draws by index, Philox(data seed; index i, step 0, stream 6): one
//    uniform for x = floor(u M), one for y_l (inverse CDF over pi_ref(.|x, N) in response order); each step sums
//    every distinct (x, y_l) once with its share of the draws as weight.
//
// What is proven (population data, expected anchors; docs/training.md §7.4): the loss has no minimiser; its infimum 0
// is approached exactly when pi(N|x) -> 0 for every x, which lowers the loss iff alpha > beta a(N|x) (a = pi_ref:
// alpha > beta pi_ref(N|x); a = pi_ref(.|not N): any alpha > 0); and on every level set {pi(N|x) = eps} the loss is
// smallest with pi(.|x, not N) = pi_ref(.|x, not N) exactly. The d2o/* metrics measure both facts at each step.
//
// Metrics (TRL's names, D2O's meaning; mean over the negatives, population: expectation): loss; rewards/chosen =
// beta A(x) (the anchors' implicit reward); rewards/rejected = alpha u(y_l); rewards/margins = z; rewards/accuracies
// = share with z > 0; logps/chosen = the anchors' mean log pi; logps/rejected = log pi(y_l); grad_norm,
// learning_rate; exact, at the policy the step's loss was computed at: d2o/negative_mass = E_x pi(N|x),
// d2o/max_negative_mass_ratio = max_x pi(N|x) / pi_ref(N|x), d2o/max_tv_not_negative = max_x
// TV(pi(.|x, not N), pi_ref(.|x, not N)), d2o/kl_target_policy = E_x KL(pi_ref(.|x, not N) || pi(.|x)) (the
// distance to the limit the infimum describes; 0 iff pi(N) = 0 and the rest is pi_ref restricted).

import Foundation
import TesseraCompute
import TesseraCore

public struct D2O: TypedAlgorithm {
    public var kind: JobKind { .preference }
    public var name: String { "d2o" }
    public var summary: String {
        "D2O (Negating Negatives, arXiv 2403.03419): negatives only, -log sigma(beta/K sum u(anchors) - alpha u(y_l)), "
            + "on the toy LM's lowest-reward responses"
    }

    public init() {}

    static let defaults = ToyLMTrainingConfig.Defaults(
        beta: 0.1, steps: 1000, learningRate: 0.02, schedule: "cosine", maxGradNorm: nil)
    static let maxNegatives = 1_000_000

    public struct Config: Sendable {
        public var training: ToyLMTrainingConfig
        var settings: D2OSettings
    }

    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let alpha = try p.double("alpha", range: 1e-6...1e6, default: 0.1)
        let anchors = D2OSettings.Anchors(
            rawValue: try p.string("anchors", default: "expected", allowed: D2OSettings.Anchors.allCases.map(\.rawValue)))!
        let anchorPolicy = D2OSettings.AnchorPolicy(
            rawValue: try p.string(
                "anchor_policy", default: "reference", allowed: D2OSettings.AnchorPolicy.allCases.map(\.rawValue)))!
        if anchors == .expected, p.has("num_anchors") {
            throw p.error("num_anchors", "params.num_anchors applies only with anchors: sampled")
        }
        let numAnchors = try p.int("num_anchors", default: 11, range: 1...4096)
        var fraction = 0.25
        if p.has("negatives") {
            let n = try p.object("negatives")
            try n.rejectUnknown(["fraction"])
            fraction = try n.double("fraction", range: 1e-9...0.999999, default: 0.25)
        }
        var data = D2OSettings.Data.population
        if p.has("data") {
            let d = try p.object("data")
            let source = try d.string("source", default: "population", allowed: ["population", "annotator"])
            if source == "population" {
                try d.rejectUnknown(["source"])
            } else {
                try d.rejectUnknown(["source", "negatives", "seed"])
                data = .annotator(
                    negatives: try d.int("negatives", default: 4096, range: 1...Self.maxNegatives),
                    seed: d.has("seed") ? try d.seed("seed") : nil)
            }
        }
        let config = try ToyLMTrainingConfig.parse(
            spec, algorithmKeys: ["alpha", "anchors", "anchor_policy", "num_anchors", "negatives", "data"],
            defaults: Self.defaults, updatesPerStep: 1)
        let K = config.problem.responses
        let count = Int((fraction * Double(K)).rounded(.up))
        guard count >= 1, count <= K - 1 else {
            throw p.error(
                "negatives",
                "params.negatives.fraction \(fraction) makes ceil(f K) = \(count) negatives of K = \(K) responses; it must leave 1 to K - 1"
            )
        }
        return Config(
            training: config,
            settings: D2OSettings(
                alpha: alpha, anchors: anchors, anchorPolicy: anchorPolicy, numAnchors: numAnchors,
                negativeCount: count, data: data))
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<ToyLMSweepPoint>] {
        config.training.slices
    }

    public func run(_ slice: ToyLMSweepPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<D2OShardSummary>
    {
        let point = try config.training.point(slice)
        let problem = ToyLMProblem(config.training.problem)
        let rule = D2ORule(settings: config.settings, problem: problem, point: point)
        let condition = rule.tables.conditionMargin(alpha: config.settings.alpha, beta: point.beta)
        sink.log(
            "d2o β=\(point.beta) α=\(config.settings.alpha): |N| = \(config.settings.negativeCount) of \(problem.responses) per context, "
                + "α - β max_x a(N|x) = \(condition)"
                + (condition > 0 ? "" : " ≤ 0: the loss does not reach 0 by removing N (docs/training.md §7.4)"))
        let (base, _, logProb) = try ToyLMTrainer.runKeepingState(
            rule: rule, config: config.training, params: task.spec.params, point: point, resume: task.resume,
            sink: sink)
        return TypedShardOutput(
            summary: D2OShardSummary(
                base: base, d2o: rule.tables.figures(logProb: logProb, alpha: config.settings.alpha, beta: point.beta)))
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<D2OShardSummary> {
        let training = config.training
        return SummaryReducer { summaries in
            var merged = try ToyLMSweepMerge.merge(algorithm: "d2o", config: training, summaries: summaries.map(\.base))
            guard case .object(var o) = merged else { return merged }
            o["points"] = .array(try summaries.enumerated().map { try TypedCoding.encode($1, "shard \($0)'s summary") })
            let figures = summaries.map(\.d2o)
            o["max_negative_mass_ratio"] = .number(figures.map(\.maxNegativeMassRatio).max() ?? .nan)
            o["max_tv_not_negative"] = .number(figures.map(\.maxTVNotNegative).max() ?? .nan)
            o["kl_target_policy"] = ToyLMSweepMerge.interval(figures.map(\.klTargetPolicy))
            merged = .object(o)
            return merged
        }
    }
}

/// D2O's own parameters.
struct D2OSettings: Sendable {
    enum Anchors: String, Sendable, CaseIterable {
        case expected, sampled
    }
    enum AnchorPolicy: String, Sendable, CaseIterable {
        case reference
        case notNegative = "not_negative"
    }
    enum Data: Sendable {
        case population
        case annotator(negatives: Int, seed: UInt64?)
    }
    var alpha: Double
    var anchors: Anchors
    var anchorPolicy: AnchorPolicy
    /// K, anchors per context per step (`anchors: sampled`).
    var numAnchors: Int
    /// |N(x)| = ceil(fraction K), the same for every context.
    var negativeCount: Int
    var data: Data
}

/// The D2O figures of one policy (exact, by enumeration): `{"negative_mass", "max_negative_mass_ratio",
/// "max_tv_not_negative", "kl_target_policy", "condition_margin"}`.
public struct D2OFigures: Codable, Sendable, Equatable {
    /// E_x pi(N|x).
    public var negativeMass: Double
    /// max_x pi(N|x) / pi_ref(N|x).
    public var maxNegativeMassRatio: Double
    /// max_x TV(pi(.|x, not N), pi_ref(.|x, not N)).
    public var maxTVNotNegative: Double
    /// E_x KL(pi_ref(.|x, not N) || pi(.|x)).
    public var klTargetPolicy: Double
    /// alpha - beta max_x a(N|x): > 0 is the condition under which removing N drives the loss to 0.
    public var conditionMargin: Double

    enum CodingKeys: String, CodingKey {
        case negativeMass = "negative_mass", maxNegativeMassRatio = "max_negative_mass_ratio"
        case maxTVNotNegative = "max_tv_not_negative", klTargetPolicy = "kl_target_policy"
        case conditionMargin = "condition_margin"
    }
}

/// A d2o shard's summary: the toy-LM summary (exact figures relative to the Gibbs policy of beta), then `d2o`.
public struct D2OShardSummary: Codable, Sendable, Equatable {
    public var base: ToyLMShardSummary
    public var d2o: D2OFigures

    enum CodingKeys: String, CodingKey { case d2o }

    public init(base: ToyLMShardSummary, d2o: D2OFigures) {
        self.base = base
        self.d2o = d2o
    }

    public func encode(to encoder: any Encoder) throws {
        try base.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(d2o, forKey: .d2o)
    }

    public init(from decoder: any Decoder) throws {
        base = try ToyLMShardSummary(from: decoder)
        d2o = try decoder.container(keyedBy: CodingKeys.self).decode(D2OFigures.self, forKey: .d2o)
    }
}

/// The fixed tables of a D2O problem: the negative set, the anchor policy and the negatives' weights.
struct D2OTables: Sendable {
    let problem: ToyLMProblem
    /// Whether y is in N(x), [M, K].
    let isNegative: [Bool]
    /// pi_ref(N|x), [M].
    let referenceNegativeMass: [Double]
    /// pi_ref(y|x, not N), [M, K] (0 on N).
    let notNegative: [Double]
    /// a(y|x), the anchor policy, [M, K].
    let anchor: [Double]
    /// a(y|x) cumulated in response order, [M, K] (for `anchors: sampled`).
    let anchorCDF: [Double]

    init(problem: ToyLMProblem, settings: D2OSettings) {
        self.problem = problem
        let M = problem.contexts, K = problem.responses
        var negative = [Bool](repeating: false, count: M * K)
        var mass = [Double](repeating: 0, count: M)
        var rest = [Double](repeating: 0, count: M * K)
        for x in 0..<M {
            // The negativeCount lowest rewards, ties to the lower index (a stable sort of the indices).
            let order = (0..<K).sorted {
                let a = problem.reward[x * K + $0], b = problem.reward[x * K + $1]
                return a < b || (a == b && $0 < $1)
            }
            for y in order.prefix(settings.negativeCount) { negative[x * K + y] = true }
            var n = 0.0, c = 0.0
            for y in 0..<K {
                let p = exp(problem.referenceLogProb[x * K + y])
                if negative[x * K + y] { n += p } else { c += p }
            }
            mass[x] = n
            for y in 0..<K where !negative[x * K + y] { rest[x * K + y] = exp(problem.referenceLogProb[x * K + y]) / c }
        }
        isNegative = negative
        referenceNegativeMass = mass
        notNegative = rest
        anchor = settings.anchorPolicy == .reference ? problem.referenceLogProb.map { exp($0) } : rest
        var cdf = anchor
        for x in 0..<M {
            var s = 0.0
            for y in 0..<K {
                s += anchor[x * K + y]
                cdf[x * K + y] = s
            }
        }
        anchorCDF = cdf
    }

    /// alpha - beta max_x a(N|x).
    func conditionMargin(alpha: Double, beta: Double) -> Double {
        let M = problem.contexts, K = problem.responses
        var worst = 0.0
        for x in 0..<M {
            var s = 0.0
            for y in 0..<K where isNegative[x * K + y] { s += anchor[x * K + y] }
            worst = max(worst, s)
        }
        return alpha - beta * worst
    }

    /// The exact D2O figures of the policy `logProb` ([M, K]).
    func figures(logProb: [Double], alpha: Double, beta: Double) -> D2OFigures {
        let M = problem.contexts, K = problem.responses
        var meanMass = 0.0, maxRatio = 0.0, maxTV = 0.0, kl = 0.0
        for x in 0..<M {
            var n = 0.0, c = 0.0
            for y in 0..<K {
                let p = exp(logProb[x * K + y])
                if isNegative[x * K + y] { n += p } else { c += p }
            }
            meanMass += n
            maxRatio = max(maxRatio, n / referenceNegativeMass[x])
            var tv = 0.0, k = 0.0
            for y in 0..<K where !isNegative[x * K + y] {
                let q = notNegative[x * K + y]
                tv += abs(exp(logProb[x * K + y]) / c - q)
                if q > 0 { k += q * (log(q) - logProb[x * K + y]) }
            }
            maxTV = max(maxTV, tv / 2)
            kl += k
        }
        return D2OFigures(
            negativeMass: meanMass / Double(M), maxNegativeMassRatio: maxRatio, maxTVNotNegative: maxTV,
            klTargetPolicy: kl / Double(M), conditionMargin: conditionMargin(alpha: alpha, beta: beta))
    }

    /// The inverse-CDF draw from a(.|x): the first response y with u < sum_{y' <= y} a(y'|x), else the last one with
    /// a > 0.
    func drawAnchor(context x: Int, _ u: Double) -> Int {
        let K = problem.responses
        var last = 0
        for y in 0..<K where anchor[x * K + y] > 0 {
            if u < anchorCDF[x * K + y] { return y }
            last = y
        }
        return last
    }
}

/// One D2O step.
struct D2ORule: ToyLMPolicyStepRule {
    let settings: D2OSettings
    let problem: ToyLMProblem
    let tables: D2OTables
    /// The negatives (context, response, weight), weights summing to 1, in (context, response) order.
    let negatives: [(context: Int, response: Int, weight: Double)]

    var name: String { "d2o" }
    var updatesPerStep: Int { 1 }

    init(settings: D2OSettings, problem: ToyLMProblem, point: ToyLMSweepPoint) {
        self.settings = settings
        self.problem = problem
        let tables = D2OTables(problem: problem, settings: settings)
        self.tables = tables
        let M = problem.contexts, K = problem.responses
        switch settings.data {
        case .population:
            var list: [(Int, Int, Double)] = []
            for x in 0..<M {
                for y in 0..<K where tables.isNegative[x * K + y] {
                    list.append(
                        (x, y, exp(problem.referenceLogProb[x * K + y]) / tables.referenceNegativeMass[x] / Double(M)))
                }
            }
            negatives = list
        case .annotator(let count, let seed):
            var counts = [Int](repeating: 0, count: M * K)
            for i in 0..<count {
                let (x, y) = Self.drawNegative(i, seed: seed ?? point.seed, tables: tables)
                counts[x * K + y] += 1
            }
            negatives = counts.indices.filter { counts[$0] > 0 }.map {
                ($0 / K, $0 % K, Double(counts[$0]) / Double(count))
            }
        }
    }

    /// Negative number i of the annotator data: Philox(seed; i, step 0, stream 6), x = floor(u0 M), y_l by inverse
    /// CDF over pi_ref(.|x, N) in response order (the last negative if none).
    static func drawNegative(_ i: Int, seed: UInt64, tables: D2OTables) -> (context: Int, response: Int) {
        let problem = tables.problem
        let M = problem.contexts, K = problem.responses
        var s = PhiloxStream(seed: seed, index: UInt32(i), step: 0, stream: .preferenceLabel)
        let x = min(M - 1, Int(s.nextUniform() * Double(M)))
        let u = s.nextUniform()
        var c = 0.0, last = 0
        for y in 0..<K where tables.isNegative[x * K + y] {
            c += exp(problem.referenceLogProb[x * K + y]) / tables.referenceNegativeMass[x]
            if u < c { return (x, y) }
            last = y
        }
        return (x, last)
    }

    /// a-weights of the anchors of every context at `step`, [M, K]: a(.|x) (expected) or the K draws' counts / K.
    func anchorWeights(step: Int, seed: UInt64) -> [Double] {
        switch settings.anchors {
        case .expected:
            return tables.anchor
        case .sampled:
            let M = problem.contexts, K = problem.responses
            var w = [Double](repeating: 0, count: M * K)
            let share = 1 / Double(settings.numAnchors)
            for x in 0..<M {
                var s = PhiloxStream(seed: seed, index: UInt32(x), step: UInt32(truncatingIfNeeded: step), stream: .action)
                for _ in 0..<settings.numAnchors { w[x * K + tables.drawAnchor(context: x, s.nextUniform())] += share }
            }
            return w
        }
    }

    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer
    ) throws -> [(String, Double)] {
        try policy.evaluate()
        let beta = point.beta, alpha = settings.alpha
        let M = problem.contexts, K = problem.responses
        let logProb = policy.logProb, ref = problem.referenceLogProb
        let a = anchorWeights(step: step, seed: point.seed)
        // A(x) = sum_y a(y|x) u(y) and the anchors' mean log pi, per context.
        var anchorU = [Double](repeating: 0, count: M), anchorLogp = [Double](repeating: 0, count: M)
        for x in 0..<M {
            var s = 0.0, l = 0.0
            for y in 0..<K where a[x * K + y] > 0 {
                s += a[x * K + y] * (logProb[x * K + y] - ref[x * K + y])
                l += a[x * K + y] * logProb[x * K + y]
            }
            anchorU[x] = s
            anchorLogp[x] = l
        }
        var gradient = [Double](repeating: 0, count: M * K)
        var anchorCoefficient = [Double](repeating: 0, count: M)  // sum over x's negatives of w dloss/dz
        var loss = 0.0, chosen = 0.0, rejected = 0.0, accuracy = 0.0, logpChosen = 0.0, logpRejected = 0.0
        for (x, y, w) in negatives {
            let i = x * K + y
            let ul = logProb[i] - ref[i]
            let z = beta * anchorU[x] - alpha * ul
            loss -= w * ToyLMMath.logSigmoid(z)
            // dloss/dz = sigma(z) - 1; dz/du(y') = beta a(y'|x) - alpha [y' = y_l].
            let dz = w * (ToyLMMath.sigmoid(z) - 1)
            anchorCoefficient[x] += dz
            gradient[i] -= alpha * dz
            chosen += w * beta * anchorU[x]
            rejected += w * alpha * ul
            accuracy += w * (z > 0 ? 1 : 0)
            logpChosen += w * anchorLogp[x]
            logpRejected += w * logProb[i]
        }
        for x in 0..<M where anchorCoefficient[x] != 0 {
            for y in 0..<K where a[x * K + y] > 0 { gradient[x * K + y] += beta * anchorCoefficient[x] * a[x * K + y] }
        }
        let figures = tables.figures(logProb: logProb, alpha: alpha, beta: beta)
        try policy.backward(sequenceGradient: gradient)
        let update = optimizer.update(&policy)
        return [
            ("loss", loss), ("rewards/chosen", chosen), ("rewards/rejected", rejected),
            ("rewards/accuracies", accuracy), ("rewards/margins", chosen - rejected), ("logps/chosen", logpChosen),
            ("logps/rejected", logpRejected), ("grad_norm", update.gradNorm), ("learning_rate", update.learningRate),
            ("d2o/negative_mass", figures.negativeMass),
            ("d2o/max_negative_mass_ratio", figures.maxNegativeMassRatio),
            ("d2o/max_tv_not_negative", figures.maxTVNotNegative), ("d2o/kl_target_policy", figures.klTargetPolicy),
        ]
    }
}
