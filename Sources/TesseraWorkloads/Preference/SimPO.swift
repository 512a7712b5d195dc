// `kind: preference`, `algorithm: simpo`: SimPO, the reference-free length-normalised preference loss (Meng et al.
// 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", Eq. 6; huggingface/trl
// trl/trainer/cpo_trainer.py, loss_type "simpo" with `simpo_gamma`), on the toy LM (WORKLOADS.md §3 P1).
//
// A pair's loss, with l(y) = log pi_theta(y|x) (every toy-LM response has exactly L tokens, so |y| = L):
//   z = beta / L l(y_w) - beta / L l(y_l) - gamma,   loss = -(1 - eps) log sigma(z) - eps log sigma(-z)
// (eps = label_smoothing, TRL's CPO trainer applies it to simpo too; 0 is the paper's loss). TRL computes the same z
// as beta (avg logp_w - avg logp_l - gamma / beta). No reference model enters the loss; TRL's CPOTrainer adds
// cpo_alpha x NLL(y_w) (CPO-SimPO), which is not here (cpo_alpha = 0, the paper's SimPO).
// The data are `dpo`'s, read by the same `data:` and `batch_size` keys (a `DPORule` holds them): Bradley-Terry pairs
// drawn from mu by index, or the population of all ordered pairs with mu x mu weights and soft labels P(y > y').
//
// What is proven (population data, mu > 0 on every response; docs/training.md §7.6). The loss depends on the policy
// only through the differences l(y) - l(y') within a context, and each term is a convex function of an affine
// function of l, so it is convex in l, flat along l + c 1 and, every ordered pair having weight > 0, strictly convex
// across it: any policy family that can represent every distribution over the K responses has exactly one optimum,
// and a stationary point is it.
//  - gamma = 0, eps = 0: each ordered pair's expected loss -P log sigma(d) - (1 - P) log sigma(-d), d = beta/L (l_y -
//    l_y'), is minimised at d = logit P = r(x,y) - r(x,y'); l = L r / beta + c(x) does this on every pair at once, so
//    pi*(y|x) = e^{L r(x,y) / beta} / Z(x): the Gibbs policy of a uniform reference at temperature beta / L (DPO's
//    optimum with pi_ref uniform and beta/L for beta). It does not depend on mu or pi_ref.
//  - gamma > 0 or eps > 0: no closed form (the per-pair minimisers are not differences of one vector); the optimum
//    is the unique zero of the gradient, found per context by Newton's method (`WRPOOptimum`, with alpha = 0, beta/L
//    as its beta and the per-pair offset beta/L (log pi_ref(y_w) - log pi_ref(y_l)) - gamma, so that its u + log
//    pi_ref is l). `SimPOTests` solves it independently, by coordinate bisection.
// The summary's `optimum_kl` and the metric `simpo/kl_to_optimum` are E_x KL(pi_theta || pi*_simpo) (population data
// with K <= 64; the metric at the policy the step's loss was computed at).
//
// Metrics (TRL's CPO names): loss; rewards/chosen = beta l(y_w) / L (TRL: beta x the average log-prob);
// rewards/rejected; rewards/accuracies (share with rewards/chosen > rewards/rejected); rewards/margins;
// logps/chosen = l(y_w) / L and logps/rejected (average per-token log-probs, as TRL's CPO with simpo); grad_norm;
// learning_rate; simpo/kl_to_optimum. Population mode reports expectations.

import Foundation
import TesseraCompute
import TesseraCore

public struct SimPO: TypedAlgorithm {
    public var kind: JobKind { .preference }
    public var name: String { "simpo" }
    public var summary: String {
        "SimPO (reference-free, length-normalised: -log sigma(beta/|y| log pi(y_w) - beta/|y| log pi(y_l) - gamma)) on "
            + "Bradley-Terry preference pairs of the toy LM's reward"
    }

    public init() {}

    /// beta 2 is the SimPO paper's setting; gamma 0.5 is TRL's `simpo_gamma` default.
    static let defaults = ToyLMTrainingConfig.Defaults(
        beta: 2.0, steps: 1000, learningRate: 0.02, schedule: "cosine", maxGradNorm: nil)
    static let defaultGamma = 0.5

    public struct Config: Sendable {
        public var training: ToyLMTrainingConfig
        var settings: SimPOSettings
    }

    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let gamma = try p.double("gamma", range: 0...1e6, default: Self.defaultGamma)
        let smoothing = try p.double("label_smoothing", range: 0...0.4999, default: 0)
        let (data, batchSize, labelNoise, _) = try DPOSettings.parseData(p)
        let config = try ToyLMTrainingConfig.parse(
            spec, algorithmKeys: ["gamma", "label_smoothing", "data", "batch_size"], defaults: Self.defaults,
            updatesPerStep: 1)
        try DPOSettings.checkPopulationSize(data, problem: config.problem, p)
        return Config(
            training: config,
            settings: SimPOSettings(
                dpo: DPOSettings(data: data, batchSize: batchSize, labelSmoothing: smoothing, labelNoise: labelNoise),
                gamma: gamma))
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<ToyLMSweepPoint>] {
        config.training.slices
    }

    public func run(_ slice: ToyLMSweepPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<OwnOptimumShardSummary>
    {
        let point = try config.training.point(slice)
        let rule = SimPORule(settings: config.settings, problem: ToyLMProblem(config.training.problem), point: point)
        let (base, _, logProb) = try ToyLMTrainer.runKeepingState(
            rule: rule, config: config.training, params: task.spec.params, point: point, resume: task.resume,
            sink: sink)
        let kl = rule.optimumLogProb.map { WRPOOptimum.meanKL(logProb, $0, contexts: rule.problem.contexts) }
        if let kl { sink.log("simpo β=\(point.beta) γ=\(config.settings.gamma): KL(π || π*_simpo) = \(kl)") }
        return TypedShardOutput(summary: OwnOptimumShardSummary(base: base, optimumKL: kl))
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<OwnOptimumShardSummary> {
        OwnOptimumMerge.reducer(algorithm: name, config: config.training)
    }
}

/// SimPO's own parameters.
struct SimPOSettings: Sendable {
    /// The pair data, batch size and label smoothing, read as `dpo` reads them.
    var dpo: DPOSettings
    /// The target reward margin (TRL's `simpo_gamma`).
    var gamma: Double
}

/// One SimPO step; the pair data are `dpo`'s (a `DPORule` built from the same settings holds them).
struct SimPORule: ToyLMPolicyStepRule {
    let settings: SimPOSettings
    let problem: ToyLMProblem
    let data: DPORule
    /// log pi*_simpo, [M, K] (population data with K <= 64), else nil.
    let optimumLogProb: [Double]?

    var name: String { "simpo" }
    var updatesPerStep: Int { 1 }

    init(settings: SimPOSettings, problem: ToyLMProblem, point: ToyLMSweepPoint) {
        self.settings = settings
        self.problem = problem
        data = DPORule(settings: settings.dpo, problem: problem, point: point)
        optimumLogProb =
            data.pairs.isEmpty && problem.responses <= WRPO.maxOptimumResponses
            ? Self.optimum(data: data, beta: point.beta, gamma: settings.gamma, smoothing: settings.dpo.labelSmoothing)
            : nil
    }

    /// The population optimum (see the header): WRPO's Newton solve with alpha = 0, beta / L, and the offsets that
    /// turn its u (= l - log pi_ref) into the reference-free margin.
    static func optimum(data: DPORule, beta: Double, gamma: Double, smoothing: Double) -> [Double] {
        let problem = data.problem
        let M = problem.contexts, K = problem.responses
        let b = beta / Double(problem.length), ref = problem.referenceLogProb
        let events: [[WRPOOptimum.Event]] = (0..<M).map { x in
            var events: [WRPOOptimum.Event] = []
            for y in 0..<K {
                for y2 in 0..<K {
                    let w = data.proposal[x * K + y] * data.proposal[x * K + y2]
                    if w == 0 { continue }
                    let p = data.preference[(x * K + y) * K + y2]
                    let offset = b * (ref[x * K + y] - ref[x * K + y2])
                    events.append(WRPOOptimum.Event(s: y, c: y, r: y2, w: w * p, offset: offset - gamma))
                    events.append(WRPOOptimum.Event(s: y2, c: y2, r: y, w: w * (1 - p), offset: -offset - gamma))
                }
            }
            return events
        }
        // Newton starts at the uniform policy (u = -log pi_ref, every margin -gamma). Started from pi_ref (u = 0, the
        // margins b (log pi_ref(y) - log pi_ref(y')) - gamma), it stopped far from the optimum on one context of
        // SimPOTests' M = 32 problem (KL 25.6 to the closed form); from the uniform policy every context converges.
        return WRPOOptimum.logProb(
            problem: problem, events: events, alpha: 0, beta: b, smoothing: smoothing,
            start: { x in (0..<K).map { -ref[x * K + $0] } })
    }

    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer
    ) throws -> [(String, Double)] {
        try policy.evaluate()
        let s = settings.dpo.labelSmoothing, gamma = settings.gamma
        let M = problem.contexts, K = problem.responses
        let b = point.beta / Double(problem.length), invL = 1 / Double(problem.length)
        let logProb = policy.logProb
        var gradient = [Double](repeating: 0, count: M * K)
        var loss = 0.0, chosen = 0.0, rejected = 0.0, accuracy = 0.0, logpChosen = 0.0, logpRejected = 0.0

        // One labelled pair (c chosen over r, flat [M, K] indices) with weight w.
        func add(_ c: Int, _ r: Int, _ w: Double) {
            let rc = b * logProb[c], rr = b * logProb[r]
            let z = rc - rr - gamma
            loss -= w * ((1 - s) * ToyLMMath.logSigmoid(z) + s * ToyLMMath.logSigmoid(-z))
            let dz = w * b * (ToyLMMath.sigmoid(z) - (1 - s))
            gradient[c] += dz
            gradient[r] -= dz
            chosen += w * rc
            rejected += w * rr
            accuracy += w * (rc > rr ? 1 : 0)
            logpChosen += w * logProb[c] * invL
            logpRejected += w * logProb[r] * invL
        }
        data.forEachPair(step: step, seed: point.seed, add)
        let optimumKL = optimumLogProb.map { WRPOOptimum.meanKL(logProb, $0, contexts: M) }
        try policy.backward(sequenceGradient: gradient)
        let update = optimizer.update(&policy)
        var rows: [(String, Double)] = [
            ("loss", loss), ("rewards/chosen", chosen), ("rewards/rejected", rejected),
            ("rewards/accuracies", accuracy), ("rewards/margins", chosen - rejected), ("logps/chosen", logpChosen),
            ("logps/rejected", logpRejected), ("grad_norm", update.gradNorm), ("learning_rate", update.learningRate),
        ]
        if let optimumKL { rows.append(("simpo/kl_to_optimum", optimumKL)) }
        return rows
    }
}
