// `kind: sampling`, `algorithm: ddpm | ddim`: DDPM ancestral and DDIM(eta) sampling with the exact score of a
// Gaussian mixture (WORKLOADS.md §1 S1), optionally with classifier-free guidance toward one component
// (`class`, `guidance_scale`), planned as block-aligned sample ranges and merged exactly (§4).
// Parameters are documented in docs/jobspec.md.

import TesseraCompute
import TesseraCore

public struct DiffusionSampling: Algorithm {
    public let sampler: SamplerKindName
    public var kind: JobKind { .sampling }
    public var name: String { sampler.rawValue }
    public var summary: String {
        switch sampler {
        case .ddpm:
            return "DDPM ancestral sampling (fixed_small) with the exact score of a Gaussian mixture; optional classifier-free guidance"
        case .ddim:
            return "DDIM(eta) sampling with the exact score of a Gaussian mixture; optional classifier-free guidance"
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
        var allowed = [
            "target", "schedule", "sampling_steps", "samples", "keep_samples", "model", "class", "guidance_scale",
        ]
        if sampler == .ddim { allowed.append("eta") }
        if sampler == .ddpm, p.has("eta") {
            throw p.error("eta", "ddpm has no eta (it is DDIM's noise scale); remove it or use algorithm: ddim")
        }
        try p.rejectUnknown(allowed)
        let learnedModel = try LearnedModelReference.parse(spec)  // params.model (Learned/): from_job must be in depends_on
        let target = try Self.target(p)

        // Classifier-free guidance: `class` picks the component c, `guidance_scale` is w (default 1 = conditional).
        var guidance: SamplingGuidance?
        if p.has("guidance_scale") && !p.has("class") {
            throw p.error(
                "guidance_scale",
                "guidance_scale needs class: the target component (0..\(target.componentCount - 1)) to guide toward")
        }
        if p.has("class") {
            if learnedModel != nil {
                throw p.error(
                    "class",
                    "class/guidance_scale guide the exact score of the target's components; they cannot be combined with params.model")
            }
            let c = try p.int("class", range: 0...(target.componentCount - 1))
            let w = try p.double("guidance_scale", range: 0...100, default: 1)
            guidance = try SamplingGuidance.component(c, of: target, scale: w)
        }

        let schedule = try Self.schedule(p)
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
                samples: samples, keepSamples: keep, guidance: guidance
            )
        } catch let e as SamplingError {
            throw p.source.error("params", "params: \(e.message)")
        }
    }

    /// `params.target` (shared by every sampling algorithm): a Gaussian mixture, errors at the key's line.
    static func target(_ p: Params, key: String = "target") throws -> GaussianMixture {
        let t = try p.object(key)
        try t.rejectUnknown(Self.targetKeys)
        let type = try t.string("type", default: "gmm", allowed: ["gmm"])
        precondition(type == "gmm")
        let means = try t.matrix("means")
        let stds = try t.doubles("stds")
        let weights = t.has("weights") ? try t.doubles("weights") : nil
        do {
            return try GaussianMixture(weights: weights, means: means, stds: stds)
        } catch let e as SamplingError {
            throw t.source.error(t.path, "\(t.path): \(e.message)")
        }
    }

    /// `params.schedule` (optional; diffusers' linear 1e-4..0.02 over 1000 steps by default).
    static func schedule(_ p: Params) throws -> BetaSchedule {
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
        return schedule
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

    public func makeReducer(_ spec: JobSpec) throws -> any ShardReducer {
        let c = try config(spec)
        let learned = try LearnedModelReference.parse(spec)
        return SamplingShardReducer(
            (SamplingStatisticsReducer(setup: c.statistics), LearnedModelEcho()),
            add: { state, shard, output in
                try state.0.add(shard)
                state.1.add(output.summary)
            },
            finish: { state in
                let merged = SamplingResult(config: c, statistics: try state.0.finish())
                return try state.1.echo(learned, into: merged.json(spelling: .shortest))
            })
    }
}

/// Deserializes each shard's result blob as it comes and hands it to `add`; `finish` turns what was added into the
/// job result. Shared by the sampling algorithms, whose results are all `tessera.sampling.shard/2` files.
struct SamplingShardReducer<State>: ShardReducer {
    var state: State
    private let addShard: (inout State, SamplingShardResult, ShardOutput) throws -> Void
    private let result: (State) throws -> JSONValue
    private var shards = 0

    init(
        _ state: State, add: @escaping (inout State, SamplingShardResult, ShardOutput) throws -> Void,
        finish: @escaping (State) throws -> JSONValue
    ) {
        self.state = state
        addShard = add
        result = finish
    }

    mutating func add(_ output: ShardOutput) throws {
        guard let bytes = output.result else { throw ShardError("shard \(shards) has no result blob") }
        try addShard(&state, try SamplingShardResult.deserialize(bytes), output)
        shards += 1
    }

    func finish() throws -> JSONValue { try result(state) }
}
