// `kind: preference`, `algorithm: reward-model` (WORKLOADS.md §3 P2): the BT reward model of a Luce annotator with
// a known density. Every reference number is computed here, independently of RewardModel.swift: the annotator's
// log-density from the mixture formula written out below, the test's own q-samples (another Philox key and stream
// than the shard's evaluation set), its own grid and tail bound, and its own loss. Only the trained network is
// taken from the shard (its final checkpoint), evaluated with TesseraCompute's MLP.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("Bradley-Terry reward model (reward-model)")
struct RewardModelTests {
    static func yaml(_ params: String, seed: Int = 5, checkpointEvery: Int? = nil) -> String {
        """
        name: rm-test
        kind: preference
        algorithm: reward-model
        seed: \(seed)
        \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
        params:
        \(params)
        """
    }

    /// An isotropic 2-D Gaussian mixture, as this test writes it: log sum_k w_k exp(-|y - mu_k|^2 / (2 s_k^2)) /
    /// (2 pi s_k^2).
    struct Mixture {
        var w: [Double], mu: [[Double]], s: [Double]

        func log(_ y0: Double, _ y1: Double) -> Double {
            var terms: [Double] = []
            for k in 0..<w.count {
                let d2 = (y0 - mu[k][0]) * (y0 - mu[k][0]) + (y1 - mu[k][1]) * (y1 - mu[k][1])
                terms.append(Foundation.log(w[k]) - Foundation.log(2 * Double.pi * s[k] * s[k]) - d2 / (2 * s[k] * s[k]))
            }
            let m = terms.max()!
            return m + Foundation.log(terms.reduce(0) { $0 + exp($1 - m) })
        }

        /// Mass outside [-L, L]^2 (centre 0), bounded by the union bound over the four half-planes:
        /// sum_k w_k sum_{coordinate} [P(N(mu, s^2) < -L) + P(N(mu, s^2) > L)].
        func tailOutside(_ L: Double) -> Double {
            var t = 0.0
            for k in 0..<w.count {
                for c in 0..<2 {
                    t += w[k] * 0.5 * (erfc((L + mu[k][c]) / (s[k] * 2.0.squareRoot()))
                        + erfc((L - mu[k][c]) / (s[k] * 2.0.squareRoot())))
                }
            }
            return t
        }
    }

    /// The documented default annotator (docs/training.md §7.3), and the misspecification pair.
    static let p = Mixture(w: [0.4, 0.35, 0.25], mu: [[-1.2, 0], [1, 0.8], [0.5, -1.2]], s: [1, 1, 1])
    static let p1 = Mixture(w: [1], mu: [[-1, 0]], s: [0.6])
    static let p2 = Mixture(w: [1], mu: [[1, 0]], s: [1])
    static let proposalStd = 1.2

    /// n points of q = N(0, 1.2^2 I), from a key and stream the shard never uses.
    static func qSamples(_ n: Int, key: UInt64) -> [(Double, Double)] {
        (0..<n).map { j in
            var s = PhiloxStream(seed: key, index: UInt32(j), step: 0, stream: .evalProjections)
            let z = s.normals(2)
            return (proposalStd * z[0], proposalStd * z[1])
        }
    }

    /// The final network of a shard, from its last checkpoint.
    static func network(_ sink: RecordingSink) throws -> MLP<Double> {
        let bytes = try #require(sink.checkpoints.last).bytes
        return try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(bytes)).model
    }

    static func rewards(_ model: MLP<Double>, _ points: [(Double, Double)]) throws -> [Double] {
        let x = try Tensor<Double>(shape: [points.count, 2], scalars: points.flatMap { [$0.0, $0.1] })
        return try model.predict(x).scalars
    }

    /// Centred mean square of e over the sample and its standard error: the sample variance of e estimates
    /// Var_q(e) with sd ~ sd((e - mean)^2) / sqrt(n) (the mean's own error is O(1/n) and is ignored).
    static func centredMS(_ e: [Double]) -> (ms: Double, se: Double) {
        let n = Double(e.count)
        let mean = e.reduce(0, +) / n
        let sq = e.map { ($0 - mean) * ($0 - mean) }
        let ms = sq.reduce(0, +) / n
        let v = sq.reduce(0) { $0 + ($1 - ms) * ($1 - ms) } / (n - 1)
        return (ms, (v / n).squareRoot())
    }

    /// TV between e^r / Z (normalised on the square [-L, L]^2, midpoint rule with n x n cells) and the density
    /// exp(logP), plus half of logP's mass outside the square (where the grid-normalised model puts none).
    static func gridTV(_ model: MLP<Double>, logP: (Double, Double) -> Double, L: Double, n: Int, tail: Double) throws
        -> Double
    {
        let h = 2 * L / Double(n)
        var pts: [(Double, Double)] = []
        for i in 0..<n { for j in 0..<n { pts.append((-L + (Double(i) + 0.5) * h, -L + (Double(j) + 0.5) * h)) } }
        let r = try rewards(model, pts)
        let top = r.max()!
        let f = r.map { exp($0 - top) }
        let Z = f.reduce(0, +)
        var tv = 0.0
        for (i, y) in pts.enumerated() { tv += abs(f[i] / Z - exp(logP(y.0, y.1)) * h * h) }
        return 0.5 * tv + 0.5 * tail
    }

    static let fitParams = """
          labels: soft
          data: {pairs: 65536}
          batch_size: 256
          network: {hidden: [32, 32], activation: silu}
          steps: 2000
          learning_rate: 0.01
          log_every: 100
          eval: {every: 2000}
        """

    @Test("one Luce annotator: centred RMSE(r - log p) < .05 on q-samples and TV(e^r/Z, p) < .03 on a grid")
    func fitRecoversLogDensity() throws {
        let started = Date()
        let (output, sink) = try ToyLMFixtures.runShard(try ToyLMFixtures.spec(Self.yaml(Self.fitParams)))
        let seconds = Date().timeIntervalSince(started)
        let model = try Self.network(sink)
        // RMSE: 100000 q-samples. The asserted quantity is the 5-sigma upper bound sqrt(ms + 5 se). The squared
        // errors are heavy-tailed (q's tail, where labels saturate, has the largest errors): se / ms was .21 at
        // 20000 samples, so 100000 keep the 5-sigma term below half of ms.
        let ys = Self.qSamples(100_000, key: 0xC0FFEE)
        let r = try Self.rewards(model, ys)
        let (ms, se) = Self.centredMS(zip(r, ys).map { $0 - Self.p.log($1.0, $1.1) })
        let rmseBound = (ms + 5 * se).squareRoot()
        // TV on [-6, 6]^2. p's mass outside is at most p.tailOutside(6) (every component mean is within 1.2 of 0 and
        // s = 1, so each side is >= 4.8 s away: 6 Phi(-4.8) ~ 5e-6 in all). The midpoint rule's error is estimated by the
        // difference between 240 and 480 cells per side (h = .05 and .025), and added to the bound.
        let tail = Self.p.tailOutside(6)
        let tv240 = try Self.gridTV(model, logP: Self.p.log, L: 6, n: 240, tail: tail)
        let tv480 = try Self.gridTV(model, logP: Self.p.log, L: 6, n: 480, tail: tail)
        let tvBound = tv480 + abs(tv480 - tv240)
        let summary = try #require(output?.summary.objectValue)
        let reported = try #require(summary["rmse"]?.doubleValue), reportedTV = try #require(summary["tv"]?.doubleValue)
        print(
            "reward-model fit (2000 steps x 256 pairs, 65536 soft-labelled pairs, \(seconds) s): centred RMSE \(ms.squareRoot()) (5-sigma bound \(rmseBound)); TV \(tv240) (h .05) / \(tv480) (h .025), bound \(tvBound), tail \(tail); shard reports rmse \(reported), tv \(reportedTV)"
        )
        #expect(tail < 1e-5)
        #expect(rmseBound < 0.05)
        #expect(tvBound < 0.03)
        // The shard's own numbers estimate the same quantities on other samples (20000, so its sd is sqrt(5) times
        // this test's) and another grid (200 cells on [-5, 5]^2): they agree within the two estimates' 5-sigma noise
        // (sd of an RMSE estimate ~ se / (2 rmse)).
        let sdRMSE = se / (2 * ms.squareRoot())
        #expect(abs(reported - ms.squareRoot()) < 5 * 6.0.squareRoot() * sdRMSE)
        #expect(reportedTV < 0.03)
        // TRL's metrics are streamed.
        for name in ["loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward", "grad_norm", "learning_rate"] {
            #expect(sink.last(name) != nil, "\(name)")
        }
    }

    /// G_r(y1) = E_{y2 ~ q}[sigma(r(y1) - r(y2)) - P(y1 beats y2)], P the two annotators' expected label. Returns the
    /// outer mean of the U-statistic of G^2 (unbiased: products over distinct inner samples) with its standard
    /// error, and the plain (V-statistic) mean of G_hat^2, which overestimates E G^2 by E Var_inner / n2.
    static func stationarity(r1: [Double], r2: [Double], la: [[Double]], lb: [[Double]], mix: Double) -> (
        u: Double, uSE: Double, v: Double
    ) {
        func sigma(_ x: Double) -> Double { x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)) }
        var us: [Double] = [], vs: [Double] = []
        let n2 = Double(r2.count)
        for i in 0..<r1.count {
            var s = 0.0, s2 = 0.0
            for j in 0..<r2.count {
                let P = mix * sigma(la[0][i] - lb[0][j]) + (1 - mix) * sigma(la[1][i] - lb[1][j])
                let phi = sigma(r1[i] - r2[j]) - P
                s += phi
                s2 += phi * phi
            }
            us.append((s * s - s2) / (n2 * (n2 - 1)))
            vs.append(s * s / (n2 * n2))
        }
        let n1 = Double(us.count)
        let u = us.reduce(0, +) / n1
        let uVar = us.reduce(0) { $0 + ($1 - u) * ($1 - u) } / (n1 - 1)
        return (u, (uVar / n1).squareRoot(), vs.reduce(0, +) / n1)
    }

    /// Two annotators p1 = N((-1, 0), .6^2 I), p2 = N((1, 0), I), each labelling half the pairs; q = N(0, 1.2^2 I).
    ///
    /// What is proven. Let L(r) = E_{q x q} CE(P12, sigma(r1 - r2)) on centred functions with the L2(q) norm. Its
    /// gradient is 2 G_r (G as in `stationarity`; the loss term's derivative in r1 - r2 is sigma - P, antisymmetric in
    /// the pair), its Hessian is h -> E sigma'(d)(h1 - h2)^2 <= (1/4) E (h1 - h2)^2 = (1/2) |h|^2. By the mean value
    /// theorem, 2 |G_r - G_0| <= (1/2) |r - r0| for any r, r0, so with r0 = log p_bar:
    ///     centred RMSE(r - log p_bar) >= 4 (|G_0| - |G_r|).
    /// G_0 != 0 is exactly "log p_bar is not the BT fit"; |G_r| is the fitted network's own stationarity residual.
    /// The test estimates both by Monte Carlo with conservative bounds (|G_0| from below by the U-statistic minus 5
    /// standard errors, |G_r| from above by the V-statistic plus 5 standard errors) and asserts the lower bound
    /// exceeds .05, the fit tolerance the single-annotator test proves: the gap is not a fitting error. It then
    /// asserts the measured gap respects the bound (a violation would be a bug in the shard or the test).
    @Test("two annotators: the BT fit is provably not log((p1 + p2)/2), and the reported gap respects the bound")
    func misspecificationGap() throws {
        let params = """
              annotator: {means: [[-1, 0]], stds: [0.6]}
              annotator_2: {means: [[1, 0]], stds: [1]}
              annotator_mix: 0.5
            """ + "\n" + Self.fitParams
        let started = Date()
        let (output, sink) = try ToyLMFixtures.runShard(try ToyLMFixtures.spec(Self.yaml(params)))
        let seconds = Date().timeIntervalSince(started)
        let model = try Self.network(sink)
        func logBar(_ a: Double, _ b: Double) -> Double {
            let l1 = log(0.5) + Self.p1.log(a, b), l2 = log(0.5) + Self.p2.log(a, b)
            let m = max(l1, l2)
            return m + log(exp(l1 - m) + exp(l2 - m))
        }
        // The gap, measured on 20000 q-samples.
        let ys = Self.qSamples(20_000, key: 0xBEEF)
        let r = try Self.rewards(model, ys)
        let (ms, se) = Self.centredMS(zip(r, ys).map { $0 - logBar($1.0, $1.1) })
        // The bound, on 1500 x 1500 further q-samples.
        let outer = Self.qSamples(1500, key: 0xA1), inner = Self.qSamples(1500, key: 0xA2)
        let la = [outer.map { Self.p1.log($0.0, $0.1) }, outer.map { Self.p2.log($0.0, $0.1) }]
        let lb = [inner.map { Self.p1.log($0.0, $0.1) }, inner.map { Self.p2.log($0.0, $0.1) }]
        let g0 = Self.stationarity(
            r1: outer.map { logBar($0.0, $0.1) }, r2: inner.map { logBar($0.0, $0.1) }, la: la, lb: lb, mix: 0.5)
        let gr = Self.stationarity(
            r1: try Self.rewards(model, outer), r2: try Self.rewards(model, inner), la: la, lb: lb, mix: 0.5)
        let g0Low = max(0, g0.u - 5 * g0.uSE).squareRoot()
        // V-statistic of the fit (>= E G_r^2 in expectation); its outer noise is bounded by that of the U-statistic's
        // order, so the same 5 se are added.
        let grHigh = (gr.v + 5 * gr.uSE).squareRoot()
        let bound = 4 * (g0Low - grHigh)
        let gap = ms.squareRoot()
        let summary = try #require(output?.summary.objectValue)
        let reported = try #require(summary["misspecification_gap"]?.doubleValue)
        print(
            "reward-model misspecification (p1 = N((-1,0), .36), p2 = N((1,0), 1), mix .5, \(seconds) s): gap = centred RMSE(r - log p_bar) \(gap) (se of ms \(se)); |G_0| >= \(g0Low), |G_r| <= \(grHigh), proven gap >= \(bound); shard reports \(reported), rmse to log p1 \(summary["rmse_annotator_1"]?.doubleValue ?? .nan), to log p2 \(summary["rmse_annotator_2"]?.doubleValue ?? .nan)"
        )
        #expect(bound > 0.05, "the gap provably exceeds the fit tolerance for this pair")
        #expect((ms + 5 * se).squareRoot() >= bound, "the measured gap respects the proven lower bound")
        let sdGap = se / (2 * gap)
        #expect(abs(reported - gap) < 5 * 2.0.squareRoot() * sdGap)
    }

    /// The loss as this test writes it: mean_b [-t log sigma(d) - (1 - t) log sigma(-d)], d = r(a) - r(b).
    static func loss(_ model: MLP<Double>, a: [(Double, Double)], b: [(Double, Double)], t: [Double]) throws -> Double {
        let ra = try rewards(model, a), rb = try rewards(model, b)
        func logSigma(_ x: Double) -> Double { min(x, 0) - log1p(exp(-abs(x))) }
        var s = 0.0
        for i in 0..<t.count {
            let d = ra[i] - rb[i]
            s += -t[i] * logSigma(d) - (1 - t[i]) * logSigma(-d)
        }
        return s / Double(t.count)
    }

    /// Central differences with eps = 1e-5 in float64: truncation error eps^2 |L'''| / 6 ~ 2e-11 |L'''| and rounding
    /// ~ ulp(L) / eps ~ 1e-11 for L = O(1). The tolerance 1e-7 (absolute, gradients here are O(.1 - 1)) leaves a factor
    /// > 1000 for third derivatives up to O(10).
    @Test("the loss gradient (soft and hard labels) matches central finite differences of the test's own loss")
    func gradientCheck() throws {
        var model = try MLP<Double>(sizes: [2, 8, 8, 1], activation: .silu, seed: 3)
        let B = 16
        let pts = Self.qSamples(2 * B, key: 9)
        let a = Array(pts[0..<B]), b = Array(pts[B...])
        for hard in [false, true] {
            let t: [Double] = (0..<B).map { i in
                let P = 1 / (1 + exp(-(Self.p.log(a[i].0, a[i].1) - Self.p.log(b[i].0, b[i].1))))
                return hard ? (P > 0.5 ? 1 : 0) : P
            }
            var ws = model.makeWorkspace(batchCapacity: 2 * B)
            var gradOut = [Double](repeating: 0, count: 2 * B)
            let input = a.flatMap { [$0.0, $0.1] } + b.flatMap { [$0.0, $0.1] }
            let batch = try RewardModelLoss.evaluate(
                model: &model, input: input, labels: t, workspace: &ws, gradOutput: &gradOut, gradient: true)
            let analytic = model.gradients
            let own = try Self.loss(model, a: a, b: b, t: t)
            #expect(abs(batch.loss - own) <= 1e-12 * max(1, own), "hard \(hard): \(batch.loss) vs \(own)")
            var worst = 0.0
            for i in 0..<model.parameterCount {
                var plus = model, minus = model
                plus.parameters[i] += 1e-5
                minus.parameters[i] -= 1e-5
                let fd = (try Self.loss(plus, a: a, b: b, t: t) - Self.loss(minus, a: a, b: b, t: t)) / 2e-5
                worst = max(worst, abs(fd - analytic[i]))
            }
            print("reward-model gradient check (hard labels: \(hard)): max |fd - analytic| = \(worst) over \(model.parameterCount) parameters")
            #expect(worst < 1e-7)
            if hard {
                // Hard labels are TRL's -log sigma(r_chosen - r_rejected).
                let ra = try Self.rewards(model, a), rb = try Self.rewards(model, b)
                var trl = 0.0
                for i in 0..<B {
                    let d = t[i] == 1 ? ra[i] - rb[i] : rb[i] - ra[i]
                    trl += log1p(exp(-d)) / Double(B)
                }
                #expect(abs(trl - own) <= 1e-12)
            }
        }
    }

    @Test("a reward-model shard stopped and resumed from its checkpoint is bitwise the uninterrupted run")
    func stopAndResumeIsBitwise() throws {
        for extra in [
            "  labels: soft",
            "  labels: sampled\n  annotator_2: {means: [[1, 0]], stds: [1.2]}\n  annotator_mix: 0.3\n  data: {pairs: 512, seed: 77}",
        ] {
            let spec = try ToyLMFixtures.spec(
                Self.yaml(
                    """
                    \(extra)
                      batch_size: 32
                      network: {hidden: [16]}
                      steps: 150
                      log_every: 1
                      eval: {every: 50, samples: 256, grid_points: 32}
                    """, checkpointEvery: 40))
            let (full, resumeFrom) = try ToyLMFixtures.expectBitwiseResume(spec)
            let file = try SafeTensorsFile.parse(resumeFrom.bytes)
            let names = Set(file.tensors.map(\.name))
            for n in [
                "layers.0.weight", "layers.1.bias", "optim.layers.0.weight.exp_avg", "optim.layers.1.bias.exp_avg_sq",
                "optim.step", "annotator.weights", "annotator.means", "annotator.stds", "proposal.mean", "proposal.std",
            ] {
                #expect(names.contains(n), "\(n)")
            }
            #expect(names.contains("annotator_2.means") == extra.contains("annotator_2"))
            #expect(file.metadata["algo"] == "reward-model" && file.metadata["rng_counter"] == "80")
            #expect(file.metadata["data_seed"] == (extra.contains("seed: 77") ? "77" : "5"))
            #expect(full.last("eval/rmse") != nil && full.last("accuracy") != nil)
            #expect((full.last("eval/misspecification_gap") != nil) == extra.contains("annotator_2"))
        }
    }

    @Test("pairs are a function of (data seed, index) only; a shard of a seed sweep trains as the one-seed job does")
    func shardIndependence() throws {
        let spec = { (pairs: Int) in
            try ToyLMFixtures.spec(Self.yaml("  labels: sampled\n  data: {pairs: \(pairs), seed: 4}\n  steps: 1"))
        }
        let small = try RewardModel().configure(spec(100)), large = try RewardModel().configure(spec(300))
        let a = RewardModelPairs(config: small, seed: 4), b = RewardModelPairs(config: large, seed: 4)
        #expect(a.a == Array(b.a[0..<200]) && a.b == Array(b.b[0..<200]) && a.label == Array(b.label[0..<100]))
        let body = "  network: {hidden: [8]}\n  batch_size: 16\n  data: {pairs: 256}\n  steps: 20\n  eval: {samples: 64, grid_points: 16}"
        let sweep = try ToyLMFixtures.spec(Self.yaml(body + "\n  sweep: {seed: [5, 6]}"))
        let single = try ToyLMFixtures.spec(Self.yaml(body, seed: 6))
        let (_, fromSweep) = try ToyLMFixtures.runShard(sweep, index: 1)
        let (_, alone) = try ToyLMFixtures.runShard(single)
        #expect(try Self.network(fromSweep) == Self.network(alone))
        #expect(fromSweep.rows == alone.rows)
    }

    static func specError(_ params: String) -> String? {
        ToyLMFixtures.validationError(yaml(params), file: "r.yaml")
    }

    @Test("reward-model parameters are validated")
    func validation() throws {
        let error = Self.specError
        #expect(error("  annotator: {means: [[0, 0, 0]], stds: [1]}")?.contains("needs 2 coordinates") == true)
        #expect(error("  annotator: {means: [[0, 0]], stds: [0]}")?.contains("stds must be finite and > 0") == true)
        #expect(error("  annotator_mix: 0.5")?.contains("applies only with a second annotator") == true)
        #expect(error("  annotator_2: {means: [[0, 0]], stds: [1]}\n  annotator_mix: 1")?.contains("strictly between 0 and 1") == true)
        #expect(error("  proposal: {mean: [0], std: 1}")?.contains("must have 2 coordinates") == true)
        #expect(error("  proposal: {std: 0}")?.hasPrefix("r.yaml:7: params.proposal.std must be in [") == true)
        #expect(error("  labels: hard")?.hasPrefix("r.yaml:7: params.labels must be one of") == true)
        #expect(error("  data: {pairs: 0}")?.contains("params.data.pairs must be between 1") == true)
        #expect(error("  data: {source: population}")?.contains("unknown key 'source' in params.data") == true)
        #expect(error("  network: {hidden: []}")?.contains("1 to 4 hidden layers") == true)
        #expect(error("  network: {activation: tanh}")?.contains("params.network.activation must be one of") == true)
        #expect(error("  eval: {grid_extent: 2}")?.contains("widen grid_extent") == true)
        #expect(error("  steps: 10\n  warmup_steps: 10")?.contains("must be smaller than params.steps") == true)
        #expect(error("  beta: 0.1")?.hasPrefix("r.yaml:7: unknown key 'beta' in params") == true)
        #expect(error("  sweep: {seed: [1, 1]}")?.contains("lists a value twice") == true)
        #expect(
            ToyLMFixtures.validationError(Self.yaml("  sweep: {seed: [1, 2]}").replacingOccurrences(of: "seed: 5", with: "seed: 5\nshards: 3"), file: "r.yaml")?
                .contains("does not match the 2 seed(s)") == true)
        #expect(error("  labels: sampled\n  annotator_2: {means: [[1, 0]], stds: [1.2]}") == nil)
        #expect(try ToyLMFixtures.example("pref-reward-model-toy.yaml").algorithm == "reward-model")
    }
}
