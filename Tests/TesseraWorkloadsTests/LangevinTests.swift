// WORKLOADS.md §1 S3 (i), (ii): Langevin samplers against closed forms.
//  (i) ULA on N(0, s^2) is an AR(1) chain, x' = (1 - h/s^2) x + sqrt(2h) z, so its law after k steps is exactly
//      Gaussian with V_k = (1 - h/s^2)^2 V_{k-1} + 2h, whose fixed point is s^2 / (1 - h/(2 s^2)): a known bias.
//      MALA's accept step removes it.
//  (ii) "Sampling Multimodal Distributions with the Vanilla Score" (data-based initialisation): on w = .8 at +4 and
//      .2 at -4 (s = .5), chains started at N(0, 1) split at the responsibility boundary x = -ln4/32 and keep about
//      .52 / .48; chains started at 4096 exact draws keep the empirical weights after 200 steps.
// Annealed Langevin (Song-Ermon) from N(0, 1) recovers the weights that plain ULA cannot.

import Foundation
import TesseraCompute
import TesseraCore
import TesseraWorkloads
import Testing

@Suite("Sampling: Langevin (ULA, MALA, annealed; WORKLOADS S3 i, ii)")
struct LangevinTests {
    /// w = .8 at +4, .2 at -4, s = .5.
    static func twoModes() throws -> GaussianMixture {
        try GaussianMixture(weights: [0.8, 0.2], means: [[4], [-4]], stds: [0.5, 0.5])
    }

    private func run(_ c: LangevinConfig, shards: Int = 2) throws -> LangevinResult {
        let parts = try SamplingPlan.ranges(samples: c.samples, shards: shards).map {
            try runLangevinShard(config: c, range: $0, onStep: { _ in }, shouldStop: { false })
        }
        return try mergeLangevin(config: c, shards: parts)
    }

    @Test("ULA on N(0, s^2): the exact AR(1) law, the stationary bias s^2/(1 - h/(2s^2)), and MALA removing it")
    func ulaBiasAndMALA() throws {
        let N = 100_000
        let s = 0.5
        let h = 0.1
        let steps = 200
        let target = try GaussianMixture(means: [[0]], stds: [s])
        // Exact variance after `steps` ULA steps from N(0, 1).
        let c = 1 - h / (s * s)
        var V = 1.0
        for _ in 0..<steps { V = c * c * V + 2 * h }
        let stationary = s * s / (1 - h / (2 * s * s))
        #expect(abs(V - stationary) < 1e-12, "after \(steps) steps V_k = \(V), fixed point \(stationary)")
        let tolerance = 5 * (2 / Double(N)).squareRoot()

        let ula = try run(
            LangevinConfig(
                target: target, method: .ula, steps: steps, stepSize: h, initialization: .normal(std: 1), seed: 11,
                samples: N))
        let ulaVariance = ula.cov[0][0]
        #expect(abs(ulaVariance / stationary - 1) < tolerance, "ULA variance \(ulaVariance) vs \(stationary)")
        #expect(abs(ula.mean[0]) < 5 * (stationary / Double(N)).squareRoot())
        // The bias is far outside the MC error: ULA is not sampling s^2.
        #expect(abs(ulaVariance / (s * s) - 1) > 10 * tolerance)
        #expect(ula.acceptRate == nil)

        let mala = try run(
            LangevinConfig(
                target: target, method: .mala, steps: steps, stepSize: h, initialization: .normal(std: 1), seed: 11,
                samples: N))
        let malaVariance = mala.cov[0][0]
        #expect(abs(malaVariance / (s * s) - 1) < tolerance, "MALA variance \(malaVariance) vs \(s * s)")
        #expect(abs(mala.mean[0]) < 5 * (s * s / Double(N)).squareRoot())
        let rate = try #require(mala.acceptRate)
        #expect(rate > 0.8 && rate < 1, "accept rate \(rate)")
        #expect(mala.proposals == Int64(N * steps))
        #expect(mala.jsonText.contains("\"accept_rate\":\(rate)"))
    }

    @Test("vanilla score from N(0,1) splits at the responsibility boundary; data-based init keeps w_emp")
    func dataBasedInitialisation() throws {
        let target = try Self.twoModes()
        // Started at N(0, 1): chains end in the mode whose side of x = -ln4/32 they started on.
        let vanilla = try run(
            LangevinConfig(
                target: target, method: .ula, steps: 200, stepSize: 0.01, initialization: .normal(std: 1), seed: 21,
                samples: 8192))
        let boundary = -log(4.0) / 32
        let expected = 1 - 0.5 * erfc(-boundary / 2.0.squareRoot())  // P(N(0,1) > boundary) = .517
        #expect(abs(vanilla.modeWeights[0] - 0.8) > 0.1, "vanilla w_hat \(vanilla.modeWeights)")
        #expect(abs(vanilla.modeWeights[0] - expected) < 0.03, "vanilla w_hat \(vanilla.modeWeights[0]) vs \(expected)")
        #expect(abs(vanilla.modeWeights[0] - vanilla.initModeWeights[0]) < 0.005)

        // Started at N_init = 4096 exact draws, 200 steps: the empirical weights survive.
        let data = try run(
            LangevinConfig(
                target: target, method: .ula, steps: 200, stepSize: 0.01, initialization: .data(samples: 4096),
                seed: 21, samples: 4096),
            shards: 1)
        #expect(
            abs(data.modeWeights[0] - data.initModeWeights[0]) < 0.01, "\(data.modeWeights) vs \(data.initModeWeights)")
        #expect(abs(data.initModeWeights[0] - 0.8) < 0.03)
        // More chains than draws: chain i starts at draw i mod N_init.
        let repeated = try run(
            LangevinConfig(
                target: target, method: .ula, steps: 5, stepSize: 0.01, initialization: .data(samples: 4096),
                seed: 21, samples: 2 * 4096))
        #expect(repeated.initModeWeights == data.initModeWeights)
    }

    @Test("annealed Langevin (Song-Ermon) from N(0,1) recovers the .8/.2 weights that ULA misses")
    func annealed() throws {
        let c = try LangevinConfig(
            target: Self.twoModes(), method: .annealed, steps: 100, stepSize: 0.002,
            initialization: .normal(std: 1), annealing: LangevinAnnealing(sigmaMax: 10, sigmaMin: 0.1, levels: 20),
            seed: 31, samples: 8192)
        #expect(c.totalSteps == 2000)
        var sigmas: [Double] = []
        var sizes: [Double] = []
        let parts = try SamplingPlan.ranges(samples: c.samples, shards: 2).map { range in
            try runLangevinShard(
                config: c, range: range,
                onStep: { m in
                    if m.step % 100 == 0, range.lowerBound == 0 {
                        sigmas.append(m.sigma)
                        sizes.append(m.stepSize)
                    }
                }, shouldStop: { false })
        }
        let result = try mergeLangevin(config: c, shards: parts)
        #expect(abs(result.modeWeights[0] - 0.8) < 0.03, "annealed w_hat \(result.modeWeights)")
        #expect(result.nanCount == 0)
        // The ladder: geometric from 10 to 0.1, h_i = e sigma_i^2 / sigma_L^2.
        #expect(sigmas.count == 20)
        #expect(sigmas.first == 10 && sigmas.last == 0.1)
        for (a, b) in zip(sigmas, sigmas.dropFirst()) { #expect(abs(b / a - pow(0.01, 1.0 / 19)) < 1e-12) }
        for (sigma, h) in zip(sigmas, sizes) { #expect(abs(h - 0.002 * sigma * sigma / 0.01) < 1e-12 * h) }
    }

    @Test("merged results are bitwise identical for 1, 2 and 3 shards (MALA, so accept counts are covered)")
    func shardInvariance() throws {
        let target = try GaussianMixture(
            weights: [0.5, 0.3, 0.2], means: [[1, 0], [-1, 0.5], [0, -1.5]], stds: [0.3, 0.2, 0.4])
        for method in [LangevinMethod.mala, .annealed] {
            let c = try LangevinConfig(
                target: target, method: method, steps: 20, stepSize: 0.01, initialization: .normal(std: 1),
                annealing: method == .annealed ? LangevinAnnealing(sigmaMax: 2, sigmaMin: 0.1, levels: 3) : nil,
                seed: 0xBEEF, samples: 2 * 4096 + 500, keepSamples: true)
            let one = try run(c, shards: 1)
            for shards in [2, 3] {
                let other = try run(c, shards: shards)
                #expect(other.jsonText == one.jsonText, "\(method), \(shards) shards")
                #expect(other == one)
            }
        }
    }

    @Test("shard results round-trip with their extras; merge rejects a shard without them")
    func extrasRoundTrip() throws {
        let c = try LangevinConfig(
            target: Self.twoModes(), method: .mala, steps: 3, stepSize: 0.01, initialization: .normal(std: 1), seed: 1,
            samples: 100)
        let shard = try runLangevinShard(config: c, range: 0..<100, onStep: { _ in }, shouldStop: { false })
        #expect(shard.extras.integers["proposals"] == [300])
        let back = try SamplingShardResult.deserialize(try shard.serialize())
        #expect(back == shard)
        var stripped = shard
        stripped.extras = SamplingShardExtras()
        #expect(throws: SamplingError.self) { try mergeLangevin(config: c, shards: [stripped]) }
    }

    @Test("cancellation throws, and every step reports its metrics")
    func cancellation() throws {
        let c = try LangevinConfig(
            target: Self.twoModes(), method: .ula, steps: 10, stepSize: 0.01, initialization: .normal(std: 1), seed: 1,
            samples: 64)
        var steps: [Int] = []
        _ = try runLangevinShard(config: c, range: 0..<64, onStep: { steps.append($0.step) }, shouldStop: { false })
        #expect(steps == Array(0..<10))
        var calls = 0
        #expect(throws: CancellationError.self) {
            try runLangevinShard(
                config: c, range: 0..<64, onStep: { _ in },
                shouldStop: {
                    calls += 1
                    return calls > 3
                })
        }
    }

    @Test("job spec: defaults, method-specific keys and errors with lines")
    func specParams() throws {
        let base = """
            name: lv
            kind: sampling
            algorithm: langevin
            seed: 1
            params:
              target: {means: [[4],[-4]], stds: [0.5,0.5], weights: [0.8, 0.2]}
              samples: 4096

            """
        func config(_ extra: String) throws -> LangevinConfig {
            try LangevinSampling().config(JobSpec.parse(base + extra, file: "lv.yaml"))
        }
        func error(_ extra: String) -> String {
            do {
                _ = try config(extra)
                return "no error"
            } catch { return "\(error)" }
        }
        let plain = try config("")
        #expect(plain.method == .ula && plain.steps == 1000 && plain.stepSize == 0.01)
        #expect(plain.initialization == .normal(std: 1))
        let data = try config("  init: data\n  init_samples: 512\n  steps: 200\n")
        #expect(data.initialization == .data(samples: 512))
        let annealed = try config("  method: annealed\n  levels: 5\n")
        #expect(annealed.annealing?.levels == 5 && annealed.steps == 100 && annealed.stepSize == 0.002)
        #expect(annealed.totalSteps == 500)
        #expect(error("  method: hmc\n").contains("lv.yaml:8: params.method must be one of ula, mala, annealed"))
        #expect(error("  sigma_max: 3\n").contains("lv.yaml:8: sigma_max belongs to method: annealed"))
        #expect(error("  init_samples: 3\n").contains("lv.yaml:8: init_samples belongs to init: data"))
        #expect(error("  init: data\n  init_std: 2\n").contains("lv.yaml:9: init_std belongs to init: normal"))
        #expect(error("  step_size: 0\n").contains("lv.yaml:8: params.step_size must be in"))
        #expect(
            error("  method: annealed\n  sigma_min: 5\n  sigma_max: 1\n").contains(
                "lv.yaml:9: sigma_min (5.0) must not exceed sigma_max (1.0)"))
        let spec = try JobSpec.parse(
            base.replacingOccurrences(of: "seed: 1", with: "seed: 1\nshards: 3"), file: "lv.yaml")
        #expect(throws: SpecError.self) { try LangevinSampling().plan(spec) }
    }
}
