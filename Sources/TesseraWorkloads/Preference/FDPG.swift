// `kind: preference`, `algorithm: fdpg`: f-DPG toward an explicit target (WORKLOADS.md §3 P3; naver/disco
// disco/tuners/fdpg_tuner.py, tuner.py `_update_moving_z` / `_compute_gradient_batched`, losses/f_divergence.py and
// kl.py, reverse_kl.py, js.py, tv.py, utils/moving_average.py), on the toy LM.
//
// Target p(y|x) = P(x, y) / Z(x), unnormalised:
//  - `gdc`:  P = pi_ref(y|x) b(x, y) with a constraint b in {0, 1}. The constraint here is
//            `contains_token: t`, b(y) = 1 iff some token of y is t (p is pi_ref restricted to those responses,
//            the I-projection of pi_ref onto {E b = 1}, with Z(x) = pi_ref(b = 1 | x)).
//  - `rlhf`: P = pi_ref(y|x) e^{r(x,y)/beta} (beta of the sweep point), so p is the Gibbs policy pi*_beta of R1.
//
// One step (on-policy, q = the policy of the step's `evaluate()`): N = `n_samples_per_context` responses per
// context, drawn as `rloo` draws them (response i = x N + j uses Philox(point seed; index i, step k, stream 5)).
//  1. Z_hat(x): disco's MovingAverage per context, the cumulative mean of every P(x, y)/q(y|x) since step 1,
//     updated one sample at a time in draw order: value = (value n + w) / (n + 1).
//  2. For each context x in order whose Z_hat(x) > 0 (disco skips the others): log t = log pi(y) - (log P - log
//     Z_hat), pseudo_reward = -f'(log t), advantage = pseudo_reward - baseline (none while the window is empty),
//     then the baseline window takes this context's N pseudo-rewards. The baseline is disco's
//     WindowedMovingAverage(baseline_window_size): the plain mean of the last `baseline_window_size` pseudo-rewards,
//     shared by all contexts.
//  3. loss = mean over those contexts of mean_j [ratio_j (-advantage_j) log pi(y_j)], ratio = pi / q detached
//     (exactly 1 on-policy). Its gradient with respect to log pi(y_j|x) is -ratio_j advantage_j / (N C).
// f'(log t) as disco: kl  -e^{-lt}; rkl  lt + 1; js  log 2 - softplus(-lt); tv  sign(lt) / 2. With D_f(pi || p) =
// E_p f(pi/p): kl is KL(p || pi) (forward), rkl is KL(pi || p), js is 2 JS(pi, p), tv is TV(pi, p).
//
// Fixed points. The expected gradient in the logits of context x is sum_y pi(y) (f'(t_y) + c)(e_y - pi) for a
// constant c (the expected descent direction is minus that), which vanishes iff f'(t) is constant on the support
// of pi; for kl, rkl and js f' is strictly monotone, so t is constant and pi = p whatever Z_hat is (Z_hat only
// rescales t). For kl the expected descent direction in the logits is exactly (P / Z_hat)(y) - (Z / Z_hat) pi(y);
// for rkl the expected gradient is that of KL(pi || p), so with the rlhf target
// rkl is RLOO's objective E r - beta KL(pi || pi_ref) up to the factor 1 / beta. tv's f' is a step, so stationary
// means sign(log t) constant over all y (a softmax policy has full support): with Z_hat = Z that is impossible
// (sum pi = sum p), so tv has no exact fixed point and its expected step moves each pi(y) toward p(y) from either
// side, by an amount set by the learning rate; with Z_hat > Z every pi >= P / Z_hat is stationary, a set whose TV
// to p is at most 1 - Z / Z_hat. So what a tv check can prove is D_tv falling to the learning-rate and Z_hat
// floor, not a fixed point (docs/training.md §7.2).
// rkl with a gdc target is refused: KL(pi || p) is infinite (p = 0 where b = 0, and a softmax policy is never 0).
//
// Metrics (disco names, one value per step: the mean over the step's samples, contexts or the value after the
// step): loss, z (mean over contexts of Z_hat), pseudo_reward, advantage, importance_ratios, baseline (the value
// after the step's last context; not with use_baseline: false), grad_norm, learning_rate. Exact, by enumeration at
// the policy the step's samples came from: fdpg/divergence (E_x D_f(pi || p) of the chosen f),
// fdpg/kl_target_policy (E_x KL(p || pi)), fdpg/js_target_policy (E_x JS(p, pi), the standard one),
// fdpg/tv_target_policy (E_x TV), fdpg/kl_policy_target (E_x KL(pi || p), rlhf only: infinite for gdc),
// fdpg/z_ratio (mean over x of Z_hat / Z after the step's update), fdpg/z_ratio_error (max over x of
// |Z_hat / Z - 1|), fdpg/constraint_satisfaction (gdc: E_x E_pi b).
//
// Checkpoint: besides the policy, `fdpg.z` (Z_hat per context, F64 [M]), `fdpg.z_count` (samples in each mean, I64
// [M]) and `fdpg.baseline_window` (the window in arrival order, F64 [n]; absent while empty).

import Foundation
import TesseraCompute
import TesseraCore

public struct FDPG: TypedAlgorithm {
    public var kind: JobKind { .preference }
    public var name: String { "fdpg" }
    public var summary: String {
        "f-DPG (naver/disco): on-policy gradient of an f-divergence D_f(pi || p) to an explicit target p "
            + "(GDC constraint or RLHF), on the toy LM"
    }

    public init() {}

    static let defaults = ToyLMTrainingConfig.Defaults(
        beta: 1.0, steps: 1000, learningRate: 0.02, schedule: "cosine", maxGradNorm: nil)

    public struct Config: Sendable {
        public var training: ToyLMTrainingConfig
        var settings: FDPGSettings
    }

    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let divergence = FDPGSettings.Divergence(
            rawValue: try p.string(
                "divergence", default: "js", allowed: FDPGSettings.Divergence.allCases.map(\.rawValue)))!
        let samples = try p.int("n_samples_per_context", default: 32, range: 1...4096)
        let useBaseline = try p.bool("use_baseline", default: true)
        if !useBaseline, p.has("baseline_window_size") {
            throw p.error("baseline_window_size", "params.baseline_window_size applies only with use_baseline: true")
        }
        let window = try p.int("baseline_window_size", default: 1024, range: 1...1_048_576)
        let config = try ToyLMTrainingConfig.parse(
            spec, algorithmKeys: ["divergence", "target", "n_samples_per_context", "use_baseline", "baseline_window_size"],
            defaults: Self.defaults, updatesPerStep: 1)
        var target = FDPGSettings.Target.rlhf
        if p.has("target") {
            let t = try p.object("target")
            try t.rejectUnknown(["type", "constraint"])
            switch try t.string("type", default: "rlhf", allowed: ["gdc", "rlhf"]) {
            case "gdc":
                guard t.has("constraint") else {
                    throw p.error("target", "params.target.type: gdc needs a constraint, e.g. {contains_token: 0}")
                }
                let c = try t.object("constraint")
                try c.rejectUnknown(["contains_token"])
                guard c.has("contains_token") else {
                    throw t.error("constraint", "params.target.constraint must name contains_token")
                }
                target = .gdc(
                    containsToken: try c.int("contains_token", range: 0...(config.problem.vocabulary - 1)))
            default:
                if t.has("constraint") {
                    throw t.error("constraint", "params.target.constraint applies only to type: gdc")
                }
            }
        }
        if case .gdc = target, divergence == .rkl {
            throw p.error(
                "divergence",
                "params.divergence: rkl with a gdc target is infinite (KL(pi || p) with p = 0 where the constraint "
                    + "fails, and a softmax policy is never 0); use kl, js or tv, or target type: rlhf")
        }
        guard config.problem.contexts * samples <= Int(UInt32.max) else {
            throw p.error("n_samples_per_context", "params.n_samples_per_context x contexts must fit 32 bits")
        }
        return Config(
            training: config,
            settings: FDPGSettings(
                divergence: divergence, target: target, samplesPerContext: samples,
                baselineWindow: useBaseline ? window : nil))
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<ToyLMSweepPoint>] {
        config.training.slices
    }

    public func run(_ slice: ToyLMSweepPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<ToyLMShardSummary>
    {
        try ToyLMTrainer.shard(
            rule: { FDPGRule(settings: config.settings, problem: ToyLMProblem(config.training.problem), beta: $0.beta) },
            config: config.training, slice: slice, task: task, sink: sink)
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<ToyLMShardSummary> {
        ToyLMTrainer.reducer(algorithm: name, config: config.training)
    }
}

/// f-DPG's own parameters.
struct FDPGSettings: Sendable {
    enum Divergence: String, Sendable, CaseIterable {
        case kl, rkl, js, tv

        /// f'(t) as a function of lt = log t (disco's `f_prime(log_t)`).
        func fPrime(_ lt: Double) -> Double {
            switch self {
            case .kl: return -exp(-lt)
            case .rkl: return lt + 1
            case .js: return log(2.0) - FDPGMath.softplus(-lt)
            case .tv: return lt > 0 ? 0.5 : (lt < 0 ? -0.5 : 0)
            }
        }
    }

    enum Target: Sendable, Equatable {
        /// P = pi_ref b, b(y) = 1 iff y contains the token.
        case gdc(containsToken: Int)
        /// P = pi_ref e^{r / beta}.
        case rlhf
    }

    var divergence: Divergence
    var target: Target
    /// N, responses per context per step (disco's n_samples_per_context).
    var samplesPerContext: Int
    /// The baseline window (disco's baseline_window_size), or nil for use_baseline: false.
    var baselineWindow: Int?
}

enum FDPGMath {
    /// log(1 + e^x), stable; softplus(-inf) = 0.
    static func softplus(_ x: Double) -> Double { max(x, 0) + log1p(exp(-abs(x))) }

    /// Per-context exact divergences between pi and p = P / Z (both [M, K] log tables; log p may be -inf).
    struct Divergences {
        var forwardKL = 0.0, reverseKL = 0.0, js = 0.0, tv = 0.0
    }

    static func divergences(logPi: [Double], logP: [Double], context x: Int, responses K: Int) -> Divergences {
        var d = Divergences()
        for y in 0..<K {
            let i = x * K + y
            let a = exp(logPi[i]), b = logP[i] == -.infinity ? 0 : exp(logP[i])
            let m = (a + b) / 2
            if b > 0 { d.forwardKL += b * (logP[i] - logPi[i]) }
            if a > 0 { d.reverseKL += b > 0 ? a * (logPi[i] - logP[i]) : .infinity }
            if a > 0 { d.js += 0.5 * a * log(a / m) }
            if b > 0 { d.js += 0.5 * b * log(b / m) }
            d.tv += abs(a - b) / 2
        }
        return d
    }
}

/// Z_hat per context and the baseline window, kept across steps and saved in checkpoints.
struct FDPGState: ToyLMAuxiliaryState {
    var z: [Double]
    var zCount: [Int64]
    var window: [Double]
    let windowSize: Int?

    /// disco's WindowedMovingAverage value: the mean of the window in arrival order, nil while empty.
    var baseline: Double? { window.isEmpty ? nil : window.reduce(0, +) / Double(window.count) }

    mutating func addToBaseline(_ values: ArraySlice<Double>) {
        guard let n = windowSize else { return }
        window.append(contentsOf: values)
        if window.count > n { window.removeFirst(window.count - n) }
    }

    var tensors: [SafeTensor] {
        get throws {
            var t = [
                try SafeTensor(name: "fdpg.z", float64: z, shape: [z.count]),
                try SafeTensor(name: "fdpg.z_count", int64: zCount, shape: [zCount.count]),
            ]
            if !window.isEmpty { t.append(try SafeTensor(name: "fdpg.baseline_window", float64: window, shape: [window.count])) }
            return t
        }
    }

    mutating func restore(from tensors: [SafeTensor]) throws {
        func named(_ n: String) -> SafeTensor? { tensors.first { $0.name == n } }
        guard let zt = named("fdpg.z"), let zv = try? zt.float64Values(), zv.count == z.count,
            let ct = named("fdpg.z_count"), let cv = try? ct.int64Values(), cv.count == z.count
        else {
            throw ToyLMError(.checkpointMismatch, "the resume checkpoint has no fdpg.z / fdpg.z_count of \(z.count)")
        }
        var w: [Double] = []
        if let wt = named("fdpg.baseline_window") {
            guard let wv = try? wt.float64Values(), let n = windowSize, wv.count <= n else {
                throw ToyLMError(.checkpointMismatch, "the resume checkpoint's fdpg.baseline_window does not fit the window")
            }
            w = wv
        }
        z = zv
        zCount = cv
        window = w
    }
}

/// One f-DPG step.
struct FDPGRule: ToyLMStepRule {
    let settings: FDPGSettings
    let problem: ToyLMProblem
    /// log P(x, y), [M, K] (-inf where the constraint fails).
    let logTarget: [Double]
    /// log Z(x), [M] (exact, for the metrics only).
    let logPartition: [Double]
    /// b(x, y) of a gdc target, [M, K].
    let constraint: [Bool]?

    var name: String { "fdpg" }
    var updatesPerStep: Int { 1 }

    init(settings: FDPGSettings, problem: ToyLMProblem, beta: Double) {
        self.settings = settings
        self.problem = problem
        let M = problem.contexts, K = problem.responses
        var lp = [Double](repeating: 0, count: M * K)
        switch settings.target {
        case .gdc(let token):
            let b = (0..<(M * K)).map { i in (0..<problem.length).contains { problem.token(i % K, at: $0) == token } }
            for i in 0..<(M * K) { lp[i] = b[i] ? problem.referenceLogProb[i] : -.infinity }
            constraint = b
        case .rlhf:
            for i in 0..<(M * K) { lp[i] = problem.referenceLogProb[i] + problem.reward[i] / beta }
            constraint = nil
        }
        logTarget = lp
        logPartition = (0..<M).map { x in
            let row = lp[(x * K)..<(x * K + K)]
            let m = row.max()!
            return m + log(row.reduce(0) { $0 + exp($1 - m) })
        }
    }

    func makeAuxiliary(problem: ToyLMProblem, optimizer: AdamConfiguration) -> FDPGState {
        FDPGState(
            z: [Double](repeating: 0, count: problem.contexts), zCount: [Int64](repeating: 0, count: problem.contexts),
            window: [], windowSize: settings.baselineWindow)
    }

    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer,
        auxiliary state: inout FDPGState
    ) throws -> [(String, Double)] {
        let M = problem.contexts, K = problem.responses, N = settings.samplesPerContext
        try policy.evaluate()
        let batch = ToyLMRollout(policy: policy, point: point, step: step, groupSize: N)

        // 1. Z_hat: one cumulative-mean update per sample, in draw order.
        for x in 0..<M {
            for j in 0..<N {
                let i = x * N + j
                let w = exp(logTarget[x * K + batch.responses[i]] - batch.logProb[i])
                let n = Double(state.zCount[x])
                state.z[x] = state.zCount[x] == 0 ? w : (state.z[x] * n + w) / (n + 1)
                state.zCount[x] += 1
            }
        }

        // 2-3. Pseudo-rewards, advantages against the shared window, the loss and its gradient in log pi.
        let included = (0..<M).filter { state.z[$0] > 0 }
        var gradient = [Double](repeating: 0, count: M * K)
        var loss = 0.0, pseudoSum = 0.0, advantageSum = 0.0, ratioSum = 0.0
        var pseudo = [Double](repeating: 0, count: N)
        let C = Double(included.count)
        for x in included {
            let logZ = log(state.z[x])
            for j in 0..<N {
                let i = x * N + j, y = batch.responses[i]
                let lt = policy.logProb[x * K + y] - (logTarget[x * K + y] - logZ)
                pseudo[j] = -settings.divergence.fPrime(lt)
            }
            let b = state.baseline
            state.addToBaseline(pseudo[...])
            var contextLoss = 0.0
            for j in 0..<N {
                let i = x * N + j, y = batch.responses[i]
                let a = pseudo[j] - (b ?? 0)
                let ratio = exp(policy.logProb[x * K + y] - batch.logProb[i])
                contextLoss += ratio * (-a) * policy.logProb[x * K + y]
                gradient[x * K + y] += ratio * (-a) / (Double(N) * C)
                pseudoSum += pseudo[j]
                advantageSum += a
                ratioSum += ratio
            }
            loss += contextLoss / Double(N) / C
        }

        // The exact metrics of the policy the samples came from.
        var div = FDPGMath.Divergences()
        var satisfaction = 0.0
        var zRatio = 0.0, zError = 0.0
        for x in 0..<M {
            var logP = [Double](repeating: 0, count: K)
            for y in 0..<K { logP[y] = logTarget[x * K + y] - logPartition[x] }
            let d = FDPGMath.divergences(
                logPi: Array(policy.logProb[(x * K)..<(x * K + K)]), logP: logP, context: 0, responses: K)
            div.forwardKL += d.forwardKL / Double(M)
            div.reverseKL += d.reverseKL / Double(M)
            div.js += d.js / Double(M)
            div.tv += d.tv / Double(M)
            if let constraint {
                for y in 0..<K where constraint[x * K + y] { satisfaction += exp(policy.logProb[x * K + y]) / Double(M) }
            }
            let r = state.z[x] / exp(logPartition[x])
            zRatio += r / Double(M)
            zError = max(zError, abs(r - 1))
        }
        let chosen: Double
        switch settings.divergence {
        case .kl: chosen = div.forwardKL
        case .rkl: chosen = div.reverseKL
        case .js: chosen = 2 * div.js
        case .tv: chosen = div.tv
        }

        try policy.backward(sequenceGradient: gradient)
        let update = optimizer.update(&policy)
        let n = max(1, Double(included.count * N))
        var rows: [(String, Double)] = [
            ("loss", loss), ("z", state.z.reduce(0, +) / Double(M)), ("pseudo_reward", pseudoSum / n),
            ("advantage", advantageSum / n), ("importance_ratios", ratioSum / n),
        ]
        if let b = state.baseline { rows.append(("baseline", b)) }
        rows += [
            ("grad_norm", update.gradNorm), ("learning_rate", update.learningRate), ("fdpg/divergence", chosen),
            ("fdpg/kl_target_policy", div.forwardKL), ("fdpg/js_target_policy", div.js),
            ("fdpg/tv_target_policy", div.tv),
        ]
        if constraint == nil { rows.append(("fdpg/kl_policy_target", div.reverseKL)) }
        rows += [("fdpg/z_ratio", zRatio), ("fdpg/z_ratio_error", zError)]
        if constraint != nil { rows.append(("fdpg/constraint_satisfaction", satisfaction)) }
        return rows
    }
}
