// `kind: rl`, `algorithm: ddpo` (WORKLOADS.md §2 R2): J <= J* = beta log E_{p_ref} e^{r/beta} against the reference
// sampler's own output law, J* - J < 5% after the stated rounds, the tilted mixture's mode weights, the loss's
// gradient by central differences, and a stopped shard resumed from its checkpoint bitwise. Every closed form is
// computed here, independently of the code under test.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("DDPO")
struct DDPOTests {
    static func yaml(_ params: String, checkpointEvery: Int? = nil, seed: Int = 3) -> String {
        """
        name: ddpo-test
        kind: rl
        algorithm: ddpo
        seed: \(seed)
        \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
        params:
        \(params)
        """
    }

    /// The output law N(m_0, V_0) of the S-step DDIM(eta = 1) sampler with the exact score of the target
    /// N(mu, s0^2), per coordinate, from the S1 recursion written out here: the linear schedule
    /// beta_t = 1e-4 + (0.02 - 1e-4) t / (T - 1), abar_t = prod (1 - beta), leading timesteps t_i = i T/S,
    /// prev = t - T/S (abar_prev = 1 below 0); sig^2 = (1 - a_p)/(1 - a_t) (1 - a_t/a_p); the exact eps is
    /// eps(x) = e1 x + e0, e1 = sqrt(1 - a)/v, e0 = -sqrt(1 - a) sqrt(a) mu/v, v = a s0^2 + 1 - a; and
    /// x_p = sqrt(a_p) (x - sqrt(1 - a) eps)/sqrt(a) + sqrt(1 - a_p - sig^2) eps + sig z = A x + B + sig z,
    /// so m' = A m + B, V' = A^2 V + sig^2 from x_T ~ N(0, 1).
    static func referenceLaw(mean mu: Double, std s0: Double, samplingSteps S: Int, T: Int = 1000) -> (m: Double, v: Double) {
        var abar = [Double](), product = 1.0
        for t in 0..<T {
            product *= 1 - (1e-4 + (0.02 - 1e-4) * Double(t) / Double(T - 1))
            abar.append(product)
        }
        let ratio = T / S
        var m = 0.0, V = 1.0
        for i in stride(from: S - 1, through: 0, by: -1) {
            let t = i * ratio, prev = t - ratio
            let at = abar[t], ap = prev >= 0 ? abar[prev] : 1
            let sig2 = (1 - ap) / (1 - at) * (1 - at / ap)
            let v = at * s0 * s0 + 1 - at
            let e1 = (1 - at).squareRoot() / v, e0 = -(1 - at).squareRoot() * at.squareRoot() * mu / v
            let direction = max(1 - ap - sig2, 0).squareRoot()
            let A = (ap / at).squareRoot() * (1 - (1 - at).squareRoot() * e1) + direction * e1
            let B = (direction - (ap / at).squareRoot() * (1 - at).squareRoot()) * e0
            m = A * m + B
            V = A * A * V + sig2
        }
        return (m, V)
    }

    /// J* = beta log E e^{r/beta}, x ~ N(m, v), r = -(lambda/2)(x - c)^2, one coordinate: the Gaussian integral
    /// E e^{-k (x - c)^2} = (1 + 2 k v)^{-1/2} e^{-k (m - c)^2 / (1 + 2 k v)} with k = lambda/(2 beta).
    static func optimalObjective(m: Double, v: Double, lambda: Double, c: Double, beta: Double) -> Double {
        let k = lambda / (2 * beta)
        return beta * (-0.5 * log(1 + 2 * k * v) - k * (m - c) * (m - c) / (1 + 2 * k * v))
    }

    static let gaussianParams = """
          target: {means: [[0.5, -0.5]], stds: [0.4]}
          sampling_steps: 20
          beta: 0.25
          lambda: 1
          center: [1.5, 0.5]
          variant: is
          clip_range: 0.2
          batch_size: 256
          minibatches: 2
          hidden: [32, 32]
          steps: 300
          learning_rate: 0.003
          eval_samples: 4096
          log_every: 10
        """

    @Test("J <= J* = beta log E_{p_ref} e^{r/beta} at every round, and J* - J < 5% of |J*| after 300 rounds (d = 2, S = 20)")
    func gaussianTargetReachesTheBound() throws {
        let spec = try ToyLMFixtures.spec(Self.yaml(Self.gaussianParams))
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        let summary = try #require(output?.summary)

        let means = [0.5, -0.5], centers = [1.5, 0.5], beta = 0.25, lambda = 1.0
        var jStar = 0.0, jRef = 0.0
        for j in 0..<2 {
            let (m, v) = Self.referenceLaw(mean: means[j], std: 0.4, samplingSteps: 20)
            jStar += Self.optimalObjective(m: m, v: v, lambda: lambda, c: centers[j], beta: beta)
            jRef += -0.5 * lambda * ((m - centers[j]) * (m - centers[j]) + v)
            let codeMean = try #require(summary["reference_mean"]?.arrayValue?[j].doubleValue)
            #expect(abs(codeMean - m) < 1e-9)
            if j == 0 { #expect(abs(try #require(summary["reference_variance"]?.doubleValue) - v) < 1e-9) }
        }
        #expect(abs(try #require(summary["optimal_objective"]?.doubleValue) - jStar) < 1e-9)
        // The reference law is the sampler's, not the target's: V_0 = .091 at S = 20, not .16.
        let (_, v20) = Self.referenceLaw(mean: 0.5, std: 0.4, samplingSteps: 20)
        #expect(abs(v20 - 0.16) > 0.05)

        // (i) Every logged batch estimate J^ = mean(r - beta KL_path) over B = 256 trajectories is <= J* up to its
        // Monte Carlo error: J(th) <= J* holds for every th exactly (Donsker-Varadhan), so a violation beyond the
        // noise is a bug. The noise: sd(r - beta KL) <= .6 on these runs' scale (|r| = (1/2)|x - c|^2 with
        // |x - c| ~ 1.2, Var r = (lambda/2)^2 (4 |m - c|^2 V + 2 d V^2) <= .3 at V <= .1), so SE <= .6/16 = .04;
        // 4.5 SE = .17 over 30 rows has a false-alarm probability 30 x 3.4e-6 = 1e-4.
        let objectives = sink.rows.filter { $0.name == "objective" }
        #expect(objectives.count == 30)
        for row in objectives { #expect(row.value <= jStar + 0.17, "round \(row.step): J^ = \(row.value) > J* = \(jStar)") }
        // The final evaluation (N = 4096, its own SE from the code's sample variance, checked to be small):
        let j = try #require(summary["objective"]?.doubleValue)
        let se = try #require(summary["objective_se"]?.doubleValue)
        // sd(r - beta KL) <= .5 near the optimum (Var r = |m - c|^2 V + d V^2/2 = .08 at the tilted law, plus the KL's
        // spread), so SE <= .5/64 = .008.
        #expect(se < 0.008)
        #expect(j <= jStar + 4 * se)

        // (ii) J* - J < 5% of |J*|. Far from satisfied at the start: J(ref) = E_ref r is 36% below J*.
        #expect((jStar - jRef) / abs(jStar) > 0.25)
        let gap = (jStar - j) / abs(jStar)
        print("ddpo d=2 S=20 beta=.25 lambda=1 is B=256 300 rounds: J* = \(jStar), J(ref) = \(jRef), J = \(j) ± \(se), relative gap \(gap)")
        // Tolerance: the issue's 5%, asserted on the estimate of J (1 SE = .6% of |J*| on this run, at most 1% by
        // the bound on se above). What it leaves for the learner is 5% minus the family's own floor: the best
        // mean-shift policy of this problem is .26% below J* (the LQR recursion of docs/training.md §13).
        #expect(gap < 0.05)
        #expect(abs(try #require(summary["relative_gap"]?.doubleValue) - gap) < 1e-9)

        let names = Set(sink.rows.filter { $0.step == 300 }.map(\.name))
        for name in [
            "reward_mean", "reward_std", "kl_path", "objective", "approx_kl", "clipfrac", "loss", "grad_norm", "lr",
            "advantage_std", "exact/optimal_objective", "exact/objective_gap",
        ] {
            #expect(names.contains(name), "missing metric \(name)")
        }
    }

    /// A small problem for the loss, resume and validation checks.
    static let smallParams = """
          target: {means: [[0.5, -0.5]], stds: [0.4]}
          sampling_steps: 5
          batch_size: 16
          minibatches: 2
          inner_epochs: 2
          hidden: [8]
          time_embedding: 4
          clip_range: 0.05
          advantages: tracker
          tracker_buffer: 24
          tracker_min_count: 20
          eval_samples: 64
        """

    @Test("the loss's gradient is its central difference, for sf and is, with the KL term and rho != 1")
    func lossGradientMatchesCentralDifferences() throws {
        for variant in ["sf", "is"] {
            let spec = try ToyLMFixtures.spec(Self.yaml(Self.smallParams + "\n  variant: \(variant)\n  beta: 0.7"))
            let config = try DDPO().configure(spec)
            let trainer = DDPOTrainer(config: config, point: config.points[0], params: spec.params)
            // A policy away from the reference (the last layer is zero-initialised: give every parameter a value),
            // a batch drawn by it, and a second policy nearby where the loss is taken, so rho != 1.
            var old = try trainer.makeNetwork()
            for i in old.parameters.indices {
                let w = Philox4x32.words(seed: 11, index: UInt64(i), step: 0, stream: 9)
                old.parameters[i] = 0.6 * (Philox4x32.uniform(w.0) - 0.5)
            }
            let batch = try DDPORollout.rollout(trainer.sampler, net: old, seed: 4, round: 1, indices: 0..<16)
            #expect(batch.pathKL.allSatisfy { $0 > 0 })
            var net = old
            for i in net.parameters.indices {
                let w = Philox4x32.words(seed: 12, index: UInt64(i), step: 0, stream: 9)
                net.parameters[i] += 0.02 * (Philox4x32.uniform(w.0) - 0.5)
            }
            let advantages = (0..<16).map { Double($0 % 5) - 2 }
            let inputs = DDPOLossInputs(
                sampler: trainer.sampler, variant: variant == "sf" ? .sf : .is,
                surrogate: ClippedSurrogate(epsilonLow: 0.3, epsilonHigh: 0.3), klWeight: 0.9, clipRange: 0.3)
            var ws = net.makeWorkspace(batchCapacity: 8)
            func loss(_ n: MLP<Double>) throws -> (Double, [Double], DDPOLossStatistics) {
                var n = n
                var stats = DDPOLossStatistics()
                try DDPOUpdate.loss(
                    &n, workspace: &ws, batch: batch, rows: 4..<12, advantages: advantages, inputs: inputs,
                    statistics: &stats)
                return (stats.loss, n.gradients, stats)
            }
            let (_, gradient, stats) = try loss(net)
            #expect(stats.terms == 8 * 4, "8 rows x the 4 noisy steps of S = 5")
            // Central differences with h = 1e-5: the truncation error is O(h^2 L''') ~ 1e-10 and the rounding
            // error ~ 1e-16 |L| / h ~ 1e-11 for |L| ~ 1; the loss is smooth here (no rho crosses the clip boundary
            // within h: checked by the clipped counts agreeing). Tolerance 1e-6 (1 + |g|).
            let h = 1e-5
            for i in stride(from: 0, to: net.parameterCount, by: 7) {
                var plus = net, minus = net
                plus.parameters[i] += h
                minus.parameters[i] -= h
                let (lp, _, sp) = try loss(plus)
                let (lm, _, sm) = try loss(minus)
                #expect(sp.clipped == sm.clipped)
                let fd = (lp - lm) / (2 * h)
                #expect(
                    abs(fd - gradient[i]) < 1e-6 * (1 + abs(gradient[i])),
                    "\(variant) parameter \(i): \(fd) vs \(gradient[i])")
            }
            if variant == "is" { #expect(stats.approxKL > 0 && stats.clipped > 0 && stats.clipped < stats.terms) }
        }
    }

    @Test("at th = 0 the policy is the reference sampler: its evaluated J is E_ref r (KL 0) of the S1 law")
    func startsAtTheReferenceSampler() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  target: {means: [[0.5, -0.5]], stds: [0.4]}
                  sampling_steps: 20
                  center: [1.5, 0.5]
                  steps: 1
                  learning_rate: 0
                  hidden: [8]
                  eval_samples: 8192
                """))
        let (output, _) = try ToyLMFixtures.runShard(spec)
        let summary = try #require(output?.summary)
        var jRef = 0.0
        for (mu, c) in zip([0.5, -0.5], [1.5, 0.5]) {
            let (m, v) = Self.referenceLaw(mean: mu, std: 0.4, samplingSteps: 20)
            jRef += -0.5 * ((m - c) * (m - c) + v)
        }
        let j = try #require(summary["objective"]?.doubleValue)
        let se = try #require(summary["objective_se"]?.doubleValue)
        #expect(try #require(summary["kl_path"]?.doubleValue) == 0)
        // 4 SE (SE from the evaluation's own sample variance, ~.006 at N = 8192).
        #expect(abs(j - jRef) < 4 * se, "J(ref) = \(j) ± \(se), closed form \(jRef)")
    }

    @Test("a ddpo shard stopped after a checkpoint and resumed from it is bitwise the uninterrupted run")
    func stopAndResumeIsBitwise() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(Self.smallParams + "\n  steps: 150\n  log_every: 1", checkpointEvery: 40))
        let (full, _) = try ToyLMFixtures.expectBitwiseResume(spec)
        #expect(full.rows.contains { $0.name == "clipfrac" && $0.value > 0 })
        let file = try SafeTensorsFile.parse(full.checkpoints.last!.bytes)
        #expect(file.metadata["algo"] == "ddpo" && file.metadata["rng_counter"] == "150")
        #expect(file["optim.step"].flatMap { try? $0.int64Values() } == [600], "2 epochs x 2 minibatches per round")
        #expect(file["stat_tracker.buffer"]?.shape == [24])

        // A checkpoint of another job (another beta) is refused.
        let other = try ToyLMFixtures.spec(
            Self.yaml(Self.smallParams + "\n  steps: 150\n  beta: 2", checkpointEvery: 40))
        #expect(throws: ShardError.self) { _ = try ToyLMFixtures.runShard(other, resume: full.checkpoints[1]) }
    }

    @Test("a two-mode target: the learned sampler's mode weights are the tilted mixture's within .03 (is, S = 20)")
    func mixtureModeWeightsAreTheTilt() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                """
                  target: {means: [[2], [-2]], stds: [0.5, 0.5]}
                  sampling_steps: 20
                  beta: 2
                  lambda: 1
                  center: 0.3
                  variant: is
                  clip_range: 0.2
                  batch_size: 256
                  minibatches: 4
                  inner_epochs: 2
                  hidden: [32, 32]
                  steps: 600
                  learning_rate: 0.01
                  eval_samples: 16384
                  log_every: 50
                """))
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        #expect(sink.rows.contains { $0.name == "mode_weight/1" })
        let summary = try #require(output?.summary)
        let learned = try #require(summary["mode_weights"]?.arrayValue).compactMap(\.doubleValue)

        // The tilted mixture in closed form (WORKLOADS.md R2): w_k' ∝ w_k N(c; mu_k, s_k^2 + beta/lambda), here
        // exp(-(c - mu_k)^2 / (2 (.25 + 2))) with equal w_k; exact for the TARGET's tilt.
        let v = 0.25 + 2.0
        let e = [2.0, -2.0].map { exp(-(0.3 - $0) * (0.3 - $0) / (2 * v)) }
        let closed = e.map { $0 / (e[0] + e[1]) }
        let codeTilt = try #require(summary["tilted_weights"]?.arrayValue).compactMap(\.doubleValue)
        #expect(abs(codeTilt[0] - closed[0]) < 1e-12)
        // The tilt of what the algorithm optimises against is of the REFERENCE SAMPLER's law, which at S = 20 is not
        // the target (narrower modes), so it is estimated here by Monte Carlo: N = 32768 draws of the S1 sampler
        // (algorithm: ddim, eta 1, the same S; code outside this algorithm), weighted by e^{r/beta}:
        // w_k^ref' = sum_i e^{r_i/beta} 1{x_i in mode k} / sum_i e^{r_i/beta} (modes split at 0: the modes are 8 s apart).
        let config = try SamplingConfig(
            target: try GaussianMixture(means: [[2], [-2]], stds: [0.5, 0.5]),
            schedule: try BetaSchedule.linear(betaStart: 1e-4, betaEnd: 0.02, steps: 1000), sampler: .ddim(eta: 1),
            samplingSteps: 20, seed: 99, samples: 32768, keepSamples: true)
        let reference = try runSamplingShard(config: config, range: 0..<32768, onStep: { _ in }, shouldStop: { false })
        var mass = [0.0, 0.0]
        var weights: [Double] = []
        let samples = try #require(reference.samples).map(Double.init)
        for x in samples {
            let w = exp(-0.5 * (x - 0.3) * (x - 0.3) / 2)
            mass[x > 0 ? 0 : 1] += w
            weights.append(w)
        }
        let tilt = mass.map { $0 / (mass[0] + mass[1]) }
        // J* = beta log E_ref e^{r/beta} by the same draws, for the record (no closed form for a mixture here).
        let jStarMC = 2 * log(weights.reduce(0, +) / Double(weights.count))
        print("ddpo 2-mode: J learned \(try #require(summary["objective"]?.doubleValue)) ± \(try #require(summary["objective_se"]?.doubleValue)), J* (MC) \(jStarMC), kl \(try #require(summary["kl_path"]?.doubleValue))")
        // Its MC error: the weights are bounded (<= 1) and smooth; the effective sample size
        // (sum w)^2 / sum w^2 is computed here, SE = sqrt(w'(1 - w') / ESS).
        let ess = pow(weights.reduce(0, +), 2) / weights.map { $0 * $0 }.reduce(0, +)
        let tiltSE = (tilt[0] * (1 - tilt[0]) / ess).squareRoot()
        let learnedSE = (learned[0] * (1 - learned[0]) / 16384).squareRoot()
        print("ddpo 2-mode S=20 beta=2 is 600 rounds: learned \(learned), reference-law tilt \(tilt) (SE \(tiltSE)), target tilt \(closed), learned SE \(learnedSE)")
        // The learned sampler starts at w = (.5, .5); the tilt moves it to .63: the check cannot pass by standing still.
        #expect(tilt[0] > 0.58)
        // Tolerance: the issue's .03. The two estimates' errors (tiltSE ~ .003, learnedSE ~ .004) give 1 SE of the
        // difference ~ .005. The learner approaches the tilt slowly and from below: over seeds 1-3 and configurations
        // of 300-1000 rounds it ends at .597-.613 (.613 here), so the margin is the learner's, not the estimates'
        // (docs/training.md §13 records the runs).
        #expect(abs(learned[0] - tilt[0]) < 0.03)
        #expect(abs(learned[0] - closed[0]) < 0.03, "and the target's closed-form tilt, .006 away at S = 20")
    }

    @Test("parameters are validated with the line of the key at fault; a sweep plans one shard per point and merges")
    func validationSweepAndExample() throws {
        func error(_ params: String) -> String? { ToyLMFixtures.validationError(Self.yaml(params), file: "p.yaml") }
        let target = "  target: {means: [[0.5, -0.5]], stds: [0.4]}\n"
        #expect(error(target + "  variant: ppo")?.hasPrefix("p.yaml:8: params.variant") == true)
        #expect(error(target + "  batch_size: 10\n  minibatches: 3")?.hasPrefix("p.yaml:9: params.minibatches") == true)
        #expect(error(target + "  tracker_buffer: 8")?.hasPrefix("p.yaml:8: params.tracker_buffer") == true)
        #expect(error(target + "  time_embedding: 5")?.hasPrefix("p.yaml:8: params.time_embedding") == true)
        #expect(error(target + "  eta: 0.5")?.hasPrefix("p.yaml:8: unknown key 'eta'") == true)
        #expect(error(target + "  sampling_steps: 1")?.hasPrefix("p.yaml:8: params.sampling_steps") == true)
        #expect(error("  beta: 1")?.contains("target") == true)
        #expect(Workloads.catalogue.capabilities.contains("rl/ddpo"))

        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                target
                    + "  sampling_steps: 5\n  batch_size: 16\n  hidden: [8]\n  steps: 5\n  eval_samples: 64\n"
                    + "  sweep: {beta: [0.5, 2], seed: [1, 2]}"))
        let (result, outputs) = try ToyLMFixtures.runJob(spec)
        #expect(outputs.count == 4)
        let points = try #require(result["points"]?.arrayValue)
        #expect(points.map { $0["beta"]?.doubleValue } == [0.5, 0.5, 2, 2])
        let gaps = points.compactMap { $0["relative_gap"]?.doubleValue }
        #expect(gaps.count == 4 && result["max_relative_gap"]?.doubleValue == gaps.max())

        #expect(try ToyLMFixtures.example("rl-ddpo-gaussian.yaml") == ("ddpo", 2))
    }
}
