// `kind: preference`, `algorithm: kto`: Kahneman-Tversky Optimization on unpaired (context, response,
// desirable/undesirable) examples (Ethayarajh et al. 2024, arXiv 2402.01306, Eq. 7; huggingface/trl
// trl/trainer/kto_trainer.py `kto_loss`, loss_type "kto"), on the toy LM (WORKLOADS.md §3).
//
// With u(y) = log pi_theta(y|x) - log pi_ref(y|x) and z_ref the detached KL estimate (TRL: the batch mean of u over
// mismatched (x, y') pairs, gathered, clamped at 0, detached), an example's loss is
//   desirable:    lambda_D (1 - sigma(beta (u(y) - z_ref)))
//   undesirable:  lambda_U (1 - sigma(beta (z_ref - u(y))))
// (lambda_D, lambda_U = desirable_weight, undesirable_weight), averaged over the examples as TRL's mean of the
// concatenated weighted losses. Here z_ref is the exact E_x KL(pi_theta(.|x) || pi_ref(.|x)) of the current policy
// (clamped at 0, held constant in the gradient): the population value TRL's estimate stands for. (TRL's mismatched
// pairs estimate E_x E_{y ~ data(.|x')} u(y|x), which is not a KL unless the data follow pi_theta.)
//
// Data (`data.source: population`, the only source): x uniform over the M contexts, y ~ mu(.|x) (`data.proposal`,
// reference or uniform), labelled desirable with probability q(x, y) = P(y beats a reference response) =
// sum_y0 pi_ref(y0|x) sigma(r(x,y) - r(x,y0)): the Bradley-Terry annotator judging y against y0 ~ pi_ref(.|x).
// The expected loss is E_x sum_y mu(y|x) [q lambda_D (1 - s_y) + (1 - q) lambda_U s_y], s_y = sigma(beta (u(y) - z)).
//
// What is proven (docs/training.md §7.7; the derivation is in KTOTests). The expected loss is
//   const + E_x sum_y mu(y|x) c(x,y) s_y,   c = (1 - q) lambda_U - q lambda_D,
// linear in each s_y, so with z held fixed every u(y) with c > 0 (q < q* = lambda_U / (lambda_D + lambda_U)) is
// pushed to -infinity and every u(y) with c < 0 upwards: the loss has no minimiser; the policy's mass on
// U(x) = {y : q(x,y) < q*} goes to 0. On D(x) = {q > q*}, for beta < 1 and fixed z, maximising
// sum_{y in D} mu |c| sigma(beta (log(pi_y / pi_ref_y) - z)) over distributions on D is strictly concave (each term
// is concave in pi_y), so it has one maximiser, interior (the terms' slope is infinite at pi_y = 0): the KKT point
//   mu(y|x) |c(x,y)| beta sigma'(beta (u_y - z)) / pi(y|x) = lambda(x)   for y in D(x),
// and u_y = log(pi_y / pi_ref_y) increases with q on D when mu = pi_ref (e^{-u} sigma'(beta (u - z)) decreases in u
// for beta <= 1). The training fixed point adds z = E_x KL(pi || pi_ref) (z is the KL of the policy it is computed
// at). `KTOLimit` solves this: for each z, lambda(x) by bisection and u_y(lambda) by bisection (the left side
// decreases in u_y), then z by bisection on KL(pi*(z)) - z. lambda_D != lambda_U moves the threshold q*, hence the
// support D of the limit; it does not otherwise change its form.
// Reaching it depends on the policy: the infimum is at infinity, and with the default MLP the weights that keep
// pushing U's logits down are shared across contexts, so measured runs stall at KL(pi*_kto || pi) of 0.01 to 1.8;
// the linear policy (`policy: {hidden: []}`) reaches it (KTOTests, docs/training.md §7.7).
// The summary's `optimum_kl` and the metric `kto/kl_limit_to_policy` are E_x KL(pi*_kto || pi_theta) (finite: pi*_kto
// is 0 on U, where pi_theta only tends to 0), at the policy the step's loss was computed at for the metric.
//
// Metrics (TRL's names; expectations): loss; kl (= z_ref); rewards/chosen = E[beta u(y) | desirable];
// rewards/rejected = E[beta u(y) | undesirable]; rewards/margins = their difference; logps/chosen, logps/rejected
// (the same conditional means of log pi(y|x)); grad_norm; learning_rate; kto/kl_limit_to_policy;
// kto/undesirable_mass = E_x pi_theta(U(x)|x).

import Foundation
import TesseraCompute
import TesseraCore

public struct KTO: TypedAlgorithm {
    public var kind: JobKind { .preference }
    public var name: String { "kto" }
    public var summary: String {
        "KTO (unpaired desirable/undesirable examples, TRL's loss with the KL reference point) on the toy LM, "
            + "labels from a Bradley-Terry comparison with a reference response"
    }

    public init() {}

    /// beta 0.1, desirable_weight = undesirable_weight = 1: TRL's KTOConfig defaults.
    static let defaults = ToyLMTrainingConfig.Defaults(
        beta: 0.1, steps: 1000, learningRate: 0.02, schedule: "cosine", maxGradNorm: nil)

    public struct Config: Sendable {
        public var training: ToyLMTrainingConfig
        var settings: KTOSettings
    }

    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let desirable = try p.double("desirable_weight", range: 1e-6...1e6, default: 1)
        let undesirable = try p.double("undesirable_weight", range: 1e-6...1e6, default: 1)
        var proposal = BradleyTerryAnnotator.Proposal.reference
        if p.has("data") {
            let d = try p.object("data")
            try d.rejectUnknown(["source", "proposal"])
            _ = try d.string("source", default: "population", allowed: ["population"])
            proposal = BradleyTerryAnnotator.Proposal(
                rawValue: try d.string(
                    "proposal", default: "reference", allowed: BradleyTerryAnnotator.Proposal.allCases.map(\.rawValue)))!
        }
        let config = try ToyLMTrainingConfig.parse(
            spec, algorithmKeys: ["desirable_weight", "undesirable_weight", "data"], defaults: Self.defaults,
            updatesPerStep: 1)
        for point in config.points where point.beta >= 1 {
            throw p.error(
                p.has("sweep") ? "sweep" : "beta",
                "kto needs beta < 1 (here \(point.beta)): its population limit is characterised, and computed, only for beta < 1 (docs/training.md)"
            )
        }
        return Config(
            training: config,
            settings: KTOSettings(desirableWeight: desirable, undesirableWeight: undesirable, proposal: proposal))
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<ToyLMSweepPoint>] {
        config.training.slices
    }

    public func run(_ slice: ToyLMSweepPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<OwnOptimumShardSummary>
    {
        let point = try config.training.point(slice)
        let rule = KTORule(settings: config.settings, problem: ToyLMProblem(config.training.problem), point: point)
        sink.log(
            "kto β=\(point.beta) λ_D=\(config.settings.desirableWeight) λ_U=\(config.settings.undesirableWeight): threshold q* = \(config.settings.threshold), limit z = \(rule.limit.z), E_x π_ref(U) = \(rule.tables.undesirableMass(rule.problem.referenceLogProb))"
        )
        let (base, _, logProb) = try ToyLMTrainer.runKeepingState(
            rule: rule, config: config.training, params: task.spec.params, point: point, resume: task.resume,
            sink: sink)
        let kl = rule.limit.klToPolicy(logProb)
        sink.log("kto β=\(point.beta): KL(π*_kto || π) = \(kl), E_x π(U) = \(rule.tables.undesirableMass(logProb))")
        return TypedShardOutput(summary: OwnOptimumShardSummary(base: base, optimumKL: kl))
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<OwnOptimumShardSummary> {
        OwnOptimumMerge.reducer(algorithm: name, config: config.training)
    }
}

/// KTO's own parameters.
struct KTOSettings: Sendable {
    /// lambda_D.
    var desirableWeight: Double
    /// lambda_U.
    var undesirableWeight: Double
    /// mu, the law of the examples' responses.
    var proposal: BradleyTerryAnnotator.Proposal

    /// q* = lambda_U / (lambda_D + lambda_U): responses with q below it are driven out.
    var threshold: Double { undesirableWeight / (desirableWeight + undesirableWeight) }
}

/// The fixed tables of a KTO problem: mu, q and c = (1 - q) lambda_U - q lambda_D for every (x, y).
struct KTOTables: Sendable {
    let problem: ToyLMProblem
    /// mu(y|x), [M, K].
    let proposal: [Double]
    /// q(x, y) = P(y beats y0 ~ pi_ref(.|x)), [M, K].
    let desirability: [Double]
    /// c(x, y), [M, K].
    let coefficient: [Double]

    init(problem: ToyLMProblem, settings: KTOSettings) {
        self.problem = problem
        let M = problem.contexts, K = problem.responses
        let annotator = BradleyTerryAnnotator(problem: problem, proposal: settings.proposal, seed: 0)
        proposal = annotator.proposalProbabilities
        var q = [Double](repeating: 0, count: M * K)
        for x in 0..<M {
            for y in 0..<K {
                var s = 0.0
                for y0 in 0..<K {
                    s += exp(problem.referenceLogProb[x * K + y0]) * annotator.preferenceProbability(context: x, y, over: y0)
                }
                q[x * K + y] = s
            }
        }
        desirability = q
        coefficient = q.map { (1 - $0) * settings.undesirableWeight - $0 * settings.desirableWeight }
    }

    /// E_x pi(U(x)|x), U = {c > 0}, for a policy table log pi, [M, K].
    func undesirableMass(_ logProb: [Double]) -> Double {
        var s = 0.0
        for i in coefficient.indices where coefficient[i] > 0 { s += exp(logProb[i]) }
        return s / Double(problem.contexts)
    }
}

/// The population limit of KTO training (see the header), solved once per shard.
struct KTOLimit: Sendable {
    /// log pi*_kto, [M, K] (-infinity on U).
    let logProb: [Double]
    /// The self-consistent reference point z = E_x KL(pi* || pi_ref).
    let z: Double

    let tables: KTOTables

    /// Solves the limit for `beta` < 1. Tolerances: the bisections run to adjacent doubles (or 200 halvings).
    init(tables: KTOTables, beta: Double) {
        let problem = tables.problem
        let M = problem.contexts, K = problem.responses
        let ref = problem.referenceLogProb
        // a(x, y) = mu |c| beta / M on D; the KKT equation a sigma'(beta (u - z)) e^{-u} / pi_ref = lambda.
        func policy(z: Double) -> [Double] {
            var out = [Double](repeating: -.infinity, count: M * K)
            for x in 0..<M {
                let good = (0..<K).filter { tables.coefficient[x * K + $0] < 0 && tables.proposal[x * K + $0] > 0 }
                guard !good.isEmpty else { continue }
                // log of a / pi_ref per good response.
                let logA = good.map { y in
                    log(tables.proposal[x * K + y] * -tables.coefficient[x * K + y] * beta) - ref[x * K + y]
                }
                // u_y(log lambda): the root of f(v) = log a - log lambda - v + log sigma'(beta (v - z)). f is
                // decreasing (f' = -1 + beta (1 - 2 sigma) < 0 for beta < 1) and concave (f'' = -2 beta^2 sigma' < 0),
                // so Newton's method from a point right of the root stays right of it and converges monotonically;
                // v0 = log a - log lambda is right of it (log sigma' <= -log 4).
                func u(_ i: Int, _ logLambda: Double) -> Double {
                    var v = logA[i] - logLambda
                    for _ in 0..<100 {
                        let t = beta * (v - z)
                        let f = logA[i] - logLambda - v + ToyLMMath.logSigmoid(t) + ToyLMMath.logSigmoid(-t)
                        let step = f / (-1 + beta * (1 - 2 * ToyLMMath.sigmoid(t)))
                        v -= step
                        if abs(step) <= 1e-15 * max(1, abs(v)) { break }
                    }
                    return v
                }
                // Total mass sum pi_ref e^{u_y} decreases in lambda; find log lambda with mass 1.
                func mass(_ logLambda: Double) -> Double {
                    good.indices.reduce(0.0) { $0 + exp(ref[x * K + good[$1]] + u($1, logLambda)) }
                }
                var lo = -1.0, hi = 1.0
                while mass(lo) < 1 { lo = lo * 2 - 1 }
                while mass(hi) > 1 { hi = hi * 2 + 1 }
                let logLambda = KTOLimit.bisect(lo, hi) { mass($0) > 1 }
                let us = good.indices.map { u($0, logLambda) }
                let total = us.indices.reduce(0.0) { $0 + exp(ref[x * K + good[$1]] + us[$1]) }
                for (i, y) in good.enumerated() { out[x * K + y] = ref[x * K + y] + us[i] - log(total) }
            }
            return out
        }
        func kl(_ lp: [Double]) -> Double {
            var s = 0.0
            for i in lp.indices where lp[i] > -.infinity { s += exp(lp[i]) * (lp[i] - ref[i]) }
            return s / Double(M)
        }
        // z -> KL(pi*(z) || pi_ref) - z: >= 0 at z = 0, < 0 beyond the largest KL a policy on D can have.
        var hi = 1.0
        while kl(policy(z: hi)) > hi { hi *= 2 }
        let z = KTOLimit.bisect(0, hi) { kl(policy(z: $0)) > $0 }
        self.z = z
        self.tables = tables
        logProb = policy(z: z)
    }

    /// The point where `above` turns false on [lo, hi] (true at lo, false at hi), to adjacent doubles.
    static func bisect(_ lo: Double, _ hi: Double, above: (Double) -> Bool) -> Double {
        var lo = lo, hi = hi
        for _ in 0..<200 {
            let mid = lo + (hi - lo) / 2
            if mid <= lo || mid >= hi { break }
            if above(mid) { lo = mid } else { hi = mid }
        }
        return lo + (hi - lo) / 2
    }

    /// E_x KL(pi*_kto || pi) for a policy table log pi, [M, K].
    func klToPolicy(_ lp: [Double]) -> Double {
        var s = 0.0
        for i in logProb.indices where logProb[i] > -.infinity { s += exp(logProb[i]) * (logProb[i] - lp[i]) }
        return s / Double(tables.problem.contexts)
    }
}

/// One KTO step on the population loss.
struct KTORule: ToyLMPolicyStepRule {
    let settings: KTOSettings
    let problem: ToyLMProblem
    let tables: KTOTables
    let limit: KTOLimit

    var name: String { "kto" }
    var updatesPerStep: Int { 1 }

    init(settings: KTOSettings, problem: ToyLMProblem, point: ToyLMSweepPoint) {
        self.settings = settings
        self.problem = problem
        tables = KTOTables(problem: problem, settings: settings)
        limit = KTOLimit(tables: tables, beta: point.beta)
    }

    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer
    ) throws -> [(String, Double)] {
        try policy.evaluate()
        let beta = point.beta, lD = settings.desirableWeight, lU = settings.undesirableWeight
        let M = problem.contexts, K = problem.responses
        let logProb = policy.logProb, ref = problem.referenceLogProb
        // z_ref: the exact mean KL to the reference, clamped at 0 (TRL's clamp(min=0)), a constant of the gradient.
        var kl = 0.0
        for i in 0..<(M * K) { kl += exp(logProb[i]) * (logProb[i] - ref[i]) }
        let z = max(0, kl / Double(M))
        var gradient = [Double](repeating: 0, count: M * K)
        var loss = 0.0, chosen = 0.0, rejected = 0.0, logpChosen = 0.0, logpRejected = 0.0
        var desirableShare = 0.0
        let invM = 1 / Double(M)
        for i in 0..<(M * K) {
            let w = tables.proposal[i] * invM
            if w == 0 { continue }
            let q = tables.desirability[i]
            let u = logProb[i] - ref[i]
            let t = beta * (u - z)
            let sUp = ToyLMMath.sigmoid(t), sDown = ToyLMMath.sigmoid(-t)
            // desirable: lambda_D (1 - sigma(t)) = lambda_D sigma(-t); undesirable: lambda_U (1 - sigma(-t)).
            loss += w * (q * lD * sDown + (1 - q) * lU * sUp)
            // d/du: beta sigma'(t) (-(q lambda_D) + (1 - q) lambda_U), sigma'(t) = sigma(t) sigma(-t).
            gradient[i] = w * beta * sUp * sDown * ((1 - q) * lU - q * lD)
            desirableShare += w * q
            chosen += w * q * beta * u
            rejected += w * (1 - q) * beta * u
            logpChosen += w * q * logProb[i]
            logpRejected += w * (1 - q) * logProb[i]
        }
        // TRL's mean over the concatenated weighted losses: each example weighs 1 / n.
        let undesirableShare = 1 - desirableShare
        chosen /= desirableShare
        rejected /= undesirableShare
        logpChosen /= desirableShare
        logpRejected /= undesirableShare
        let limitKL = limit.klToPolicy(logProb)
        let badMass = tables.undesirableMass(logProb)
        try policy.backward(sequenceGradient: gradient)
        let update = optimizer.update(&policy)
        return [
            ("loss", loss), ("kl", z), ("rewards/chosen", chosen), ("rewards/rejected", rejected),
            ("rewards/margins", chosen - rejected), ("logps/chosen", logpChosen), ("logps/rejected", logpRejected),
            ("grad_norm", update.gradNorm), ("learning_rate", update.learningRate),
            ("kto/kl_limit_to_policy", limitKL), ("kto/undesirable_mass", badMass),
        ]
    }
}
