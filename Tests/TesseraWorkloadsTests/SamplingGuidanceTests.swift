// WORKLOADS.md §1 S1, classifier-free guidance: with a Gaussian unconditional law and a Gaussian conditional law
// both exact eps fields are linear in x, so the guided eps~ = eps_u + w (eps_c - eps_u) is linear too and every
// step is x_p = A_t x + B_t + sig_t z. The output law is exactly N(m_0, V_0) from the scalar recursion written
// below (independently of the code under test). That law is NOT the "powered" Gaussian p(x|c)^w p(x)^(1-w).

import Foundation
import TesseraCompute
import TesseraCore
import TesseraWorkloads
import Testing

/// The recursion for CFG between two 1-D Gaussians: unconditional N(muU, s2U), conditional N(muC, s2C).
private struct GuidedRecursion {
    enum Rule { case ddim(eta: Double), ddpm }

    let muU = -0.3
    let s2U = 0.64
    let muC = 0.7
    let s2C = 0.16
    let alphaBar: [Double] = {
        var product = 1.0
        return (0..<1000).map { t in
            product *= 1 - (0.0001 + (0.02 - 0.0001) * Double(t) / 999)
            return product
        }
    }()

    /// (m_0, V_0, prod A_t) from (m_T, V_T) = (0, 1).
    func law(rule: Rule, steps S: Int, w: Double) -> (mean: Double, variance: Double, slope: Double) {
        let ratio = 1000 / S
        var m = 0.0
        var V = 1.0
        var slope = 1.0
        for i in (0..<S).reversed() {
            let t = i * ratio
            let prev = t - ratio
            let a = alphaBar[t]
            let ap = prev >= 0 ? alphaBar[prev] : 1.0
            func eps(_ x: Double, mu: Double, s2: Double) -> Double {
                (1 - a).squareRoot() * (x - a.squareRoot() * mu) / (a * s2 + 1 - a)
            }
            func deterministic(_ x: Double) -> Double {
                let u = eps(x, mu: muU, s2: s2U)
                let e = u + w * (eps(x, mu: muC, s2: s2C) - u)
                let x0 = (x - (1 - a).squareRoot() * e) / a.squareRoot()
                switch rule {
                case .ddim(let eta):
                    let sig = eta * ((1 - ap) / (1 - a)).squareRoot() * (1 - a / ap).squareRoot()
                    return ap.squareRoot() * x0 + (1 - ap - sig * sig).squareRoot() * e
                case .ddpm:
                    let alpha = a / ap
                    return ap.squareRoot() * (1 - alpha) / (1 - a) * x0 + alpha.squareRoot() * (1 - ap) / (1 - a) * x
                }
            }
            let sigma2: Double
            switch rule {
            case .ddim(let eta): sigma2 = eta * eta * (1 - ap) / (1 - a) * (1 - a / ap)
            case .ddpm: sigma2 = t > 0 ? (1 - ap) / (1 - a) * (1 - a / ap) : 0
            }
            let B = deterministic(0)
            let A = deterministic(1) - B
            V = A * A * V + sigma2
            m = A * m + B
            slope *= A
        }
        return (m, V, slope)
    }

    /// p(x|c)^w p(x)^(1-w), normalised: precision w/s2C + (1-w)/s2U (must be > 0).
    func powered(w: Double) -> (mean: Double, variance: Double) {
        let precision = w / s2C + (1 - w) / s2U
        return ((w * muC / s2C + (1 - w) * muU / s2U) / precision, 1 / precision)
    }
}

/// KL(N(m1, v1) || N(m2, v2)).
private func gaussianKL(_ m1: Double, _ v1: Double, _ m2: Double, _ v2: Double) -> Double {
    0.5 * (v1 / v2 + (m1 - m2) * (m1 - m2) / v2 - 1 + log(v2 / v1))
}

@Suite("Sampling: classifier-free guidance (WORKLOADS S1)")
struct SamplingGuidanceTests {
    private let recursion = GuidedRecursion()

    private func config(_ sampler: SamplerKind, steps: Int, w: Double, samples: Int) throws -> SamplingConfig {
        let unconditional = try GaussianMixture(means: [[recursion.muU]], stds: [recursion.s2U.squareRoot()])
        let conditional = try GaussianMixture(means: [[recursion.muC]], stds: [recursion.s2C.squareRoot()])
        return try SamplingConfig(
            target: unconditional, schedule: SamplingFixtures.schedule(), sampler: sampler, samplingSteps: steps,
            seed: 20_251_129, samples: samples,
            guidance: SamplingGuidance(scale: w, conditional: conditional))
    }

    @Test(
        "guided samples match the exact CFG law N(m_0, V_0) of the two-Gaussian recursion at N = 1e5",
        arguments: [
            (SamplerKind.ddim(eta: 0), GuidedRecursion.Rule.ddim(eta: 0), 3.0),
            (SamplerKind.ddim(eta: 0.5), GuidedRecursion.Rule.ddim(eta: 0.5), 2.0),
            (SamplerKind.ddpm, GuidedRecursion.Rule.ddpm, 3.0),
            (SamplerKind.ddpm, GuidedRecursion.Rule.ddpm, 0.0),
        ])
    fileprivate func exactLaw(sampler: SamplerKind, rule: GuidedRecursion.Rule, w: Double) throws {
        let N = 100_000
        let S = 50
        let law = recursion.law(rule: rule, steps: S, w: w)
        let result = try SamplingFixtures.run(config(sampler, steps: S, w: w, samples: N), shards: 2)
        #expect(result.n == N)
        #expect(result.nanCount == 0)
        let mean = result.mean[0]
        let variance = result.cov[0][0]
        #expect(abs(mean - law.mean) < 5 * (law.variance / Double(N)).squareRoot(), "mean \(mean) vs m_0 \(law.mean)")
        #expect(
            abs(variance / law.variance - 1) < 5 * (2 / Double(N)).squareRoot(),
            "variance \(variance) vs V_0 \(law.variance)")
    }

    @Test("eta = 0 guided sampling is the affine map x_T -> prod A_t x_T + m_0 of the recursion")
    func deterministicSlope() throws {
        for (S, w) in [(10, 3.0), (50, 1.5), (1000, 5.0)] {
            let c = try config(.ddim(eta: 0), steps: S, w: w, samples: 1)
            let law = recursion.law(rule: .ddim(eta: 0), steps: S, w: w)
            let one = sampleTrajectory(config: c, initial: [1], noise: { _ in [] })
            let zero = sampleTrajectory(config: c, initial: [0], noise: { _ in [] })
            #expect(abs((one[0] - zero[0]) - law.slope) < 1e-5, "S=\(S) w=\(w): \(one[0] - zero[0]) vs \(law.slope)")
            #expect(abs(zero[0] - law.mean) < 1e-9, "S=\(S) w=\(w): \(zero[0]) vs \(law.mean)")
        }
    }

    @Test("the CFG law is not the powered Gaussian p(x|c)^w p(x)^(1-w): the gap is > 0 where discretisation is ~0")
    func gapToPoweredGaussian() {
        // Near-continuous sampling (DDPM, S = T = 1000): w = 0 and w = 1 reproduce p(x) and p(x|c) almost exactly
        // (the recursion's own discretisation gap), so that is the resolution of the comparison.
        let S = 1000
        let uncond = recursion.law(rule: .ddpm, steps: S, w: 0)
        let cond = recursion.law(rule: .ddpm, steps: S, w: 1)
        let resolution = max(
            gaussianKL(uncond.mean, uncond.variance, recursion.muU, recursion.s2U),
            gaussianKL(cond.mean, cond.variance, recursion.muC, recursion.s2C))
        #expect(resolution < 1e-3, "discretisation KL \(resolution)")
        for w in [2.0, 3.0, 5.0] {
            for rule in [GuidedRecursion.Rule.ddpm, .ddim(eta: 0)] {
                let cfg = recursion.law(rule: rule, steps: S, w: w)
                let powered = recursion.powered(w: w)
                let gap = gaussianKL(cfg.mean, cfg.variance, powered.mean, powered.variance)
                #expect(
                    gap > 0,
                    "w=\(w): CFG law N(\(cfg.mean), \(cfg.variance)), powered N(\(powered.mean), \(powered.variance))")
                #expect(gap > 10 * resolution, "w=\(w): gap \(gap) is not above the discretisation KL \(resolution)")
            }
        }
        // w = 1 is the conditional law itself, which IS the powered Gaussian at w = 1: no gap beyond discretisation.
        let powered1 = recursion.powered(w: 1)
        #expect(gaussianKL(cond.mean, cond.variance, powered1.mean, powered1.variance) < 1e-3)
    }

    @Test("class k on the ring: guidance puts the mass in mode k; w = 1 centres on component k")
    func ringClass() throws {
        for (w, minimum) in [(1.0, 0.99), (4.0, 0.999)] {
            let ring = try SamplingFixtures.ring()
            let c = try SamplingConfig(
                target: ring, schedule: SamplingFixtures.schedule(), sampler: .ddim(eta: 0), samplingSteps: 50, seed: 3,
                samples: 20_000, guidance: SamplingGuidance.component(2, of: ring, scale: w))
            let result = try SamplingFixtures.run(c, shards: 2)
            #expect(result.modeWeights[2] > minimum, "w=\(w): mode weights \(result.modeWeights)")
            #expect(abs(result.modeWeightError - (1 - result.modeWeights[2])) < 1e-12)
            // The noise floor is exact draws of component 2 alone.
            #expect(result.noiseFloor.modeWeightError < 1e-3)
            if w == 1 {
                // eps~ = eps_c: the sampler runs on component 2 alone, so its samples centre on mu_2 = (0, 2).
                // (Their spread is contracted by the finite-step sampler, WORKLOADS S1, so sw1 sits above the floor.)
                let m = result.perMode[2].mean
                #expect(abs(m[0]) < 0.01 && abs(m[1] - 2) < 0.01, "mode 2 mean \(m)")
            }
            #expect(result.jsonText.contains("\"guidance\":{\"guidance_scale\":\(w),\"class\":2,"))
        }
    }

    @Test("without guidance, results are byte for byte those of the code before guidance existed")
    func unguidedUnchanged() throws {
        // FNV-1a 64 of `jsonText` and of `statisticsFile()`, recorded by running this exact config on commit d5391d1
        // (the sampler before classifier-free guidance and the statistics refactor). Same machine kind and toolchain:
        // the metrics call libm (exp, cos, erfc), so another libm may legitimately move the last bits.
        func fnv(_ bytes: [UInt8]) -> String {
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            return String(h, radix: 16)
        }
        let expected: [(SamplerKind, String, String)] = [
            (.ddpm, "ebc5736fda741edd", "c4a49003fd8b2a48"),
            (.ddim(eta: 0.3), "ab9e38fcf769775e", "555c7c7bdfe5c207"),
        ]
        for (sampler, json, statistics) in expected {
            let c = try SamplingConfig(
                target: GaussianMixture(
                    weights: [0.5, 0.3, 0.2], means: [[1, 0], [-1, 0.5], [0, -1.5]], stds: [0.3, 0.2, 0.4]),
                schedule: SamplingFixtures.schedule(), sampler: sampler, samplingSteps: 20, seed: 0xDEAD_BEEF_1234,
                samples: 4096 + 123)
            let r = try SamplingFixtures.run(c, shards: 2)
            #expect(fnv(Array(r.jsonText.utf8)) == json, "\(sampler) jsonText")
            #expect(fnv(try r.statisticsFile()) == statistics, "\(sampler) statisticsFile")
            #expect(!r.jsonText.contains("guidance"))
        }
    }

    @Test("guided results are bitwise independent of the shard count")
    func shardInvariance() throws {
        let ring = try SamplingFixtures.ring()
        let c = try SamplingConfig(
            target: ring, schedule: SamplingFixtures.schedule(), sampler: .ddpm, samplingSteps: 10, seed: 5,
            samples: 2 * 4096 + 77, guidance: SamplingGuidance.component(6, of: ring, scale: 2.5))
        let one = try SamplingFixtures.run(c, shards: 1)
        let three = try SamplingFixtures.run(c, shards: 3)
        #expect(one.jsonText == three.jsonText)
        #expect(try one.statisticsFile() == three.statisticsFile())
    }

    @Test("job spec: class and guidance_scale are validated with their lines; no guidance keys, no guidance")
    func specParams() throws {
        let base = """
            name: cfg
            kind: sampling
            algorithm: ddim
            seed: 1
            params:
              target: {means: [[2,0],[0,2],[-2,0]], stds: [0.2,0.2,0.2]}
              samples: 4096

            """
        func config(_ extra: String) throws -> SamplingConfig {
            try DiffusionSampling(.ddim).config(JobSpec.parse(base + extra, file: "cfg.yaml"))
        }
        func error(_ extra: String) -> String {
            do {
                _ = try config(extra)
                return "no error"
            } catch { return "\(error)" }
        }
        #expect(try config("").guidance == nil)
        let guided = try config("  class: 1\n  guidance_scale: 3\n")
        #expect(guided.guidance?.component == 1)
        #expect(guided.guidance?.scale == 3)
        #expect(guided.guidance?.conditional.weights == [0, 1, 0])
        #expect(try config("  class: 2\n").guidance?.scale == 1)
        #expect(error("  guidance_scale: 3\n").contains("cfg.yaml:8: guidance_scale needs class"))
        #expect(error("  class: 3\n").contains("cfg.yaml:8: params.class must be between 0 and 2, not 3"))
        #expect(
            error("  class: 0\n  guidance_scale: -1\n").contains(
                "cfg.yaml:9: params.guidance_scale must be in [0.0, 100.0]"))
    }
}
