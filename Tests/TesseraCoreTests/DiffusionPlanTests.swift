import Foundation
import Testing
import TesseraCore
import TesseraWorkloads

/// Planning and parameter validation of `ddpm`/`ddim` through the catalogue, as `tessera submit` does it.
@Suite struct DiffusionPlanTests {
    func spec(_ text: String) throws -> JobSpec { try JobSpec.parse(text, file: "s.yaml") }

    func base(algorithm: String = "ddim", shards: Int = 4, samples: Int = 100_000, extra: String = "") -> String {
        """
        name: t
        kind: sampling
        algorithm: \(algorithm)
        seed: 7
        shards: \(shards)
        params:
          target: {type: gmm, means: [[2,0],[0,2]], stds: [0.2,0.2]}
          samples: \(samples)
        \(extra)
        """
    }

    func error(_ text: String) -> String? {
        do {
            _ = try Workloads.catalogue.validate(try spec(text))
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func plansBlockAlignedRangesCoveringEverySample() throws {
        let (_, slices) = try Workloads.catalogue.validate(try spec(base(shards: 8)))
        #expect(slices.count == 8)
        var next = 0
        for s in slices {
            let a = try #require(s.slice["start"]?.intValue), b = try #require(s.slice["end"]?.intValue)
            #expect(a == next)
            #expect(a % 4096 == 0)
            #expect(b > a)
            #expect(s.totalSteps == 50)
            next = b
        }
        #expect(next == 100_000)
    }

    @Test func tooManyShardsNamesTheMaximum() {
        let e = error(base(shards: 3, samples: 5000))
        #expect(e?.hasPrefix("s.yaml:5: shards: 3 is more than the 2 block(s)") == true, "\(e ?? "nil")")
    }

    @Test func paramErrorsPointAtTheirLine() {
        #expect(error(base(algorithm: "ddpm", extra: "  eta: 0.5"))?.hasPrefix("s.yaml:9: ddpm has no eta") == true)
        #expect(error(base(extra: "  sampling_steps: 5000"))?.hasPrefix("s.yaml:9: params.sampling_steps must be between 1 and 1000") == true)
        #expect(error(base(extra: "  colour: red"))?.hasPrefix("s.yaml:9: unknown key 'colour' in params") == true)
        #expect(error(base(extra: "  schedule: {type: cosine}"))?.hasPrefix("s.yaml:9: params.schedule.type must be one of linear") == true)
        let badStd = base().replacingOccurrences(of: "stds: [0.2,0.2]", with: "stds: [0.2,-1]")
        #expect(error(badStd)?.hasPrefix("s.yaml:7: params.target:") == true, "\(error(badStd) ?? "nil")")
        let noSamples = base().replacingOccurrences(of: "  samples: 100000\n", with: "")
        #expect(error(noSamples)?.contains("missing required key 'params.samples'") == true)
        #expect(error(base(algorithm: "dpm-solver"))?.hasPrefix("s.yaml:3: unknown sampling algorithm 'dpm-solver'; known: ddpm, ddim") == true)
    }

    @Test func defaultsAreFilledIntoTheStoredSpec() throws {
        let s = try spec(base())
        let back = try JobSpec.fromStored(s.json.utf8Bytes)
        #expect(back.maxAttempts == 3)
        #expect(try Workloads.catalogue.validate(back).1.count == 4)
    }
}
