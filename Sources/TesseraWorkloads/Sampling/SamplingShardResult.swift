// The output of one sampling shard and its exact binary form (safetensors, WORKLOADS.md §7).

import TesseraCompute

/// What a sampling shard produces: the statistics of its samples and of exact draws of the same indices (per node of
/// the job's reduction tree, reduced as far as the shard's own blocks allow), their projection histograms, and
/// optionally the samples themselves.
public struct SamplingShardResult: Sendable, Equatable {
    /// The sample indices this shard covered.
    public var range: Range<Int>
    public var dimension: Int
    public var componentCount: Int
    /// The samples, row-major F32 [n, d], when the config asked to keep them.
    public var samples: [Float]?
    /// The sampler's output.
    var sampled: SamplingPopulationStats
    /// Exact target draws of the same indices (Philox stream 2): the noise floor.
    var exact: SamplingPopulationStats
    /// Algorithm-specific exact numbers (Langevin accept counts, SMC per-population values); empty for ddpm/ddim.
    public var extras: SamplingShardExtras

    init(
        range: Range<Int>, dimension: Int, componentCount: Int, samples: [Float]?, sampled: SamplingPopulationStats,
        exact: SamplingPopulationStats, extras: SamplingShardExtras = SamplingShardExtras()
    ) {
        self.range = range
        self.dimension = dimension
        self.componentCount = componentCount
        self.samples = samples
        self.sampled = sampled
        self.exact = exact
        self.extras = extras
    }

    /// `format` value in the safetensors metadata of `serialize()`.
    public static let format = "tessera.sampling.shard/2"

    /// The status part of the shard's summary: n, finite count, nan_count, mean_sq_norm (mean |x|^2 of the finite
    /// samples), out_of_range (histogram clamps), and the shard's own mode-weight vector.
    public var statistics: SamplingShardStatistics {
        let moments = sampled.nodes.dropFirst().reduce(sampled.nodes[0].moments) { SampleMoments.merge($0, $1.moments) }
        let total = sampled.nodes.reduce(Int64(0)) { $0 + $1.total }
        var meanSquaredNorm = 0.0
        if moments.count > 0 {
            let n = Double(moments.count)
            for c in 0..<dimension {
                meanSquaredNorm += moments.mean[c] * moments.mean[c] + moments.m2[c * dimension + c] / n
            }
        } else {
            meanSquaredNorm = .nan
        }
        let modeWeights = (0..<componentCount).map { k in
            let count = sampled.nodes.reduce(Int64(0)) { $0 + $1.modes[k].count }
            return moments.count > 0 ? Double(count) / Double(moments.count) : .nan
        }
        return SamplingShardStatistics(
            n: total, finite: moments.count, nanCount: total - moments.count, meanSquaredNorm: meanSquaredNorm,
            outOfRange: sampled.outOfRange, modeWeights: modeWeights)
    }

    /// The samples as a safetensors file: tensor `samples` F32 [n, d]; metadata `range_lower`, `range_upper`
    /// (global sample indices) and `dimension`. Nil when the samples were not kept.
    public func samplesFile() throws -> [UInt8]? {
        guard let samples else { return nil }
        let file = SafeTensorsFile(
            tensors: [try SafeTensor(name: "samples", float32: samples, shape: [range.count, dimension])],
            metadata: [
                "format": "tessera.sampling.samples/1",
                "range_lower": String(range.lowerBound),
                "range_upper": String(range.upperBound),
                "dimension": String(dimension),
            ])
        return file.serialize()
    }

    /// The exact binary form: safetensors with, for P in {sampled, exact} and M tree nodes,
    /// `P.node_blocks` I64 [M, 2] (first block, one past the last), `P.total` I64 [M], `P.count` I64 [M],
    /// `P.mean` F64 [M, d], `P.m2` F64 [M, d, d], `P.rff_sum` F64 [M, D], `P.mode_count` I64 [M, K],
    /// `P.mode_mean` F64 [M, K, d], `P.mode_m2` F64 [M, K, d, d], `P.histogram` [L, bins] in the narrowest of
    /// U8/U16/U32/I64 that holds its largest count, `P.out_of_range` I64 [1]; plus `samples` F32 [n, d] when kept.
    /// Metadata: format, range_lower, range_upper, dimension, components. `deserialize` inverts it bit for bit.
    public func serialize() throws -> [UInt8] {
        var tensors: [SafeTensor] = []
        for (prefix, population) in [("sampled", sampled), ("exact", exact)] {
            tensors += try Self.tensors(prefix: prefix, population, dimension: dimension, components: componentCount)
        }
        if let samples {
            tensors.append(try SafeTensor(name: "samples", float32: samples, shape: [range.count, dimension]))
        }
        for (name, values) in extras.integers.sorted(by: { $0.key < $1.key }) {
            tensors.append(try SafeTensor(name: "extra.i.\(name)", int64: values, shape: [values.count]))
        }
        for (name, values) in extras.reals.sorted(by: { $0.key < $1.key }) {
            tensors.append(try SafeTensor(name: "extra.f.\(name)", float64: values, shape: [values.count]))
        }
        let file = SafeTensorsFile(
            tensors: tensors,
            metadata: [
                "format": Self.format,
                "range_lower": String(range.lowerBound),
                "range_upper": String(range.upperBound),
                "dimension": String(dimension),
                "components": String(componentCount),
            ])
        return file.serialize()
    }

    public static func deserialize(_ bytes: [UInt8]) throws -> SamplingShardResult {
        let file: SafeTensorsFile
        do {
            file = try SafeTensorsFile.parse(bytes)
        } catch {
            throw SamplingError(.malformedResult, "shard result is not a valid safetensors file: \(error)")
        }
        let metadata = file.metadata
        guard metadata["format"] == format else {
            throw SamplingError(
                .malformedResult, "not a sampling shard result: format is \(metadata["format"] ?? "missing")")
        }
        func integer(_ key: String) throws -> Int {
            guard let text = metadata[key], let value = Int(text) else {
                throw SamplingError(.malformedResult, "shard result metadata `\(key)` is missing or not an integer")
            }
            return value
        }
        let lower = try integer("range_lower")
        let upper = try integer("range_upper")
        let d = try integer("dimension")
        let K = try integer("components")
        guard lower >= 0, upper > lower, d > 0, K > 0 else {
            throw SamplingError(.malformedResult, "shard result metadata is inconsistent")
        }
        let reader = TensorReader(file: file)
        let sampled = try population(prefix: "sampled", reader, dimension: d, components: K)
        let exact = try population(prefix: "exact", reader, dimension: d, components: K)
        let blockSize = SamplingPlan.blockSize
        let firstBlock = lower / blockSize
        let expectedBlocks = Array(firstBlock..<((upper + blockSize - 1) / blockSize))
        func tiles(_ nodes: [SamplingTreeNode]) -> Bool {
            nodes.first?.blocks.lowerBound == expectedBlocks.first && nodes.last?.blocks.upperBound == expectedBlocks.last.map { $0 + 1 }
                && zip(nodes, nodes.dropFirst()).allSatisfy { $0.blocks.upperBound == $1.blocks.lowerBound }
        }
        guard tiles(sampled.nodes), tiles(exact.nodes) else {
            throw SamplingError(
                .malformedResult, "shard result blocks do not match its range \(lower)..<\(upper)")
        }
        var samples: [Float]?
        if file["samples"] != nil {
            let values = try reader.float32("samples", count: (upper - lower) * d)
            samples = values
        }
        var extras = SamplingShardExtras()
        for tensor in file.tensors {
            if tensor.name.hasPrefix("extra.i.") {
                extras.integers[String(tensor.name.dropFirst(8))] = try reader.int64(tensor.name, count: nil)
            } else if tensor.name.hasPrefix("extra.f.") {
                extras.reals[String(tensor.name.dropFirst(8))] = try reader.float64(tensor.name, count: nil)
            }
        }
        return SamplingShardResult(
            range: lower..<upper, dimension: d, componentCount: K, samples: samples, sampled: sampled, exact: exact,
            extras: extras)
    }

    private static func tensors(prefix: String, _ p: SamplingPopulationStats, dimension d: Int, components K: Int)
        throws
        -> [SafeTensor]
    {
        let M = p.nodes.count
        let D = p.nodes.first?.rffSum.count ?? SamplingProbeSetup.rffFeatures
        let L = SamplingProbeSetup.projections
        return try [
            SafeTensor(
                name: "\(prefix).node_blocks",
                int64: p.nodes.flatMap { [Int64($0.blocks.lowerBound), Int64($0.blocks.upperBound)] }, shape: [M, 2]),
            SafeTensor(name: "\(prefix).total", int64: p.nodes.map(\.total), shape: [M]),
            SafeTensor(name: "\(prefix).count", int64: p.nodes.map(\.moments.count), shape: [M]),
            SafeTensor(name: "\(prefix).mean", float64: p.nodes.flatMap(\.moments.mean), shape: [M, d]),
            SafeTensor(name: "\(prefix).m2", float64: p.nodes.flatMap(\.moments.m2), shape: [M, d, d]),
            SafeTensor(name: "\(prefix).rff_sum", float64: p.nodes.flatMap(\.rffSum), shape: [M, D]),
            SafeTensor(
                name: "\(prefix).mode_count", int64: p.nodes.flatMap { $0.modes.map(\.count) }, shape: [M, K]),
            SafeTensor(
                name: "\(prefix).mode_mean", float64: p.nodes.flatMap { $0.modes.flatMap(\.mean) },
                shape: [M, K, d]),
            SafeTensor(
                name: "\(prefix).mode_m2", float64: p.nodes.flatMap { $0.modes.flatMap(\.m2) }, shape: [M, K, d, d]),
            SafeTensor(
                name: "\(prefix).histogram", counts: p.histogram, shape: [L, p.histogram.count / max(L, 1)]),
            SafeTensor(name: "\(prefix).out_of_range", int64: [p.outOfRange], shape: [1]),
        ]
    }

    private static func population(prefix: String, _ r: TensorReader, dimension d: Int, components K: Int) throws
        -> SamplingPopulationStats
    {
        let bounds = try r.int64("\(prefix).node_blocks", count: nil)
        guard bounds.count % 2 == 0 else {
            throw SamplingError(.malformedResult, "shard result tensor `\(prefix).node_blocks` has an odd count")
        }
        let M = bounds.count / 2
        let D = SamplingProbeSetup.rffFeatures
        let total = try r.int64("\(prefix).total", count: M)
        let count = try r.int64("\(prefix).count", count: M)
        let mean = try r.float64("\(prefix).mean", count: M * d)
        let m2 = try r.float64("\(prefix).m2", count: M * d * d)
        let rff = try r.float64("\(prefix).rff_sum", count: M * D)
        let modeCount = try r.int64("\(prefix).mode_count", count: M * K)
        let modeMean = try r.float64("\(prefix).mode_mean", count: M * K * d)
        let modeM2 = try r.float64("\(prefix).mode_m2", count: M * K * d * d)
        let histogram = try r.counts(
            "\(prefix).histogram", count: SamplingProbeSetup.projections * SamplingProbeSetup.bins)
        let outOfRange = try r.int64("\(prefix).out_of_range", count: 1)
        var nodes: [SamplingTreeNode] = []
        nodes.reserveCapacity(M)
        for b in 0..<M {
            guard bounds[2 * b] < bounds[2 * b + 1], bounds[2 * b] >= 0, bounds[2 * b + 1] <= Int64(Int32.max) else {
                throw SamplingError(.malformedResult, "shard result node \(b) has an empty or invalid block range")
            }
            var modes: [SampleMoments] = []
            for k in 0..<K {
                let mk = b * K + k
                modes.append(
                    SampleMoments(
                        count: modeCount[mk], mean: Array(modeMean[(mk * d)..<((mk + 1) * d)]),
                        m2: Array(modeM2[(mk * d * d)..<((mk + 1) * d * d)])))
            }
            nodes.append(
                SamplingTreeNode(
                    blocks: Int(bounds[2 * b])..<Int(bounds[2 * b + 1]), total: total[b],
                    moments: SampleMoments(
                        count: count[b], mean: Array(mean[(b * d)..<((b + 1) * d)]),
                        m2: Array(m2[(b * d * d)..<((b + 1) * d * d)])),
                    rffSum: Array(rff[(b * D)..<((b + 1) * D)]), modes: modes))
        }
        return SamplingPopulationStats(nodes: nodes, histogram: histogram, outOfRange: outOfRange[0])
    }
}

/// Algorithm-specific exact numbers of one shard, stored as 1-D tensors `extra.i.<name>` (I64) and
/// `extra.f.<name>` (F64) of the shard result. Their meaning and merge rule belong to the algorithm: integer counters
/// add; per-population reals are concatenated in population order and reduced in that order, so merged values do
/// not depend on the shard layout.
public struct SamplingShardExtras: Sendable, Equatable {
    public var integers: [String: [Int64]]
    public var reals: [String: [Double]]

    public init(integers: [String: [Int64]] = [:], reals: [String: [Double]] = [:]) {
        self.integers = integers
        self.reals = reals
    }

    public var isEmpty: Bool { integers.isEmpty && reals.isEmpty }
}

/// Typed, size-checked access to the tensors of a parsed file.
private struct TensorReader {
    let file: SafeTensorsFile

    private func tensor(_ name: String) throws -> SafeTensor {
        guard let t = file[name] else { throw SamplingError(.malformedResult, "shard result lacks tensor `\(name)`") }
        return t
    }

    private func check(_ name: String, _ actual: Int, _ expected: Int?) throws {
        if let expected, actual != expected {
            throw SamplingError(
                .malformedResult, "shard result tensor `\(name)` has \(actual) values, expected \(expected)")
        }
    }

    func int64(_ name: String, count: Int?) throws -> [Int64] {
        let values = try tensor(name).int64Values()
        try check(name, values.count, count)
        return values
    }

    func float64(_ name: String, count: Int?) throws -> [Double] {
        let values = try tensor(name).float64Values()
        try check(name, values.count, count)
        return values
    }

    func counts(_ name: String, count: Int?) throws -> [Int64] {
        let values = try tensor(name).countValues()
        try check(name, values.count, count)
        return values
    }

    func float32(_ name: String, count: Int?) throws -> [Float] {
        let values = try tensor(name).float32Values()
        try check(name, values.count, count)
        return values
    }
}
