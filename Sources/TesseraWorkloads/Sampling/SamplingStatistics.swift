// Exactly mergeable sample statistics (WORKLOADS.md §0 "Metrics", §4): per-block float64 moments, RFF feature sums and
// per-mode moments, merged by Chan's formula over a fixed binary tree of block indices (streamed: nodes are combined
// as their blocks arrive in order, by shards and then by the merge); per-shard integer histograms of 1-D projections
// that add in any order. The same code path summarises the sampler's output and the exact draws
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

/// Reduced statistics of the blocks `blocks`: a node of the job's fixed reduction tree (`SamplingReductionTree`); a
/// single block is a leaf. Non-finite rows are counted in `total` but enter nothing else.
struct SamplingTreeNode: Sendable, Equatable {
    /// Global block indices: block b covers [b * blockSize, min((b + 1) * blockSize, N)).
    var blocks: Range<Int>
    /// Rows in these blocks, finite or not.
    var total: Int64
    /// SampleMoments of the finite rows (two-pass within a block, Chan above).
    var moments: SampleMoments
    /// sum over finite rows of cos(w_f . x + b_f), f = 0..<D (the sqrt(2/D) factor is applied at the end).
    var rffSum: [Double]
    /// SampleMoments of the finite rows by argmax-posterior mode (count = mode count).
    var modes: [SampleMoments]

    /// The parent of two sibling nodes: Chan for moments, plain sums for RFF sums, integer sums for counts.
    static func combine(_ a: SamplingTreeNode, _ b: SamplingTreeNode) -> SamplingTreeNode {
        SamplingTreeNode(
            blocks: a.blocks.lowerBound..<b.blocks.upperBound, total: a.total + b.total,
            moments: .merge(a.moments, b.moments), rffSum: zip(a.rffSum, b.rffSum).map { $0 + $1 },
            modes: zip(a.modes, b.modes).map { SampleMoments.merge($0, $1) })
    }

    /// Doubles and integers the node holds (for the memory bounds of the merge).
    var valueCount: Int { 3 + moments.mean.count + moments.m2.count + rffSum.count + modes.reduce(0) { $0 + 1 + $1.mean.count + $1.m2.count } }
}

/// The fixed balanced binary tree over a job's blocks 0..<blockCount that every sampling merge reduces over: a node
/// [lo, hi) of more than one block has the children [lo, mid) and [mid, hi), mid = lo + (hi - lo) / 2. It depends only
/// on the block count (so on N), never on the shards, which is what makes merged results bitwise independent of them.
struct SamplingReductionTree: Sendable, Equatable {
    let blockCount: Int

    init(blockCount: Int) {
        self.blockCount = blockCount
    }

    init(samples: Int) {
        self.init(blockCount: SamplingPlan.blockCount(samples: samples))
    }

    /// Whether `blocks` is a node of the tree.
    func isNode(_ blocks: Range<Int>) -> Bool {
        guard blocks.lowerBound >= 0, blocks.upperBound <= blockCount, !blocks.isEmpty else { return false }
        var lo = 0
        var hi = blockCount
        while lo != blocks.lowerBound || hi != blocks.upperBound {
            let mid = lo + (hi - lo) / 2
            if blocks.upperBound <= mid {
                hi = mid
            } else if blocks.lowerBound >= mid {
                lo = mid
            } else {
                return false
            }
        }
        return true
    }

    /// Whether `left` and `right` are the two children of one node.
    func areSiblings(_ left: Range<Int>, _ right: Range<Int>) -> Bool {
        guard left.upperBound == right.lowerBound, !left.isEmpty, !right.isEmpty else { return false }
        let parent = left.lowerBound..<right.upperBound
        return parent.lowerBound + parent.count / 2 == left.upperBound && isNode(parent)
    }

    /// The most nodes a `SamplingTreeStack` of this tree can hold: one per level.
    var maximumPending: Int {
        var depth = 1
        var size = blockCount
        while size > 1 {
            size -= size / 2  // the larger child
            depth += 1
        }
        return depth
    }
}

/// Reduces tree nodes given in block order, as they arrive, to exactly the values of reducing all blocks at once over
/// `tree`: a node waits until the node to its right completes its parent, then both are replaced by the parent. The
/// pending nodes are the maximal complete nodes of the blocks seen so far, at most one per tree level
/// (`tree.maximumPending`), however many nodes were pushed. A shard uses one over its own blocks (starting at its
/// first block) and ships the pending nodes; the merge pushes those, shard after shard, into one over the job.
struct SamplingTreeStack<Value> {
    let tree: SamplingReductionTree
    private(set) var pending: [(blocks: Range<Int>, value: Value)] = []
    /// The first block not covered yet.
    private(set) var end: Int

    init(tree: SamplingReductionTree, start: Int = 0) {
        self.tree = tree
        end = start
    }

    /// Pushes the next node, which must start at `end` and be a node of `tree` (check input you did not make first).
    mutating func push(_ blocks: Range<Int>, _ value: Value, combine: (Value, Value) -> Value) {
        precondition(blocks.lowerBound == end && tree.isNode(blocks), "\(blocks) is not the next node of the tree")
        var blocks = blocks
        var value = value
        while let last = pending.last, tree.areSiblings(last.blocks, blocks) {
            pending.removeLast()
            value = combine(last.value, value)
            blocks = last.blocks.lowerBound..<blocks.upperBound
        }
        pending.append((blocks, value))
        end = blocks.upperBound
    }

    /// The root's value, once every block was pushed.
    var root: Value? {
        pending.count == 1 && pending[0].blocks == 0..<tree.blockCount ? pending[0].value : nil
    }
}

/// A shard's statistics of one population of points (the sampler's output, or the exact draws).
struct SamplingPopulationStats: Sendable, Equatable {
    /// The shard's blocks reduced as far as the tree allows within the shard: the maximal tree nodes inside its
    /// blocks, in block order (the pending nodes of a `SamplingTreeStack` over the shard's blocks).
    var nodes: [SamplingTreeNode]
    /// Integer histograms, row-major [L, bins].
    var histogram: [Int64]
    /// Projections that fell outside their histogram range and were clamped into an edge bin.
    var outOfRange: Int64

    init(nodes: [SamplingTreeNode] = [], projections: Int, bins: Int) {
        self.nodes = nodes
        histogram = [Int64](repeating: 0, count: projections * bins)
        outOfRange = 0
    }

    init(nodes: [SamplingTreeNode], histogram: [Int64], outOfRange: Int64) {
        self.nodes = nodes
        self.histogram = histogram
        self.outOfRange = outOfRange
    }

    /// Summarises `count` rows of `rows` (row-major [count, d]) as block `index`, adds their projections to the
    /// histograms, and returns the block's leaf node (for the caller's `SamplingTreeStack`). `scratch` must hold at
    /// least D doubles.
    mutating func addBlock(
        index: Int, rows: UnsafePointer<Double>, count: Int, probes: SamplingProbes, classifier: ModeClassifier,
        scratch: UnsafeMutablePointer<Double>
    ) -> SamplingTreeNode {
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
        return SamplingTreeNode(
            blocks: index..<(index + 1), total: Int64(count), moments: moments, rffSum: rffSum, modes: modes)
    }
}
