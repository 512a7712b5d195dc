// WORKLOADS.md §1 S3 (iii), "Correcting Diffusion Generation through Resampling": the sampler runs on a wrong model
// p~ (weights .5/.5); exact density-ratio weights log[p_t'/p~_t'](x_t') - log[p_t/p~_t](x_t) telescope to p_0/p~_0,
// and systematic resampling (ESS < N/2) turns the population toward the true .8/.2.

import Foundation
import TesseraCompute
import TesseraCore
import TesseraWorkloads
import Testing

@Suite("Sampling: SMC correction of a wrong-model diffusion sampler (WORKLOADS S3 iii)")
struct SMCTests {
    static func mixture(_ w: Double) throws -> GaussianMixture {
        try GaussianMixture(weights: [w, 1 - w], means: [[4], [-4]], stds: [0.5, 0.5])
    }

    private func config(
        truth: Double = 0.8, proposal: Double = 0.5, sampler: SamplerKind = .ddpm, steps: Int = 100,
        populations: Int = 4, correction: SMCCorrection = .exact, threshold: Double = 0.5, seed: UInt64 = 41,
        discriminator: SMCDiscriminatorSettings? = nil
    ) throws -> SMCConfig {
        try SMCConfig(
            target: Self.mixture(truth), proposal: Self.mixture(proposal), schedule: SamplingFixtures.schedule(),
            sampler: sampler, samplingSteps: steps, particles: 4096, populations: populations,
            essThreshold: threshold, correction: correction, discriminator: discriminator, seed: seed)
    }

    private func run(_ c: SMCConfig, shards: Int) throws -> SMCResult {
        let parts = try SMCPlan.populationRanges(populations: c.populations, shards: shards).map {
            try runSMCShard(config: c, populations: $0, onStep: { _ in }, shouldStop: { false })
        }
        return try mergeSMC(config: c, shards: parts)
    }

    @Test("after SMC the mode weights are .8 within .02; the uncorrected wrong-model sampler gives about .5")
    func headline() throws {
        let corrected = try run(config(), shards: 2)
        #expect(abs(corrected.modeWeights[0] - 0.8) < 0.02, "after SMC: \(corrected.modeWeights)")
        #expect(abs(corrected.weightedModeWeights[0] - 0.8) < 0.02, "weighted: \(corrected.weightedModeWeights)")
        #expect(corrected.n == 4 * 4096 && corrected.nanCount == 0)
        // Weights 1.6 / 0.4 on halves: ESS / N = 1 / 1.36 ~ .735 at the end, above the threshold.
        #expect(abs(corrected.ess - 1 / 1.36) < 0.03, "final ESS \(corrected.ess)")
        #expect(abs(corrected.logNormalizer) < 0.05, "log Z \(corrected.logNormalizer)")
        #expect(corrected.modeWeightError < 0.02)

        let plain = try run(config(correction: .none), shards: 2)
        #expect(abs(plain.modeWeights[0] - 0.5) < 0.03, "without SMC: \(plain.modeWeights)")
        #expect(plain.resampleCount == 0 && plain.ess == 1)
        #expect(abs(plain.weightedModeWeights[0] - plain.modeWeights[0]) < 1e-9)
    }

    @Test("a far-off proposal (.9/.1 for a .2/.8 truth) triggers resampling and is still corrected")
    func resamplingTriggers() throws {
        let result = try run(config(truth: 0.2, proposal: 0.9, populations: 2), shards: 2)
        #expect(result.resampleCount > 0, "resample count \(result.resampleCount)")
        #expect(result.populationResamples.allSatisfy { $0 > 0 })
        #expect(result.minESS < 0.5)
        #expect(abs(result.modeWeights[0] - 0.2) < 0.03, "after SMC: \(result.modeWeights)")
        #expect(abs(result.weightedModeWeights[0] - 0.2) < 0.03, "weighted: \(result.weightedModeWeights)")
    }

    @Test("DDIM(eta = 1) as the proposal sampler is corrected as well")
    func ddimProposal() throws {
        let result = try run(config(sampler: .ddim(eta: 1), steps: 50, populations: 2), shards: 1)
        #expect(abs(result.modeWeights[0] - 0.8) < 0.03, "after SMC: \(result.modeWeights)")
    }

    @Test("proposal == target: every increment is exactly 0, so weights stay uniform and nothing resamples")
    func exactProposal() throws {
        let c = try config(truth: 0.8, proposal: 0.8, steps: 20, populations: 1, threshold: 1)
        let result = try run(c, shards: 1)
        #expect(result.ess == 1)
        #expect(result.minESS == 1)
        #expect(result.resampleCount == 0)
        #expect(result.logNormalizer == 0)
        // The final systematic resampling with uniform weights is the identity: same as no correction at all.
        let plain = try run(config(truth: 0.8, proposal: 0.8, steps: 20, populations: 1, correction: .none), shards: 1)
        #expect(result.mean == plain.mean && result.cov == plain.cov && result.modeWeights == plain.modeWeights)
    }

    @Test("discriminator variant: the learned logit tracks the closed-form log ratio, and SMC with it corrects too")
    func discriminator() throws {
        // 1000 Adam steps of 512 rows (a debug-build budget); the default 2000 reach RMSE ~0.07, 4000 ~0.045.
        let settings = try SMCDiscriminatorSettings(width: 64, steps: 1000, batch: 512, learningRate: 2e-3)
        let result = try run(config(populations: 1, correction: .discriminator, discriminator: settings), shards: 1)
        let rmse = try #require(result.discriminatorRMSE)
        // Scale: the closed-form log ratio spans log(.2/.5) = -0.92 to log(.8/.5) = 0.47 near the data.
        #expect(rmse < 0.15, "log-ratio RMSE \(rmse)")
        // At the optimum the BCE is log 2 - JS(p_t, p~_t) per row: between ~0.64 and log 2 here.
        let loss = try #require(result.discriminatorLoss)
        #expect(loss > 0.6 && loss < log(2.0), "BCE \(loss)")
        #expect(abs(result.weightedModeWeights[0] - 0.8) < 0.03, "weighted: \(result.weightedModeWeights)")
        #expect(abs(result.modeWeights[0] - 0.8) < 0.03, "after SMC: \(result.modeWeights)")
        #expect(result.jsonText.contains("\"discriminator_log_ratio_rmse\":\(rmse)"))
    }

    @Test("discriminator variant: every shard trains the same network, so shard counts agree; a mismatch is refused")
    func discriminatorShards() throws {
        let tiny = try SMCDiscriminatorSettings(width: 16, steps: 40, batch: 64, learningRate: 1e-2, evalSamples: 256)
        let c = try config(steps: 10, populations: 2, correction: .discriminator, discriminator: tiny)
        let one = try run(c, shards: 1)
        let two = try run(c, shards: 2)
        #expect(one.jsonText == two.jsonText)
        var parts = try SMCPlan.populationRanges(populations: 2, shards: 2).map {
            try runSMCShard(config: c, populations: $0, onStep: { _ in }, shouldStop: { false })
        }
        parts[1].extras.integers["discriminator_digest"] = [12345]
        #expect(throws: SamplingError.self) { try mergeSMC(config: c, shards: parts) }
    }

    @Test("the merged result is bitwise identical for any shard count with the same population layout")
    func shardInvariance() throws {
        let c = try config(truth: 0.2, proposal: 0.9, steps: 20, populations: 3)
        let one = try run(c, shards: 1)
        for shards in [2, 3] {
            let other = try run(c, shards: shards)
            #expect(other.jsonText == one.jsonText, "\(shards) shards")
            #expect(other == one)
        }
        #expect(SMCPlan.populationRanges(populations: 5, shards: 3) == [0..<2, 2..<4, 4..<5])
        #expect(SMCPlan.populationRanges(populations: 2, shards: 3) == [0..<1, 1..<2])
    }

    @Test("streamed metrics: ESS in (0, 1], resampling counts, one report per step")
    func stepMetrics() throws {
        let c = try config(truth: 0.2, proposal: 0.9, steps: 20, populations: 1)
        var reports: [SMCStepMetrics] = []
        let shard = try runSMCShard(
            config: c, populations: 0..<1, onStep: { reports.append($0) }, shouldStop: { false })
        #expect(reports.map(\.step) == Array(0..<20))
        #expect(reports.allSatisfy { $0.ess > 0 && $0.ess <= 1 })
        #expect(Int64(reports.map(\.resampled).reduce(0, +)) == shard.extras.integers["resample_count"]?[0])
        #expect(reports.first?.t == 950)
    }

    @Test("job spec: populations bound the shards; particles are whole blocks; errors carry lines")
    func specParams() throws {
        let base = """
            name: smc
            kind: sampling
            algorithm: smc
            seed: 1
            shards: 2
            params:
              target: {means: [[4],[-4]], stds: [0.5,0.5], weights: [0.8, 0.2]}
              proposal: {weights: [0.5, 0.5]}

            """
        func spec(_ extra: String) throws -> JobSpec { try JobSpec.parse(base + extra, file: "smc.yaml") }
        func error(_ extra: String) -> String {
            do {
                _ = try SMCSampling().plan(spec(extra))
                return "no error"
            } catch { return "\(error)" }
        }
        let c = try SMCSampling().config(spec("  populations: 4\n"))
        #expect(c.proposal.means == c.target.means && c.proposal.weights == [0.5, 0.5])
        #expect(c.sampler == .ddpm && c.samplingSteps == 100 && c.particles == 4096 && c.essThreshold == 0.5)
        #expect(try SMCSampling().plan(spec("  populations: 5\n")).count == 2)
        #expect(error("").contains("smc.yaml:5: shards: 2 is more than populations: 1"))
        #expect(
            error("  populations: 2\n  particles: 5000\n").contains(
                "smc.yaml:10: params.particles must be a multiple of 4096"))
        #expect(error("  populations: 2\n  samples: 10\n").contains("smc.yaml:10: smc has no samples"))
        #expect(error("  populations: 2\n  eta: 0.5\n").contains("smc.yaml:10: eta belongs to sampler: ddim"))
        #expect(
            try SMCSampling().config(spec("  populations: 2\n  sampler: ddim\n")).sampler == .ddim(eta: 1))
        let d = try SMCSampling().config(spec("  populations: 2\n  correction: discriminator\n"))
        #expect(d.discriminator == (try SMCDiscriminatorSettings()))
        let custom = try SMCSampling().config(
            spec("  populations: 2\n  correction: discriminator\n  discriminator: {steps: 10, width: 8}\n"))
        #expect(custom.discriminator?.steps == 10 && custom.discriminator?.width == 8)
        #expect(
            error("  populations: 2\n  discriminator: {steps: 10}\n").contains(
                "smc.yaml:10: discriminator settings belong to correction: discriminator"))
        #expect(
            error("  populations: 2\n  correction: discriminator\n  discriminator: {batch: 3}\n").contains(
                "smc.yaml:11: params.discriminator.batch must be even"))
    }
}
