// `kind: sampling`, `algorithm: langevin`: ULA, MALA and annealed Langevin on a Gaussian mixture with the exact score
// (WORKLOADS.md §1 S3 i, ii), including the data-based initialisation of "Sampling Multimodal Distributions with the
// Vanilla Score". Chains are independent: planned as block-aligned chain-index ranges and merged exactly (§4), so the
// merged result does not depend on the shard count. Parameters are documented in docs/jobspec.md.

import TesseraCompute
import TesseraCore

public struct LangevinSampling: TypedAlgorithm {
    public var kind: JobKind { .sampling }
    public var name: String { "langevin" }
    public var summary: String {
        "Langevin sampling of a Gaussian mixture with the exact score: ULA, MALA or annealed (Song-Ermon); normal or data-based initialisation"
    }

    public init() {}

    /// Metrics are streamed at most about this many times per shard (every step when the chain is shorter).
    static let metricPoints = 1000

    /// Reads and validates `params`; every error carries the line of the key at fault.
    public func config(_ spec: JobSpec) throws -> LangevinConfig {
        let p = spec.paramsReader
        let method = LangevinMethod(
            rawValue: try p.string("method", default: "ula", allowed: LangevinMethod.allCases.map(\.rawValue)))!
        let initName = try p.string("init", default: "normal", allowed: ["normal", "data"])
        var allowed = ["target", "method", "steps", "step_size", "init", "samples", "keep_samples"]
        allowed.append(initName == "normal" ? "init_std" : "init_samples")
        if method == .annealed { allowed += ["sigma_max", "sigma_min", "levels"] }
        for key in ["sigma_max", "sigma_min", "levels"] where method != .annealed && p.has(key) {
            throw p.error(
                key, "\(key) belongs to method: annealed (the noise ladder); remove it or use method: annealed")
        }
        if initName == "normal", p.has("init_samples") {
            throw p.error("init_samples", "init_samples belongs to init: data; remove it or set init: data")
        }
        if initName == "data", p.has("init_std") {
            throw p.error("init_std", "init_std belongs to init: normal; remove it or set init: normal")
        }
        try p.rejectUnknown(allowed)
        let target = try DiffusionSampling.target(p)
        let steps = try p.int(
            "steps", default: method == .annealed ? 100 : 1000, range: 1...LangevinConfig.maxTotalSteps)
        let stepSize = try p.double("step_size", range: 1e-12...1e6, default: method == .annealed ? 0.002 : 0.01)
        let initialization: LangevinInitialization
        if initName == "normal" {
            initialization = .normal(std: try p.double("init_std", range: 0...1e6, default: 1))
        } else {
            initialization = .data(
                samples: try p.int("init_samples", default: 4096, range: 1...SamplingConfig.maxSamples))
        }
        var annealing: LangevinAnnealing?
        if method == .annealed {
            let sigmaMax = try p.double("sigma_max", range: 1e-9...1e9, default: 10)
            let sigmaMin = try p.double("sigma_min", range: 1e-9...1e9, default: 0.1)
            let levels = try p.int("levels", default: 10, range: 2...10_000)
            guard sigmaMin <= sigmaMax else {
                throw p.error("sigma_min", "sigma_min (\(sigmaMin)) must not exceed sigma_max (\(sigmaMax))")
            }
            annealing = try LangevinAnnealing(sigmaMax: sigmaMax, sigmaMin: sigmaMin, levels: levels)
        }
        let samples = try p.int("samples", range: 1...SamplingConfig.maxSamples)
        let keep = try p.bool("keep_samples", default: false)
        do {
            return try LangevinConfig(
                target: target, method: method, steps: steps, stepSize: stepSize, initialization: initialization,
                annealing: annealing, seed: spec.seed, samples: samples, keepSamples: keep)
        } catch let e as SamplingError {
            throw p.source.error("params", "params: \(e.message)")
        }
    }

    /// The summary: the shard's statistics, then its MALA accept rate and its range.
    public typealias Summary = SamplingShardSummary<SummaryDetail>

    public struct SummaryDetail: Codable, Sendable, Equatable {
        public var acceptRate: Double?
        public var start: Int
        public var end: Int

        enum CodingKeys: String, CodingKey {
            case acceptRate = "accept_rate", start, end
        }
    }

    public func configure(_ spec: JobSpec) throws -> LangevinConfig { try config(spec) }

    public func plan(_ spec: JobSpec, config c: LangevinConfig) throws -> [TypedShardSlice<SampleRangeSlice>] {
        let ranges = SamplingPlan.ranges(samples: c.samples, shards: spec.shards)
        guard ranges.count == spec.shards else {
            throw spec.source.error(
                "shards",
                "shards: \(spec.shards) is more than the \(ranges.count) block(s) of \(SamplingPlan.blockSize) chains "
                    + "in samples: \(c.samples); use shards: \(ranges.count) or fewer"
            )
        }
        return ranges.map { TypedShardSlice(SampleRangeSlice($0), totalSteps: Int64(c.totalSteps)) }
    }

    public func run(_ slice: SampleRangeSlice, config c: LangevinConfig, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<Summary>
    {
        let range = slice.range
        let total = c.totalSteps
        let stride = max(1, (total + Self.metricPoints - 1) / Self.metricPoints)
        let result: SamplingShardResult
        do {
            result = try runLangevinShard(
                config: c, range: range,
                onStep: { m in
                    guard m.step % stride == 0 || m.step == total - 1 else { return }
                    let step = Int64(m.step)
                    sink.metric("mean_sq_norm", step: step, value: m.meanSquaredNorm)
                    sink.metric("nan_count", step: step, value: Double(m.nanCount))
                    if let a = m.acceptRate { sink.metric("accept_rate", step: step, value: a) }
                    if c.method == .annealed {
                        sink.metric("sigma", step: step, value: m.sigma)
                        sink.metric("step_size", step: step, value: m.stepSize)
                    }
                    sink.progress(step: step + 1)
                },
                shouldStop: { sink.shouldStop })
        } catch is CancellationError {
            throw ShardStopped()
        }
        if let file = try result.samplesFile() {
            try sink.blob(.samples, step: Int64(total), bytes: file)
        }
        var acceptRate: Double?
        if c.method == .mala, let a = result.extras.integers["accepted"]?.first,
            let p = result.extras.integers["proposals"]?.first, p > 0
        {
            acceptRate = Double(a) / Double(p)
        }
        var statistics = result
        statistics.samples = nil
        return TypedShardOutput(
            summary: Summary(
                statistics: result.statistics,
                detail: SummaryDetail(acceptRate: acceptRate, start: range.lowerBound, end: range.upperBound)),
            result: try statistics.serialize())
    }

    public func makeReducer(_ spec: JobSpec, config: LangevinConfig) throws -> SamplingShardReducer<Summary> {
        SamplingShardReducer(LangevinMerge(config: config))
    }
}

extension LangevinMerge: ResultBlobMerge {
    typealias Summary = LangevinSampling.Summary
}
