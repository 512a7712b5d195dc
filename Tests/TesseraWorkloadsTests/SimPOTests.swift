// `kind: preference`, `algorithm: simpo` (WORKLOADS.md §3 P1; TRL cpo_trainer.py loss_type "simpo"; Meng et al.
// 2024 Eq. 6): finite-difference gradients, the gamma = 0 closed-form optimum e^{L r / beta} / Z (L = 1 and L = 2),
// the gamma > 0 optimum solved here by coordinate bisection, bitwise resume, the merge and validation.
//
// Derivation (population data, x uniform, (y, y') ~ mu x mu, y labelled the winner with P = sigma(r_y - r_y')).
// With l = log pi(.|x), b = beta / L and d = b (l_y - l_y'), an ordered pair contributes
//   mu_y mu_y' [P h(d - gamma) + (1 - P) h(-d - gamma)],   h(t) = -(1 - eps) log sigma(t) - eps log sigma(-t).
// h is convex (h'' = sigma(t) sigma(-t)) and d is linear in l, so the loss is convex in l; it is unchanged by
// l -> l + c 1, and strictly convex across that direction when every mu_y > 0 (the Hessian is a weighted graph
// Laplacian of the complete graph). So the optimum over all distributions is unique, and it is the optimum of any
// policy that can represent every distribution (L = 1 with a hidden layer wider than M; L = 2 here with M P = 20 rows
// and 64 hidden units).
//  - gamma = eps = 0: g(d) = -P log sigma(d) - (1 - P) log sigma(-d) has g'(d) = sigma(d) - P = 0 at d = logit P =
//    r_y - r_y'. l_y = r_y / b + c achieves it on every pair at once, so it minimises every term, hence the sum:
//    pi*(y|x) = e^{L r(x,y) / beta} / Z(x), whatever mu and pi_ref are.
//  - gamma > 0: each pair's own minimiser solves P sigma(gamma - d) = (1 - P) sigma(d + gamma), which is not a
//    difference of one vector in general, so the optimum is the zero of the gradient. The test finds it by
//    Gauss-Seidel: for each response j in turn, the root of dF/dl_j (increasing in l_j, by convexity) by bisection,
//    the other entries fixed; convex coordinate descent with exact line minimisation converges to the minimiser.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("SimPO on the toy LM")
struct SimPOTests {
    static func yaml(_ params: String, checkpointEvery: Int? = nil) -> String {
        """
        name: simpo-test
        kind: preference
        algorithm: simpo
        seed: 21
        \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
        params:
        \(params)
        """
    }

    @Test("the SimPO gradient matches central differences of its loss (every data mode; logits at L = 1, MLP at L = 2)")
    func gradientMatchesFiniteDifferences() throws {
        // Tolerance: DPOLossTests.tolerance's analysis holds as it stands: the loss is -(1 - eps) log sigma(z) -
        // eps log sigma(-z) of z = b (l_w - l_l) - gamma with b = beta / L <= 0.7, the sigmoid family there; the
        // shift gamma does not change the derivative bounds.
        let h = 1e-5, beta = 0.7
        for (length, hidden) in [(1, [Int]()), (2, [5])] {
            let problem = ToyLMProblem(try ToyLMSpec(contexts: 3, vocabulary: 3, length: length, seed: 2))
            let policy = try DPOLossTests.perturbedPolicy(problem, hidden: hidden)
            let K = problem.responses, M = problem.contexts
            let cases: [(SimPOSettings, terms: Int)] = [
                (SimPOSettings(dpo: DPOSettings(data: .population(proposal: .reference), batchSize: nil, labelSmoothing: 0), gamma: 0.5), 2 * M * K * K),
                (SimPOSettings(dpo: DPOSettings(data: .population(proposal: .uniform), batchSize: nil, labelSmoothing: 0.1, labelNoise: 0.2), gamma: 1), 2 * M * K * K),
                (SimPOSettings(dpo: DPOSettings(data: .annotator(proposal: .reference, pairs: 500, seed: 1), batchSize: nil, labelSmoothing: 0), gamma: 0), M * K * K),
                (SimPOSettings(dpo: DPOSettings(data: .annotator(proposal: .uniform, pairs: 500, seed: 1), batchSize: 64, labelSmoothing: 0.2), gamma: 0.3), 64),
            ]
            for (setting, terms) in cases {
                let rule = SimPORule(
                    settings: setting, problem: problem, point: ToyLMSweepPoint(index: 0, beta: beta, seed: 4))
                let (value, gradient) = try DPOTests.lossAndGradient(rule, policy, beta: beta)
                let tol = DPOLossTests.tolerance(h: h, thirdDerivative: 1e4, terms: terms, absoluteSum: 4 * abs(value) + 4)
                for i in 0..<gradient.count {
                    let fd = try DPOLossTests.centralDifference(policy, parameter: i, h: h) {
                        try DPOTests.lossAndGradient(rule, $0, beta: beta).0
                    }
                    #expect(
                        abs(fd - gradient[i]) <= tol,
                        "L=\(length) \(setting.dpo.data) gamma \(setting.gamma) parameter \(i): \(fd) vs \(gradient[i]) (tol \(tol))")
                }
            }
        }
    }

    static func sigmoid(_ t: Double) -> Double { 1 / (1 + exp(-t)) }

    /// log pi(y|x) = L r / beta - log Z, [M, K]: the gamma = 0 optimum (header).
    static func closedFormOptimum(_ problem: ToyLMProblem, beta: Double) -> [Double] {
        let M = problem.contexts, K = problem.responses
        var out = [Double](repeating: 0, count: M * K)
        for x in 0..<M {
            let a = (0..<K).map { Double(problem.length) * problem.reward[x * K + $0] / beta }
            let top = a.max()!
            let lse = top + log(a.reduce(0) { $0 + exp($1 - top) })
            for y in 0..<K { out[x * K + y] = a[y] - lse }
        }
        return out
    }

    /// The gamma >= 0 population optimum by Gauss-Seidel coordinate bisection (header), [M, K]; mu and P from the
    /// problem's tables: mu = pi_ref or uniform, P = sigma(r_y - r_y').
    static func optimumByCoordinateBisection(
        _ problem: ToyLMProblem, proposal: BradleyTerryAnnotator.Proposal, beta: Double, gamma: Double,
        smoothing eps: Double
    ) -> [Double] {
        let M = problem.contexts, K = problem.responses
        let b = beta / Double(problem.length)
        func sig(_ t: Double) -> Double { 1 / (1 + exp(-t)) }
        // h'(t) = -(1 - eps) sigma(-t) + eps sigma(t).
        func dh(_ t: Double) -> Double { -(1 - eps) * sig(-t) + eps * sig(t) }
        var out = [Double](repeating: 0, count: M * K)
        for x in 0..<M {
            let mu = (0..<K).map {
                proposal == .reference ? exp(problem.referenceLogProb[x * K + $0]) : 1 / Double(K)
            }
            let r = (0..<K).map { problem.reward[x * K + $0] }
            // dF/dl_j: the ordered pairs (j, y') and (y', j), both label outcomes each.
            func grad(_ l: [Double], _ j: Int) -> Double {
                var g = 0.0
                for y in 0..<K where y != j {
                    let w = mu[j] * mu[y], p = sig(r[j] - r[y]), d = b * (l[j] - l[y])
                    // As the pair (j, y): P h(d - gamma) + (1 - P) h(-d - gamma); as (y, j): the same expression
                    // with P -> 1 - P and d -> -d, which is identical, so the two orders give twice one term.
                    g += 2 * w * b * (p * dh(d - gamma) - (1 - p) * dh(-d - gamma))
                }
                return g
            }
            var l = [Double](repeating: 0, count: K)
            for _ in 0..<5000 {
                var worst = 0.0
                for j in 1..<K {
                    worst = max(worst, abs(grad(l, j)))
                    var lo = l[j] - 1, hi = l[j] + 1
                    var t = l
                    while true {
                        t[j] = lo
                        if grad(t, j) < 0 { break }
                        lo -= 2 * (hi - lo)
                    }
                    while true {
                        t[j] = hi
                        if grad(t, j) > 0 { break }
                        hi += 2 * (hi - lo)
                    }
                    for _ in 0..<100 {
                        let mid = (lo + hi) / 2
                        t[j] = mid
                        if grad(t, j) < 0 { lo = mid } else { hi = mid }
                        if hi - lo < 1e-15 * max(1, abs(mid)) { break }
                    }
                    l[j] = (lo + hi) / 2
                }
                if worst < 1e-14 { break }
            }
            let top = l.max()!
            let lse = top + log(l.reduce(0) { $0 + exp($1 - top) })
            for y in 0..<K { out[x * K + y] = l[y] - lse }
        }
        return out
    }

    @Test("gamma = 0: the population optimum is e^{L r / beta} / Z, reached to KL < 1e-4 (L = 1 and L = 2)")
    func gammaZeroReachesClosedForm() throws {
        for (problemYAML, beta) in [("{contexts: 32, vocab: 16, length: 1}", 1.0), ("{contexts: 4, vocab: 4, length: 2}", 2.0)] {
            let spec = try ToyLMFixtures.spec(
                Self.yaml(
                    """
                      problem: \(problemYAML)
                      beta: \(beta)
                      gamma: 0
                      data: {source: population, proposal: reference}
                      steps: 1000
                      learning_rate: 0.02
                      log_every: 1000
                    """))
            let problem = ToyLMProblem(try SimPO().configure(spec).training.problem)
            let star = Self.closedFormOptimum(problem, beta: beta)
            let (output, sink) = try ToyLMFixtures.runShard(spec)
            let kl = DPOLossTests.meanKL(try DPOLossTests.finalLogProb(sink, problem: problem), star, contexts: problem.contexts)
            let reported = try #require(output?.summary["optimum_kl"]?.doubleValue)
            // The code's Newton solve agrees with the closed form to rounding: KL between them of order 1e-20; the
            // reported figure is the KL to the code's optimum, so it equals ours up to that (1e-12 covers it).
            let codeStar = try #require(
                SimPORule(
                    settings: try SimPO().configure(spec).settings, problem: problem,
                    point: ToyLMSweepPoint(index: 0, beta: beta, seed: 21)
                ).optimumLogProb)
            let starGap = DPOLossTests.meanKL(star, codeStar, contexts: problem.contexts)
            print("SimPO gamma = 0, L = \(problem.length), beta = \(beta), 1000 steps: KL(pi || e^{Lr/beta}/Z) = \(kl), reported \(reported), KL(closed || Newton) = \(starGap)")
            #expect(abs(kl) < 1e-4)
            #expect(abs(starGap) < 1e-12)
            #expect(abs(reported - kl) < 1e-12)
            // Length normalisation matters at L = 2: the unnormalised loss's optimum e^{r / beta} is far from it.
            if problem.length == 2 {
                let unnormalised = Self.closedFormOptimum(problem, beta: beta * 2)
                #expect(DPOLossTests.meanKL(unnormalised, star, contexts: problem.contexts) > 100 * 1e-4)
            }
        }
    }

    @Test("gamma > 0: the optimum solved here by coordinate bisection is the code's, and training reaches it (KL < 1e-4)")
    func gammaPositiveReachesSolvedOptimum() throws {
        for (proposal, gamma, smoothing) in [("reference", 0.5, 0.0), ("uniform", 2.0, 0.1)] {
            let spec = try ToyLMFixtures.spec(
                Self.yaml(
                    """
                      problem: {contexts: 8, vocab: 8, length: 1}
                      beta: 2.0
                      gamma: \(gamma)
                      label_smoothing: \(smoothing)
                      data: {source: population, proposal: \(proposal)}
                      steps: 1000
                      learning_rate: 0.02
                      log_every: 1000
                    """))
            let config = try SimPO().configure(spec)
            let problem = ToyLMProblem(config.training.problem)
            let star = Self.optimumByCoordinateBisection(
                problem, proposal: proposal == "reference" ? .reference : .uniform, beta: 2, gamma: gamma,
                smoothing: smoothing)
            let codeStar = try #require(
                SimPORule(settings: config.settings, problem: problem, point: ToyLMSweepPoint(index: 0, beta: 2, seed: 21))
                    .optimumLogProb)
            // Both solves stop at gradients of at most 1e-14 (bisection: max |dF/dl_j| < 1e-14; Newton: < 1e-15 of
            // the total weight 1, or its rounding floor ~1e-16). Off the direction 1 the Hessian is a Laplacian of the
            // complete graph whose edge (y, y') weighs 2 mu_y mu_y' b^2 [P h''(d - gamma) + (1 - P) h''(-d - gamma)] >=
            // 2 mu_y mu_y' b^2 sigma'(|d| + gamma) (h'' = sigma', decreasing in |t|), so its second eigenvalue is at
            // least K w_min, and each solution lies within 1e-14 / (K w_min) of the optimum in l (strong convexity
            // near it; w_min evaluated here at the solution). The two differ by at most twice that.
            let K = problem.responses, b = 2.0 / Double(problem.length)
            var wMin = Double.infinity
            for x in 0..<problem.contexts {
                for y in 0..<K {
                    for y2 in 0..<K where y2 != y {
                        let mu = proposal == "reference" ? exp(problem.referenceLogProb[x * K + y] + problem.referenceLogProb[x * K + y2]) : 1 / Double(K * K)
                        let t = abs(b * (star[x * K + y] - star[x * K + y2])) + gamma
                        wMin = min(wMin, 2 * mu * b * b * Self.sigmoid(t) * Self.sigmoid(-t))
                    }
                }
            }
            let tolerance = 2 * 1e-14 / (Double(K) * wMin)
            let worst = zip(star, codeStar).map { abs($0 - $1) }.max()!
            let gibbs = Self.closedFormOptimum(problem, beta: 2)
            let offGibbs = DPOLossTests.meanKL(star, gibbs, contexts: problem.contexts)
            let (output, sink) = try ToyLMFixtures.runShard(spec)
            let kl = DPOLossTests.meanKL(try DPOLossTests.finalLogProb(sink, problem: problem), star, contexts: problem.contexts)
            let reported = try #require(output?.summary["optimum_kl"]?.doubleValue)
            print("SimPO gamma = \(gamma), eps = \(smoothing), mu = \(proposal): max |l_bisection - l_newton| = \(worst) (tolerance \(tolerance)), KL(pi*_gamma || e^{r/beta}/Z) = \(offGibbs), trained KL(pi || pi*) = \(kl), reported \(reported)")
            #expect(worst < tolerance, "tolerance \(tolerance)")
            #expect(offGibbs > 1e-3, "gamma > 0 moves the optimum away from gamma = 0's")
            #expect(abs(kl) < 1e-4)
            #expect(abs(reported - kl) < 1e-9)
            #expect(sink.last("simpo/kl_to_optimum") != nil)
        }
    }

    @Test("a SimPO shard on minibatches stopped and resumed from its checkpoint is bitwise the uninterrupted run")
    func stopAndResumeIsBitwise() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 5, vocab: 7, length: 2}
                  data: {source: annotator, proposal: uniform, pairs: 3000}
                  batch_size: 64
                  steps: 150
                  log_every: 1
                """, checkpointEvery: 40))
        _ = try ToyLMFixtures.expectBitwiseResume(spec)
    }

    @Test("the example merges its two points with optimum_kl per point, per beta and at most")
    func exampleMerges() throws {
        #expect(try ToyLMFixtures.example("pref-simpo-toy.yaml") == ("simpo", 2))
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 3, vocab: 4}
                  sweep: {beta: [1.0, 2.0]}
                  data: {source: population}
                  steps: 20
                """))
        let (result, outputs) = try ToyLMFixtures.runJob(spec)
        let points = try #require(result.objectValue?["points"]?.arrayValue)
        let values = outputs.map { $0.summary["optimum_kl"]?.doubleValue ?? .nan }
        #expect(points.count == 2 && values.allSatisfy { $0 > 0 })
        #expect(result.objectValue?["max_optimum_kl"]?.doubleValue == values.max())
        #expect(result.objectValue?["algorithm"]?.stringValue == "simpo")
        let byBeta = try #require(result.objectValue?["by_beta"]?.arrayValue)
        #expect(byBeta.compactMap { $0.objectValue?["optimum_kl"]?.objectValue?["mean"]?.doubleValue } == values)
    }

    @Test("SimPO parameters are validated")
    func validation() throws {
        func error(_ params: String) -> String? {
            ToyLMFixtures.validationError(Self.yaml(params), file: "s.yaml")
        }
        #expect(error("  gamma: -1")?.hasPrefix("s.yaml:7: params.gamma must be in") == true)
        #expect(error("  loss: ipo")?.contains("unknown key 'loss'") == true)
        #expect(error("  label_smoothing: 0.5")?.hasPrefix("s.yaml:7: params.label_smoothing must be in") == true)
        #expect(
            error("  data: {source: population}\n  batch_size: 8")?.hasPrefix(
                "s.yaml:8: params.batch_size applies to data.source: annotator only") == true)
        #expect(error("  gamma: 1\n  label_smoothing: 0.1\n  data: {source: population}") == nil)
    }
}
