// Sharding and merging (WORKLOADS.md §4): the merged result is bitwise identical for any shard count and arrival
// order; shard results round-trip through their binary form; bad shard sets are rejected.

import Foundation
import TesseraCompute
import TesseraWorkloads
import Testing

@Suite("Sampling: plan, merge, serialization")
struct SamplingMergeTests {
    /// A 2-D, 3-mode, unequal-weight target with DDPM (so step noise is exercised); N = 3 * 4096 + 123.
    private func config(keepSamples: Bool = false) throws -> SamplingConfig {
        try SamplingConfig(
            target: GaussianMixture(
                weights: [0.5, 0.3, 0.2], means: [[1, 0], [-1, 0.5], [0, -1.5]], stds: [0.3, 0.2, 0.4]),
            schedule: SamplingFixtures.schedule(), sampler: .ddpm, samplingSteps: 20, seed: 0xDEAD_BEEF_1234,
            samples: 3 * 4096 + 123, keepSamples: keepSamples)
    }

    private func shards(_ config: SamplingConfig, count: Int) throws -> [SamplingShardResult] {
        try SamplingPlan.ranges(samples: config.samples, shards: count).map {
            try runSamplingShard(config: config, range: $0, onStep: { _ in }, shouldStop: { false })
        }
    }

    @Test("ranges are block-aligned, contiguous, as even as possible, and never empty")
    func ranges() {
        #expect(SamplingPlan.ranges(samples: 0, shards: 4) == [])
        #expect(SamplingPlan.ranges(samples: 10, shards: 4) == [0..<10])
        #expect(SamplingPlan.ranges(samples: 4096, shards: 2) == [0..<4096])
        #expect(SamplingPlan.ranges(samples: 4097, shards: 2) == [0..<4096, 4096..<4097])
        #expect(
            SamplingPlan.ranges(samples: 100_000, shards: 4) == [
                0..<28672, 28672..<53248, 53248..<77824, 77824..<100_000,
            ])
        for n in [1, 4095, 4096, 12411, 100_000, 1_000_000] {
            for s in [1, 2, 3, 4, 7, 8, 50] {
                let r = SamplingPlan.ranges(samples: n, shards: s)
                #expect(r.count == min(s, (n + 4095) / 4096))
                #expect(r.first?.lowerBound == 0)
                #expect(r.last?.upperBound == n)
                for (a, b) in zip(r, r.dropFirst()) {
                    #expect(a.upperBound == b.lowerBound)
                    #expect(a.upperBound % 4096 == 0)
                }
                let blocks = r.map { ($0.count + 4095) / 4096 }
                #expect(blocks.max()! - blocks.min()! <= 1)
                #expect(r.allSatisfy { !$0.isEmpty })
            }
        }
    }

    @Test("1, 3 and 8 shards, in any arrival order, merge to bitwise-identical results")
    func shardCountInvariance() throws {
        let c = try config(keepSamples: true)
        let one = try shards(c, count: 1)
        let reference = try mergeSampling(config: c, shards: one)
        let referenceJSON = reference.jsonText
        let referenceBytes = try reference.statisticsFile()
        let referenceSamples = one.flatMap { $0.samples! }
        #expect(referenceSamples.count == c.samples * 2)
        var generator = SplitMix(seed: 42)
        for count in [3, 8] {
            let parts = try shards(c, count: count)
            #expect(parts.count == min(count, 4))
            #expect(parts.flatMap { $0.samples! } == referenceSamples)
            for order in [parts, parts.reversed(), parts.shuffled(using: &generator)] {
                let merged = try mergeSampling(config: c, shards: order)
                #expect(merged == reference)
                #expect(merged.jsonText == referenceJSON)
                #expect(try merged.statisticsFile() == referenceBytes)
                #expect(merged.mean.map(\.bitPattern) == reference.mean.map(\.bitPattern))
            }
        }
        // Sanity of the reference itself.
        #expect(reference.n == c.samples)
        #expect(reference.nanCount == 0)
        #expect(abs(reference.modeWeights.reduce(0, +) - 1) < 1e-12)
    }

    @Test("shard results round-trip bit-exactly through serialize/deserialize")
    func roundTrip() throws {
        for keep in [false, true] {
            let c = try config(keepSamples: keep)
            let part = try runSamplingShard(config: c, range: 8192..<c.samples, onStep: { _ in }, shouldStop: { false })
            let bytes = try part.serialize()
            let back = try SamplingShardResult.deserialize(bytes)
            #expect(back == part)
            #expect(try back.serialize() == bytes)
            if keep {
                let file = try SafeTensorsFile.parse(try #require(try part.samplesFile()))
                let samples = try #require(file["samples"])
                #expect(samples.shape == [c.samples - 8192, 2])
                #expect(file.metadata["range_lower"] == "8192")
            } else {
                #expect(try part.samplesFile() == nil)
            }
        }
        #expect(throws: SamplingError.self) { try SamplingShardResult.deserialize(Array("garbage!".utf8)) }
    }

    @Test("merge rejects gaps, overlaps, short coverage and misaligned ranges")
    func mergeRejects() throws {
        let c = try config()
        let parts = try shards(c, count: 3)
        func coverageError(_ shards: [SamplingShardResult]) -> SamplingError? {
            do {
                _ = try mergeSampling(config: c, shards: shards)
                return nil
            } catch let error as SamplingError {
                return error
            } catch {
                return nil
            }
        }
        let gap = coverageError([parts[0], parts[2]])
        #expect(gap?.code == .coverage)
        #expect(gap?.message.contains("gap") == true)
        let overlap = coverageError(parts + [parts[1]])
        #expect(overlap?.code == .coverage)
        #expect(overlap?.message.contains("overlap") == true)
        let short = coverageError(Array(parts.dropLast()))
        #expect(short?.code == .coverage)
        #expect(short?.message.contains("missing") == true)
        #expect(coverageError([])?.code == .coverage)
        #expect(throws: SamplingError.self) {
            _ = try runSamplingShard(config: c, range: 100..<4096, onStep: { _ in }, shouldStop: { false })
        }
        #expect(throws: SamplingError.self) {
            _ = try runSamplingShard(config: c, range: 0..<5000, onStep: { _ in }, shouldStop: { false })
        }
    }

    @Test("onStep reports every step in order; shouldStop cancels")
    func stepsAndCancellation() throws {
        let c = try config()
        var seen: [SamplingStepMetrics] = []
        _ = try runSamplingShard(config: c, range: 0..<4096, onStep: { seen.append($0) }, shouldStop: { false })
        #expect(seen.map(\.step) == Array(0..<20))
        #expect(seen.map(\.t) == (0..<20).reversed().map { $0 * 50 })
        #expect(seen.allSatisfy { $0.nanCount == 0 && $0.meanSquaredNorm.isFinite })
        var calls = 0
        #expect(throws: CancellationError.self) {
            _ = try runSamplingShard(
                config: c, range: 0..<4096, onStep: { _ in },
                shouldStop: {
                    calls += 1
                    return calls > 3
                })
        }
    }

    @Test("jsonText is valid JSON whose numbers parse back to the same doubles")
    func json() throws {
        let c = try config()
        let result = try mergeSampling(config: c, shards: try shards(c, count: 2))
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(result.jsonText.utf8)) as? [String: Any])
        for key in ["n", "mean", "cov", "mode_weights", "sw1", "mmd", "noise_floor", "per_mode", "nan_count", "target"]
        {
            #expect(object[key] != nil, "missing \(key)")
        }
        #expect(result.jsonText.contains("\"sw1\":\(result.sw1.description)"))
        #expect(Double(result.sw1.description)!.bitPattern == result.sw1.bitPattern)
        let floor = try #require(object["noise_floor"] as? [String: Any])
        #expect(Set(floor.keys) == ["sw1", "mmd", "mode_weight_error"])
    }
}

/// A tiny deterministic generator for shuffles.
private struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
