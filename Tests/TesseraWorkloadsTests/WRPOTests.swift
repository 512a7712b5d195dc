// `kind: preference`, `algorithm: wrpo` (WORKLOADS.md §3 P1; SLIT-AI/WRPO wrpo_trainer.py): alpha = 0 is bitwise
// `dpo` with `loss: sigmoid`, the gradient matches finite differences, the alpha schedule is the repo's, the
// population optimum for alpha > 0 (found here by this file's own enumeration and Newton solve) is reached, and a
// stopped shard resumes bitwise.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("WRPO on the toy LM")
struct WRPOTests {
    static func yaml(_ params: String, algorithm: String = "wrpo", checkpointEvery: Int? = nil) -> String {
        """
        name: wrpo-test
        kind: preference
        algorithm: \(algorithm)
        seed: 21
        \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
        params:
        \(params)
        """
    }

    /// The tensors of a checkpoint whose names start with `layers.` or `optim.` (network, Adam moments and step).
    static func stateTensors(_ bytes: [UInt8]) throws -> [SafeTensor] {
        try SafeTensorsFile.parse(bytes).tensors.filter { $0.name.hasPrefix("layers.") || $0.name.hasPrefix("optim.") }
            .sorted { $0.name < $1.name }
    }

    @Test("alpha = 0 is bitwise dpo (sigmoid): full-batch and minibatch annotator data, with label smoothing")
    func alphaZeroIsBitwiseDPO() throws {
        for data in [
            "data: {source: annotator, proposal: uniform, pairs: 4000}",
            "data: {source: annotator, proposal: reference, pairs: 3000}\n  batch_size: 64\n  label_smoothing: 0.1",
        ] {
            let common = """
                  problem: {contexts: 6, vocab: 5, length: 2}
                  policy: {hidden: [16], activation: silu}
                  beta: 0.3
                  \(data)
                  steps: 120
                  log_every: 1
                """
            let (dpoOut, dpo) = try ToyLMFixtures.runShard(
                try ToyLMFixtures.spec(Self.yaml(common + "\n  loss: sigmoid", algorithm: "dpo")))
            let (wrpoOut, wrpo) = try ToyLMFixtures.runShard(
                try ToyLMFixtures.spec(Self.yaml(common + "\n  alpha: 0")))
            let a = try Self.stateTensors(try #require(dpo.checkpoints.last).bytes)
            let b = try Self.stateTensors(try #require(wrpo.checkpoints.last).bytes)
            #expect(!a.isEmpty && a == b, "final network and Adam state, bit for bit (\(data))")
            #expect(dpoOut?.summary == wrpoOut?.summary)
            // The metrics both compute the same way agree bit for bit at every step.
            for name in [
                "loss", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/rejected", "grad_norm",
                "learning_rate", "exact/kl_to_optimum", "exact/kl_to_ref",
            ] {
                let x = dpo.rows.filter { $0.name == name }, y = wrpo.rows.filter { $0.name == name }
                #expect(x.count >= 120 && x == y, "\(name)")
            }
            #expect(
                wrpo.rows.filter { $0.name == "rewards/chosen" }.map(\.value)
                    == dpo.rows.filter { $0.name == "rewards/chosen" }.map(\.value))
            // The same run with alpha > 0 does move away: the comparison above can fail.
            let (_, moved) = try ToyLMFixtures.runShard(
                try ToyLMFixtures.spec(Self.yaml(common + "\n  alpha: 0.5\n  source: {samples: 2}")))
            #expect(try Self.stateTensors(try #require(moved.checkpoints.last).bytes) != a)
        }
    }

    @Test("alpha = 0 on population data reaches DPO's Gibbs optimum (KL < 1e-4, M = 8, V = 8)")
    func alphaZeroPopulationReachesGibbs() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 8, vocab: 8}
                  beta: 0.5
                  alpha: 0
                  data: {source: population, proposal: reference}
                  steps: 1000
                  log_every: 1000
                """))
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        let kl = try #require(output?.summary["kl_to_optimum"]?.doubleValue)
        print("WRPO alpha = 0, population, 1000 steps: KL(pi || Gibbs) = \(kl), wrpo/kl_to_optimum = \(sink.last("wrpo/kl_to_optimum") ?? .nan)")
        #expect(abs(kl) < 1e-4)
        #expect(try #require(sink.last("wrpo/kl_to_optimum")) < 1e-4, "at alpha = 0 the WRPO optimum is Gibbs")
    }

    /// Runs one WRPO step at learning rate 0 and returns (loss, dLoss/dtheta).
    static func lossAndGradient(_ rule: WRPORule, _ policy: ToyLMPolicy, step: Int = 1) throws -> (Double, [Double]) {
        var p = policy
        var optimizer = ToyLMOptimizer(
            adam: try Adam(configuration: AdamConfiguration(learningRate: 0), parameterCount: p.model.parameterCount),
            maxGradNorm: nil)
        let metrics = try rule.step(
            step, point: ToyLMSweepPoint(index: 0, beta: 0.7, seed: 4), policy: &p, optimizer: &optimizer)
        return (metrics.first { $0.0 == "loss" }!.1, p.model.gradients)
    }

    @Test("the WRPO gradient matches central differences of its loss (alpha > 0; population, full batch, minibatch)")
    func gradientMatchesFiniteDifferences() throws {
        let problem = ToyLMProblem(try ToyLMSpec(contexts: 3, vocabulary: 3, length: 2, seed: 2))
        var policy = try ToyLMPolicy(problem: problem, hidden: [5], activation: .silu, seed: 3)
        var s = PhiloxStream(seed: 6, index: 0, step: 0, stream: .minibatch)
        let noise = s.normals(policy.model.parameterCount)
        for i in 0..<noise.count { policy.model.parameters[i] += 0.4 * noise[i] }
        let data: [DPOSettings] = [
            DPOSettings(data: .population(proposal: .reference), batchSize: nil, labelSmoothing: 0),
            DPOSettings(data: .population(proposal: .uniform), batchSize: nil, labelSmoothing: 0.1),
            DPOSettings(data: .annotator(proposal: .reference, pairs: 500, seed: 1), batchSize: nil, labelSmoothing: 0),
            DPOSettings(data: .annotator(proposal: .uniform, pairs: 500, seed: 1), batchSize: 64, labelSmoothing: 0.2),
        ]
        for d in data {
            let settings = WRPOSettings(
                dpo: d, alpha: 0.35, isDynamic: false, warmupSteps: 1,
                source: .init(proposal: .uniform, samples: 2, seed: 5), steps: 10)
            let rule = WRPORule(settings: settings, problem: problem, point: ToyLMSweepPoint(index: 0, beta: 0.7, seed: 4))
            let (_, gradient) = try Self.lossAndGradient(rule, policy)
            #expect(gradient.contains { $0 != 0 })
            // Central differences with h = 1e-6 on an O(1) smooth loss: truncation O(h^2 f''') ~ 1e-12, rounding
            // O(eps |f| / h) ~ 2e-10; 1e-7 leaves two orders of margin, as DPOTests.
            for i in stride(from: 0, to: gradient.count, by: 3) {
                var plus = policy, minus = policy
                plus.model.parameters[i] += 1e-6
                minus.model.parameters[i] -= 1e-6
                let fd = (try Self.lossAndGradient(rule, plus).0 - Self.lossAndGradient(rule, minus).0) / 2e-6
                #expect(abs(fd - gradient[i]) < 1e-7 * max(1, abs(fd)), "\(d.data) parameter \(i): \(fd) vs \(gradient[i])")
            }
        }
    }

    @Test("alpha follows the repo's LinearDecayScheduler(0 -> alpha) at global_step = step - 1")
    func alphaSchedule() throws {
        for (extra, expected) in [
            ("alpha: 0.2", { (k: Int) in 0.2 * Double(k - 1) / 40 }),
            ("alpha: 0.3\n  alpha_warmup_steps: 10", { (k: Int) in 0.3 * min(1, Double(k - 1) / 10) }),
            ("alpha: 0.25\n  is_dynamic: false", { (_: Int) in 0.25 }),
        ] {
            let spec = try ToyLMFixtures.spec(
                Self.yaml(
                    """
                      problem: {contexts: 3, vocab: 4}
                      data: {pairs: 100}
                      \(extra)
                      steps: 40
                      log_every: 1
                    """))
            let (_, sink) = try ToyLMFixtures.runShard(spec)
            let rows = sink.rows.filter { $0.name == "cur_alpha" }
            #expect(rows.count == 40)
            for r in rows { #expect(abs(r.value - expected(Int(r.step))) < 1e-15, "\(extra) step \(r.step)") }
        }
    }

    // MARK: The population optimum, computed here

    /// This test's own statement of the population loss of one context: every ordered (y, y') with weight
    /// mu(y) mu(y'), y chosen w.p. sigma(r_y - r_y'), and y_ws = the best of n uniform draws (L = 1, uniform source)
    /// from Philox(seed; x, step 1, stream 6).
    struct Context {
        var mu: [Double]
        var pref: [[Double]]
        var source: Int
        var logRef: [Double]
    }

    static func contexts(_ problem: ToyLMProblem, proposalReference: Bool, seed: UInt64, samples: Int) -> [Context] {
        let K = problem.responses, V = problem.vocabulary
        return (0..<problem.contexts).map { x in
            let logRef = (0..<K).map { problem.referenceLogProb[x * K + $0] }
            let r = (0..<K).map { problem.reward[x * K + $0] }
            var s = PhiloxStream(seed: seed, index: UInt32(x), step: 1, stream: .preferenceLabel)
            var best = -1
            for _ in 0..<samples {
                let y = min(V - 1, Int(s.nextUniform() * Double(V)))
                if best < 0 || r[y] > r[best] { best = y }
            }
            return Context(
                mu: proposalReference ? logRef.map { exp($0) } : [Double](repeating: 1 / Double(K), count: K),
                pref: (0..<K).map { y in (0..<K).map { 1 / (1 + exp(r[$0] - r[y])) } }, source: best, logRef: logRef)
        }
    }

    /// dL/du and d^2L/du^2 of one context's loss sum_{c,r} mu_c mu_r [P(c>r) l(c, r) + P(r>c) l(r, c)] with
    /// l(c, r) = -log sigma(beta (alpha u_s + (1 - alpha) u_c - u_r)).
    static func derivatives(_ c: Context, _ u: [Double], alpha: Double, beta: Double) -> ([Double], [[Double]]) {
        let K = u.count
        var g = [Double](repeating: 0, count: K)
        var h = [[Double]](repeating: [Double](repeating: 0, count: K), count: K)
        for y in 0..<K {
            for y2 in 0..<K {
                for (ch, rj, w) in [(y, y2, c.mu[y] * c.mu[y2] * c.pref[y][y2]), (y2, y, c.mu[y] * c.mu[y2] * c.pref[y2][y])] {
                    let z = beta * (alpha * u[c.source] + (1 - alpha) * u[ch] - u[rj])
                    let sg = 1 / (1 + exp(-z))
                    var v = [Double](repeating: 0, count: K)
                    v[c.source] += alpha
                    v[ch] += 1 - alpha
                    v[rj] -= 1
                    for i in 0..<K where v[i] != 0 {
                        g[i] += w * beta * (sg - 1) * v[i]
                        for j in 0..<K where v[j] != 0 { h[i][j] += w * beta * beta * sg * (1 - sg) * v[i] * v[j] }
                    }
                }
            }
        }
        return (g, h)
    }

    /// The optimum's log pi* of one context: Newton on u with u_0 pinned at 0 (the loss is flat along u + c),
    /// solving the (K - 1) x (K - 1) system by Gauss-Jordan elimination.
    static func optimum(_ c: Context, alpha: Double, beta: Double) -> [Double] {
        let K = c.mu.count
        var u = [Double](repeating: 0, count: K)
        for _ in 0..<100 {
            let (g, h) = derivatives(c, u, alpha: alpha, beta: beta)
            if g.map(abs).max()! < 1e-15 { break }
            let n = K - 1
            var a: [[Double]] = []
            for i in 0..<n {
                var row: [Double] = []
                for j in 0..<n { row.append(h[i + 1][j + 1]) }
                row.append(g[i + 1])
                a.append(row)
            }
            for col in 0..<n {
                let piv = (col..<n).max { abs(a[$0][col]) < abs(a[$1][col]) }!
                a.swapAt(col, piv)
                for r in 0..<n where r != col {
                    let f = a[r][col] / a[col][col]
                    for k in col...n { a[r][k] -= f * a[col][k] }
                }
            }
            // A Newton step, shortened to max-norm 2 far from the optimum (a damped Newton method).
            let d = (0..<n).map { a[$0][n] / a[$0][$0] }
            let scale = min(1, 2 / d.map(abs).max()!)
            for i in 0..<n { u[i + 1] -= scale * d[i] }
        }
        let m = zip(c.logRef, u).map { $0 + $1 }
        let lse = log(m.map { exp($0) }.reduce(0, +))
        return m.map { $0 - lse }
    }

    @Test(
        "alpha > 0 on population data: training reaches the unique minimiser of the convex population loss, found by this test's own Newton solve (KL < 1e-6, dL/du -> 0), which is not the Gibbs policy (M = 8, V = 8)"
    )
    func populationReachesWRPOOptimum() throws {
        try Self.expectWRPOOptimum(contexts: 8, vocab: 8)
    }

    /// WORKLOADS.md's size, M = 32 x K = 16 (about 50 s in a debug build).
    @Test(
        "alpha > 0 on population data reaches the WRPO optimum at M = 32, V = 16",
        .enabled(if: ProcessInfo.processInfo.environment["TESSERA_SLOW_TESTS"] == "1"))
    func populationReachesWRPOOptimumFullSize() throws {
        try Self.expectWRPOOptimum(contexts: 32, vocab: 16)
    }

    static func expectWRPOOptimum(contexts M: Int, vocab V: Int) throws {
        let started = Date()
        let (alpha, beta) = (0.3, 0.5)
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: \(M), vocab: \(V)}
                  beta: \(beta)
                  alpha: \(alpha)
                  alpha_warmup_steps: 300
                  source: {proposal: uniform, samples: 4}
                  data: {source: population, proposal: uniform}
                  steps: 1000
                  log_every: 1000
                """, checkpointEvery: 1000))
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        let problem = ToyLMProblem(try ToyLMSpec(contexts: M, vocabulary: V, seed: 21))
        // The trained policy, from its final checkpoint.
        let checkpoint = try TrainingCheckpoint<Double>(
            file: SafeTensorsFile.parse(try #require(sink.checkpoints.last).bytes))
        var policy = try ToyLMPolicy(problem: problem, model: checkpoint.model)
        try policy.evaluate()
        let K = problem.responses
        var kl = 0.0, klStarGibbs = 0.0, gradMax = 0.0, gradMaxRef = 0.0
        let gibbs = problem.gibbsLogProb(beta: beta)
        for (x, c) in Self.contexts(problem, proposalReference: false, seed: 21, samples: 4).enumerated() {
            let star = Self.optimum(c, alpha: alpha, beta: beta)
            let lp = (0..<K).map { policy.logProb[x * K + $0] }
            for y in 0..<K {
                kl += exp(lp[y]) * (lp[y] - star[y]) / Double(M)
                klStarGibbs += exp(star[y]) * (star[y] - gibbs[x * K + y]) / Double(M)
            }
            let u = (0..<K).map { lp[$0] - c.logRef[$0] }
            gradMax = max(gradMax, Self.derivatives(c, u, alpha: alpha, beta: beta).0.map(abs).max()!)
            gradMaxRef = max(
                gradMaxRef,
                Self.derivatives(c, [Double](repeating: 0, count: K), alpha: alpha, beta: beta).0.map(abs).max()!)
        }
        let reported = try #require(sink.last("wrpo/kl_to_optimum"))
        print(
            "WRPO alpha = \(alpha) population (1000 steps, \(Date().timeIntervalSince(started)) s): KL(pi || pi*_wrpo) = \(kl), reported \(reported); max |dL/du| \(gradMax) (at pi_ref \(gradMaxRef)); KL(pi*_wrpo || Gibbs) = \(klStarGibbs), summary KL to Gibbs \(output?.summary["kl_to_optimum"]?.doubleValue ?? .nan)"
        )
        // Deterministic full-batch training on a smooth convex problem; DPO's analogue ends at 1e-17. KL ~ 1/2
        // E pi du^2, so 1e-6 is a logit error of ~1e-3, far above rounding or CPU-dependent summation order.
        #expect(kl < 1e-6)
        #expect(gradMax < 1e-3 * gradMaxRef, "the population gradient in u vanishes")
        #expect(reported < 1e-6, "the streamed metric agrees")
        // The test's optimum is the library's (two independent solvers of the same convex problem).
        let rule = WRPORule(
            settings: try WRPO().configure(spec).settings, problem: problem,
            point: ToyLMSweepPoint(index: 0, beta: beta, seed: 21))
        let library = try #require(rule.optimumLogProb)
        // Compared in probability: both solvers stop at max |dL/du| ~ 1e-15 (weights mu mu' summing to 1), and
        // the Hessian's smallest eigenvalue off the shift direction is >= beta^2 min sigma' mu mu' ~ 1e-6 here, so
        // each is within ~1e-9 in u of the optimum, ~1e-9 in probability; log pi* of a response of probability
        // e^-20 is barely determined by the loss, so log space would not be a fair scale.
        var gap = 0.0
        for (x, c) in Self.contexts(problem, proposalReference: false, seed: 21, samples: 4).enumerated() {
            let star = Self.optimum(c, alpha: alpha, beta: beta)
            for y in 0..<K { gap = max(gap, abs(exp(star[y]) - exp(library[x * K + y]))) }
        }
        print("WRPO optimum, this test's solve vs the library's: max |pi* difference| \(gap)")
        #expect(gap < 1e-9)
        // alpha > 0 really changes the target: the WRPO optimum is not DPO's.
        #expect(klStarGibbs > 1e-3)
    }

    @Test("a WRPO shard (minibatches, rising alpha) stopped and resumed from its checkpoint is bitwise the uninterrupted run")
    func stopAndResumeIsBitwise() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  problem: {contexts: 5, vocab: 7}
                  alpha: 0.4
                  data: {source: annotator, proposal: uniform, pairs: 3000}
                  batch_size: 64
                  steps: 150
                  log_every: 1
                """, checkpointEvery: 40))
        _ = try ToyLMFixtures.expectBitwiseResume(spec)
    }

    static func specError(_ params: String) -> String? {
        do {
            _ = try Workloads.catalogue.validate(try JobSpec.parse(yaml(params), file: "w.yaml"))
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test("WRPO parameters are validated")
    func validation() throws {
        let error = Self.specError
        #expect(error("  alpha: 1.5")?.hasPrefix("w.yaml:7: params.alpha must be in [0.0, 1.0]") == true)
        #expect(error("  loss: ipo")?.hasPrefix("w.yaml:7: unknown key 'loss' in params") == true)
        #expect(
            error("  is_dynamic: false\n  alpha_warmup_steps: 5")?.hasPrefix(
                "w.yaml:8: params.alpha_warmup_steps applies only with is_dynamic: true") == true)
        #expect(
            error("  steps: 10\n  alpha_warmup_steps: 11")?.hasPrefix(
                "w.yaml:8: params.alpha_warmup_steps must be between 1 and 10") == true)
        #expect(error("  source: {samples: 0}")?.hasPrefix("w.yaml:7: params.source.samples must be between 1") == true)
        #expect(error("  source: {policy: uniform}")?.hasPrefix("w.yaml:7: unknown key 'policy' in params.source") == true)
        #expect(error("  is_dynamic: 3")?.hasPrefix("w.yaml:7: params.is_dynamic must be true or false") == true)
        #expect(error("  data: {source: population}\n  batch_size: 8")?.contains("annotator only") == true)
        #expect(error("  alpha: 0.2\n  source: {proposal: reference, samples: 3, seed: 9}") == nil)
        #expect(try ToyLMFixtures.example("pref-wrpo-toy.yaml").algorithm == "wrpo")
    }
}
