// `kind: sampling`, `algorithm: smc`: a DDPM/DDIM sampler driven by a wrong model, corrected toward the true target by
// exact density-ratio weights and systematic resampling (WORKLOADS.md §1 S3 iii). Sharded by independent particle
// populations (resampling couples the particles of one population); merged exactly in population order.
// Parameters are documented in docs/jobspec.md.

import TesseraCompute
import TesseraCore

public struct SMCSampling: TypedAlgorithm {
    public var kind: JobKind { .sampling }
    public var name: String { "smc" }
    public var summary: String {
        "SMC correction of a wrong-model DDPM/DDIM sampler toward a Gaussian-mixture target: exact or discriminator-estimated density-ratio weights, systematic resampling"
    }

    public init() {}

    /// Reads and validates `params`; every error carries the line of the key at fault.
    public func config(_ spec: JobSpec) throws -> SMCConfig {
        let p = spec.paramsReader
        if p.has("samples") {
            throw p.error(
                "samples", "smc has no samples: it draws particles x populations; set those two instead")
        }
        let samplerName = try p.string("sampler", default: "ddpm", allowed: ["ddpm", "ddim"])
        var allowed = [
            "target", "proposal", "sampler", "schedule", "sampling_steps", "particles", "populations",
            "ess_threshold", "correction", "keep_samples", "discriminator",
        ]
        if samplerName == "ddim" { allowed.append("eta") }
        if samplerName == "ddpm", p.has("eta") {
            throw p.error("eta", "eta belongs to sampler: ddim; remove it or set sampler: ddim")
        }
        try p.rejectUnknown(allowed)
        let target = try DiffusionSampling.target(p)

        // The wrong model: the target's components unless given, with its own weights.
        let q = try p.object("proposal")
        try q.rejectUnknown(DiffusionSampling.targetKeys)
        _ = try q.string("type", default: "gmm", allowed: ["gmm"])
        let proposal: GaussianMixture
        do {
            proposal = try GaussianMixture(
                weights: q.has("weights") ? try q.doubles("weights") : nil,
                means: q.has("means") ? try q.matrix("means") : target.means,
                stds: q.has("stds") ? try q.doubles("stds") : target.stds)
        } catch let e as SamplingError {
            throw q.source.error(q.path, "\(q.path): \(e.message)")
        }
        let schedule = try DiffusionSampling.schedule(p)
        let samplingSteps = try p.int("sampling_steps", default: 100, range: 1...schedule.steps)
        let sampler: SamplerKind =
            samplerName == "ddpm" ? .ddpm : .ddim(eta: try p.double("eta", range: 0...1, default: 1))
        let block = SamplingPlan.blockSize
        let particles = try p.int("particles", default: block, range: block...SamplingConfig.maxSamples)
        guard particles % block == 0 else {
            throw p.error(
                "particles",
                "params.particles must be a multiple of \(block) (a population is whole blocks of \(block)), not \(particles)"
            )
        }
        let populations = try p.int("populations", default: 1, range: 1...(SamplingConfig.maxSamples / particles))
        let threshold = try p.double("ess_threshold", range: 0...1, default: 0.5)
        let correction = SMCCorrection(
            rawValue: try p.string("correction", default: "exact", allowed: SMCCorrection.allCases.map(\.rawValue)))!
        var discriminator: SMCDiscriminatorSettings?
        if correction == .discriminator {
            let o =
                p.has("discriminator")
                ? try p.object("discriminator") : Params([:], path: "params.discriminator", source: p.source)
            try o.rejectUnknown(["width", "steps", "batch", "learning_rate", "eval_samples"])
            let batch = try o.int("batch", default: 512, range: 2...65_536)
            guard batch % 2 == 0 else {
                throw o.error("batch", "\(o.keyPath("batch")) must be even (half real, half generated), not \(batch)")
            }
            discriminator = try SMCDiscriminatorSettings(
                width: o.int("width", default: 64, range: 1...4096),
                steps: o.int("steps", default: 2000, range: 1...1_000_000),
                batch: batch, learningRate: o.double("learning_rate", range: 1e-8...1, default: 2e-3),
                evalSamples: o.int("eval_samples", default: 8192, range: 2...10_000_000))
        } else if p.has("discriminator") {
            throw p.error("discriminator", "discriminator settings belong to correction: discriminator")
        }
        let keep = try p.bool("keep_samples", default: false)
        do {
            return try SMCConfig(
                target: target, proposal: proposal, schedule: schedule, sampler: sampler, samplingSteps: samplingSteps,
                particles: particles, populations: populations, essThreshold: threshold, correction: correction,
                discriminator: discriminator, seed: spec.seed, keepSamples: keep)
        } catch let e as SamplingError {
            throw p.source.error("params", "params: \(e.message)")
        }
    }

    /// `{"population_start", "population_end"}`: the populations (of `particles` each) a shard runs.
    public struct Slice: Codable, Sendable, Hashable {
        public var populationStart: Int
        public var populationEnd: Int

        enum CodingKeys: String, CodingKey {
            case populationStart = "population_start", populationEnd = "population_end"
        }

        init(_ populations: Range<Int>) {
            populationStart = populations.lowerBound
            populationEnd = populations.upperBound
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            self.init(try decodeRange(c, .populationStart, .populationEnd))
        }

        var populations: Range<Int> { populationStart..<populationEnd }
    }

    /// The summary: the shard's statistics, then its discriminator error and mean final ESS (when it has them), its
    /// resampling count and its populations.
    public typealias Summary = SamplingShardSummary<SummaryDetail>

    public struct SummaryDetail: Codable, Sendable, Equatable {
        public var discriminatorLogRatioRMSE: Double?
        public var ess: Double?
        public var resampleCount: Int64
        public var populationStart: Int
        public var populationEnd: Int

        enum CodingKeys: String, CodingKey {
            case discriminatorLogRatioRMSE = "discriminator_log_ratio_rmse", ess, resampleCount = "resample_count"
            case populationStart = "population_start", populationEnd = "population_end"
        }

        init(extras: SamplingShardExtras, populations: Range<Int>) {
            discriminatorLogRatioRMSE = extras.reals["discriminator_rmse"]?.first
            if let ess = extras.reals["final_ess"], !ess.isEmpty { self.ess = ess.reduce(0, +) / Double(ess.count) }
            resampleCount = extras.integers["resample_count"]?.reduce(0, +) ?? 0
            populationStart = populations.lowerBound
            populationEnd = populations.upperBound
        }
    }

    public func configure(_ spec: JobSpec) throws -> SMCConfig { try config(spec) }

    public func plan(_ spec: JobSpec, config c: SMCConfig) throws -> [TypedShardSlice<Slice>] {
        guard spec.shards <= c.populations else {
            throw spec.source.error(
                "shards",
                "shards: \(spec.shards) is more than populations: \(c.populations); an SMC shard runs whole populations "
                    + "(resampling couples a population's particles), so use shards: \(c.populations) or fewer, or more populations"
            )
        }
        return SMCPlan.populationRanges(populations: c.populations, shards: spec.shards).map {
            TypedShardSlice(Slice($0), totalSteps: Int64(c.samplingSteps))
        }
    }

    public func run(_ slice: Slice, config c: SMCConfig, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<Summary>
    {
        let populations = slice.populations
        let result: SamplingShardResult
        do {
            result = try runSMCShard(
                config: c, populations: populations,
                onStep: { m in
                    let step = Int64(m.step)
                    sink.metric("t", step: step, value: Double(m.t))
                    sink.metric("ess", step: step, value: m.ess)
                    sink.metric("resampled", step: step, value: Double(m.resampled))
                    sink.metric("mean_sq_norm", step: step, value: m.meanSquaredNorm)
                    sink.metric("nan_count", step: step, value: Double(m.nanCount))
                    sink.progress(step: step + 1)
                },
                shouldStop: { sink.shouldStop })
        } catch is CancellationError {
            throw ShardStopped()
        }
        if let file = try result.samplesFile() {
            try sink.blob(.samples, step: Int64(c.samplingSteps), bytes: file)
        }
        var statistics = result
        statistics.samples = nil
        return TypedShardOutput(
            summary: Summary(
                statistics: result.statistics,
                detail: SummaryDetail(extras: result.extras, populations: populations)),
            result: try statistics.serialize())
    }

    public func makeReducer(_ spec: JobSpec, config: SMCConfig) throws -> SamplingShardReducer<Summary> {
        SamplingShardReducer(SMCMerge(config: config))
    }
}

extension SMCMerge: ResultBlobMerge {
    typealias Summary = SMCSampling.Summary
}
