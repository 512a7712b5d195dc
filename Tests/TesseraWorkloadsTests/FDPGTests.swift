// `kind: preference`, `algorithm: fdpg` (WORKLOADS.md §3 P3; naver/disco fdpg_tuner + losses): every check is by
// exact enumeration of the V^L responses, with the target, its partition function and the divergences computed
// here from the problem's tables (reference log-probs, rewards, token decoding), not by FDPG.swift.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("f-DPG on the toy LM")
struct FDPGTests {
    static func yaml(_ params: String, checkpointEvery: Int? = nil) -> String {
        """
        name: fdpg-test
        kind: preference
        algorithm: fdpg
        seed: 31
        \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
        params:
        \(params)
        """
    }

    /// This test's own target: log p(y|x), [M, K] (-inf off the constraint), and Z(x), [M].
    static func target(_ problem: ToyLMProblem, containsToken t: Int?, beta: Double) -> (logP: [Double], z: [Double]) {
        let M = problem.contexts, K = problem.responses, V = problem.vocabulary, L = problem.length
        var logP = [Double](repeating: 0, count: M * K), z = [Double](repeating: 0, count: M)
        for x in 0..<M {
            var unnorm = [Double](repeating: 0, count: K)
            for y in 0..<K {
                var tokens: [Int] = []
                var rest = y
                for _ in 0..<L {
                    tokens.insert(rest % V, at: 0)
                    rest /= V
                }
                let ref = exp(problem.referenceLogProb[x * K + y])
                if let t {
                    unnorm[y] = tokens.contains(t) ? ref : 0
                } else {
                    unnorm[y] = ref * exp(problem.reward[x * K + y] / beta)
                }
            }
            z[x] = unnorm.reduce(0, +)
            for y in 0..<K { logP[x * K + y] = unnorm[y] > 0 ? log(unnorm[y] / z[x]) : -.infinity }
        }
        return (logP, z)
    }

    /// E_x D_f(pi || p) with f of disco's divergence (kl: KL(p || pi), rkl: KL(pi || p), js: 2 JS, tv: TV).
    static func divergence(_ name: String, logPi: [Double], logP: [Double], contexts M: Int) -> Double {
        var total = 0.0
        for i in 0..<logPi.count {
            let a = exp(logPi[i]), b = logP[i] == -.infinity ? 0.0 : exp(logP[i])
            switch name {
            case "kl": if b > 0 { total += b * log(b / a) }
            case "rkl": total += b > 0 ? a * log(a / b) : .infinity
            case "js":
                let m = (a + b) / 2
                if a > 0 { total += a * log(a / m) }
                if b > 0 { total += b * log(b / m) }
            default: total += abs(a - b) / 2
            }
        }
        return total / Double(M)
    }

    /// The final policy's log pi and Z_hat, read from the shard's last checkpoint.
    static func final(_ sink: RecordingSink, _ problem: ToyLMProblem) throws -> (logPi: [Double], zHat: [Double]) {
        let bytes = try #require(sink.checkpoints.last).bytes
        let checkpoint = try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(bytes))
        var policy = try ToyLMPolicy(problem: problem, model: checkpoint.model)
        try policy.evaluate()
        let z = try #require(checkpoint.extraTensors.first { $0.name == "fdpg.z" }).float64Values()
        return (policy.logProb, z)
    }

    /// chi^2(p || pi) per context = sum p^2 / pi - 1.
    static func chiSquare(logP: [Double], logPi: [Double], context x: Int, responses K: Int) -> Double {
        var s = 0.0
        for y in 0..<K where logP[x * K + y] > -.infinity { s += exp(2 * logP[x * K + y] - logPi[x * K + y]) }
        return s - 1
    }

    struct Outcome {
        var divergence: Double, initialDivergence: Double, zError: Double, zBound: Double, seconds: Double
        var logPi: [Double], logP: [Double], z: [Double], problem: ToyLMProblem
    }

    static let problemYAML = "{contexts: 4, vocab: 4, length: 2}"

    /// Trains one shard and measures, here, D_f(pi || p), max_x |Z_hat/Z - 1| and its 5-sigma noise bound.
    static func train(divergence: String, gdcToken: Int?, beta: Double = 1, steps: Int, samples: Int, lr: Double)
        throws -> Outcome
    {
        let started = Date()
        let target = gdcToken.map { "{type: gdc, constraint: {contains_token: \($0)}}" } ?? "{type: rlhf}"
        let spec = try ToyLMFixtures.spec(
            yaml(
                """
                  problem: \(problemYAML)
                  policy: {hidden: [16]}
                  divergence: \(divergence)
                  target: \(target)
                  beta: \(beta)
                  n_samples_per_context: \(samples)
                  steps: \(steps)
                  learning_rate: \(lr)
                  log_every: \(steps)
                """))
        let (_, sink) = try ToyLMFixtures.runShard(spec)
        let problem = ToyLMProblem(try ToyLMSpec(contexts: 4, vocabulary: 4, length: 2, seed: 31))
        let (logP, z) = Self.target(problem, containsToken: gdcToken, beta: beta)
        let (logPi, zHat) = try Self.final(sink, problem)
        let M = problem.contexts, K = problem.responses
        // Z_hat(x) is the mean of T N weights P/q with q the policy of each step; Var(P/q) under q is
        // Z^2 chi^2(p || q), so sd(Z_hat / Z) ~ sqrt(chi^2 / (T N)). chi^2(p || pi) is largest at pi_ref (training
        // moves pi toward p), so the bound uses the larger of its value at pi_ref and at the final pi.
        var zError = 0.0, zBound = 0.0
        for x in 0..<M {
            zError = max(zError, abs(zHat[x] / z[x] - 1))
            let chi = max(
                chiSquare(logP: logP, logPi: problem.referenceLogProb, context: x, responses: K),
                chiSquare(logP: logP, logPi: logPi, context: x, responses: K))
            zBound = max(zBound, 5 * (chi / Double(steps * samples)).squareRoot())
        }
        return Outcome(
            divergence: Self.divergence(divergence, logPi: logPi, logP: logP, contexts: M),
            initialDivergence: Self.divergence(divergence, logPi: problem.referenceLogProb, logP: logP, contexts: M),
            zError: zError,
            zBound: zBound, seconds: Date().timeIntervalSince(started), logPi: logPi, logP: logP, z: z,
            problem: problem)
    }

    @Test("GDC target (contains token 2), kl / js / tv: D_f(pi || p) < .02, the I-projection facts, |Z_hat/Z - 1| < .05")
    func gdcReachesTarget() throws {
        for name in ["kl", "js", "tv"] {
            // 800 steps x 128 samples: the 5-sigma bound on Z_hat below is then .041 (chi^2(p || pi_ref) is 7.0 for the
            // context with the smallest pi_ref(b = 1)).
            let o = try Self.train(divergence: name, gdcToken: 2, steps: 800, samples: 128, lr: 0.05)
            let M = o.problem.contexts, K = o.problem.responses
            var satisfaction = 0.0, klRef = 0.0, logZ = 0.0
            for x in 0..<M {
                for y in 0..<K {
                    let i = x * K + y, a = exp(o.logPi[i])
                    if o.logP[i] > -.infinity { satisfaction += a / Double(M) }
                    klRef += a * (o.logPi[i] - o.problem.referenceLogProb[i]) / Double(M)
                }
                logZ += log(o.z[x]) / Double(M)
            }
            print(
                "f-DPG \(name) GDC: D_f at pi_ref \(o.initialDivergence);"
                    + " f-DPG \(name) GDC (800 steps x 4 x 128 samples, \(o.seconds) s): D_f = \(o.divergence), E_pi b = \(satisfaction), KL(pi || pi_ref) = \(klRef) vs -E log pi_ref(b=1) = \(-logZ), max |Z_hat/Z - 1| = \(o.zError) (5 sigma \(o.zBound))"
            )
            #expect(o.divergence < 0.02, "\(name)")
            #expect(o.initialDivergence > 0.1, "\(name): pi_ref is far from p (\(o.initialDivergence)), so the check can fail")
            #expect(o.zBound < 0.05, "the sizes make the 5-sigma noise of Z_hat smaller than the tolerance")
            #expect(o.zError < 0.05, "\(name)")
            // Data processing on the partition {b = 1, b = 0}: D_f(pi || p) >= D_f of the two-point laws (s, 1 - s)
            // and (1, 0), s = E_pi b. For kl that is -log s, for tv 1 - s, for js 2 JS((s, 1-s), (1, 0)); so
            // D_f < .02 forces 1 - s below the root of the binary divergence = .02.
            func binary(_ s: Double) -> Double {
                switch name {
                case "kl": return -log(s)
                case "tv": return 1 - s
                default:
                    let m1 = (1 + s) / 2
                    return s * log(s / m1) + (1 - s) * log(2) + log(1 / m1)
                }
            }
            var lo = 0.5, hi = 1.0
            for _ in 0..<100 {
                let mid = (lo + hi) / 2
                if binary(mid) > 0.02 { lo = mid } else { hi = mid }
            }
            #expect(1 - satisfaction < 1 - lo, "\(name): E_pi b >= \(lo)")
            // KL(pi || pi_ref) + log Z = (1 - s) log Z + sum_{b=1} pi log(pi/p) + sum_{b=0} pi log(pi/pi_ref):
            // the first term is at most (1 - lo) |log Z| in size, the other two vanish as pi -> p. The test allows
            // twice the first term's bound.
            #expect(abs(klRef + logZ) < 2 * (1 - lo) * abs(logZ), "\(name): KL(pi || pi_ref) -> -log Z_b")
        }
    }

    @Test("RLHF target, rkl: reaches RLOO's Gibbs pi* = pi_ref e^{r/beta}/Z; kl and js reach it too")
    func rlhfReachesGibbs() throws {
        for name in ["rkl", "kl", "js"] {
            let o = try Self.train(divergence: name, gdcToken: nil, beta: 1, steps: 400, samples: 64, lr: 0.05)
            let gibbs = o.problem.gibbsLogProb(beta: 1)
            let kl = Self.divergence("rkl", logPi: o.logPi, logP: gibbs, contexts: o.problem.contexts)
            print("f-DPG \(name) RLHF: D_f at pi_ref \(o.initialDivergence); beta = 1 (\(o.seconds) s): D_f = \(o.divergence), KL(pi || Gibbs) = \(kl), max |Z_hat/Z - 1| = \(o.zError) (5 sigma \(o.zBound))")
            #expect(o.divergence < 0.02)
            #expect(o.initialDivergence > 0.1, "\(name): pi_ref is far from p (\(o.initialDivergence))")
            #expect(o.zError < 0.05 && o.zBound < 0.05)
            if name == "rkl" { #expect(kl < 1e-3) }
        }
    }

    @Test("an f-DPG shard stopped and resumed from its checkpoint is bitwise the uninterrupted run (Z_hat and baseline window restored)")
    func stopAndResumeIsBitwise() throws {
        for (divergence, target) in [("js", "{type: gdc, constraint: {contains_token: 1}}"), ("rkl", "{type: rlhf}")] {
            let spec = try ToyLMFixtures.spec(
                Self.yaml(
                    """
                      problem: {contexts: 3, vocab: 3, length: 2}
                      divergence: \(divergence)
                      target: \(target)
                      n_samples_per_context: 8
                      baseline_window_size: 20
                      steps: 150
                      log_every: 1
                    """, checkpointEvery: 40))
            let (full, resumeFrom) = try ToyLMFixtures.expectBitwiseResume(spec)
            let tensors = try SafeTensorsFile.parse(resumeFrom.bytes).tensors
            #expect(try tensors.first { $0.name == "fdpg.baseline_window" }?.float64Values().count == 20)
            #expect(try tensors.first { $0.name == "fdpg.z_count" }?.int64Values() == [640, 640, 640])
            #expect(full.last("z") != nil && full.last("baseline") != nil && full.last("pseudo_reward") != nil)
        }
    }

    @Test(
        "step 1 as this test computes it: the exact metrics at pi_ref, Z_hat = mean of the step's P/q, and disco's loss, pseudo-rewards, advantages and baseline"
    )
    func firstStepMetrics() throws {
        for (divergence, token) in [("js", 2 as Int?), ("kl", 0), ("tv", 3), ("rkl", nil)] {
            let target = token.map { "{type: gdc, constraint: {contains_token: \($0)}}" } ?? "{type: rlhf}"
            let spec = try ToyLMFixtures.spec(
                Self.yaml(
                    """
                      problem: \(Self.problemYAML)
                      divergence: \(divergence)
                      target: \(target)
                      beta: 0.7
                      n_samples_per_context: 16
                      steps: 1
                    """))
            let (_, sink) = try ToyLMFixtures.runShard(spec)
            let problem = ToyLMProblem(try ToyLMSpec(contexts: 4, vocabulary: 4, length: 2, seed: 31))
            let M = problem.contexts, K = problem.responses
            let (logP, z) = Self.target(problem, containsToken: token, beta: 0.7)
            let ref = problem.referenceLogProb
            func close(_ name: String, _ expected: Double) {
                let got = sink.last(name) ?? .nan
                #expect(abs(got - expected) <= 1e-12 * max(1, abs(expected)), "\(divergence) \(name): \(got) vs \(expected)")
            }
            close("fdpg/divergence", Self.divergence(divergence, logPi: ref, logP: logP, contexts: M))
            close("fdpg/kl_target_policy", Self.divergence("kl", logPi: ref, logP: logP, contexts: M))
            close("fdpg/tv_target_policy", Self.divergence("tv", logPi: ref, logP: logP, contexts: M))
            close("fdpg/js_target_policy", Self.divergence("js", logPi: ref, logP: logP, contexts: M) / 2)
            if token == nil { close("fdpg/kl_policy_target", Self.divergence("rkl", logPi: ref, logP: logP, contexts: M)) }
            // Step 1 samples from pi_ref with rloo's draws: Z_hat(x) = mean of P/pi_ref over its 16 samples.
            let policy = try ToyLMPolicy(problem: problem, hidden: [64], activation: .relu, seed: 31)
            var evaluated = policy
            try evaluated.evaluate()
            let batch = ToyLMRollout(
                policy: evaluated, point: ToyLMSweepPoint(index: 0, beta: 0.7, seed: 31), step: 1, groupSize: 16)
            var ratioMean = 0.0, ratioError = 0.0
            let zHat = try Self.final(sink, problem).zHat
            for x in 0..<M {
                var mean = 0.0
                for j in 0..<16 {
                    let y = batch.responses[x * 16 + j]
                    mean += exp(logP[x * K + y] + log(z[x]) - ref[x * K + y]) / 16
                }
                #expect(abs(zHat[x] - mean) <= 1e-12 * mean, "\(divergence) context \(x)")
                ratioMean += mean / z[x] / Double(M)
                ratioError = max(ratioError, abs(mean / z[x] - 1))
            }
            // The loss of step 1 as disco computes it: context by context, A = -f'(log t) minus the mean of every
            // earlier context's pseudo-rewards (none for context 0), loss = mean_x mean_j (-A) log pi.
            var window: [Double] = [], loss = 0.0, pseudoSum = 0.0, advantageSum = 0.0
            for x in 0..<M {
                let baseline = window.isEmpty ? 0 : window.reduce(0, +) / Double(window.count)
                var pseudo: [Double] = []
                for j in 0..<16 {
                    let y = batch.responses[x * 16 + j]
                    let lt = ref[x * K + y] - (logP[x * K + y] + log(z[x]) - log(zHat[x]))
                    let fPrime: Double
                    switch divergence {
                    case "kl": fPrime = -exp(-lt)
                    case "rkl": fPrime = lt + 1
                    case "js": fPrime = log(2) - log1p(exp(-lt))
                    default: fPrime = lt > 0 ? 0.5 : -0.5
                    }
                    pseudo.append(-fPrime)
                    loss += -(-fPrime - baseline) * ref[x * K + y] / 16 / Double(M)
                    advantageSum += -fPrime - baseline
                }
                pseudoSum += pseudo.reduce(0, +)
                window += pseudo
            }
            close("loss", loss)
            close("pseudo_reward", pseudoSum / Double(16 * M))
            close("advantage", advantageSum / Double(16 * M))
            close("baseline", window.reduce(0, +) / Double(window.count))
            close("fdpg/z_ratio", ratioMean)
            close("fdpg/z_ratio_error", ratioError)
            #expect(sink.last("importance_ratios") == 1, "on-policy: pi / q is exactly 1")
        }
    }

    static func specError(_ params: String) -> String? {
        ToyLMFixtures.validationError(yaml(params), file: "f.yaml")
    }

    @Test("f-DPG parameters are validated")
    func validation() throws {
        let error = Self.specError
        #expect(
            error("  divergence: rkl\n  target: {type: gdc, constraint: {contains_token: 0}}")?.hasPrefix(
                "f.yaml:7: params.divergence: rkl with a gdc target is infinite") == true)
        #expect(error("  divergence: chi2")?.hasPrefix("f.yaml:7: params.divergence must be one of") == true)
        #expect(error("  target: {type: gdc}")?.contains("needs a constraint") == true)
        #expect(error("  target: {type: gdc, constraint: {contains_token: 16}}")?.contains("contains_token must be between 0 and 15") == true)
        #expect(error("  target: {type: gdc, constraint: {min_reward: 1}}")?.contains("unknown key 'min_reward'") == true)
        #expect(error("  target: {type: rlhf, constraint: {contains_token: 1}}")?.contains("applies only to type: gdc") == true)
        #expect(error("  target: {kind: rlhf}")?.contains("unknown key 'kind' in params.target") == true)
        #expect(error("  n_samples_per_context: 0")?.hasPrefix("f.yaml:7: params.n_samples_per_context must be between 1") == true)
        #expect(error("  use_baseline: false\n  baseline_window_size: 8")?.contains("applies only with use_baseline: true") == true)
        #expect(error("  loss: sigmoid")?.hasPrefix("f.yaml:7: unknown key 'loss' in params") == true)
        #expect(error("  divergence: tv\n  target: {type: gdc, constraint: {contains_token: 3}}\n  use_baseline: false") == nil)
        #expect(try ToyLMFixtures.example("pref-fdpg-toy.yaml").algorithm == "fdpg")
    }
}
