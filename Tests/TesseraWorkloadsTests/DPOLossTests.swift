// `algorithm: dpo` with `loss:` other than sigmoid (WORKLOADS.md §3 P1): finite-difference gradients of every loss,
// the loss values at the reference policy, IPO's own optimum, robust DPO on flipped labels, validation and resume.
// Every expected value is computed here, from the loss definitions and the toy problem's tables, not by the trainer.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("DPO loss types on the toy LM")
struct DPOLossTests {
    /// A label_smoothing value each loss accepts (exercising it where the loss reads it).
    static func smoothing(_ loss: DPOLoss) -> Double {
        switch loss {
        case .sigmoid: return 0.1
        case .robust: return 0.2
        case .exoPair: return 1e-3
        default: return 0
        }
    }

    // Tolerance of the central difference (f(t + h) - f(t - h)) / 2h against the exact derivative f'(t):
    //  - truncation: Taylor's theorem gives |fd - f'| <= h^2 / 6 max|f'''| on [t - h, t + h];
    //  - rounding: each computed f is off by at most E = (n + c) eps S, where eps = 2^-52, S bounds the sum of the
    //    absolute weighted per-pair losses (the losses are evaluated in double precision and summed over n weighted
    //    terms: the recursive-summation bound gamma_n ~ n eps, plus c = 64 ulps for the log-softmax, exp, log1p and
    //    the few products inside each term), so the difference quotient is off by at most 2E / 2h = E / h.
    // Third derivatives. L = 1, no hidden layer: a parameter is the logit offset l of one (context, token) (or a bias
    // shared by the contexts); d^k/dl^k log pi(y|x) is bounded by 1, 1/4, 1/(6 sqrt 3) < 0.1 for k = 1, 2, 3, and every
    // loss here is a function of (beta u_w, beta u_l) whose derivatives up to order three are bounded by 2 (sigmoid
    // family; beta <= 1) or, for ipo, (d - c)^2 with d'' = 2 / L^2 and |d - c| <= 1 / (2 beta) + |delta| < 4 here. By
    // the chain rule (Faa di Bruno: at most 5 terms, each a product of loss derivatives <= 4^3 and log-prob
    // derivatives <= 1, over the <= 2 log-probs a pair reads, counted 3 ways) |f'''| <= 5 * 4^3 * 2^3 < 4000 is a
    // safe bound; the MLP (L = 2, SiLU, weights of size ~0.5) multiplies each order by the weights' size, so
    // M3 = 10^4 bounds both. With h = 1e-5 the truncation is <= 1e-10 * 10^4 / 6 = 1.7e-7, and the rounding
    // (n + 64) eps S / h is ~1e-7 for n ~ 500 terms and S ~ 10: h balances the two. The tolerance is their sum,
    // computed per case from its own n and S.
    static func tolerance(h: Double, thirdDerivative m3: Double, terms n: Int, absoluteSum s: Double) -> Double {
        h * h / 6 * m3 + Double(n + 64) * Double.ulpOfOne * s / h
    }

    static func lossAndGradient(_ rule: some ToyLMPolicyStepRule, _ policy: ToyLMPolicy, beta: Double) throws -> (
        Double, [Double]
    ) {
        try DPOTests.lossAndGradient(rule, policy, beta: beta)
    }

    /// A SiLU policy of `problem` away from pi_ref: its seed-3 initialisation plus 0.4 x Philox normals (seed 6).
    static func perturbedPolicy(_ problem: ToyLMProblem, hidden: [Int]) throws -> ToyLMPolicy {
        var policy = try ToyLMPolicy(problem: problem, hidden: hidden, activation: .silu, seed: 3)
        var s = PhiloxStream(seed: 6, index: 0, step: 0, stream: .minibatch)
        let noise = s.normals(policy.model.parameterCount)
        for i in 0..<noise.count { policy.model.parameters[i] += 0.4 * noise[i] }
        return policy
    }

    /// (f(theta + h e_i) - f(theta - h e_i)) / 2h for the policy's parameter i.
    static func centralDifference(
        _ policy: ToyLMPolicy, parameter i: Int, h: Double, _ f: (ToyLMPolicy) throws -> Double
    ) throws -> Double {
        var plus = policy, minus = policy
        plus.model.parameters[i] += h
        minus.model.parameters[i] -= h
        return (try f(plus) - f(minus)) / (2 * h)
    }

    @Test(
        "every loss's gradient matches central differences of its loss (logits at L = 1; MLP at L = 2)",
        arguments: DPOLoss.allCases)
    func gradientMatchesFiniteDifferences(_ loss: DPOLoss) throws {
        let h = 1e-5, beta = 0.7
        for (length, hidden) in [(1, [Int]()), (2, [5])] {
            let problem = ToyLMProblem(try ToyLMSpec(contexts: 3, vocabulary: 3, length: length, seed: 2))
            let policy = try Self.perturbedPolicy(problem, hidden: hidden)
            let eps = Self.smoothing(loss)
            let K = problem.responses, M = problem.contexts
            let settings: [(DPOSettings, terms: Int)] = [
                (
                    DPOSettings(
                        data: .population(proposal: .reference), batchSize: nil, labelSmoothing: eps, loss: loss),
                    2 * M * K * K
                ),
                (
                    DPOSettings(
                        data: .population(proposal: .uniform), batchSize: nil, labelSmoothing: eps, loss: loss,
                        labelNoise: 0.2),
                    2 * M * K * K
                ),
                (
                    DPOSettings(
                        data: .annotator(proposal: .reference, pairs: 500, seed: 1), batchSize: nil,
                        labelSmoothing: eps, loss: loss),
                    M * K * K
                ),
                (
                    DPOSettings(
                        data: .annotator(proposal: .uniform, pairs: 500, seed: 1), batchSize: 64,
                        labelSmoothing: eps, loss: loss),
                    64
                ),
            ]
            for (setting, terms) in settings {
                let rule = DPORule(
                    settings: setting, problem: problem, point: ToyLMSweepPoint(index: 0, beta: beta, seed: 4))
                let (value, gradient) = try Self.lossAndGradient(rule, policy, beta: beta)
                // S: every per-pair loss here is bounded by 4 |loss| + 4 (robust's negative part is bounded by
                // eps log 2 / (1 - 2 eps) per unit weight near the reference; the others are nonnegative).
                let tol = Self.tolerance(
                    h: h, thirdDerivative: 1e4, terms: terms, absoluteSum: 4 * abs(value) + 4)
                for i in 0..<gradient.count {
                    let fd = try Self.centralDifference(policy, parameter: i, h: h) {
                        try Self.lossAndGradient(rule, $0, beta: beta).0
                    }
                    #expect(
                        abs(fd - gradient[i]) <= tol,
                        "\(loss) L=\(length) \(setting.data) parameter \(i): \(fd) vs \(gradient[i]) (tol \(tol))")
                }
            }
        }
    }

    @Test("at the reference policy every loss takes its value at u = 0 and the implicit rewards are zero")
    func valuesAtReference() throws {
        let beta = 0.25
        for loss in DPOLoss.allCases {
            let e = Self.smoothing(loss)
            // The formulas of DPOLoss.swift at a = b = z = 0 (sigma = 1/2), evaluated by hand.
            let expected: Double
            switch loss {
            case .sigmoid, .robust: expected = log(2)  // -(1-e) log(1/2) -/+ e log(1/2) ..., both reduce to log 2
            case .ipo: expected = 1 / (4 * beta * beta)
            case .exoPair: expected = 0.5 * (log(0.5) - log(1 - e)) + 0.5 * (log(0.5) - log(e))
            case .ncaPair, .bcoPair: expected = 2 * log(2)
            case .apoZero, .apoDown: expected = 1
            case .hinge: expected = 1  // relu(1 - 0)
            }
            let spec = try ToyLMFixtures.spec(
                DPOTests.yaml(
                    """
                      problem: {contexts: 4, vocab: 6}
                      loss: \(loss.rawValue)
                      beta: \(beta)
                      \(loss.usesLabelSmoothing ? "label_smoothing: \(e)" : "")
                      data: {source: population}
                      steps: 2
                      log_every: 1
                    """))
            let (_, sink) = try ToyLMFixtures.runShard(spec)
            let first = Dictionary(uniqueKeysWithValues: sink.rows.filter { $0.step == 1 }.map { ($0.name, $0.value) })
            #expect(abs(first["loss"]! - expected) < 1e-12, "\(loss): \(first["loss"]!) vs \(expected)")
            for name in ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"] {
                #expect(first[name] == 0, "\(loss) \(name) at pi_ref")
            }
            #expect(first["grad_norm"]! > 0, "\(loss) moves the policy")
        }
    }

    /// The final policy of a shard, from its last checkpoint: log pi(y|x), [M, K].
    static func finalLogProb(_ sink: RecordingSink, problem: ToyLMProblem) throws -> [Double] {
        let bytes = try #require(sink.checkpoints.last?.bytes)
        let checkpoint = try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(bytes))
        var policy = try ToyLMPolicy(problem: problem, model: checkpoint.model)
        try policy.evaluate()
        return policy.logProb
    }

    /// E_x KL(p || q) for tables of log-probabilities [M, K].
    static func meanKL(_ p: [Double], _ q: [Double], contexts: Int) -> Double {
        var kl = 0.0
        for i in 0..<p.count where p[i] > -.infinity { kl += exp(p[i]) * (p[i] - q[i]) }
        return kl / Double(contexts)
    }

    /// The IPO population objective of one context as a function of u = log pi - log pi_ref (L = 1), straight from
    /// TRL's formula: sum over ordered pairs of mu(y) mu(y') [P (u_y - u_y' - 1/(2 beta))^2 + (1 - P) (u_y' - u_y -
    /// 1/(2 beta))^2].
    static func ipoObjective(_ u: [Double], mu: [Double], p: (Int, Int) -> Double, beta: Double) -> Double {
        let c = 1 / (2 * beta)
        var f = 0.0
        for y in 0..<u.count {
            for y2 in 0..<u.count {
                let a = u[y] - u[y2] - c, b = u[y2] - u[y] - c
                f += mu[y] * mu[y2] * (p(y, y2) * a * a + (1 - p(y, y2)) * b * b)
            }
        }
        return f
    }

    /// The IPO optimum of one context, found numerically without the derivation: the objective is a quadratic in u,
    /// so its Hessian and gradient at 0 are read off exactly by differences of unit steps; with u_0 pinned (the
    /// objective is shift-invariant) the stationarity conditions H u = -g are solved by Gaussian elimination with
    /// partial pivoting.
    static func ipoOptimumNumerically(mu: [Double], p: (Int, Int) -> Double, beta: Double) -> [Double] {
        let K = mu.count
        func f(_ u: [Double]) -> Double { ipoObjective(u, mu: mu, p: p, beta: beta) }
        func unit(_ i: Int, _ s: Double = 1) -> [Double] {
            var u = [Double](repeating: 0, count: K)
            u[i] = s
            return u
        }
        let f0 = f(unit(0, 0))
        let n = K - 1
        var a = [[Double]](repeating: [Double](repeating: 0, count: n + 1), count: n)
        for i in 1..<K {
            for j in 1..<K {
                var u = unit(i)
                u[j] += 1
                a[i - 1][j - 1] =
                    i == j ? (f(unit(i)) + f(unit(i, -1)) - 2 * f0) : (f(u) - f(unit(i)) - f(unit(j)) + f0)
            }
            a[i - 1][n] = -(f(unit(i)) - f(unit(i, -1))) / 2
        }
        for col in 0..<n {
            let pivot = (col..<n).max { abs(a[$0][col]) < abs(a[$1][col]) }!
            a.swapAt(col, pivot)
            for r in 0..<n where r != col {
                let m = a[r][col] / a[col][col]
                for k in col...n { a[r][k] -= m * a[col][k] }
            }
        }
        return [0] + (0..<n).map { a[$0][n] / a[$0][$0] }
    }

    @Test(
        "ipo on the population loss reaches its own optimum pi_ref exp(P(y > mu) / beta) / Z: KL < 1e-4 (M 32, V 16)"
    )
    func ipoReachesItsOptimum() throws {
        // Derivation (L = 1). Per context, with h = u_y - u_y', c = 1/(2 beta), a pair's expected loss is
        // P (h - c)^2 + (1 - P)(h + c)^2 = h^2 - 2 c (2P - 1) h + c^2. Setting d/du_y of the mu x mu-weighted sum to
        // zero: sum_y' mu(y') [u_y - u_y' - (P(y > y') - 1/2) / beta] = 0, i.e. u_y = P(y > mu) / beta + const with
        // P(y > mu) = sum_y' mu(y') P(y > y'). So pi*(y|x) = pi_ref(y|x) exp(P(y > mu | x) / beta) / Z(x) (Azar et
        // al., Psi = identity). The test checks this closed form against the numerical solution of the stationarity
        // conditions (ipoOptimumNumerically), then the trained policy against it.
        let example = SamplingExamplesTests.root.appendingPathComponent("examples/preference-dpo-ipo.yaml").path
        let specs = [
            // The example: beta = 0.5, mu = pi_ref.
            (try JobSpec.parse(String(contentsOfFile: example, encoding: .utf8), file: example), 0.5),
            (
                try ToyLMFixtures.spec(
                    DPOTests.yaml(
                        """
                          problem: {contexts: 32, vocab: 16, length: 1}
                          loss: ipo
                          beta: 1.0
                          data: {source: population, proposal: uniform}
                          steps: 1000
                          learning_rate: 0.02
                          log_every: 1000
                        """)), 1.0
            ),
        ]
        for (spec, beta) in specs {
            let proposal: BradleyTerryAnnotator.Proposal = beta == 0.5 ? .reference : .uniform
            let problem = ToyLMProblem(try DPO().configure(spec).training.problem)
            let M = problem.contexts, K = problem.responses
            let ref = problem.referenceLogProb
            let mu: [Double] =
                proposal == .reference ? ref.map { exp($0) } : [Double](repeating: 1 / Double(K), count: M * K)
            var star = [Double](repeating: 0, count: M * K)
            var worst = 0.0
            for x in 0..<M {
                let r = Array(problem.reward[(x * K)..<((x + 1) * K)])
                func p(_ y: Int, _ y2: Int) -> Double { 1 / (1 + exp(-(r[y] - r[y2]))) }
                let m = Array(mu[(x * K)..<((x + 1) * K)])
                let closed = (0..<K).map { y in (0..<K).reduce(0.0) { $0 + m[$1] * p(y, $1) } / beta }
                let numeric = Self.ipoOptimumNumerically(mu: m, p: p, beta: beta)
                for y in 0..<K { worst = max(worst, abs((closed[y] - closed[0]) - numeric[y])) }
                var logits = (0..<K).map { ref[x * K + $0] + closed[$0] }
                let top = logits.max()!
                let logZ = top + log(logits.reduce(0) { $0 + exp($1 - top) })
                for y in 0..<K { logits[y] -= logZ }
                star.replaceSubrange((x * K)..<((x + 1) * K), with: logits)
            }
            #expect(worst < 1e-9, "closed form vs numerical stationarity: max |du| = \(worst)")
            let (_, sink) = try ToyLMFixtures.runShard(spec)
            let kl = Self.meanKL(try Self.finalLogProb(sink, problem: problem), star, contexts: M)
            print("IPO population beta=\(beta) mu=\(proposal), 1000 steps: KL(pi||pi*_ipo) = \(kl)")
            #expect(abs(kl) < 1e-4)
        }
    }

    @Test(
        "robust with 20% flipped labels recovers the clean Gibbs optimum; sigmoid on the same labels ends > 10x farther"
    )
    func robustRecoversCleanOptimum() throws {
        // With labels flipped w.p. f, the label of (y, y') is y with probability Q = (1 - f) P + f (1 - P). The
        // expected robust loss with eps = f is Q l(z) + (1 - Q) l(-z), l(z) = [-(1-f) log s(z) + f log s(-z)] /
        // (1 - 2f), whose coefficient of -log s(z) is [Q (1 - f) - (1 - Q) f] / (1 - 2f) = (Q - f) / (1 - 2f) = P:
        // the clean sigmoid loss exactly (Natarajan et al. 2013), so its optimum is the Gibbs policy
        // pi_ref e^{r/beta} / Z, which ToyLMExact computes (summary kl_to_optimum) independently of DPO.
        func kl(_ loss: String) throws -> Double {
            let spec = try ToyLMFixtures.spec(
                DPOTests.yaml(
                    """
                      problem: {contexts: 32, vocab: 16, length: 1}
                      loss: \(loss)
                      \(loss == "robust" ? "label_smoothing: 0.2" : "")
                      beta: 0.5
                      data: {source: population, proposal: reference, label_noise: 0.2}
                      steps: 1000
                      learning_rate: 0.02
                      log_every: 1000
                    """))
            let (output, _) = try ToyLMFixtures.runShard(spec)
            return try #require(output?.summary["kl_to_optimum"]?.doubleValue)
        }
        let robust = try kl("robust"), sigmoid = try kl("sigmoid")
        print("20% flipped labels, beta=0.5: KL(pi||pi*) robust = \(robust), sigmoid = \(sigmoid)")
        #expect(abs(robust) < 1e-4)
        #expect(sigmoid > 10 * abs(robust))
        #expect(sigmoid > 10 * 1e-4, "sigmoid ends more than 10x farther than robust's bound")
    }

    @Test("a non-sigmoid DPO shard on minibatches stopped and resumed is bitwise the uninterrupted run")
    func stopAndResumeIsBitwise() throws {
        let spec = try ToyLMFixtures.spec(
            DPOTests.yaml(
                """
                  problem: {contexts: 5, vocab: 7}
                  loss: ipo
                  data: {source: annotator, proposal: uniform, pairs: 3000, label_noise: 0.1}
                  batch_size: 64
                  steps: 90
                  log_every: 1
                """, checkpointEvery: 25))
        try DPOTests.expectBitwiseResume(spec)
    }

    @Test("label noise: the annotator's pairs keep their draws and only the labels' law changes")
    func labelNoiseLaw() throws {
        let problem = ToyLMProblem(try ToyLMSpec(contexts: 4, vocabulary: 3, seed: 2))
        let clean = BradleyTerryAnnotator(problem: problem, proposal: .uniform, seed: 9)
        let noisy = BradleyTerryAnnotator(problem: problem, proposal: .uniform, seed: 9, labelNoise: 0.2)
        let p = clean.preferenceProbability(context: 1, 0, over: 2)
        #expect(abs(noisy.labelProbability(context: 1, 0, over: 2) - (0.8 * p + 0.2 * (1 - p))) < 1e-15)
        #expect(clean.labelProbability(context: 1, 0, over: 2) == p)
        // The same contexts and response sets; the share of pairs whose label differs is E|Q - P| over the pairs.
        var flips = 0
        for i in 0..<20_000 {
            let a = clean.pair(i), b = noisy.pair(i)
            #expect(a.context == b.context && Set([a.chosen, a.rejected]) == Set([b.chosen, b.rejected]))
            if a != b { flips += 1 }
        }
        #expect(flips > 0)
    }

    @Test("loss and label_smoothing are validated")
    func validation() throws {
        let error = DPOTests.specError
        #expect(
            error("  loss: kto")?.hasPrefix(
                "d.yaml:7: params.loss must be one of sigmoid, robust, ipo, exo_pair, nca_pair, bco_pair, apo_zero, apo_down, hinge, not 'kto'"
            ) == true)
        for loss in DPOLoss.allCases { #expect(error("  loss: \(loss.rawValue)") == nil, "\(loss)") }
        #expect(
            error("  loss: ipo\n  label_smoothing: 0.1")?.hasPrefix(
                "d.yaml:8: params.label_smoothing applies to loss sigmoid, robust or exo_pair, not ipo") == true)
        #expect(
            error("  loss: exo_pair\n  label_smoothing: 0")?.hasPrefix(
                "d.yaml:8: params.label_smoothing must be > 0 for loss exo_pair") == true)
        #expect(
            error("  loss: robust\n  label_smoothing: 0.5")?.hasPrefix("d.yaml:8: params.label_smoothing must be in")
                == true)
        #expect(error("  data: {label_noise: 0.5}")?.hasPrefix("d.yaml:7: params.data.label_noise must be in") == true)
    }
}
