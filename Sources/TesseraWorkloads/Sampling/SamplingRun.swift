// Running one sampling shard: DDPM / DDIM(eta) with the exact GMM score on a range of sample indices, then the
// block statistics of its output and of exact draws of the same indices (WORKLOADS.md §1 S1, §4).

import TesseraCompute

/// Streamed after every reverse step of a shard.
public struct SamplingStepMetrics: Sendable, Equatable {
    /// 0..<S, in sampling order (step 0 starts from x_T).
    public var step: Int
    /// The timestep t this step started from (it produced x at t - T/S).
    public var t: Int
    /// Mean of |x|^2 over the shard's finite rows after the step (NaN if none is finite).
    public var meanSquaredNorm: Double
    /// Rows of the shard with a non-finite coordinate after the step.
    public var nanCount: Int
}

/// Runs the sampler on the sample indices `range` of `config`.
///
/// Sample i's randomness is Philox(seed; i, step, stream): x_T is `d` normals on stream 0 at step 0; the fresh noise
/// of reverse step k (0-based, in sampling order) is `d` normals on stream 1 at step k + 1 (drawn only when the step's
/// sigma > 0); the exact target draw used for the noise floor is on stream 2 at step 0. Every sample is therefore a
/// pure function of (seed, i), whatever the shard layout.
///
/// `range` must be block-aligned (`SamplingPlan.validate`). `onStep` is called after each reverse step; `shouldStop` is
/// polled before each step and before the statistics pass, and a `true` aborts with `CancellationError`.
public func runSamplingShard(
    config: SamplingConfig, range: Range<Int>, onStep: (SamplingStepMetrics) -> Void, shouldStop: () -> Bool
) throws -> SamplingShardResult {
    try SamplingPlan.validate(range: range, samples: config.samples)
    let d = config.target.dimension
    let n = range.count
    var x = [Double](repeating: 0, count: n * d)
    let steps = samplerSteps(schedule: config.schedule, sampler: config.sampler, samplingSteps: config.samplingSteps)
    let engine = SamplerEngine(target: config.target)

    try x.withUnsafeMutableBufferPointer { xs in
        let base = xs.baseAddress!
        for j in 0..<n {
            var stream = PhiloxStream(
                seed: config.seed, index: UInt32(range.lowerBound + j), step: 0, stream: .initialNoise)
            stream.fillNormals(UnsafeMutableBufferPointer(start: base + j * d, count: d))
        }
        for (k, step) in steps.enumerated() {
            if shouldStop() { throw CancellationError() }
            let mixture = config.target.noised(alphaBar: step.alphaBar)
            engine.advance(
                base, count: n, firstIndex: range.lowerBound, step: step, stepNumber: k, mixture: mixture,
                seed: config.seed)
            var norm = 0.0
            var finite = 0
            for j in 0..<n {
                var s = 0.0
                for c in 0..<d { s += base[j * d + c] * base[j * d + c] }
                if s.isFinite {
                    norm += s
                    finite += 1
                }
            }
            onStep(
                SamplingStepMetrics(
                    step: k, t: step.t, meanSquaredNorm: finite > 0 ? norm / Double(finite) : .nan,
                    nanCount: n - finite))
        }
    }
    if shouldStop() { throw CancellationError() }

    let (sampled, exact) = summarize(config: config, range: range, samples: x)
    return SamplingShardResult(
        range: range, dimension: d, componentCount: config.target.componentCount,
        samples: config.keepSamples ? x.map { Float($0) } : nil, sampled: sampled, exact: exact)
}

/// Runs the reverse chain of `config` on ONE trajectory from `initial` (x_T), with caller-supplied step noise:
/// `noise(k)` gives the `d` normals of reverse step k (called only for steps with sigma > 0). Uses exactly the update
/// code of `runSamplingShard`. Meant for closed-form tests and cross-implementation parity (feed the same x_T and
/// noise to diffusers).
public func sampleTrajectory(
    config: SamplingConfig, initial: [Double], noise: (_ step: Int) -> [Double]
) -> [Double] {
    let d = config.target.dimension
    precondition(initial.count == d, "initial point has \(initial.count) coordinates, target has \(d)")
    var x = initial
    let engine = SamplerEngine(target: config.target)
    let steps = samplerSteps(schedule: config.schedule, sampler: config.sampler, samplingSteps: config.samplingSteps)
    var scratch = [Double](repeating: 0, count: config.target.componentCount + d)
    for (k, step) in steps.enumerated() {
        let mixture = config.target.noised(alphaBar: step.alphaBar)
        x.withUnsafeMutableBufferPointer { xp in
            scratch.withUnsafeMutableBufferPointer { sp in
                engine.stepOne(xp.baseAddress!, step: step, mixture: mixture, scratch: sp.baseAddress!)
            }
        }
        if step.sigma > 0 {
            let z = noise(k)
            precondition(z.count == d, "noise for step \(k) has \(z.count) coordinates, target has \(d)")
            for c in 0..<d { x[c] += step.sigma * z[c] }
        }
    }
    return x
}

/// The reverse-step kernel. Allocation-free per sample: one scratch buffer of K + d doubles per call to `advance`.
struct SamplerEngine: Sendable {
    let dimension: Int
    let componentCount: Int

    init(target: GaussianMixture) {
        dimension = target.dimension
        componentCount = target.componentCount
    }

    /// Deterministic part of one step for one sample, in place: eps = sqrt(1 - a_t) * sum_k g_k (x - sqrt(a_t) mu_k)/v_k,
    /// then `SamplerStep.apply`. `scratch` holds K + d doubles.
    @inline(__always)
    func stepOne(
        _ x: UnsafeMutablePointer<Double>, step: SamplerStep, mixture: NoisedMixture,
        scratch: UnsafeMutablePointer<Double>
    ) {
        let eps = scratch + componentCount
        mixture.weightedResidual(UnsafePointer(x), into: eps, scratch: scratch)
        for c in 0..<dimension {
            x[c] = step.apply(x: x[c], eps: step.sqrtOneMinusAlphaBar * eps[c])
        }
    }

    /// One reverse step for `count` consecutive samples (row-major [count, d]) whose first global index is
    /// `firstIndex`, including the Philox step noise of `stepNumber`.
    func advance(
        _ x: UnsafeMutablePointer<Double>, count: Int, firstIndex: Int, step: SamplerStep, stepNumber: Int,
        mixture: NoisedMixture, seed: UInt64
    ) {
        let d = dimension
        let scratch = UnsafeMutablePointer<Double>.allocate(capacity: componentCount + 2 * d)
        defer { scratch.deallocate() }
        let noise = scratch + componentCount + d
        let sigma = step.sigma
        for j in 0..<count {
            let row = x + j * d
            stepOne(row, step: step, mixture: mixture, scratch: scratch)
            if sigma > 0 {
                var stream = PhiloxStream(
                    seed: seed, index: UInt32(firstIndex + j), step: UInt32(stepNumber + 1), stream: .stepNoise)
                stream.fillNormals(UnsafeMutableBufferPointer(start: noise, count: d))
                for c in 0..<d { row[c] += sigma * noise[c] }
            }
        }
    }
}

/// Block statistics of the shard's samples and of exact draws of the same indices (stream 2), by the same code.
func summarize(config: SamplingConfig, range: Range<Int>, samples x: [Double]) -> (PopulationStats, PopulationStats) {
    let d = config.target.dimension
    let probes = SamplingProbes(target: config.target)
    let classifier = ModeClassifier(config.target)
    var sampled = PopulationStats(projections: probes.projections, bins: probes.bins)
    var exact = PopulationStats(projections: probes.projections, bins: probes.bins)
    let blockSize = SamplingPlan.blockSize
    var draws = [Double](repeating: 0, count: blockSize * d)
    var scratch = [Double](repeating: 0, count: probes.features)
    x.withUnsafeBufferPointer { xs in
        draws.withUnsafeMutableBufferPointer { ds in
            scratch.withUnsafeMutableBufferPointer { sp in
                var lower = range.lowerBound
                while lower < range.upperBound {
                    let block = lower / blockSize
                    let upper = min((block + 1) * blockSize, range.upperBound)
                    let count = upper - lower
                    sampled.addBlock(
                        index: block, rows: xs.baseAddress! + (lower - range.lowerBound) * d, count: count,
                        probes: probes, classifier: classifier, scratch: sp.baseAddress!)
                    for j in 0..<count {
                        var stream = PhiloxStream(
                            seed: config.seed, index: UInt32(lower + j), step: 0, stream: .dataDraw)
                        _ = config.target.draw(&stream, into: ds.baseAddress! + j * d)
                    }
                    exact.addBlock(
                        index: block, rows: UnsafePointer(ds.baseAddress!), count: count, probes: probes,
                        classifier: classifier, scratch: sp.baseAddress!)
                    lower = upper
                }
            }
        }
    }
    return (sampled, exact)
}
