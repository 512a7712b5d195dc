// `kind: rl`, `algorithm: find` and `algorithm: implicit-diffusion` (WORKLOADS.md §2 R3): each reaches its
// closed-form Gaussian optimum, computed here independently of the code under test, and a stopped shard resumed
// from its checkpoint is bitwise the uninterrupted run.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("FIND and Implicit Diffusion")
struct FINDTests {
    static func yaml(_ algorithm: String, _ params: String, checkpointEvery: Int? = nil, seed: Int = 5) -> String {
        """
        name: \(algorithm)-test
        kind: rl
        algorithm: \(algorithm)
        seed: \(seed)
        \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
        params:
        \(params)
        """
    }

    /// Phi(z) = a z + b for the target N(mu, s0^2) per coordinate, from the S1 recursion written out here: the
    /// linear schedule beta_t = 1e-4 + (0.02 - 1e-4) t / (T - 1), abar_t = prod (1 - beta), leading timesteps
    /// t_i = i T/S with prev = t - T/S (abar_prev = 1 below 0). The exact eps of a Gaussian is linear,
    /// eps(x) = e1 x + e0 with e1 = sqrt(1 - a)/v, e0 = -sqrt(1 - a) sqrt(a) mu / v, v = a s0^2 + 1 - a, and DDIM-0
    /// x_p = sqrt(a_p) (x - sqrt(1 - a) eps)/sqrt(a) + sqrt(1 - a_p) eps is x_p = A x + B with
    /// A = sqrt(a_p/a) (1 - sqrt(1 - a) e1) + sqrt(1 - a_p) e1, B = (sqrt(1 - a_p) - sqrt(a_p/a) sqrt(1 - a)) e0.
    static func affineDDIM(mean mu: Double, std s0: Double, samplingSteps S: Int, T: Int = 1000) -> (a: Double, b: Double) {
        var abar = [Double](), product = 1.0
        for t in 0..<T {
            product *= 1 - (1e-4 + (0.02 - 1e-4) * Double(t) / Double(T - 1))
            abar.append(product)
        }
        let ratio = T / S
        var a = 1.0, b = 0.0
        for i in stride(from: S - 1, through: 0, by: -1) {
            let t = i * ratio, prev = t - ratio
            let at = abar[t], ap = prev >= 0 ? abar[prev] : 1
            let v = at * s0 * s0 + 1 - at
            let e1 = (1 - at).squareRoot() / v, e0 = -(1 - at).squareRoot() * at.squareRoot() * mu / v
            let A = (ap / at).squareRoot() * (1 - (1 - at).squareRoot() * e1) + (1 - ap).squareRoot() * e1
            let B = ((1 - ap).squareRoot() - (ap / at).squareRoot() * (1 - at).squareRoot()) * e0
            a = A * a
            b = A * b + B
        }
        return (a, b)
    }

    /// q* of E_q r(a z + b) - beta KL(q || N(0, 1)), r = -(lambda/2)(x - c)^2, one coordinate: the objective is
    /// -(lambda/2)((a m + b - c)^2 + a^2 s^2) - (beta/2)(s^2 + m^2 - 1 - log s^2); d/dm = 0 gives
    /// m (lambda a^2 + beta) = lambda a (c - b), d/ds = 0 gives s^2 (lambda a^2 + beta) = beta.
    static func optimum(a: Double, b: Double, lambda: Double, c: Double, beta: Double) -> (m: Double, s: Double) {
        let P = 1 + lambda * a * a / beta
        return (lambda * a * (c - b) / (beta * P), 1 / P.squareRoot())
    }

    static let findParams = """
          target: {means: [[0.7, -0.5]], stds: [0.4]}
          sampling_steps: 20
          beta: 0.5
          lambda: 2
          center: [1.5, 1]
          batch_size: 512
          ppo_epochs: 4
          clip_range: 0.2
          steps: 1200
          learning_rate: 0.01
          log_every: 50
        """

    @Test("find reaches q* = N(lambda a (c - b)/(beta P), 1/P): |m - m*| < .05, |s/s* - 1| < .05 (d = 2, DDIM-20)")
    func findReachesTheClosedForm() throws {
        let spec = try ToyLMFixtures.spec(Self.yaml("find", Self.findParams))
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        let summary = try #require(output?.summary)
        let file = try SafeTensorsFile.parse(try #require(sink.checkpoints.last).bytes)
        let m = try #require(file["policy.mean"]).float64Values()
        let s = try #require(file["policy.log_std"]).float64Values().map { exp($0) }

        let means = [0.7, -0.5], centers = [1.5, 1.0]
        var meanError = 0.0, stdError = 0.0
        for j in 0..<2 {
            let (a, b) = Self.affineDDIM(mean: means[j], std: 0.4, samplingSteps: 20)
            let star = Self.optimum(a: a, b: b, lambda: 2, c: centers[j], beta: 0.5)
            meanError = max(meanError, abs(m[j] - star.m))
            stdError = max(stdError, abs(s[j] / star.s - 1))
            // The code's own closed form (Phi measured on z = 0 and 1) agrees with the recursion.
            let codeMean = try #require(summary["optimal_mean"]?.arrayValue?[j].doubleValue)
            let codeStd = try #require(summary["optimal_std"]?.arrayValue?[j].doubleValue)
            #expect(abs(codeMean - star.m) < 1e-9 && abs(codeStd - star.s) < 1e-9)
            // Far from the start N(0, 1): the check is not passed by standing still.
            #expect(abs(star.m) > 0.3 && star.s < 0.9)
        }
        print("find d=2 DDIM-20 beta=.5 lambda=2 B=512 4 epochs 1200 steps: max|m - m*| = \(meanError), max|s/s* - 1| = \(stdError)")
        // Tolerance. The fixed point is q* exactly (FIND.swift: the calibration's baseline and scale come from past
        // batches, and the scale multiplies the KL term too), so what is left is the final iterate's Monte Carlo
        // noise plus the clip/ratio bias of the later epochs, which vanishes with the step (the cosine ends at 0).
        // Noise: near q* Adam's step is lr g / RMS(g) with g dominated by sampling noise of std sigma_g, i.e. SGD
        // with step lr / sigma_g on a quadratic of curvature H. In the calibrated units (rewards divided by their
        // std, sigma_r = .67 at q*: Var r = sum_j (lambda/2)^2 (4 mu_j^2 tau^2 + 2 tau^4) with tau = a s* = .280 and
        // mu_j = a m*_j + b_j - c_j = -.551, -1.030) H = (lambda a^2 + beta)/sigma_r = 1.09 for m and
        // 2 beta/sigma_r = 1.49 for log s, and sigma_g = sqrt(E[A^2 u^2]/B)/s <= sqrt(3/512)/.829 = .09 (A
        // standardised; u = eps or eps^2 - 1). The E = 4 epochs reuse one batch, so per step the deviation obeys
        // delta' = (1 - L H/sigma_g) delta - L xi with L the sum of the step's four learning rates and xi ~ N(0, 1):
        // Var' = (1 - L H/sigma_g)^2 Var + L^2. Iterated over this run's cosine schedule (lr .01 -> 0 over 4800
        // updates) the final standard deviation is .0062 for m and .0047 for log s (~ s/s* - 1); without the
        // schedule, at a constant lr, it would be sqrt(E lr sigma_g/(2H)) = .04. The bound .05 is 8 sd (m) and
        // 10 sd (s) per coordinate, for a max over d = 2. Cross-check of the estimate (not of the code under test,
        // and not what sets the bound): a float64 numpy transcription of this update over 24 seeds gives
        // per-coordinate sd .0046/.0053 (m) and .0045/.0060 (s/s* - 1), offsets below .002, max |error| .013.
        #expect(meanError < 0.05)
        #expect(stdError < 0.05)
        #expect(abs(try #require(summary["mean_error"]?.doubleValue) - meanError) < 1e-9)

        let names = Set(sink.rows.filter { $0.step == 1200 }.map(\.name))
        for name in [
            "reward_mean", "reward_std", "approx_kl", "clipfrac", "loss", "kl_to_prior", "calibration/mean",
            "calibration/std", "lr", "exact/mean_error", "exact/std_ratio_error", "exact/objective",
            "exact/objective_gap",
        ] {
            #expect(names.contains(name), "missing metric \(name)")
        }
        #expect(sink.rows.first { $0.name == "exact/mean_error" && $0.step == 0 }!.value > 0.3)
        let gap = try #require(summary["objective_gap"]?.doubleValue)
        #expect(gap >= 0 && gap < 1e-2)
    }

    static let implicitParams = """
          dimension: 2
          beta: 0.5
          lambda: 2
          center: [1.5, -1]
          particles: 1024
          langevin_step: 0.1
          steps: 1500
          learning_rate: 0.01
          log_every: 50
        """

    @Test("implicit-diffusion reaches pi* = N(lambda c/(lambda + beta), beta/(lambda + beta)): .05 on mu and sigma/sigma*")
    func implicitDiffusionReachesTheClosedForm() throws {
        let spec = try ToyLMFixtures.spec(Self.yaml("implicit-diffusion", Self.implicitParams))
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        let summary = try #require(output?.summary)
        let file = try SafeTensorsFile.parse(try #require(sink.checkpoints.last).bytes)
        let mu = try #require(file["policy.mean"]).float64Values()
        let sigma = try #require(file["policy.log_std"]).float64Values().map { exp($0) }
        // pi* maximises E_pi r - beta KL(pi || N(0, I)): pi* = N(0, I) e^{r/beta} / Z, a product of Gaussians with
        // precision 1 + lambda/beta and mean (lambda/beta) c / (1 + lambda/beta).
        let lambda = 2.0, beta = 0.5, centers = [1.5, -1.0]
        var meanError = 0.0, stdError = 0.0
        for j in 0..<2 {
            let precision = 1 + lambda / beta
            meanError = max(meanError, abs(mu[j] - lambda / beta * centers[j] / precision))
            stdError = max(stdError, abs(sigma[j] * precision.squareRoot() - 1))
        }
        print("implicit-diffusion d=2 beta=.5 lambda=2 N=1024 h=.1 1500 steps: max|mu - mu*| = \(meanError), max|sigma/sigma* - 1| = \(stdError)")
        // Tolerance. The fixed point is exactly pi* even with ULA's variance inflation (ImplicitDiffusion.swift),
        // and the gradient's noise vanishes there too: at theta*, f = r + beta V + beta log p_ref is constant in x
        // (A = B = 0), so every particle gives the same f and the sample covariance is exactly 0, whatever the
        // particles. Away from theta* the noise is proportional to (A, A mu + B), i.e. to the distance to theta*:
        // there is no Monte Carlo floor, and the iterate contracts to theta* until Adam's step (lr -> 0 by the
        // cosine) is the only thing left. The issue's .05 is therefore far above what the run reaches; it is
        // asserted as specified, and the measured value is in docs/training.md §12.4.
        #expect(meanError < 0.05)
        #expect(stdError < 0.05)
        #expect(abs(try #require(summary["std_ratio_error"]?.doubleValue) - stdError) < 1e-9)
        // The particles are NOT pi_theta: ULA's stationary variance is sigma^2 / (1 - h/(2 sigma^2)) = 4/3 sigma^2
        // at h = .1, sigma^2 = .2, and the fixed point is still pi*. The metric is the mean over d = 2 coordinates
        // of the sample variance ratio of N = 1024 independent particles: sd sqrt(2/1023)/sqrt(2) = .031 at
        // stationarity (times 4/3 for the ratio's scale: .042). |ratio - 4/3| < .2 is ~5 sd; ratio > 1.15 says the
        // inflation is seen (1.15 is 4 sd below 4/3 and 3.6 sd above 1).
        let ratio = try #require(sink.last("particles/variance_ratio"))
        #expect(abs(ratio - 4.0 / 3.0) < 0.2 && ratio > 1.15)
        #expect(sink.rows.first { $0.name == "exact/mean_error" && $0.step == 0 }!.value > 0.5)
    }

    @Test("a find shard stopped after a checkpoint and resumed from it is bitwise the uninterrupted run")
    func findStopAndResumeIsBitwise() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                "find",
                """
                  target: {means: [[0.7, -0.5]], stds: [0.4]}
                  sampling_steps: 5
                  batch_size: 32
                  ppo_epochs: 3
                  clip_range: 0.05
                  steps: 150
                  log_every: 1
                """, checkpointEvery: 40))
        let (full, _) = try ToyLMFixtures.expectBitwiseResume(spec)
        #expect(full.rows.contains { $0.name == "clipfrac" && $0.value > 0 })
        let file = try SafeTensorsFile.parse(full.checkpoints.last!.bytes)
        #expect(file.metadata["algo"] == "find" && file.metadata["rng_counter"] == "150")
        #expect(file["optim.step"].flatMap { try? $0.int64Values() } == [450], "three updates per step")
        #expect(file["calibration.state"].flatMap { try? $0.float64Values() }?.first == 150)

        // A checkpoint of another job (another beta) is refused.
        let other = try ToyLMFixtures.spec(
            Self.yaml("find", "  target: {means: [[0.7, -0.5]], stds: [0.4]}\n  beta: 2\n  steps: 150"))
        #expect(throws: ShardError.self) { _ = try ToyLMFixtures.runShard(other, resume: full.checkpoints[1]) }
    }

    @Test("an implicit-diffusion shard stopped and resumed is bitwise the uninterrupted run, particles included")
    func implicitStopAndResumeIsBitwise() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                "implicit-diffusion",
                "  center: [1, 0.5]\n  particles: 64\n  langevin_steps: 2\n  steps: 150\n  log_every: 1",
                checkpointEvery: 40))
        let (full, _) = try ToyLMFixtures.expectBitwiseResume(spec)
        let file = try SafeTensorsFile.parse(full.checkpoints.last!.bytes)
        #expect(file.metadata["algo"] == "implicit-diffusion")
        #expect(file["particles"]?.shape == [64, 2])
        #expect(file["optim.step"].flatMap { try? $0.int64Values() } == [150])
    }

    @Test("a mixture target runs without a closed form; sweeps plan one shard per (beta, seed) and merge")
    func mixtureTargetAndSweep() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                "find",
                """
                  target: {means: [[4], [-4]], stds: [0.5, 0.5], weights: [0.8, 0.2]}
                  center: -4
                  lambda: 1
                  sampling_steps: 10
                  batch_size: 64
                  steps: 30
                  sweep: {beta: [0.5, 2], seed: [1, 2]}
                """))
        let (result, outputs) = try ToyLMFixtures.runJob(spec)
        #expect(outputs.count == 4)
        #expect(outputs[0].summary["optimal_mean"] == nil && outputs[0].summary["mean"] != nil)
        #expect(result["points"]?.arrayValue?.count == 4 && result["max_mean_error"] == nil)
        // Rewarding the minor mode at -4 moves the initial noise toward it.
        #expect(try #require(outputs[0].summary["mean"]?.arrayValue?[0].doubleValue) < 0)
    }

    @Test("parameters are validated with the line of the key at fault; the examples plan their shards")
    func validationAndExamples() throws {
        func error(_ algorithm: String, _ params: String) -> String? {
            ToyLMFixtures.validationError(Self.yaml(algorithm, params), file: "p.yaml")
        }
        let target = "  target: {means: [[0.7, -0.5]], stds: [0.4]}\n"
        #expect(error("find", target + "  clip_range: -1")?.hasPrefix("p.yaml:8: params.clip_range") == true)
        #expect(error("find", target + "  center: [1, 2, 3]")?.hasPrefix("p.yaml:8: params.center") == true)
        #expect(error("find", target + "  epsilon: 0.2")?.hasPrefix("p.yaml:8: unknown key 'epsilon'") == true)
        #expect(error("find", "  beta: 1")?.contains("target") == true)
        #expect(error("implicit-diffusion", "  particles: 1")?.hasPrefix("p.yaml:7: params.particles") == true)
        #expect(error("implicit-diffusion", "  dimension: 3\n  center: [1, 2]")?.hasPrefix("p.yaml:8: params.center") == true)
        #expect(error("implicit-diffusion", "  langevin_step: 0.5\n  lambda: 3")?.hasPrefix("p.yaml:7: params.langevin_step") == true)
        #expect(error("find", target + "  sweep: {beta: [0.5, 1], seed: [1, 2]}") == nil)
        #expect(Workloads.catalogue.capabilities.contains("rl/find"))
        #expect(Workloads.catalogue.capabilities.contains("rl/implicit-diffusion"))

        #expect(try ToyLMFixtures.example("rl-find-gaussian.yaml") == ("find", 1))
        #expect(try ToyLMFixtures.example("rl-implicit-diffusion.yaml") == ("implicit-diffusion", 1))
    }
}
