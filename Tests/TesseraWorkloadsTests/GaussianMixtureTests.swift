import Foundation
import TesseraCompute
import TesseraWorkloads
import Testing

@Suite("GaussianMixture: validation, exact fields, exact draws")
struct GaussianMixtureTests {
    private func rejection(_ build: () throws -> GaussianMixture) -> String? {
        do {
            _ = try build()
            return nil
        } catch let error as SamplingError {
            #expect(error.code == .invalidTarget)
            return error.message
        } catch {
            return "\(error)"
        }
    }

    @Test("bad targets are rejected with a message naming the problem")
    func rejects() {
        let cases: [(String, () throws -> GaussianMixture)] = [
            ("empty", { try GaussianMixture(weights: nil, means: [], stds: []) }),
            ("stds", { try GaussianMixture(weights: nil, means: [[0], [1]], stds: [1]) }),
            ("same dimension", { try GaussianMixture(weights: nil, means: [[0, 0], [1]], stds: [1, 1]) }),
            ("at least one coordinate", { try GaussianMixture(weights: nil, means: [[]], stds: [1]) }),
            ("> 0", { try GaussianMixture(weights: nil, means: [[0]], stds: [0]) }),
            ("> 0", { try GaussianMixture(weights: nil, means: [[0]], stds: [-1]) }),
            ("> 0", { try GaussianMixture(weights: nil, means: [[0]], stds: [.nan]) }),
            ("non-finite", { try GaussianMixture(weights: nil, means: [[.infinity]], stds: [1]) }),
            ("weights", { try GaussianMixture(weights: [1], means: [[0], [1]], stds: [1, 1]) }),
            (">= 0", { try GaussianMixture(weights: [1.5, -0.5], means: [[0], [1]], stds: [1, 1]) }),
            ("sum to 1", { try GaussianMixture(weights: [0.5, 0.4], means: [[0], [1]], stds: [1, 1]) }),
        ]
        for (fragment, build) in cases {
            let message = rejection(build)
            #expect(
                message?.contains(fragment) == true,
                "expected a message containing '\(fragment)', got \(message ?? "no error")")
        }
    }

    @Test("weights within 1e-9 of summing to 1 are normalised; nil means uniform")
    func normalises() throws {
        let g = try GaussianMixture(weights: [0.8, 0.2 + 5e-10], means: [[4], [-4]], stds: [0.5, 0.5])
        #expect(abs(g.weights.reduce(0, +) - 1) < 1e-15)
        let u = try GaussianMixture(weights: nil, means: [[0], [1], [2], [3]], stds: [1, 1, 1, 1])
        #expect(u.weights == [0.25, 0.25, 0.25, 0.25])
        #expect(u.dimension == 1)
    }

    @Test("score = grad log p_a (finite differences); eps and x0 obey Tweedie")
    func exactFields() throws {
        let g = try GaussianMixture(
            weights: [0.5, 0.3, 0.2], means: [[1, 0], [-1, 0.5], [0, -1.5]], stds: [0.3, 0.2, 0.4])
        for a in [0.999, 0.5, 0.01] {
            for x in [[0.3, -0.2], [2.0, 1.0], [-30.0, 40.0]] {
                let score = g.score(x, alphaBar: a)
                let h = 1e-5
                for c in 0..<2 {
                    var plus = x
                    var minus = x
                    plus[c] += h
                    minus[c] -= h
                    let numeric = (g.logDensity(plus, alphaBar: a) - g.logDensity(minus, alphaBar: a)) / (2 * h)
                    #expect(abs(numeric - score[c]) < 1e-4 * max(1, abs(score[c])), "a=\(a) x=\(x) c=\(c)")
                }
                let eps = g.epsilon(x, alphaBar: a)
                let x0 = g.x0(x, alphaBar: a)
                for c in 0..<2 {
                    #expect(abs(eps[c] + (1 - a).squareRoot() * score[c]) < 1e-12 * max(1, abs(eps[c])))
                    // Tweedie: E[x0 | x] = (x + (1 - a) score) / sqrt(a).
                    let tweedie = (x[c] + (1 - a) * score[c]) / a.squareRoot()
                    #expect(abs(x0[c] - tweedie) < 1e-9 * max(1, abs(tweedie)), "a=\(a) x=\(x)")
                }
                #expect(abs(g.responsibilities(x, alphaBar: a).reduce(0, +) - 1) < 1e-12)
            }
        }
    }

    @Test("exact draws: a pure function of (seed, index), with the target's moments and weights")
    func draws() throws {
        let g = try GaussianMixture(weights: [0.8, 0.2], means: [[4], [-4]], stds: [0.5, 0.5])
        #expect(g.draw(seed: 5, index: 17).point == g.draw(seed: 5, index: 17).point)
        #expect(g.draw(seed: 5, index: 17).point != g.draw(seed: 6, index: 17).point)
        let N = 40_000
        var count0 = 0
        var sum = 0.0
        for i in 0..<N {
            let (k, x) = g.draw(seed: 5, index: UInt32(i))
            if k == 0 { count0 += 1 }
            sum += x[0]
            #expect(g.mode(of: x) == k)  // 16 stds apart: the classifier never errs
        }
        let w = Double(count0) / Double(N)
        #expect(abs(w - 0.8) < 5 * (0.16 / Double(N)).squareRoot())
        #expect(abs(sum / Double(N) - 2.4) < 5 * (10.49 / Double(N)).squareRoot())
    }

    @Test("schedule and config validation")
    func configValidation() throws {
        #expect(throws: SamplingError.self) { try BetaSchedule.linear(betaStart: 0.02, betaEnd: 0.0001, steps: 1000) }
        #expect(throws: SamplingError.self) { try BetaSchedule.linear(betaStart: 0.0001, betaEnd: 0.02, steps: 0) }
        let s = try BetaSchedule.linear(betaStart: 0.0001, betaEnd: 0.02, steps: 1000)
        #expect(s.betas.first == 0.0001)
        #expect(abs(s.betas.last! - 0.02) < 1e-18)
        #expect(abs(s.alphaBar[999] - 4.0358e-5) < 1e-8)
        let g = try GaussianMixture(weights: nil, means: [[0]], stds: [1])
        #expect(throws: SamplingError.self) {
            try SamplingConfig(
                target: g, schedule: s, sampler: .ddim(eta: 0), samplingSteps: 1001, seed: 1, samples: 10)
        }
        #expect(throws: SamplingError.self) {
            try SamplingConfig(
                target: g, schedule: s, sampler: .ddim(eta: -0.1), samplingSteps: 50, seed: 1, samples: 10)
        }
        #expect(throws: SamplingError.self) {
            try SamplingConfig(target: g, schedule: s, sampler: .ddpm, samplingSteps: 50, seed: 1, samples: 0)
        }
    }
}
