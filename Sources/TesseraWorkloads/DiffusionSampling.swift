// `kind: sampling`, `algorithm: ddpm | ddim`: DDPM ancestral and DDIM(eta) sampling with the exact score of a
// Gaussian mixture (WORKLOADS.md §1 S1), optionally with classifier-free guidance toward one component
// (`class`, `guidance_scale`), planned as block-aligned sample ranges and merged exactly (§4).
// Parameters are documented in docs/jobspec.md.

import TesseraCompute
import TesseraCore

public struct DiffusionSampling: TypedAlgorithm {
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

    /// A ddpm/ddim job's validated params: the sampler's config and, for a learned sampler, the trained model.
    public struct Config: Sendable {
        public var sampling: SamplingConfig
        public var model: LearnedModelReference?
    }

    /// The summary: the shard's statistics, then its range and, for a learned sampler, the checkpoint it sampled with.
    public typealias Summary = SamplingShardSummary<SummaryDetail>

    public struct SummaryDetail: Codable, Sendable, Equatable {
        public var start: Int
        public var end: Int
        public var modelStep: Int64?
        public var modelSHA256: String?

        enum CodingKeys: String, CodingKey {
            case start, end, modelStep = "model_step", modelSHA256 = "model_sha256"
        }
    }

    public func configure(_ spec: JobSpec) throws -> Config {
        Config(sampling: try config(spec), model: try LearnedModelReference.parse(spec))
    }

    /// `params.model.from_job` must name a `ddpm-train` job (checked at submit: docs/jobspec.md §params.model).
    public func jobInputs(_ spec: JobSpec) throws -> [JobInput] {
        guard let model = try LearnedModelReference.parse(spec) else { return [] }
        return [JobInput(jobID: model.jobID, path: "params.model.from_job", algorithms: ["sampling/ddpm-train"])]
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<SampleRangeSlice>] {
        let c = config.sampling
        let ranges = SamplingPlan.ranges(samples: c.samples, shards: spec.shards)
        guard ranges.count == spec.shards else {
            throw spec.source.error(
                "shards",
                "shards: \(spec.shards) is more than the \(ranges.count) block(s) of \(SamplingPlan.blockSize) samples "
                    + "in samples: \(c.samples); use shards: \(ranges.count) or fewer"
            )
        }
        return ranges.map { TypedShardSlice(SampleRangeSlice($0), totalSteps: Int64(c.samplingSteps)) }
    }

    public func run(_ slice: SampleRangeSlice, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<Summary>
    {
        let c = config.sampling
        let range = slice.range
        let learned = try learnedModel(config.model, config: c, sink: sink)  // nil: exact score
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
        // The samples already went out as their own blob; the result carries only the exact statistics.
        var statistics = result
        statistics.samples = nil
        return TypedShardOutput(
            summary: Summary(
                statistics: result.statistics,
                detail: SummaryDetail(
                    start: range.lowerBound, end: range.upperBound, modelStep: learned?.step,
                    modelSHA256: learned?.sha256)),
            result: try statistics.serialize())
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SamplingShardReducer<Summary> {
        SamplingShardReducer(
            Merge(
                config: config, statistics: SamplingStatisticsReducer(setup: config.sampling.statistics),
                echo: LearnedModelEcho()))
    }

    /// The exact statistics merge, plus the checkpoint every shard of a learned job must have used.
    struct Merge: SamplingMerge {
        let config: Config
        var statistics: SamplingStatisticsReducer
        var echo: LearnedModelEcho

        mutating func add(_ shard: SamplingShardResult, summary: Summary) throws {
            try statistics.add(shard)
            echo.add(sha256: summary.detail.modelSHA256, step: summary.detail.modelStep)
        }

        func result() throws -> JSONValue {
            let merged = SamplingResult(config: config.sampling, statistics: try statistics.finish())
            return try echo.echo(config.model, into: merged.json(spelling: .shortest))
        }
    }
}
