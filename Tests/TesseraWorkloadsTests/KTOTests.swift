// `kind: preference`, `algorithm: kto` (TRL kto_trainer.py loss_type "kto"; Ethayarajh et al. 2024 Eq. 7): the
// gradient with z_ref held fixed against central differences of the loss written here, the population limit solved
// here and reached by training (lambda_D = lambda_U and lambda_D != lambda_U), the monotonicity of log pi / pi_ref
// in P(desirable), bitwise resume and validation.
//
// Derivation (population data). x uniform over M contexts, y ~ mu(.|x), desirable with probability q(x,y) =
// sum_y0 pi_ref(y0|x) sigma(r(x,y) - r(x,y0)). With u = log pi - log pi_ref, t = beta (u - z) and z = z_ref held
// fixed (TRL detaches it), the expected loss is
//   F_z = E_x sum_y mu [q lambda_D (1 - sigma(t)) + (1 - q) lambda_U (1 - sigma(-t))]
//       = E_x sum_y mu [q lambda_D + c sigma(t)],        c = (1 - q) lambda_U - q lambda_D,
// because 1 - sigma(-t) = sigma(t). dF/du_y = mu c beta sigma'(t) / M has the sign of c whatever u is:
//  1. No minimiser. On U = {c > 0} (q < q* = lambda_U / (lambda_D + lambda_U)) the loss falls as u_y -> -infinity;
//     on D = {c < 0} it falls as u_y rises. The infimum puts pi(U|x) = 0 (those terms -> 0, their least value) and
//     then maximises G(pi) = sum_{y in D} mu |c| sigma(beta (log(pi_y / pi_ref_y) - z)) over distributions on D.
//  2. For fixed z and beta < 1, G is strictly concave: with s = pi_y e^{-(log pi_ref_y + z)}, sigma(beta log s) =
//     s^beta / (1 + s^beta), whose second derivative in s is s^(beta-2) (1 + s^beta)^-3 [(beta - 1)(1 + s^beta) -
//     2 beta s^beta] < 0. So the maximiser is unique, and interior (the slope ~ s^(beta-1) is infinite at 0): the
//     KKT point mu |c| beta sigma'(beta (u_y - z)) / pi_y = lambda(x) for every y in D, i.e. the zero of the
//     gradient in the logits restricted to D. (The logits' gradient of F_z is g_y - pi_y sum g, g = dF/dlog pi.)
//  3. The training fixed point also needs z = E_x KL(pi || pi_ref) at that pi (z_ref is recomputed from the policy
//     each step): the test finds z by bisection on KL(pi*(z)) - z, having checked it changes sign once on a grid.
//  4. Monotonicity, mu = pi_ref: the KKT equation reads |c_y| beta sigma'(beta (u_y - z)) e^{-u_y} = lambda, and
//     d/du log[sigma'(beta (u - z)) e^{-u}] = beta (1 - 2 sigma(beta (u - z))) - 1 < 0 for beta <= 1, so u_y is an
//     increasing function of |c_y| = q_y (lambda_D + lambda_U) - lambda_U, hence of q_y, on D.
//  5. lambda_D != lambda_U: only q* moves (and |c|'s scale and offset); the support D = {q > q*} grows as lambda_D
//     grows relative to lambda_U.
// Reaching the limit is a property of the optimiser as much as of the loss: the infimum is at infinity (U's logits
// -> -infinity). With the linear policy on one-hot contexts (`policy: {hidden: []}`: one logit offset per (x, v) plus
// a per-token bias) Adam gets there; with the default MLP (64 ReLU units) the weights that keep pushing U's logits down
// are shared by other contexts, and the runs measured here stall at KL(pi* || pi) between 0.01 and 1.8 with some
// contexts' D-responses driven out too (docs/training.md §7.7). The tests therefore train the linear policy.
// The test solves 2-3 in the probabilities (bisection on log pi_y for each lambda, bisection on log lambda for the
// mass, bisection on z), not in u as KTOLimit does.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("KTO on the toy LM")
struct KTOTests {
    static func yaml(_ params: String, checkpointEvery: Int? = nil) -> String {
        """
        name: kto-test
        kind: preference
        algorithm: kto
        seed: 21
        \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
        params:
        \(params)
        """
    }

    static func sig(_ t: Double) -> Double { 1 / (1 + exp(-t)) }

    /// q(x, y) from the problem's tables, [M, K].
    static func desirability(_ problem: ToyLMProblem) -> [Double] {
        let M = problem.contexts, K = problem.responses
        var q = [Double](repeating: 0, count: M * K)
        for x in 0..<M {
            for y in 0..<K {
                for y0 in 0..<K {
                    q[x * K + y] +=
                        exp(problem.referenceLogProb[x * K + y0]) * sig(problem.reward[x * K + y] - problem.reward[x * K + y0])
                }
            }
        }
        return q
    }

    /// F_z of the header, from a policy table log pi.
    static func loss(
        _ problem: ToyLMProblem, logProb: [Double], mu: [Double], q: [Double], beta: Double, z: Double, lD: Double,
        lU: Double
    ) -> Double {
        var f = 0.0
        for i in logProb.indices {
            let t = beta * (logProb[i] - problem.referenceLogProb[i] - z)
            f += mu[i] * (q[i] * lD * (1 - sig(t)) + (1 - q[i]) * lU * (1 - sig(-t)))
        }
        return f / Double(problem.contexts)
    }

    static func meanKLToReference(_ problem: ToyLMProblem, _ lp: [Double]) -> Double {
        var s = 0.0
        for i in lp.indices where lp[i] > -.infinity { s += exp(lp[i]) * (lp[i] - problem.referenceLogProb[i]) }
        return s / Double(problem.contexts)
    }

    @Test("with z_ref held fixed the KTO gradient matches central differences of the loss written here")
    func gradientMatchesFiniteDifferences() throws {
        let h = 1e-5, beta = 0.7
        for (length, hidden, proposal, lD, lU) in [
            (1, [Int](), BradleyTerryAnnotator.Proposal.reference, 1.0, 1.0), (2, [5], .uniform, 2.0, 0.5),
        ] {
            let problem = ToyLMProblem(try ToyLMSpec(contexts: 3, vocabulary: 3, length: length, seed: 2))
            var policy = try DPOLossTests.perturbedPolicy(problem, hidden: hidden)
            try policy.evaluate()
            let settings = KTOSettings(desirableWeight: lD, undesirableWeight: lU, proposal: proposal)
            let rule = KTORule(settings: settings, problem: problem, point: ToyLMSweepPoint(index: 0, beta: beta, seed: 4))
            let K = problem.responses
            let mu = proposal == .reference ? problem.referenceLogProb.map { exp($0) } : [Double](repeating: 1 / Double(K), count: problem.contexts * K)
            let q = Self.desirability(problem)
            let z = Self.meanKLToReference(problem, policy.logProb)
            func f(_ p: ToyLMPolicy) throws -> Double {
                var p = p
                try p.evaluate()
                return Self.loss(problem, logProb: p.logProb, mu: mu, q: q, beta: beta, z: z, lD: lD, lU: lU)
            }
            let (value, gradient) = try DPOTests.lossAndGradient(rule, policy, beta: beta)
            // The loss is a sum of M K bounded sigmoids of beta (u - z), beta < 1: DPOLossTests.tolerance's analysis
            // (derivatives of the sigmoid family up to order three bounded by 2, times lambda <= 2 here).
            #expect(abs(value - (try f(policy))) <= 1e-13, "the reported loss is F_z at the policy's own KL")
            let tol = DPOLossTests.tolerance(
                h: h, thirdDerivative: 2e4, terms: problem.contexts * K, absoluteSum: 4 * abs(value) + 4)
            for i in 0..<gradient.count {
                let fd = try DPOLossTests.centralDifference(policy, parameter: i, h: h, f)
                #expect(abs(fd - gradient[i]) <= tol, "L=\(length) parameter \(i): \(fd) vs \(gradient[i]) (tol \(tol))")
            }
        }
    }

    /// The limit of the header (2-3), solved in the probabilities: [M, K] log pi* (-infinity off D) and z.
    static func limit(
        _ problem: ToyLMProblem, mu: [Double], q: [Double], beta: Double, lD: Double, lU: Double
    ) -> (logProb: [Double], z: Double, zSignChanges: Int) {
        let M = problem.contexts, K = problem.responses
        let lr = problem.referenceLogProb
        func bisect(_ lo: Double, _ hi: Double, _ high: (Double) -> Bool) -> Double {
            var lo = lo, hi = hi
            for _ in 0..<200 {
                let mid = (lo + hi) / 2
                if mid == lo || mid == hi { break }
                if high(mid) { lo = mid } else { hi = mid }
            }
            return (lo + hi) / 2
        }
        func policy(_ z: Double) -> [Double] {
            var out = [Double](repeating: -.infinity, count: M * K)
            for x in 0..<M {
                let d = (0..<K).filter { q[x * K + $0] * lD > (1 - q[x * K + $0]) * lU }
                let a = d.map { mu[x * K + $0] * (q[x * K + $0] * lD - (1 - q[x * K + $0]) * lU) }
                // phi_y(log p) = log[a beta sigma'(beta (log p - log pi_ref - z)) / p], decreasing in p.
                func logPhi(_ i: Int, _ logP: Double) -> Double {
                    let t = beta * (logP - lr[x * K + d[i]] - z)
                    return log(a[i] * beta * sig(t) * sig(-t)) - logP
                }
                func logP(_ i: Int, _ logLambda: Double) -> Double {
                    bisect(-700, 0) { logPhi(i, $0) > logLambda }
                }
                func mass(_ logLambda: Double) -> Double { d.indices.reduce(0) { $0 + exp(logP($1, logLambda)) } }
                let logLambda = bisect(-800, 800) { mass($0) > 1 }
                let ps = d.indices.map { exp(logP($0, logLambda)) }
                let total = ps.reduce(0, +)
                for (i, y) in d.enumerated() { out[x * K + y] = log(ps[i] / total) }
            }
            return out
        }
        let phi = { (z: Double) in Self.meanKLToReference(problem, policy(z)) - z }
        // A grid over [0, 2 z_max], z_max the largest KL on D (max_x -log pi_ref(D(x)) bounds... any KL of a policy
        // on D is at most max -log pi_ref(y)); count sign changes of phi.
        let zMax = -(lr.min() ?? 0)
        var changes = 0
        var previous = phi(0)
        for k in 1...50 {
            let v = phi(zMax * Double(k) / 50)
            if (v > 0) != (previous > 0) { changes += 1 }
            previous = v
        }
        let z = bisect(0, zMax) { phi($0) > 0 }
        return (policy(z), z, changes)
    }

    /// Trains `params` and checks the limit: KL(pi* || pi) < 1e-4 and the code's limit equals the test's.
    func expectReachesLimit(_ params: String, beta: Double, lD: Double, lU: Double) throws -> (
        limit: [Double], q: [Double], problem: ToyLMProblem
    ) {
        let spec = try ToyLMFixtures.spec(Self.yaml(params))
        let config = try KTO().configure(spec)
        let problem = ToyLMProblem(config.training.problem)
        let K = problem.responses
        let mu =
            config.settings.proposal == .reference
            ? problem.referenceLogProb.map { exp($0) } : [Double](repeating: 1 / Double(K), count: problem.contexts * K)
        let q = Self.desirability(problem)
        let (star, z, changes) = Self.limit(problem, mu: mu, q: q, beta: beta, lD: lD, lU: lU)
        #expect(changes == 1, "KL(pi*(z)) - z changes sign once on the grid")
        // Stationarity of the test's solution (header 2): the logits' gradient of F_z restricted to D vanishes.
        var worst = 0.0, scale = 0.0
        for x in 0..<problem.contexts {
            let d = (0..<K).filter { star[x * K + $0] > -.infinity }
            let g = d.map { y -> Double in
                let i = x * K + y
                let t = beta * (star[i] - problem.referenceLogProb[i] - z)
                return mu[i] * ((1 - q[i]) * lU - q[i] * lD) * beta * Self.sig(t) * Self.sig(-t)
            }
            let total = g.reduce(0, +)
            for (k, y) in d.enumerated() {
                worst = max(worst, abs(g[k] - exp(star[x * K + y]) * total))
                scale = max(scale, abs(g[k]))
            }
        }
        let code = KTORule(settings: config.settings, problem: problem, point: ToyLMSweepPoint(index: 0, beta: beta, seed: 21))
        var gap = 0.0
        for i in star.indices {
            #expect((star[i] == -.infinity) == (code.limit.logProb[i] == -.infinity))
            if star[i] > -.infinity { gap = max(gap, abs(star[i] - code.limit.logProb[i])) }
        }
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        let trained = try DPOLossTests.finalLogProb(sink, problem: problem)
        let kl = DPOLossTests.meanKL(star, trained, contexts: problem.contexts)
        let reported = try #require(output?.summary["optimum_kl"]?.doubleValue)
        let badMass = try #require(sink.last("kto/undesirable_mass"))
        print(
            "KTO beta \(beta), lambda_D \(lD), lambda_U \(lU): z* = \(z) (code \(code.limit.z)), |D| = \(star.filter { $0 > -.infinity }.count) of \(star.count), KKT residual \(worst) (scale \(scale)), max |log pi*_test - log pi*_code| = \(gap); trained KL(pi* || pi) = \(kl), reported \(reported), pi(U) = \(badMass)"
        )
        // The bisections run to adjacent doubles in log p, log lambda and z; the residual is rounding of sums of
        // K terms of size `scale`, so 1e-12 of the scale is generous; the two solves agree to ~1e-12 in log pi.
        #expect(worst <= 1e-12 * max(scale, 1e-300))
        #expect(gap < 1e-9 && abs(z - code.limit.z) < 1e-9)
        #expect(kl < 1e-4)
        #expect(abs(reported - kl) < 1e-9)
        return (star, q, problem)
    }

    @Test("lambda_D = lambda_U: the linear policy reaches the limit solved here (KL(pi* || pi) < 1e-4); log pi*/pi_ref rises with q")
    func reachesLimitAndIsMonotone() throws {
        let (star, q, problem) = try expectReachesLimit(
            """
              problem: {contexts: 8, vocab: 8, length: 1}
              policy: {hidden: []}
              beta: 0.3
              data: {source: population, proposal: reference}
              steps: 2000
              learning_rate: 0.1
              log_every: 2000
            """, beta: 0.3, lD: 1, lU: 1)
        // Header 4 (mu = pi_ref): on D, u* increases with q.
        let K = problem.responses
        var pairs = 0
        for x in 0..<problem.contexts {
            let d = (0..<K).filter { star[x * K + $0] > -.infinity }.sorted { q[x * K + $0] < q[x * K + $1] }
            let u = d.map { star[x * K + $0] - problem.referenceLogProb[x * K + $0] }
            for k in 1..<max(1, u.count) {
                #expect(u[k] > u[k - 1], "context \(x): u* not increasing in q")
                pairs += 1
            }
            // Every response on D has q above q* = 1/2, every other below.
            for y in 0..<K { #expect((star[x * K + y] > -.infinity) == (q[x * K + y] > 0.5)) }
        }
        #expect(pairs > 0)
    }

    @Test("lambda_D = 2 lambda_U: the threshold q* falls to 1/3, the support grows, and training reaches that limit")
    func unequalWeightsMoveTheThreshold() throws {
        let (star, q, _) = try expectReachesLimit(
            """
              problem: {contexts: 8, vocab: 8, length: 1}
              policy: {hidden: []}
              beta: 0.3
              desirable_weight: 2.0
              undesirable_weight: 1.0
              data: {source: population, proposal: uniform}
              steps: 2000
              learning_rate: 0.1
              log_every: 2000
            """, beta: 0.3, lD: 2, lU: 1)
        let support = star.filter { $0 > -.infinity }.count
        #expect(support == q.filter { $0 > 1.0 / 3 }.count)
        #expect(support > q.filter { $0 > 0.5 }.count, "some responses with 1/3 < q < 1/2 join the support")
    }

    @Test("a KTO shard stopped and resumed from its checkpoint is bitwise the uninterrupted run")
    func stopAndResumeIsBitwise() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 5, vocab: 7, length: 2}
                  beta: 0.2
                  desirable_weight: 1.5
                  steps: 150
                  log_every: 1
                """, checkpointEvery: 40))
        _ = try ToyLMFixtures.expectBitwiseResume(spec)
    }

    @Test("the example has two points; KTO parameters are validated")
    func exampleAndValidation() throws {
        #expect(try ToyLMFixtures.example("pref-kto-toy.yaml") == ("kto", 2))
        func error(_ params: String) -> String? { ToyLMFixtures.validationError(Self.yaml(params), file: "k.yaml") }
        #expect(error("  beta: 1.0")?.hasPrefix("k.yaml:7: kto needs beta < 1") == true)
        #expect(error("  sweep: {beta: [0.1, 2]}")?.contains("kto needs beta < 1 (here 2.0)") == true)
        #expect(error("  desirable_weight: 0")?.hasPrefix("k.yaml:7: params.desirable_weight must be in") == true)
        #expect(error("  data: {source: annotator}")?.hasPrefix("k.yaml:7: params.data.source must be one of population") == true)
        #expect(error("  loss: kto")?.contains("unknown key 'loss'") == true)
        #expect(error("  undesirable_weight: 1.33\n  data: {proposal: uniform}") == nil)
    }
}
