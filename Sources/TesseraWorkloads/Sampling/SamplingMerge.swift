// Merging sampling shards into the job result, bitwise independent of shard count and arrival order (WORKLOADS.md §4).

import Foundation
import TesseraCompute
import TesseraCore

/// The three headline metrics of one population of N points.
public struct SamplingMetrics: Sendable, Equatable {
    /// Sliced W1: mean over the L directions of sum_bins |F_emp(edge) - F_exact(edge)| * bin width.
    public var sw1: Double
    /// RFF-MMD, the distance (not its square): |mean_i phi(x_i) - E phi(X)| with the exact target mean embedding.
    /// Like SW1 it falls as 1/sqrt(N) for exact samples, so "<= 3 x floor" means the same for both.
    public var mmd: Double
    /// max_k |w_hat_k - w_k|, with w_hat the argmax-posterior mode frequencies.
    public var modeWeightError: Double
}

/// Mean and covariance of the samples assigned to one mode.
public struct SamplingModeStats: Sendable, Equatable {
    public var count: Int
    /// count / (number of finite samples).
    public var weight: Double
    public var mean: [Double]
    /// Unbiased (n - 1) covariance; NaN entries when count < 2.
    public var cov: [[Double]]
}

/// The merged result of a sampling job.
public struct SamplingResult: Sendable, Equatable {
    public var config: SamplingConfig
    /// N, the number of samples (finite or not).
    public var n: Int
    /// Mean of the finite samples.
    public var mean: [Double]
    /// Unbiased (n - 1) covariance of the finite samples.
    public var cov: [[Double]]
    /// Argmax-posterior mode frequencies among the finite samples.
    public var modeWeights: [Double]
    public var modeWeightError: Double
    public var sw1: Double
    /// RFF-MMD (the root of the squared embedding distance; see `SamplingMetrics.mmd`).
    public var mmd: Double
    /// The same metrics, by the same code, on N exact target draws of the same indices (Philox stream 2).
    public var noiseFloor: SamplingMetrics
    public var perMode: [SamplingModeStats]
    /// Samples with a non-finite coordinate (excluded from every other statistic).
    public var nanCount: Int
    /// Projections clamped into an edge histogram bin (outside 8 stds of the target's projected range).
    public var outOfRange: Int
    /// Merged statistics in exact binary form (see `statisticsFile()`).
    var merged: SamplingMergedPopulation
    var mergedExact: SamplingMergedPopulation
}

/// Reduced statistics of one population.
struct SamplingMergedPopulation: Sendable, Equatable {
    var total: Int64
    var moments: SampleMoments
    var rffSum: [Double]
    var modes: [SampleMoments]
    var histogram: [Int64]
    var outOfRange: Int64
}

/// Merges the shards of one job. Shards may come in any order; together they must cover [0, N) exactly, with
/// block-aligned boundaries. They are sorted by range and streamed through a `SamplingStatisticsReducer`: tree nodes
/// are reduced in block-index order over the fixed binary tree (Chan for moments, plain sums for RFF sums), integer
/// counts and histograms are added, so the result is bitwise identical for any shard count and arrival order.
public func mergeSampling(config: SamplingConfig, shards: [SamplingShardResult]) throws -> SamplingResult {
    SamplingResult(config: config, statistics: try mergeSamplingStatistics(setup: config.statistics, shards: shards))
}

extension SamplingResult {
    init(config: SamplingConfig, statistics s: SamplingStatisticsResult) {
        self.init(
            config: config, n: s.n, mean: s.mean, cov: s.cov, modeWeights: s.modeWeights,
            modeWeightError: s.modeWeightError, sw1: s.sw1, mmd: s.mmd, noiseFloor: s.noiseFloor, perMode: s.perMode,
            nanCount: s.nanCount, outOfRange: s.outOfRange, merged: s.merged, mergedExact: s.mergedExact)
    }
}

/// The statistics part of a merged sampling result, shared by every sampling algorithm (ddpm/ddim, langevin, smc).
struct SamplingStatisticsResult: Sendable, Equatable {
    var n: Int
    var mean: [Double]
    var cov: [[Double]]
    var modeWeights: [Double]
    var modeWeightError: Double
    var sw1: Double
    var mmd: Double
    var noiseFloor: SamplingMetrics
    var perMode: [SamplingModeStats]
    var nanCount: Int
    var outOfRange: Int
    var merged: SamplingMergedPopulation
    var mergedExact: SamplingMergedPopulation
}

/// `mergeSampling` against an explicit statistics setup (target for probes and modes, reference for the exact law).
func mergeSamplingStatistics(setup config: SamplingStatisticsSetup, shards: [SamplingShardResult]) throws
    -> SamplingStatisticsResult
{
    var reducer = SamplingStatisticsReducer(setup: config)
    for shard in shards.sorted(by: { $0.range.lowerBound < $1.range.lowerBound }) { try reducer.add(shard) }
    return try reducer.finish()
}

/// Streams the shards of one job, in range order, into its statistics: each shard's tree nodes go into one
/// `SamplingTreeStack` per population and its histograms into running integer sums as it comes, so the reducer holds
/// at most `tree.maximumPending` nodes and two histograms per population, whatever the shard count.
struct SamplingStatisticsReducer {
    let setup: SamplingStatisticsSetup
    let tree: SamplingReductionTree
    private var sampled: PopulationReducer
    private var exact: PopulationReducer
    /// Samples covered by the shards added so far: [0, end).
    private(set) var end = 0
    private(set) var shards = 0

    init(setup: SamplingStatisticsSetup) {
        self.setup = setup
        tree = SamplingReductionTree(samples: setup.samples)
        sampled = PopulationReducer(tree: tree)
        exact = PopulationReducer(tree: tree)
    }

    /// Integers and doubles held (pending nodes and histograms): bounded by the tree's depth, not by the shards.
    var retainedValues: Int { sampled.retainedValues + exact.retainedValues }

    /// Adds the next shard; it must start where the previous one ended.
    mutating func add(_ shard: SamplingShardResult) throws {
        let d = setup.target.dimension
        let K = setup.target.componentCount
        guard shard.dimension == d, shard.componentCount == K else {
            throw SamplingError(
                .coverage,
                "shard \(shard.range) has dimension \(shard.dimension) and \(shard.componentCount) components; the target has \(d) and \(K)"
            )
        }
        if shard.range.lowerBound > end {
            throw SamplingError(.coverage, "shards leave a gap: samples \(end)..<\(shard.range.lowerBound) are missing")
        }
        if shard.range.lowerBound < end {
            throw SamplingError(
                .coverage, "shards overlap: \(shard.range) starts before \(end), where the previous shard ended")
        }
        try SamplingPlan.validate(range: shard.range, samples: setup.samples)
        let lastBlock = SamplingPlan.blockCount(samples: shard.range.upperBound)
        try sampled.add(shard.sampled, samples: setup.samples, dimension: d, components: K, through: lastBlock)
        try exact.add(shard.exact, samples: setup.samples, dimension: d, components: K, through: lastBlock)
        end = shard.range.upperBound
        shards += 1
    }

    func finish() throws -> SamplingStatisticsResult {
        guard shards > 0 else {
            throw SamplingError(.coverage, "no shards to merge; need shards covering [0, \(setup.samples))")
        }
        guard end == setup.samples else {
            throw SamplingError(.coverage, "shards leave a gap: samples \(end)..<\(setup.samples) are missing")
        }
        let merged = try sampled.finish()
        let mergedExact = try exact.finish()

        let probes = SamplingProbes(target: setup.target)
        let embedding = probes.exactEmbedding(setup.reference)
        let metrics = populationMetrics(merged, reference: setup.reference, probes: probes, embedding: embedding)
        let floor = populationMetrics(mergedExact, reference: setup.reference, probes: probes, embedding: embedding)

        let finite = merged.moments.count
        let perMode = merged.modes.map { m in
            SamplingModeStats(
                count: Int(m.count), weight: finite > 0 ? Double(m.count) / Double(finite) : .nan, mean: m.mean,
                cov: covariance(m))
        }
        return SamplingStatisticsResult(
            n: Int(merged.total), mean: merged.moments.mean, cov: covariance(merged.moments),
            modeWeights: perMode.map(\.weight), modeWeightError: metrics.modeWeightError, sw1: metrics.sw1,
            mmd: metrics.mmd, noiseFloor: floor, perMode: perMode, nanCount: Int(merged.total - finite),
            outOfRange: Int(merged.outOfRange), merged: merged, mergedExact: mergedExact)
    }

    /// One population: its pending tree nodes and its running histogram.
    private struct PopulationReducer {
        var stack: SamplingTreeStack<SamplingTreeNode>
        var histogram = [Int64](repeating: 0, count: SamplingProbeSetup.projections * SamplingProbeSetup.bins)
        var outOfRange: Int64 = 0

        init(tree: SamplingReductionTree) {
            stack = SamplingTreeStack(tree: tree)
        }

        var retainedValues: Int { histogram.count + 1 + stack.pending.reduce(0) { $0 + $1.value.valueCount } }

        mutating func add(
            _ part: SamplingPopulationStats, samples: Int, dimension d: Int, components K: Int, through lastBlock: Int
        ) throws {
            let blockSize = SamplingPlan.blockSize
            for node in part.nodes {
                guard node.blocks.lowerBound == stack.end, stack.tree.isNode(node.blocks) else {
                    throw SamplingError(
                        .malformedResult,
                        "blocks \(node.blocks) where the next node of the job's reduction tree starts at block \(stack.end)")
                }
                let size = min(node.blocks.upperBound * blockSize, samples) - node.blocks.lowerBound * blockSize
                guard node.total == Int64(size) else {
                    throw SamplingError(
                        .malformedResult,
                        "blocks \(node.blocks) with \(node.total) samples where \(size) belong")
                }
                guard node.moments.mean.count == d, node.moments.m2.count == d * d,
                    node.rffSum.count == SamplingProbeSetup.rffFeatures, node.modes.count == K,
                    node.modes.allSatisfy({ $0.mean.count == d && $0.m2.count == d * d })
                else {
                    throw SamplingError(.malformedResult, "blocks \(node.blocks) have statistics of the wrong size")
                }
                stack.push(node.blocks, node, combine: SamplingTreeNode.combine)
            }
            guard stack.end == lastBlock else {
                throw SamplingError(
                    .malformedResult, "a shard's nodes end at block \(stack.end); its range ends at block \(lastBlock)")
            }
            guard part.histogram.count == histogram.count else {
                throw SamplingError(.malformedResult, "shard histograms differ in size")
            }
            for i in histogram.indices { histogram[i] += part.histogram[i] }
            outOfRange += part.outOfRange
        }

        func finish() throws -> SamplingMergedPopulation {
            guard let root = stack.root else {
                throw SamplingError(
                    .malformedResult, "shards hold blocks 0..<\(stack.end); the job has \(stack.tree.blockCount)")
            }
            return SamplingMergedPopulation(
                total: root.total, moments: root.moments, rffSum: root.rffSum, modes: root.modes,
                histogram: histogram, outOfRange: outOfRange)
        }
    }
}

private func covariance(_ m: SampleMoments) -> [[Double]] {
    let d = m.mean.count
    let denominator = Double(m.count - 1)
    return (0..<d).map { r in
        (0..<d).map { c in m.count >= 2 ? m.m2[r * d + c] / denominator : .nan }
    }
}

private func populationMetrics(
    _ p: SamplingMergedPopulation, reference target: GaussianMixture, probes: SamplingProbes, embedding: [Double]
) -> SamplingMetrics {
    let finite = Double(p.moments.count)
    // Mode weights.
    var modeError = 0.0
    for k in 0..<target.componentCount {
        modeError = max(modeError, abs(Double(p.modes[k].count) / finite - target.weights[k]))
    }
    // RFF-MMD = sqrt(|mean phi - E phi|^2).
    let scale = (2.0 / Double(probes.features)).squareRoot()
    var mmd = 0.0
    for f in 0..<probes.features {
        let diff = scale * p.rffSum[f] / finite - embedding[f]
        mmd += diff * diff
    }
    mmd = mmd.squareRoot()
    // Sliced W1 from the histograms: F_emp at each bin's right edge vs the exact projected CDF.
    var sw1 = 0.0
    for l in 0..<probes.projections {
        let cdf = probes.exactProjectedCDFs(target, direction: l)
        let width = probes.binWidths[l]
        var cumulative: Int64 = 0
        var sum = 0.0
        for bin in 0..<probes.bins {
            cumulative += p.histogram[l * probes.bins + bin]
            let edge = probes.lowerEdges[l] + Double(bin + 1) * width
            sum += abs(Double(cumulative) / finite - cdf(edge))
        }
        sw1 += sum * width
    }
    sw1 /= Double(probes.projections)
    if finite == 0 { return SamplingMetrics(sw1: .nan, mmd: .nan, modeWeightError: .nan) }
    return SamplingMetrics(sw1: sw1, mmd: mmd, modeWeightError: modeError)
}

// MARK: - Output forms

extension SamplingResult {
    /// The result as one JSON object, with fixed key order, its doubles spelled `spelling` (non-finite values are
    /// `null` either way). Keys: n, mean, cov, mode_weights, mode_weight_error, sw1, mmd (RFF-MMD, not squared),
    /// noise_floor {sw1, mmd, mode_weight_error}, per_mode [{count, weight, mean, cov}], nan_count, out_of_range,
    /// target {weights, means, stds}, sampler {algorithm, eta (ddim only), sampling_steps, seed, samples, schedule
    /// {type, beta_start, beta_end, steps}}, metric_setup {rff_features, rff_bandwidth, projections, bins,
    /// probe_seed}.
    public func json(spelling: JSONNumber.Spelling) -> JSONValue {
        let j = SamplingJSON(spelling: spelling)
        var o = statistics.json(j, target: config.target)
        var sampler: JSONObject = ["algorithm": .string(config.sampler.algorithmName)]
        if case .ddim(let eta) = config.sampler { sampler["eta"] = j.number(eta) }
        sampler["sampling_steps"] = .int(config.samplingSteps)
        sampler["seed"] = j.integer(config.seed)
        sampler["samples"] = .int(config.samples)
        sampler["schedule"] = j.schedule(config.schedule)
        if let g = config.guidance {
            // Only guided results carry this key, so unguided results are unchanged.
            sampler["guidance"] = .object([
                "guidance_scale": j.number(g.scale), "class": .int(g.component),
                "conditional_mean": j.numbers(g.conditional.means[g.component]),
                "conditional_std": j.number(g.conditional.stds[g.component]),
            ])
        }
        o["sampler"] = .object(sampler)
        o["metric_setup"] = j.metricSetup
        return .object(o)
    }

    /// The statistics part, as every sampling algorithm reports it.
    var statistics: SamplingStatisticsResult {
        SamplingStatisticsResult(
            n: n, mean: mean, cov: cov, modeWeights: modeWeights, modeWeightError: modeWeightError, sw1: sw1, mmd: mmd,
            noiseFloor: noiseFloor, perMode: perMode, nanCount: nanCount, outOfRange: outOfRange, merged: merged,
            mergedExact: mergedExact)
    }

    /// The merged statistics as safetensors, for storage and bitwise comparison: for P in {sampled, exact}:
    /// `P.n` I64 [1] (finite count), `P.total` I64 [1], `P.mean` F64 [d], `P.m2` F64 [d, d], `P.rff_sum` F64 [D],
    /// `P.mode_count` I64 [K], `P.mode_mean` F64 [K, d], `P.mode_m2` F64 [K, d, d], `P.histogram` I64 [L, bins],
    /// `P.out_of_range` I64 [1]. Metadata: format "tessera.sampling.result/1" and `result_json` (= `jsonText`).
    public func statisticsFile() throws -> [UInt8] {
        try statistics.statisticsFile(target: config.target, resultJSON: jsonText)
    }
}

extension SamplingStatisticsResult {
    /// Keys n, mean, cov, mode_weights, mode_weight_error, sw1, mmd, noise_floor, per_mode, nan_count, out_of_range,
    /// and target {weights, means, stds} (the echo of `target`), in that order.
    func json(_ j: SamplingJSON, target echo: GaussianMixture) -> JSONObject {
        [
            "n": .int(n), "mean": j.numbers(mean), "cov": j.matrix(cov), "mode_weights": j.numbers(modeWeights),
            "mode_weight_error": j.number(modeWeightError), "sw1": j.number(sw1), "mmd": j.number(mmd),
            "noise_floor": .object([
                "sw1": j.number(noiseFloor.sw1), "mmd": j.number(noiseFloor.mmd),
                "mode_weight_error": j.number(noiseFloor.modeWeightError),
            ]),
            "per_mode": .array(
                perMode.map { m in
                    .object([
                        "count": .int(m.count), "weight": j.number(m.weight), "mean": j.numbers(m.mean),
                        "cov": j.matrix(m.cov),
                    ])
                }),
            "nan_count": .int(nanCount), "out_of_range": .int(outOfRange), "target": j.target(echo),
        ]
    }

    /// See `SamplingResult.statisticsFile()`.
    func statisticsFile(target: GaussianMixture, resultJSON: String) throws -> [UInt8] {
        let d = target.dimension
        let K = target.componentCount
        var tensors: [SafeTensor] = []
        for (prefix, p) in [("sampled", merged), ("exact", mergedExact)] {
            tensors += try [
                SafeTensor(name: "\(prefix).n", int64: [p.moments.count], shape: [1]),
                SafeTensor(name: "\(prefix).total", int64: [p.total], shape: [1]),
                SafeTensor(name: "\(prefix).mean", float64: p.moments.mean, shape: [d]),
                SafeTensor(name: "\(prefix).m2", float64: p.moments.m2, shape: [d, d]),
                SafeTensor(name: "\(prefix).rff_sum", float64: p.rffSum, shape: [p.rffSum.count]),
                SafeTensor(name: "\(prefix).mode_count", int64: p.modes.map(\.count), shape: [K]),
                SafeTensor(name: "\(prefix).mode_mean", float64: p.modes.flatMap(\.mean), shape: [K, d]),
                SafeTensor(name: "\(prefix).mode_m2", float64: p.modes.flatMap(\.m2), shape: [K, d, d]),
                SafeTensor(
                    name: "\(prefix).histogram", int64: p.histogram,
                    shape: [SamplingProbeSetup.projections, SamplingProbeSetup.bins]),
                SafeTensor(name: "\(prefix).out_of_range", int64: [p.outOfRange], shape: [1]),
            ]
        }
        return SafeTensorsFile(
            tensors: tensors, metadata: ["format": "tessera.sampling.result/1", "result_json": resultJSON]
        ).serialize()
    }
}

/// A merged sampling result as JSON (ddpm/ddim, langevin, smc).
public protocol SamplingResultJSON {
    /// The result as one JSON object, its doubles spelled `spelling`.
    func json(spelling: JSONNumber.Spelling) -> JSONValue
}

extension SamplingResultJSON {
    /// `json` as text with Swift's `description` for every double (`1.0`, not `1`), as the result file's
    /// `result_json` has always had it; parsing it back gives the same bits.
    public var jsonText: String { json(spelling: .swiftDescription).render() }
}

extension SamplingResult: SamplingResultJSON {}

/// The JSON pieces every sampling result shares, with one spelling for all its doubles: `.swiftDescription` for
/// the text the result file embeds, `.shortest` for the job result the coordinator stores (which has always been
/// that text parsed back and rendered again, so spelled the shortest way).
struct SamplingJSON {
    let spelling: JSONNumber.Spelling

    func number(_ x: Double) -> JSONValue { .number(JSONNumber(x, spelling: spelling)) }
    func numbers(_ xs: [Double]) -> JSONValue { .array(xs.map(number)) }
    func matrix(_ xss: [[Double]]) -> JSONValue { .array(xss.map(numbers)) }
    /// Integers are digits whatever the spelling (seeds up to 2^64 - 1 included).
    func integer(_ i: some BinaryInteger) -> JSONValue { .number(JSONNumber(exactly: i)) }

    /// `{"weights":…,"means":…,"stds":…}`.
    func target(_ t: GaussianMixture) -> JSONValue {
        .object(["weights": numbers(t.weights), "means": matrix(t.means), "stds": numbers(t.stds)])
    }

    /// `{"type":"linear","beta_start":…,"beta_end":…,"steps":…}`.
    func schedule(_ s: BetaSchedule) -> JSONValue {
        .object([
            "type": .string("linear"), "beta_start": number(s.betaStart), "beta_end": number(s.betaEnd),
            "steps": .int(s.steps),
        ])
    }

    /// Closes an smc or langevin result: the sampler's `seed` and `samples`, then `sampler` and `metric_setup`.
    func result(_ o: JSONObject, sampler: JSONObject, seed: UInt64, samples: Int) -> JSONValue {
        var o = o, sampler = sampler
        sampler["seed"] = integer(seed)
        sampler["samples"] = .int(samples)
        o["sampler"] = .object(sampler)
        o["metric_setup"] = metricSetup
        return .object(o)
    }

    /// `{"rff_features":512,…,"probe_seed":"…"}`.
    var metricSetup: JSONValue {
        .object([
            "rff_features": .int(SamplingProbeSetup.rffFeatures),
            "rff_bandwidth": number(SamplingProbeSetup.rffBandwidth),
            "projections": .int(SamplingProbeSetup.projections), "bins": .int(SamplingProbeSetup.bins),
            // A string: 64-bit integers did not survive the JSON doubles of the readers this was written for.
            "probe_seed": .string("\(SamplingProbeSetup.probeSeed)"),
        ])
    }
}
