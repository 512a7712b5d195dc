// Issue 4 "Parity with the reference implementation": Tessera's DDIM/DDPM against Hugging Face diffusers'
// DDIMScheduler / DDPMScheduler (clip_sample off, set_alpha_to_one, leading spacing, fixed_small), run from the same
// x_T with the same injected step noise and the same exact-score model. The fixture is produced by
// ops/parity/diffusers_parity.py (see its header, or docs/sampling.md, to regenerate); no PyTorch is needed here.
//
// Tolerance: 1e-4 relative per sample (|x_tessera - x_diffusers| / |x_diffusers|), for eta = 0 and, with the same
// injected noise, for eta > 0 and DDPM. diffusers keeps a_t in float32, which moves results by ~1e-6 relative.

import Foundation
import TesseraCompute
import TesseraWorkloads
import Testing

@Suite("Parity with diffusers' DDIM/DDPM schedulers")
struct DiffusersParityTests {
    static func fixture() throws -> SafeTensorsFile {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/parity/diffusers_parity.safetensors")
        return try SafeTensorsFile.read(path: url.path)
    }

    struct Case: Decodable {
        var name: String
        var scheduler: String
        var eta: Double?
        var steps: Int
    }

    @Test("Same x_T and noise as Tessera's Philox streams; final samples within 1e-4 relative of diffusers")
    func parity() throws {
        let file = try Self.fixture()
        let meta = file.metadata
        #expect(meta["format"] == "tessera.parity.diffusers/1")
        let seed = try #require(meta["seed"].flatMap { UInt64($0) })
        let n = try #require(meta["samples"].flatMap { Int($0) })
        let cases = try JSONDecoder().decode([Case].self, from: Data(try #require(meta["cases"]).utf8))
        #expect(cases.count >= 6)
        let target = try GaussianMixture(
            weights: try #require(file["target.weights"]).float64Values(),
            means: try #require(file["target.means"]).float64Values().chunked(2),
            stds: try #require(file["target.stds"]).float64Values())
        let schedule = try BetaSchedule.linear(betaStart: 0.0001, betaEnd: 0.02, steps: 1000)
        let xT = try #require(file["x_T"]).float64Values()
        #expect(xT.count == n * 2)

        // The model itself: Tessera's eps* at t = 500 on x_T against the script's torch transcription.
        let eps500 = try #require(file["diffusers.eps_t500"]).float64Values()
        for i in 0..<n {
            let ours = target.epsilon(Array(xT[(2 * i)..<(2 * i + 2)]), alphaBar: schedule.alphaBar[500])
            for c in 0..<2 { #expect(abs(ours[c] - eps500[2 * i + c]) <= 1e-12 * max(1, abs(eps500[2 * i + c]))) }
        }

        for kase in cases {
            let sampler: SamplerKind = kase.scheduler == "ddim" ? .ddim(eta: kase.eta ?? 0) : .ddpm
            let config = try SamplingConfig(
                target: target, schedule: schedule, sampler: sampler, samplingSteps: kase.steps, seed: seed, samples: n)
            // The fixture's x_T is Tessera's: Philox stream 0 (bitwise).
            #expect(samplingInitialNoise(config: config, firstIndex: 0, count: n) == xT, "\(kase.name): x_T")
            #expect(
                try #require(file["diffusers.timesteps.\(kase.name)"]).int64Values() == samplingTimesteps(config: config).map { Int64($0) },
                "\(kase.name): timesteps")
            let noise = try file["noise.\(kase.name)"]?.float64Values()
            if case .ddim(let eta) = sampler, eta == 0 { #expect(noise == nil) }
            let expected = try #require(file["diffusers.\(kase.name)"]).float64Values()
            var worst = 0.0
            for i in 0..<n {
                let out = sampleTrajectory(config: config, initial: Array(xT[(2 * i)..<(2 * i + 2)])) { k in
                    // The noise the script injected at step k is Tessera's Philox stream 1, step k + 1 (bitwise).
                    let z = Array(noise![((k * n + i) * 2)..<((k * n + i) * 2 + 2)])
                    var s = PhiloxStream(seed: seed, index: UInt32(i), step: UInt32(k + 1), stream: .stepNoise)
                    #expect(s.normals(2) == z)
                    return z
                }
                let ref = Array(expected[(2 * i)..<(2 * i + 2)])
                let diff = ((out[0] - ref[0]) * (out[0] - ref[0]) + (out[1] - ref[1]) * (out[1] - ref[1])).squareRoot()
                let norm = (ref[0] * ref[0] + ref[1] * ref[1]).squareRoot()
                worst = max(worst, diff / max(norm, 1e-12))
            }
            #expect(worst <= 1e-4, "\(kase.name): max relative difference to diffusers \(worst)")
            // And the engine that runs shards gives the same rows as the single-trajectory path.
            var chain = xT
            runSamplingChain(config: config, x: &chain, firstIndex: 0)
            let single = (0..<n).flatMap { i in
                sampleTrajectory(config: config, initial: Array(xT[(2 * i)..<(2 * i + 2)])) { k in
                    var s = PhiloxStream(seed: seed, index: UInt32(i), step: UInt32(k + 1), stream: .stepNoise)
                    return s.normals(2)
                }
            }
            #expect(zip(chain, single).allSatisfy { abs($0 - $1) <= 1e-12 * max(1, abs($1)) }, "\(kase.name): chain")
        }
    }
}

extension Array {
    fileprivate func chunked(_ size: Int) -> [[Element]] {
        stride(from: 0, to: count, by: size).map { Array(self[$0..<Swift.min($0 + size, count)]) }
    }
}
