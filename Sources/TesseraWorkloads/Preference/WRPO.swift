// `kind: preference`, `algorithm: wrpo`: Weighted-Reward Preference Optimization (WORKLOADS.md §3 P1;
// SLIT-AI/WRPO scripts/wrpo_trainer.py `wrpo_loss`, `LinearDecayScheduler`), on the toy LM.
//
// A WRPO example is a context x, a *source model's* chosen response y_ws, the target model's own chosen response
// y_wt and its rejected response y_l. With u(y) = log pi_theta(y|x) - log pi_ref(y|x),
//   delta = alpha u(y_ws) + (1 - alpha) u(y_wt) - u(y_l),
//   loss  = -(1 - s) log sigma(beta delta) - s log sigma(-beta delta)          (s = label_smoothing, as the repo)
// and alpha_k at training step k (1-based) follows the repo's LinearDecayScheduler(0 -> alpha over the whole run)
// evaluated at HF's global_step = k - 1: alpha_k = alpha min(1, (k - 1) / alpha_warmup_steps) when is_dynamic
// (alpha_warmup_steps defaults to steps, the repo's end_step), else alpha_k = alpha.
//
// The toy LM's examples, stated exactly:
//  - (y_wt, y_l) are the target's own pairs: exactly `dpo`'s data (`data:` and `batch_size` as `dpo` reads them;
//    annotator pairs drawn from mu by index on Philox stream 6 step 0, or the population of all ordered pairs);
//    chosen/rejected by the Bradley-Terry label of the reward.
//  - y_ws(x) is the source model's chosen response for prompt x, one per prompt as in the paper (the best-scored
//    source response): the response with the highest reward r(x, .) among `source.samples` draws from the source
//    policy `source.proposal` (uniform or pi_ref), drawn token by token from one Philox(source seed; index x,
//    step 1, stream 6) stream (step 1, so no draw is shared with a pair); ties go to the earlier draw.
// Because y_ws depends on x only, every (x, y_wt, y_l) of `dpo`'s data is one WRPO example, summed in `dpo`'s
// order with `dpo`'s weight. With alpha = 0 each term is then computed by the same floating-point operations as
// `dpo`'s sigmoid branch (0 * u(y_ws) adds an exact zero to u(y_wt), and the source gradient alpha * dz is an exact
// zero), so on annotator data (full batch or minibatch) a wrpo run with alpha = 0 is bitwise the `dpo` run
// (`WRPOTests`). On population data `dpo` folds a pair's two labels into one soft-label sigmoid, which is only
// valid at alpha = 0; wrpo computes the two label events separately, so alpha = 0 equals `dpo` up to rounding.
//
// Optimum (population data, alpha > 0): the loss is a convex function of the vector u (each delta is linear in u,
// -log sigma is convex) and invariant under u -> u + c (the coefficients alpha + (1 - alpha) - 1 sum to 0). So the
// policy's stationary points are exactly the zeros of dL/du, and, when mu > 0 on every response (both proposals),
// the minimiser is unique up to that shift: pi*_wrpo(y|x) = pi_ref e^{u*(y)} / Z. There is no closed form for
// alpha > 0 (alpha u_s + (1 - alpha) u_y - u_y' = (r_y - r_y')/beta cannot hold on every pair: y = y' forces u = u_s
// everywhere). `WRPOOptimum` finds u* by Newton's method per context; the rule streams
// `wrpo/kl_to_optimum` = E_x KL(pi_theta || pi*_wrpo) for the final alpha (alpha_steps) at the policy the step's
// loss was computed at. At alpha = 0, pi*_wrpo is the Gibbs policy (DPO's optimum).
//
// Metrics (the repo's names): loss, rewards/chosen (= beta (alpha u(y_ws) + (1 - alpha) u(y_wt)), the weighted
// chosen reward), rewards/source_chosen, rewards/target_chosen, rewards/rejected, rewards/accuracies (weighted
// chosen > rejected), rewards/source_accuracies, rewards/pivot_accuracies (target chosen > rejected),
// rewards/margins, logps/chosen (mean of the source and target chosen log-probs, as the repo's mean over both
// columns), logps/source_chosen, logps/target_chosen, logps/rejected, cur_alpha, grad_norm, learning_rate; with
// population data also wrpo/kl_to_optimum (K <= 64). Population mode reports expectations.

import Foundation
import TesseraCompute
import TesseraCore

public struct WRPO: TypedAlgorithm {
    public var kind: JobKind { .preference }
    public var name: String { "wrpo" }
    public var summary: String {
        "WRPO (SLIT-AI/WRPO): DPO whose chosen reward blends a source model's chosen response with weight alpha "
            + "(rising linearly from 0), on the toy LM"
    }

    public init() {}

    static let defaults = ToyLMTrainingConfig.Defaults(
        beta: 0.1, steps: 1000, learningRate: 0.02, schedule: "cosine", maxGradNorm: nil)
    /// The optimum metric solves a K x K Newton system per context per iteration.
    static let maxOptimumResponses = 64

    public struct Config: Sendable {
        public var training: ToyLMTrainingConfig
        var settings: WRPOSettings
    }

    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let smoothing = try p.double("label_smoothing", range: 0...0.4999, default: 0)
        let (data, batchSize, labelNoise, _) = try DPOSettings.parseData(p)
        let alpha = try p.double("alpha", range: 0...1, default: 0.1)
        let dynamic = try p.bool("is_dynamic", default: true)
        var source = WRPOSettings.Source(proposal: .uniform, samples: 4, seed: nil)
        if p.has("source") {
            let s = try p.object("source")
            try s.rejectUnknown(["proposal", "samples", "seed"])
            source.proposal = BradleyTerryAnnotator.Proposal(
                rawValue: try s.string(
                    "proposal", default: "uniform", allowed: BradleyTerryAnnotator.Proposal.allCases.map(\.rawValue)))!
            source.samples = try s.int("samples", default: 4, range: 1...4096)
            source.seed = s.has("seed") ? try s.seed("seed") : nil
        }
        let config = try ToyLMTrainingConfig.parse(
            spec,
            algorithmKeys: ["label_smoothing", "data", "batch_size", "alpha", "is_dynamic", "alpha_warmup_steps", "source"],
            defaults: Self.defaults, updatesPerStep: 1)
        var warmup = config.steps
        if p.has("alpha_warmup_steps") {
            guard dynamic else {
                throw p.error("alpha_warmup_steps", "params.alpha_warmup_steps applies only with is_dynamic: true")
            }
            warmup = try p.int("alpha_warmup_steps", range: 1...config.steps)
        }
        try DPOSettings.checkPopulationSize(data, problem: config.problem, p)
        return Config(
            training: config,
            settings: WRPOSettings(
                dpo: DPOSettings(data: data, batchSize: batchSize, labelSmoothing: smoothing, labelNoise: labelNoise),
                alpha: alpha, isDynamic: dynamic, warmupSteps: warmup, source: source, steps: config.steps))
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<ToyLMSweepPoint>] {
        config.training.slices
    }

    public func run(_ slice: ToyLMSweepPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<ToyLMShardSummary>
    {
        try ToyLMTrainer.shard(
            rule: { WRPORule(settings: config.settings, problem: ToyLMProblem(config.training.problem), point: $0) },
            config: config.training, slice: slice, task: task, sink: sink)
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<ToyLMShardSummary> {
        ToyLMTrainer.reducer(algorithm: name, config: config.training)
    }
}

/// WRPO's own parameters.
struct WRPOSettings: Sendable {
    struct Source: Sendable {
        /// The source policy the candidates are drawn from.
        var proposal: BradleyTerryAnnotator.Proposal
        /// Candidates per prompt; the best by reward is y_ws.
        var samples: Int
        /// Key of the draws (nil: the data seed, else the shard's seed).
        var seed: UInt64?
    }
    /// The pair data and label smoothing, read as `dpo` reads them (loss is always sigmoid).
    var dpo: DPOSettings
    /// alpha_max (the repo's `alpha`).
    var alpha: Double
    var isDynamic: Bool
    /// Steps over which alpha rises from 0 to `alpha` (the repo: the whole run).
    var warmupSteps: Int
    var source: Source
    /// The run's step count (the optimum metric is for alpha at the last step).
    var steps: Int

    /// alpha at training step k (1-based): the repo's scheduler at global_step k - 1.
    func alpha(atStep k: Int) -> Double {
        guard isDynamic else { return alpha }
        let t = k - 1
        if t > warmupSteps { return alpha }
        return alpha * (Double(t) / Double(warmupSteps))
    }

    /// y_ws(x) for every context: the best of `source.samples` draws from the source policy.
    func sourceChosen(problem: ToyLMProblem, seed: UInt64) -> [Int] {
        let M = problem.contexts, K = problem.responses, V = problem.vocabulary
        return (0..<M).map { x in
            var s = PhiloxStream(seed: seed, index: UInt32(x), step: 1, stream: .preferenceLabel)
            var best = -1
            for _ in 0..<source.samples {
                let y: Int
                switch source.proposal {
                case .reference:
                    y = problem.drawResponse(context: x, tokenLogProb: problem.referenceTokenLogProb) {
                        s.nextUniform()
                    }
                case .uniform:
                    y = (0..<problem.length).reduce(0) { node, _ in
                        node * V + min(V - 1, Int(s.nextUniform() * Double(V)))
                    }
                }
                if best < 0 || problem.reward[x * K + y] > problem.reward[x * K + best] { best = y }
            }
            return best
        }
    }
}

/// One WRPO step; the pair data are `dpo`'s (a `DPORule` built from the same settings holds them).
struct WRPORule: ToyLMPolicyStepRule {
    let settings: WRPOSettings
    let problem: ToyLMProblem
    let data: DPORule
    /// y_ws per context.
    let sourceChosen: [Int]
    /// log pi*_wrpo for the final alpha, [M, K] (population data with K <= 64), else nil.
    let optimumLogProb: [Double]?

    var name: String { "wrpo" }
    var updatesPerStep: Int { 1 }

    init(settings: WRPOSettings, problem: ToyLMProblem, point: ToyLMSweepPoint) {
        self.settings = settings
        self.problem = problem
        data = DPORule(settings: settings.dpo, problem: problem, point: point)
        var seed = point.seed
        if case .annotator(_, _, let s?) = settings.dpo.data { seed = s }
        sourceChosen = settings.sourceChosen(problem: problem, seed: settings.source.seed ?? seed)
        if data.pairs.isEmpty, problem.responses <= WRPO.maxOptimumResponses {
            optimumLogProb = WRPOOptimum.logProb(
                problem: problem, events: WRPOOptimum.populationEvents(rule: data, sourceChosen: sourceChosen),
                alpha: settings.alpha(atStep: settings.steps), beta: point.beta,
                smoothing: settings.dpo.labelSmoothing)
        } else {
            optimumLogProb = nil
        }
    }

    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer
    ) throws -> [(String, Double)] {
        try policy.evaluate()
        let beta = point.beta, s = settings.dpo.labelSmoothing
        let alpha = settings.alpha(atStep: step)
        let M = problem.contexts, K = problem.responses
        let logProb = policy.logProb, ref = problem.referenceLogProb
        var gradient = [Double](repeating: 0, count: M * K)
        var loss = 0.0, chosen = 0.0, sourceReward = 0.0, targetReward = 0.0, rejected = 0.0
        var accuracy = 0.0, sourceAccuracy = 0.0, pivotAccuracy = 0.0
        var logpChosen = 0.0, logpSource = 0.0, logpTarget = 0.0, logpRejected = 0.0

        // One example: context x's source chosen, target chosen c and rejected r (flat [M, K] indices), weight w.
        // The arithmetic of the target pair is `dpo`'s sigmoid branch, term for term.
        func add(_ x: Int, _ c: Int, _ r: Int, _ w: Double) {
            let ws = x * K + sourceChosen[x]
            let us = logProb[ws] - ref[ws], uc = logProb[c] - ref[c], ur = logProb[r] - ref[r]
            let weighted = alpha * us + (1 - alpha) * uc
            let z = beta * (weighted - ur)
            loss -= w * ((1 - s) * ToyLMMath.logSigmoid(z) + s * ToyLMMath.logSigmoid(-z))
            let dz = w * beta * (ToyLMMath.sigmoid(z) - (1 - s))
            gradient[ws] += alpha * dz
            gradient[c] += (1 - alpha) * dz
            gradient[r] -= dz
            chosen += w * beta * weighted
            sourceReward += w * beta * us
            targetReward += w * beta * uc
            rejected += w * beta * ur
            accuracy += w * (beta * weighted > beta * ur ? 1 : 0)
            sourceAccuracy += w * (us > ur ? 1 : 0)
            pivotAccuracy += w * (uc > ur ? 1 : 0)
            logpChosen += w * ((logProb[ws] + logProb[c]) / 2)
            logpSource += w * logProb[ws]
            logpTarget += w * logProb[c]
            logpRejected += w * logProb[r]
        }

        data.forEachPair(step: step, seed: point.seed) { c, r, w in add(c / K, c, r, w) }
        let optimumKL = optimumLogProb.map { WRPOOptimum.meanKL(logProb, $0, contexts: M) }
        try policy.backward(sequenceGradient: gradient)
        let update = optimizer.update(&policy)
        var rows: [(String, Double)] = [
            ("loss", loss), ("rewards/chosen", chosen), ("rewards/source_chosen", sourceReward),
            ("rewards/target_chosen", targetReward), ("rewards/rejected", rejected),
            ("rewards/accuracies", accuracy), ("rewards/source_accuracies", sourceAccuracy),
            ("rewards/pivot_accuracies", pivotAccuracy), ("rewards/margins", chosen - rejected),
            ("logps/chosen", logpChosen), ("logps/source_chosen", logpSource), ("logps/target_chosen", logpTarget),
            ("logps/rejected", logpRejected), ("cur_alpha", alpha), ("grad_norm", update.gradNorm),
            ("learning_rate", update.learningRate),
        ]
        if let optimumKL { rows.append(("wrpo/kl_to_optimum", optimumKL)) }
        return rows
    }
}

/// The minimiser of WRPO's loss over the policy table, for a fixed alpha (see the header).
enum WRPOOptimum {
    /// One labelled example of context x: source s, chosen c, rejected r (response indices), weight w; its margin is
    /// z = beta (alpha u_s + (1 - alpha) u_c - u_r) + offset (offset 0 for WRPO; `simpo` puts its reference-free
    /// terms there).
    struct Event {
        var s: Int, c: Int, r: Int, w: Double
        var offset = 0.0
    }

    /// The population's examples per context: for each ordered (y, y'), (y_ws, y, y') with weight mu mu' P and
    /// (y_ws, y', y) with weight mu mu' (1 - P).
    static func populationEvents(rule: DPORule, sourceChosen: [Int]) -> [[Event]] {
        let problem = rule.problem
        let M = problem.contexts, K = problem.responses
        return (0..<M).map { x in
            var events: [Event] = []
            for y in 0..<K {
                for y2 in 0..<K {
                    let w = rule.proposal[x * K + y] * rule.proposal[x * K + y2]
                    if w == 0 { continue }
                    let p = rule.preference[(x * K + y) * K + y2]
                    events.append(Event(s: sourceChosen[x], c: y, r: y2, w: w * p))
                    events.append(Event(s: sourceChosen[x], c: y2, r: y, w: w * (1 - p)))
                }
            }
            return events
        }
    }

    /// log pi*(y|x), [M, K]: per context, Newton's method on the convex loss in u with a backtracking line search.
    /// The loss is flat along u + c 1, so the system is (H + 1 1^T) d = g, whose solution is the Newton step
    /// orthogonal to 1 (H 1 = 0 and g . 1 = 0). Stops when max |dL/du| < 1e-15 (relative to the total weight).
    /// `start(x)` is the initial u of context x (default 0, pi_ref).
    static func logProb(
        problem: ToyLMProblem, events: [[Event]], alpha: Double, beta: Double, smoothing: Double,
        start: ((Int) -> [Double])? = nil
    ) -> [Double] {
        let M = problem.contexts, K = problem.responses
        var out = [Double](repeating: 0, count: M * K)
        for x in 0..<M {
            let ev = events[x]
            let total = ev.reduce(0) { $0 + $1.w }
            func value(_ u: [Double]) -> Double {
                var f = 0.0
                for e in ev where e.w > 0 {
                    let z = beta * (alpha * u[e.s] + (1 - alpha) * u[e.c] - u[e.r]) + e.offset
                    f -= e.w * ((1 - smoothing) * ToyLMMath.logSigmoid(z) + smoothing * ToyLMMath.logSigmoid(-z))
                }
                return f
            }
            var u = start?(x) ?? [Double](repeating: 0, count: K)
            for _ in 0..<200 {
                var g = [Double](repeating: 0, count: K)
                var h = [Double](repeating: 1, count: K * K)  // the 1 1^T term
                for e in ev where e.w > 0 {
                    let z = beta * (alpha * u[e.s] + (1 - alpha) * u[e.c] - u[e.r]) + e.offset
                    let sg = ToyLMMath.sigmoid(z)
                    let d1 = e.w * beta * (sg - (1 - smoothing)), d2 = e.w * beta * beta * sg * (1 - sg)
                    let idx = [e.s, e.c, e.r], coef = [alpha, 1 - alpha, -1.0]
                    for a in 0..<3 {
                        g[idx[a]] += coef[a] * d1
                        for b in 0..<3 { h[idx[a] * K + idx[b]] += coef[a] * coef[b] * d2 }
                    }
                }
                if g.map(abs).max()! < 1e-15 * max(total, 1e-300) { break }
                guard let d = solve(h, g, K) else { break }
                // Backtracking on the loss; a step whose loss is within rounding of f0 is accepted (near the
                // optimum the full Newton step changes f by less than its rounding, and halving would stall).
                let f0 = value(u)
                let slack = 1e-14 * abs(f0)
                var t = 1.0
                var next = u
                for _ in 0..<60 {
                    for i in 0..<K { next[i] = u[i] - t * d[i] }
                    if value(next) <= f0 + slack { break }
                    t /= 2
                }
                u = next
            }
            var m = -Double.infinity
            for y in 0..<K { m = max(m, problem.referenceLogProb[x * K + y] + u[y]) }
            var sum = 0.0
            for y in 0..<K { sum += exp(problem.referenceLogProb[x * K + y] + u[y] - m) }
            let lse = m + log(sum)
            for y in 0..<K { out[x * K + y] = problem.referenceLogProb[x * K + y] + u[y] - lse }
        }
        return out
    }

    /// Solves A x = b (A symmetric positive definite, n x n row-major) by Gaussian elimination with partial
    /// pivoting; nil if singular.
    static func solve(_ a: [Double], _ b: [Double], _ n: Int) -> [Double]? {
        var a = a, b = b
        for col in 0..<n {
            var piv = col
            for r in (col + 1)..<max(col + 1, n) where abs(a[r * n + col]) > abs(a[piv * n + col]) { piv = r }
            guard abs(a[piv * n + col]) > 1e-300 else { return nil }
            if piv != col {
                for k in 0..<n { a.swapAt(col * n + k, piv * n + k) }
                b.swapAt(col, piv)
            }
            for r in (col + 1)..<max(col + 1, n) {
                let f = a[r * n + col] / a[col * n + col]
                if f == 0 { continue }
                for k in col..<n { a[r * n + k] -= f * a[col * n + k] }
                b[r] -= f * b[col]
            }
        }
        var x = [Double](repeating: 0, count: n)
        for r in stride(from: n - 1, through: 0, by: -1) {
            var s = b[r]
            for k in (r + 1)..<max(r + 1, n) { s -= a[r * n + k] * x[k] }
            x[r] = s / a[r * n + r]
        }
        return x
    }

    /// E_x KL(pi || q) for two [M, K] log-prob tables.
    static func meanKL(_ lp: [Double], _ lq: [Double], contexts M: Int) -> Double {
        var kl = 0.0
        for i in 0..<lp.count {
            let p = exp(lp[i])
            if p > 0 { kl += p * (lp[i] - lq[i]) }
        }
        return kl / Double(M)
    }
}
