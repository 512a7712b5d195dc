// The synthetic target of WORKLOADS.md §0: an isotropic Gaussian mixture GMM(w_k, mu_k, s_k^2 I), with the exact
// score, eps* and x0* of its noised marginal p_t = sum_k w_k N(sqrt(a) mu_k, v_k I), v_k = a s_k^2 + 1 - a,
// and exact Philox draws. Responsibilities are computed in the log domain (max-shifted), so far-out points stay finite.

import Foundation
import TesseraCompute

public struct GaussianMixture: Sendable, Equatable {
    /// Component weights, normalised to sum to 1.
    public private(set) var weights: [Double]
    /// Component means, K rows of `dimension` numbers.
    public private(set) var means: [[Double]]
    /// Component standard deviations s_k (isotropic covariance s_k^2 I).
    public private(set) var stds: [Double]
    public private(set) var dimension: Int

    public var componentCount: Int { weights.count }

    /// Validates and builds a mixture. `weights == nil` means uniform. Weights must be finite, >= 0, and sum to 1
    /// within 1e-9 (they are then divided by their sum); stds must be finite and > 0; all means must have the same,
    /// non-zero dimension.
    public init(weights: [Double]? = nil, means: [[Double]], stds: [Double]) throws {
        guard !means.isEmpty else {
            throw SamplingError(.invalidTarget, "target has no components: `means` is empty")
        }
        guard means.count == stds.count else {
            throw SamplingError(
                .invalidTarget, "target has \(means.count) means but \(stds.count) stds; give one std per component")
        }
        let dimension = means[0].count
        guard dimension > 0 else {
            throw SamplingError(.invalidTarget, "target means must have at least one coordinate")
        }
        for (k, mean) in means.enumerated() {
            guard mean.count == dimension else {
                throw SamplingError(
                    .invalidTarget,
                    "target mean \(k) has \(mean.count) coordinates, but mean 0 has \(dimension); all means need the same dimension"
                )
            }
            guard mean.allSatisfy(\.isFinite) else {
                throw SamplingError(.invalidTarget, "target mean \(k) has a non-finite coordinate")
            }
        }
        for (k, s) in stds.enumerated() where !(s.isFinite && s > 0) {
            throw SamplingError(.invalidTarget, "target std \(k) is \(s); stds must be finite and > 0")
        }
        var normalized: [Double]
        if let weights {
            guard weights.count == means.count else {
                throw SamplingError(
                    .invalidTarget,
                    "target has \(weights.count) weights but \(means.count) means; give one weight per component or omit `weights` for uniform"
                )
            }
            for (k, w) in weights.enumerated() where !(w.isFinite && w >= 0) {
                throw SamplingError(.invalidTarget, "target weight \(k) is \(w); weights must be finite and >= 0")
            }
            let total = weights.reduce(0, +)
            guard abs(total - 1) <= 1e-9 else {
                throw SamplingError(
                    .invalidTarget, "target weights sum to \(total); they must sum to 1 (within 1e-9)")
            }
            normalized = weights.map { $0 / total }
        } else {
            normalized = [Double](repeating: 1.0 / Double(means.count), count: means.count)
        }
        self.weights = normalized
        self.means = means
        self.stds = stds
        self.dimension = dimension
    }

    /// Log-weights, log w_k (-inf for a zero weight, which then never gets responsibility).
    var logWeights: [Double] { weights.map { log($0) } }

    /// The noised marginal at alphabar `a` with every per-component constant precomputed.
    func noised(alphaBar a: Double) -> NoisedMixture { NoisedMixture(self, alphaBar: a) }

    // MARK: exact fields of the noised marginal (convenience forms; the sampler uses `NoisedMixture` directly)

    /// grad_x log p_a(x) = -sum_k g_k(x) (x - sqrt(a) mu_k) / v_k.
    public func score(_ x: [Double], alphaBar a: Double) -> [Double] {
        precondition(x.count == dimension, "point dimension \(x.count) != target dimension \(dimension)")
        let m = noised(alphaBar: a)
        var out = [Double](repeating: 0, count: dimension)
        var scratch = [Double](repeating: 0, count: componentCount)
        x.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                scratch.withUnsafeMutableBufferPointer { sp in
                    m.weightedResidual(xp.baseAddress!, into: op.baseAddress!, scratch: sp.baseAddress!)
                }
            }
        }
        return out.map { -$0 }
    }

    /// eps*(x, a) = -sqrt(1 - a) grad log p_a(x), the exact noise prediction.
    public func epsilon(_ x: [Double], alphaBar a: Double) -> [Double] {
        let root = (1 - a).squareRoot()
        return score(x, alphaBar: a).map { -root * $0 }
    }

    /// x0*(x, a) = E[x0 | x_a = x] = sum_k g_k [mu_k + sqrt(a) s_k^2 / v_k (x - sqrt(a) mu_k)].
    public func x0(_ x: [Double], alphaBar a: Double) -> [Double] {
        precondition(x.count == dimension, "point dimension \(x.count) != target dimension \(dimension)")
        let g = responsibilities(x, alphaBar: a)
        let ra = a.squareRoot()
        var out = [Double](repeating: 0, count: dimension)
        for k in 0..<componentCount where g[k] > 0 {
            let v = a * stds[k] * stds[k] + 1 - a
            let shrink = ra * stds[k] * stds[k] / v
            for c in 0..<dimension {
                out[c] += g[k] * (means[k][c] + shrink * (x[c] - ra * means[k][c]))
            }
        }
        return out
    }

    /// Posterior component probabilities g_k(x) under the noised marginal at `a` (log-domain, max-shifted).
    public func responsibilities(_ x: [Double], alphaBar a: Double) -> [Double] {
        precondition(x.count == dimension, "point dimension \(x.count) != target dimension \(dimension)")
        let m = noised(alphaBar: a)
        var logits = [Double](repeating: 0, count: componentCount)
        x.withUnsafeBufferPointer { xp in
            logits.withUnsafeMutableBufferPointer { lp in m.logits(xp.baseAddress!, into: lp.baseAddress!) }
        }
        let top = logits.max()!
        let e = logits.map { exp($0 - top) }
        let z = e.reduce(0, +)
        return e.map { $0 / z }
    }

    /// log p_a(x), the exact log-density of the noised marginal.
    public func logDensity(_ x: [Double], alphaBar a: Double) -> Double {
        let m = noised(alphaBar: a)
        var logits = [Double](repeating: 0, count: componentCount)
        x.withUnsafeBufferPointer { xp in
            logits.withUnsafeMutableBufferPointer { lp in m.logits(xp.baseAddress!, into: lp.baseAddress!) }
        }
        let top = logits.max()!
        let z = logits.reduce(0) { $0 + exp($1 - top) }
        return top + log(z) - 0.5 * Double(dimension) * log(2 * Double.pi)
    }

    // MARK: exact draws

    /// One exact draw from `stream`: the first word picks the component by inverse CDF on the weights
    /// (u = ((w >> 8) + 0.5) 2^-24), the following words give `dimension` Box-Muller normals z, and the point is
    /// mu_k + s_k z. Returns the component.
    @inlinable
    public func draw(_ stream: inout PhiloxStream, into out: UnsafeMutablePointer<Double>) -> Int {
        let u = stream.nextUniform()
        var k = 0
        var cumulative = 0.0
        while k < weights.count - 1 {
            cumulative += weights[k]
            if u < cumulative { break }
            k += 1
        }
        stream.fillNormals(UnsafeMutableBufferPointer(start: out, count: dimension))
        let s = stds[k]
        means[k].withUnsafeBufferPointer { mu in
            for c in 0..<dimension { out[c] = mu[c] + s * out[c] }
        }
        return k
    }

    /// The exact draw for sample `index` of a job with `seed` (Philox stream 2, step 0): a pure function of both.
    public func draw(seed: UInt64, index: UInt32) -> (component: Int, point: [Double]) {
        var stream = PhiloxStream(seed: seed, index: index, step: 0, stream: .dataDraw)
        var point = [Double](repeating: 0, count: dimension)
        let k = point.withUnsafeMutableBufferPointer { draw(&stream, into: $0.baseAddress!) }
        return (k, point)
    }

    /// The component with the largest posterior probability under the clean target (a = 1); ties go to the lower k.
    public func mode(of x: [Double]) -> Int {
        let classifier = ModeClassifier(self)
        return x.withUnsafeBufferPointer { classifier.mode($0.baseAddress!) }
    }
}

/// Per-alphabar constants of the noised mixture, used in the sampler's inner loop with no allocation.
struct NoisedMixture: Sendable {
    let componentCount: Int
    let dimension: Int
    /// sqrt(a) mu_k, row-major [K, d].
    let shiftedMeans: [Double]
    /// log w_k - (d/2) log v_k.
    let logNormalizers: [Double]
    /// 1 / (2 v_k).
    let halfPrecisions: [Double]
    /// 1 / v_k.
    let precisions: [Double]

    init(_ target: GaussianMixture, alphaBar a: Double) {
        componentCount = target.componentCount
        dimension = target.dimension
        let ra = a.squareRoot()
        shiftedMeans = target.means.flatMap { $0.map { ra * $0 } }
        let variances = target.stds.map { a * $0 * $0 + 1 - a }
        let halfD = 0.5 * Double(target.dimension)
        logNormalizers = zip(target.weights, variances).map { log($0) - halfD * log($1) }
        halfPrecisions = variances.map { 0.5 / $0 }
        precisions = variances.map { 1 / $0 }
    }

    /// logits_k = log w_k - (d/2) log v_k - |x - sqrt(a) mu_k|^2 / (2 v_k)   (up to a constant shared by all k).
    @inline(__always)
    func logits(_ x: UnsafePointer<Double>, into out: UnsafeMutablePointer<Double>) {
        shiftedMeans.withUnsafeBufferPointer { mu in
            for k in 0..<componentCount {
                var dist = 0.0
                let row = mu.baseAddress! + k * dimension
                for c in 0..<dimension {
                    let diff = x[c] - row[c]
                    dist += diff * diff
                }
                out[k] = logNormalizers[k] - dist * halfPrecisions[k]
            }
        }
    }

    /// out = sum_k g_k (x - sqrt(a) mu_k) / v_k = -score. `scratch` holds K doubles.
    @inline(__always)
    func weightedResidual(
        _ x: UnsafePointer<Double>, into out: UnsafeMutablePointer<Double>, scratch: UnsafeMutablePointer<Double>
    ) {
        logits(x, into: scratch)
        var top = scratch[0]
        for k in 1..<max(componentCount, 1) where scratch[k] > top { top = scratch[k] }
        if componentCount == 1 {
            // One component: g = 1 exactly (skips exp(0) and a division; identical value).
            for c in 0..<dimension { out[c] = (x[c] - shiftedMeans[c]) * precisions[0] }
            return
        }
        var z = 0.0
        for k in 0..<componentCount {
            let g = exp(scratch[k] - top)
            scratch[k] = g
            z += g
        }
        for c in 0..<dimension { out[c] = 0 }
        shiftedMeans.withUnsafeBufferPointer { mu in
            for k in 0..<componentCount {
                let coefficient = scratch[k] * precisions[k]
                let row = mu.baseAddress! + k * dimension
                for c in 0..<dimension { out[c] += coefficient * (x[c] - row[c]) }
            }
        }
        let inv = 1 / z
        for c in 0..<dimension { out[c] *= inv }
    }
}

/// Argmax-posterior classifier under the clean target (a = 1): argmax_k log w_k - d log s_k - |x - mu_k|^2 / (2 s_k^2).
struct ModeClassifier: Sendable {
    let componentCount: Int
    let dimension: Int
    let means: [Double]
    let logNormalizers: [Double]
    let halfPrecisions: [Double]

    init(_ target: GaussianMixture) {
        componentCount = target.componentCount
        dimension = target.dimension
        means = target.means.flatMap { $0 }
        logNormalizers = zip(target.weights, target.stds).map { log($0) - Double(target.dimension) * log($1) }
        halfPrecisions = target.stds.map { 0.5 / ($0 * $0) }
    }

    @inline(__always)
    func mode(_ x: UnsafePointer<Double>) -> Int {
        means.withUnsafeBufferPointer { mu in
            var best = 0
            var bestLogit = -Double.infinity
            for k in 0..<componentCount {
                var dist = 0.0
                let row = mu.baseAddress! + k * dimension
                for c in 0..<dimension {
                    let diff = x[c] - row[c]
                    dist += diff * diff
                }
                let logit = logNormalizers[k] - dist * halfPrecisions[k]
                if logit > bestLogit {
                    best = k
                    bestLogit = logit
                }
            }
            return best
        }
    }
}
