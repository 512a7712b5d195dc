// Exactly mergeable sample statistics (WORKLOADS.md §0 "Metrics", §4): per-block float64 moments, RFF feature sums and
// per-mode moments, merged by Chan's formula over a fixed binary tree of block indices; per-shard integer histograms of
// 1-D projections that add in any order. The same code path summarises the sampler's output and the exact draws
// (the noise floor).

import Foundation
import TesseraCompute

/// The fixed evaluation probes: random Fourier features for MMD and projection directions for sliced W1.
///
/// The probes are drawn from a FIXED Philox key (`probeSeed`), not from the job seed, so every job with the same
/// target dimension is scored with the same features and directions and their metrics compare like for like.
/// Feature f: w_f = z / bandwidth with z = d normals from Philox(probeSeed; f, step 0, stream 7), then
/// b_f = 2 pi u from the next word of the same stream. Direction l: d normals from Philox(probeSeed; l, step 1, stream 7),
/// normalised to unit length.
public enum SamplingProbeSetup {
    /// Philox key of the probes ("TESSERA" + 1 in ASCII).
    public static let probeSeed: UInt64 = 0x5445_5353_4552_4131
    /// D, the number of random Fourier features; phi_f(x) = sqrt(2/D) cos(w_f . x + b_f).
    public static let rffFeatures = 512
    /// l, the Gaussian-kernel bandwidth: w ~ N(0, I / l^2), so k(x, y) ~ exp(-|x - y|^2 / (2 l^2)).
    public static let rffBandwidth = 1.0
    /// L, the number of sliced-W1 projection directions.
    public static let projections = 64
    /// Histogram bins per projection.
    public static let bins = 4096
    /// The histogram of direction l spans [min_k theta.mu_k - 8 s_max, max_k theta.mu_k + 8 s_max].
    public static let rangeStds = 8.0
}

/// Probes instantiated for one target.
struct SamplingProbes: Sendable {
    let dimension: Int
    let features: Int
    let projections: Int
    let bins: Int
    /// w_f, stored column-major: weights[c * D + f], so the inner loop over features is contiguous.
    let weights: [Double]
    /// b_f.
    let phases: [Double]
    /// theta_l, row-major [L, d].
    let directions: [Double]
    /// Histogram lower edge and bin width of each direction.
    let lowerEdges: [Double]
    let binWidths: [Double]
    let inverseBinWidths: [Double]

    init(target: GaussianMixture) {
        let d = target.dimension
        let D = SamplingProbeSetup.rffFeatures
        let L = SamplingProbeSetup.projections
        dimension = d
        features = D
        projections = L
        bins = SamplingProbeSetup.bins
        var weights = [Double](repeating: 0, count: d * D)
        var phases = [Double](repeating: 0, count: D)
        for f in 0..<D {
            var stream = PhiloxStream(
                seed: SamplingProbeSetup.probeSeed, index: UInt32(f), step: 0, stream: .evalProjections)
            let z = stream.normals(d)
            for c in 0..<d { weights[c * D + f] = z[c] / SamplingProbeSetup.rffBandwidth }
            phases[f] = 2 * Double.pi * stream.nextUniform()
        }
        var directions = [Double](repeating: 0, count: L * d)
        for l in 0..<L {
            var stream = PhiloxStream(
                seed: SamplingProbeSetup.probeSeed, index: UInt32(l), step: 1, stream: .evalProjections)
            let z = stream.normals(d)
            let norm = z.reduce(0) { $0 + $1 * $1 }.squareRoot()
            for c in 0..<d { directions[l * d + c] = z[c] / norm }
        }
        let sMax = target.stds.max()!
        var lowerEdges = [Double](repeating: 0, count: L)
        var binWidths = [Double](repeating: 0, count: L)
        for l in 0..<L {
            let centres = target.means.map { mu in (0..<d).reduce(0.0) { $0 + directions[l * d + $1] * mu[$1] } }
            let lo = centres.min()! - SamplingProbeSetup.rangeStds * sMax
            let hi = centres.max()! + SamplingProbeSetup.rangeStds * sMax
            lowerEdges[l] = lo
            binWidths[l] = (hi - lo) / Double(SamplingProbeSetup.bins)
        }
        self.weights = weights
        self.phases = phases
        self.directions = directions
        self.lowerEdges = lowerEdges
        self.binWidths = binWidths
        inverseBinWidths = binWidths.map { 1 / $0 }
    }

    /// The exact target mean embedding E phi(X) = sqrt(2/D) sum_k w_k exp(-s_k^2 |w_f|^2 / 2) cos(w_f . mu_k + b_f).
    func exactEmbedding(_ target: GaussianMixture) -> [Double] {
        let scale = (2.0 / Double(features)).squareRoot()
        return (0..<features).map { f in
            var norm2 = 0.0
            for c in 0..<dimension { norm2 += weights[c * features + f] * weights[c * features + f] }
            var sum = 0.0
            for k in 0..<target.componentCount {
                var arg = phases[f]
                for c in 0..<dimension { arg += weights[c * features + f] * target.means[k][c] }
                let s = target.stds[k]
                sum += target.weights[k] * exp(-0.5 * s * s * norm2) * cos(arg)
            }
            return scale * sum
        }
    }

    /// The exact CDF of theta_l . X for X ~ target: sum_k w_k Phi((u - theta_l . mu_k) / s_k).
    func exactProjectedCDFs(_ target: GaussianMixture, direction l: Int) -> (Double) -> Double {
        let centres = target.means.map { mu in
            (0..<dimension).reduce(0.0) { $0 + directions[l * dimension + $1] * mu[$1] }
        }
        return { u in
            var total = 0.0
            for k in 0..<target.componentCount {
                total += target.weights[k] * standardNormalCDF((u - centres[k]) / target.stds[k])
            }
            return total
        }
    }
}

/// Phi(z) = P(N(0,1) <= z) = erfc(-z / sqrt 2) / 2 (erfc keeps the lower tail accurate).
func standardNormalCDF(_ z: Double) -> Double {
    0.5 * erfc(-z * 0.707_106_781_186_547_524_4)
}

/// cos(x) for the RFF inner loop: straight-line arithmetic the compiler vectorises (no libm call). Reduces x to
/// r in [-pi, pi] (Cody-Waite, two-constant 2 pi), evaluates cos(r/4) by its Taylor series through r^16 (truncation
/// < 3e-18 on [-pi/4, pi/4]), then doubles the angle twice. Absolute error about 2e-15 for |x| < 1e6.
@inline(__always)
func rffCos(_ x: Double) -> Double {
    let shifter = 0x1.8p52
    let k = (x * 0.159_154_943_091_895_335_77 + shifter) - shifter
    let r = (x - k * 6.283_185_307_179_586_232) - k * 2.449_293_598_294_706_4e-16
    let y = r * 0.25
    let y2 = y * y
    var c = 1.0 / 20_922_789_888_000.0
    c = c * y2 - 1.0 / 87_178_291_200.0
    c = c * y2 + 1.0 / 479_001_600.0
    c = c * y2 - 1.0 / 3_628_800.0
    c = c * y2 + 1.0 / 40_320.0
    c = c * y2 - 1.0 / 720.0
    c = c * y2 + 1.0 / 24.0
    c = c * y2 - 0.5
    c = c * y2 + 1.0
    c = 2 * c * c - 1
    return 2 * c * c - 1
}

/// Count, mean and M2 = sum (x - mean)(x - mean)^T of a set of points (M2 row-major d x d).
struct SampleMoments: Sendable, Equatable {
    var count: Int64
    var mean: [Double]
    var m2: [Double]

    static func empty(dimension d: Int) -> SampleMoments {
        SampleMoments(count: 0, mean: [Double](repeating: 0, count: d), m2: [Double](repeating: 0, count: d * d))
    }

    /// Chan et al.: n = na + nb, delta = mb - ma, m = ma + delta nb / n, M2 = M2a + M2b + delta delta^T na nb / n.
    static func merge(_ a: SampleMoments, _ b: SampleMoments) -> SampleMoments {
        if b.count == 0 { return a }
        if a.count == 0 { return b }
        let na = Double(a.count)
        let nb = Double(b.count)
        let n = na + nb
        let d = a.mean.count
        var mean = a.mean
        var m2 = a.m2
        var delta = [Double](repeating: 0, count: d)
        for c in 0..<d {
            delta[c] = b.mean[c] - a.mean[c]
            mean[c] = a.mean[c] + delta[c] * nb / n
        }
        let weight = na * nb / n
        for r in 0..<d {
            for c in 0..<d { m2[r * d + c] = a.m2[r * d + c] + b.m2[r * d + c] + delta[r] * delta[c] * weight }
        }
        return SampleMoments(count: a.count + b.count, mean: mean, m2: m2)
    }
}

/// Statistics of one block of consecutive sample indices (a full block of `SamplingPlan.blockSize`, or the job's
/// last, shorter block). Non-finite rows are counted in `total` but enter nothing else.
struct SamplingBlockStats: Sendable, Equatable {
    /// Global block index: the block covers [index * blockSize, min((index + 1) * blockSize, N)).
    var index: Int
    /// Rows in the block, finite or not.
    var total: Int64
    /// SampleMoments of the finite rows (two-pass within the block).
    var moments: SampleMoments
    /// sum over finite rows of cos(w_f . x + b_f), f = 0..<D (the sqrt(2/D) factor is applied at the end).
    var rffSum: [Double]
    /// SampleMoments of the finite rows by argmax-posterior mode (count = mode count).
    var modes: [SampleMoments]
}

/// A shard's statistics of one population of points (the sampler's output, or the exact draws).
struct SamplingPopulationStats: Sendable, Equatable {
    /// One entry per block of the shard, in block order.
    var blocks: [SamplingBlockStats]
    /// Integer histograms, row-major [L, bins].
    var histogram: [Int64]
    /// Projections that fell outside their histogram range and were clamped into an edge bin.
    var outOfRange: Int64

    init(blocks: [SamplingBlockStats] = [], projections: Int, bins: Int) {
        self.blocks = blocks
        histogram = [Int64](repeating: 0, count: projections * bins)
        outOfRange = 0
    }

    init(blocks: [SamplingBlockStats], histogram: [Int64], outOfRange: Int64) {
        self.blocks = blocks
        self.histogram = histogram
        self.outOfRange = outOfRange
    }

    /// Summarises `count` rows of `rows` (row-major [count, d]) as block `index`, and adds their projections to the
    /// histograms. `scratch` must hold at least D doubles.
    mutating func addBlock(
        index: Int, rows: UnsafePointer<Double>, count: Int, probes: SamplingProbes, classifier: ModeClassifier,
        scratch: UnsafeMutablePointer<Double>
    ) {
        let d = probes.dimension
        let K = classifier.componentCount
        let D = probes.features
        var finite = [Bool](repeating: true, count: count)
        var modeOf = [Int](repeating: 0, count: count)
        var moments = SampleMoments.empty(dimension: d)
        var modes = [SampleMoments](repeating: .empty(dimension: d), count: K)
        var rffSum = [Double](repeating: 0, count: D)

        // Pass 1: finiteness, modes, sums for the means, RFF sums, histograms.
        var sum = [Double](repeating: 0, count: d)
        var modeSums = [Double](repeating: 0, count: K * d)
        let L = probes.projections
        let bins = probes.bins
        let binCount = Double(bins)
        probes.directions.withUnsafeBufferPointer { thetaBuffer in
            probes.lowerEdges.withUnsafeBufferPointer { lowerBuffer in
                probes.inverseBinWidths.withUnsafeBufferPointer { inverseBuffer in
                    let theta = thetaBuffer.baseAddress!
                    let lower = lowerBuffer.baseAddress!
                    let inverse = inverseBuffer.baseAddress!
                    probes.weights.withUnsafeBufferPointer { w in
                        probes.phases.withUnsafeBufferPointer { b in
                            rffSum.withUnsafeMutableBufferPointer { acc in
                                histogram.withUnsafeMutableBufferPointer { hist in
                                    for j in 0..<count {
                                        let x = rows + j * d
                                        var ok = true
                                        for c in 0..<d where !x[c].isFinite { ok = false }
                                        guard ok else {
                                            finite[j] = false
                                            continue
                                        }
                                        let k = classifier.mode(x)
                                        modeOf[j] = k
                                        moments.count += 1
                                        modes[k].count += 1
                                        for c in 0..<d {
                                            sum[c] += x[c]
                                            modeSums[k * d + c] += x[c]
                                        }
                                        // RFF: args = b + sum_c w[c, :] x_c, then cos, then accumulate (vectorisable loops).
                                        for f in 0..<D { scratch[f] = b[f] }
                                        for c in 0..<d {
                                            let xc = x[c]
                                            let wc = w.baseAddress! + c * D
                                            for f in 0..<D { scratch[f] += wc[f] * xc }
                                        }
                                        for f in 0..<D { acc[f] += rffCos(scratch[f]) }
                                        // Projections.
                                        for l in 0..<L {
                                            var u = 0.0
                                            for c in 0..<d { u += theta[l * d + c] * x[c] }
                                            let v = (u - lower[l]) * inverse[l]
                                            let bin: Int
                                            if v < 0 {
                                                bin = 0
                                                outOfRange += 1
                                            } else if v >= binCount {
                                                bin = bins - 1
                                                outOfRange += 1
                                            } else {
                                                bin = Int(v)
                                            }
                                            hist[l * bins + bin] += 1
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if moments.count > 0 {
            for c in 0..<d { moments.mean[c] = sum[c] / Double(moments.count) }
        }
        for k in 0..<K where modes[k].count > 0 {
            for c in 0..<d { modes[k].mean[c] = modeSums[k * d + c] / Double(modes[k].count) }
        }
        // Pass 2: centred second moments.
        var delta = [Double](repeating: 0, count: d)
        for j in 0..<count where finite[j] {
            let x = rows + j * d
            let k = modeOf[j]
            for c in 0..<d { delta[c] = x[c] - moments.mean[c] }
            for r in 0..<d {
                for c in 0..<d { moments.m2[r * d + c] += delta[r] * delta[c] }
            }
            for c in 0..<d { delta[c] = x[c] - modes[k].mean[c] }
            for r in 0..<d {
                for c in 0..<d { modes[k].m2[r * d + c] += delta[r] * delta[c] }
            }
        }
        blocks.append(
            SamplingBlockStats(index: index, total: Int64(count), moments: moments, rffSum: rffSum, modes: modes))
    }
}

/// Reduces `items` (in the given order) over a fixed balanced binary tree: split at count / 2, recurse, combine.
/// The tree depends only on `items.count`, so the result depends only on the items, never on how they arrived.
func samplingTreeReduce<T>(_ items: ArraySlice<T>, _ combine: (T, T) -> T) -> T {
    precondition(!items.isEmpty, "samplingTreeReduce needs at least one item")
    if items.count == 1 { return items[items.startIndex] }
    let mid = items.startIndex + items.count / 2
    return combine(
        samplingTreeReduce(items[items.startIndex..<mid], combine),
        samplingTreeReduce(items[mid..<items.endIndex], combine))
}
