// `kind: sampling`, `algorithm: ddpm | ddim`: DDPM ancestral and DDIM(eta) sampling with the exact score of a
// Gaussian mixture (WORKLOADS.md §1 S1), planned as block-aligned sample ranges and merged exactly (§4).
// Parameters are documented in docs/jobspec.md.

import TesseraCompute
import TesseraCore

public struct DiffusionSampling: Algorithm {
    public let sampler: SamplerKindName
    public var kind: JobKind { .sampling }
    public var name: String { sampler.rawValue }
    public var summary: String {
        switch sampler {
        case .ddpm: return "DDPM ancestral sampling (fixed_small) with the exact score of a Gaussian mixture"
        case .ddim: return "DDIM(eta) sampling with the exact score of a Gaussian mixture"
        }
    }

    public enum SamplerKindName: String, Sendable {
        case ddpm, ddim
    }

    public init(_ sampler: SamplerKindName) {
        self.sampler = sampler
    }

    static let targetKeys = ["type", "means", "stds", "weights"]
    static let scheduleKeys = ["type", "beta_start", "beta_end", "steps"]

    /// Reads and validates `params`; every error carries the line of the key at fault.
    public func config(_ spec: JobSpec) throws -> SamplingConfig {
        let p = spec.paramsReader
        var allowed = ["target", "schedule", "sampling_steps", "samples", "keep_samples", "model"]
        if sampler == .ddim { allowed.append("eta") }
        if sampler == .ddpm, p.has("eta") {
            throw p.error("eta", "ddpm has no eta (it is DDIM's noise scale); remove it or use algorithm: ddim")
        }
        try p.rejectUnknown(allowed)
        _ = try LearnedModelReference.parse(spec)  // params.model (Learned/): from_job must be in depends_on

        let t = try p.object("target")
        try t.rejectUnknown(Self.targetKeys)
        let type = try t.string("type", default: "gmm", allowed: ["gmm"])
        precondition(type == "gmm")
        let means = try t.matrix("means")
        let stds = try t.doubles("stds")
        let weights = t.has("weights") ? try t.doubles("weights") : nil
        let target: GaussianMixture
        do {
            target = try GaussianMixture(weights: weights, means: means, stds: stds)
        } catch let e as SamplingError {
            throw t.source.error(t.path, "params.target: \(e.message)")
        }

        let schedule: BetaSchedule
        if p.has("schedule") {
            let s = try p.object("schedule")
            try s.rejectUnknown(Self.scheduleKeys)
            _ = try s.string("type", default: "linear", allowed: ["linear"])
            let start = try s.double("beta_start", range: 1e-8...0.5, default: 0.0001)
            let end = try s.double("beta_end", range: 1e-8...0.999, default: 0.02)
            let steps = try s.int("steps", default: 1000, range: 1...100_000)
            do {
                schedule = try BetaSchedule.linear(betaStart: start, betaEnd: end, steps: steps)
            } catch let e as SamplingError {
                throw s.source.error(s.path, "params.schedule: \(e.message)")
            }
        } else {
            schedule = try BetaSchedule.linear(betaStart: 0.0001, betaEnd: 0.02, steps: 1000)
        }

        let samplingSteps = try p.int("sampling_steps", default: 50, range: 1...schedule.steps)
        let samples = try p.int("samples", range: 1...SamplingConfig.maxSamples)
        let keep = try p.bool("keep_samples", default: false)
        let kind: SamplerKind
        switch sampler {
        case .ddpm: kind = .ddpm
        case .ddim: kind = .ddim(eta: try p.double("eta", range: 0...1, default: 0))
        }
        do {
            return try SamplingConfig(
                target: target, schedule: schedule, sampler: kind, samplingSteps: samplingSteps, seed: spec.seed,
                samples: samples, keepSamples: keep
            )
        } catch let e as SamplingError {
            throw p.source.error("params", "params: \(e.message)")
        }
    }

    public func plan(_ spec: JobSpec) throws -> [ShardSlice] {
        let c = try config(spec)
        let ranges = SamplingPlan.ranges(samples: c.samples, shards: spec.shards)
        guard ranges.count == spec.shards else {
            throw spec.source.error(
                "shards",
                "shards: \(spec.shards) is more than the \(ranges.count) block(s) of \(SamplingPlan.blockSize) samples "
                    + "in samples: \(c.samples); use shards: \(ranges.count) or fewer"
            )
        }
        return ranges.map {
            ShardSlice(
                slice: .object(["start": .int($0.lowerBound), "end": .int($0.upperBound)]),
                totalSteps: Int64(c.samplingSteps)
            )
        }
    }

    static func range(_ slice: JSONValue) throws -> Range<Int> {
        guard let a = slice["start"]?.intValue, let b = slice["end"]?.intValue, a < b else {
            throw ShardError("malformed sampling slice \(slice.render())")
        }
        return a..<b
    }

    public func run(_ task: ShardTask, sink: any ShardSink) throws -> ShardOutput {
        let c = try config(task.spec)
        let range = try Self.range(task.slice)
        let learned = try learnedModel(task, config: c, sink: sink)  // nil: exact score
        let result: SamplingShardResult
        do {
            result = try runSamplingShard(
                config: c, range: range, model: learned?.model,
                onStep: { m in
                    let step = Int64(m.step)
                    sink.metric("t", step: step, value: Double(m.t))
                    sink.metric("mean_sq_norm", step: step, value: m.meanSquaredNorm)
                    sink.metric("nan_count", step: step, value: Double(m.nanCount))
                    sink.progress(step: step + 1)
                },
                shouldStop: { sink.shouldStop }
            )
        } catch is CancellationError {
            throw ShardStopped()
        }
        if let file = try result.samplesFile() {
            try sink.blob(.samples, step: Int64(c.samplingSteps), bytes: file)
        }
        var summary = JSONObject()
        for (k, v) in result.summary.sorted(by: { $0.key < $1.key }) { summary[k] = .number(v) }
        summary["start"] = .int(range.lowerBound)
        summary["end"] = .int(range.upperBound)
        Self.learnedSummary(learned, into: &summary)
        // The samples already went out as their own blob; the result carries only the exact statistics.
        var statistics = result
        statistics.samples = nil
        return ShardOutput(summary: .object(summary), result: try statistics.serialize())
    }

    public func merge(_ spec: JobSpec, outputs: [ShardOutput]) throws -> JSONValue {
        let c = try config(spec)
        let shards = try outputs.enumerated().map { i, o -> SamplingShardResult in
            guard let bytes = o.result else { throw ShardError("shard \(i) has no result blob") }
            return try SamplingShardResult.deserialize(bytes)
        }
        let merged = try mergeSampling(config: c, shards: shards)
        return try echoLearnedModel(spec, outputs: outputs, into: try JSONValue.parse(merged.jsonText))
    }
}
