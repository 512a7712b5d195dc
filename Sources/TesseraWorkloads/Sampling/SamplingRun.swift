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
/// `model` replaces the exact eps*(x, t) by a learned predictor (S2); `nil` (the default) keeps the exact score,
/// bit for bit as before.
public func runSamplingShard(
    config: SamplingConfig, range: Range<Int>, model: (any SamplingNoiseModel)? = nil,
    onStep: (SamplingStepMetrics) -> Void, shouldStop: () -> Bool
) throws -> SamplingShardResult {
    try SamplingPlan.validate(range: range, samples: config.samples)
    let d = config.target.dimension
    let n = range.count
    var x = [Double](repeating: 0, count: n * d)
    let steps = samplerSteps(schedule: config.schedule, sampler: config.sampler, samplingSteps: config.samplingSteps)
    let engine = SamplerEngine(target: config.target, guidance: config.guidance)

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
                conditional: config.guidance?.conditional.noised(alphaBar: step.alphaBar), seed: config.seed,
                model: model)
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

    let (sampled, exact) = summarizeSamplingShard(setup: config.statistics, range: range, samples: x)
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
    let engine = SamplerEngine(target: config.target, guidance: config.guidance)
    let steps = samplerSteps(schedule: config.schedule, sampler: config.sampler, samplingSteps: config.samplingSteps)
    for (k, step) in steps.enumerated() {
        let mixture = config.target.noised(alphaBar: step.alphaBar)
        let conditional = config.guidance?.conditional.noised(alphaBar: step.alphaBar)
        x.withUnsafeMutableBufferPointer { xp in
            engine.denoise(xp.baseAddress!, count: 1, step: step, mixture: mixture, conditional: conditional)
        }
        if step.sigma > 0 {
            let z = noise(k)
            precondition(z.count == d, "noise for step \(k) has \(z.count) coordinates, target has \(d)")
            for c in 0..<d { x[c] += step.sigma * z[c] }
        }
    }
    return x
}

/// The reverse-step kernel. Works on chunks of `chunk` samples at a time so each loop below runs over samples with
/// no calls (the exp is `responsibilityExp`) and vectorises; allocation-free per sample.
struct SamplerEngine: Sendable {
    let dimension: Int
    let componentCount: Int
    /// w and c of classifier-free guidance, when guided.
    let guidanceScale: Double?
    let guidanceComponent: Int
    static let chunk = 128

    init(target: GaussianMixture, guidance: SamplingGuidance? = nil) {
        dimension = target.dimension
        componentCount = target.componentCount
        guidanceScale = guidance?.scale
        guidanceComponent = guidance?.component ?? 0
    }

    /// Deterministic part of one step for `count` samples (row-major [count, d]), in place:
    /// g_k = softmax_k(log w_k - (d/2) log v_k - |x - sqrt(a_t) mu_k|^2 / (2 v_k)),
    /// eps = sqrt(1 - a_t) * sum_k g_k (x - sqrt(a_t) mu_k) / v_k, then `SamplerStep.apply` per coordinate.
    /// With guidance (`conditional` = the conditional law noised at a_t), eps becomes
    /// eps_u + w (eps_c - eps_u) with eps_c = sqrt(1 - a_t) (x - sqrt(a_t) mu_c) / v_c of component c alone.
    func denoise(
        _ x: UnsafeMutablePointer<Double>, count: Int, step: SamplerStep, mixture: NoisedMixture,
        conditional: NoisedMixture? = nil
    ) {
        precondition((conditional == nil) == (guidanceScale == nil), "guided engine needs the conditional mixture")
        // Guidance constants: sqrt(a_t) mu_c and 1 / v_c (unused without guidance).
        let guideMean = conditional.map { c in
            Array(c.shiftedMeans[(guidanceComponent * dimension)..<((guidanceComponent + 1) * dimension)])
        } ?? []
        let guidePrecision = conditional?.precisions[guidanceComponent] ?? 0
        let d = dimension
        let K = componentCount
        let C = Self.chunk
        let buffer = UnsafeMutablePointer<Double>.allocate(capacity: K * C + 2 * C + C * d)
        defer { buffer.deallocate() }
        let weights = buffer  // [K, C]: logits, then g_k / v_k
        let top = buffer + K * C  // [C]
        let total = top + C  // [C]
        let eps = total + C  // [C, d]
        mixture.forEachChunk(x, count: count, chunk: C, weights: weights, top: top, total: total) { start, m, mu in
            let xs = x + start * d
            for i in 0..<(m * d) { eps[i] = 0 }
            for k in 0..<K {
                let row = weights + k * C
                let centre = mu + k * d
                for j in 0..<m {
                    let gk = row[j]
                    for c in 0..<d { eps[j * d + c] += gk * (xs[j * d + c] - centre[c]) }
                }
            }
            let root = step.sqrtOneMinusAlphaBar
            if let w = guidanceScale {
                for j in 0..<m {
                    let scale = root / total[j]
                    for c in 0..<d {
                        let i = j * d + c
                        let unconditional = eps[i] * scale
                        let conditional = root * (xs[i] - guideMean[c]) * guidePrecision
                        xs[i] = step.apply(x: xs[i], eps: unconditional + w * (conditional - unconditional))
                    }
                }
            } else {
                for j in 0..<m {
                    let scale = root / total[j]
                    for c in 0..<d {
                        let i = j * d + c
                        xs[i] = step.apply(x: xs[i], eps: eps[i] * scale)
                    }
                }
            }
        }
    }

    /// The deterministic part of one step with a learned eps: eps = model(x, t) for all rows, then the same
    /// `SamplerStep.apply` per coordinate as the exact path.
    func denoise(_ x: UnsafeMutablePointer<Double>, count: Int, step: SamplerStep, model: any SamplingNoiseModel) {
        let n = count * dimension
        let eps = UnsafeMutablePointer<Double>.allocate(capacity: max(n, 1))
        defer { eps.deallocate() }
        model.predictNoise(UnsafePointer(x), count: count, t: step.t, into: eps)
        for i in 0..<n { x[i] = step.apply(x: x[i], eps: eps[i]) }
    }

    /// One reverse step for `count` consecutive samples whose first global index is `firstIndex`: `denoise`, then
    /// the Philox step noise of `stepNumber` (stream 1, step stepNumber + 1) when sigma > 0.
    func advance(
        _ x: UnsafeMutablePointer<Double>, count: Int, firstIndex: Int, step: SamplerStep, stepNumber: Int,
        mixture: NoisedMixture, conditional: NoisedMixture? = nil, seed: UInt64, model: (any SamplingNoiseModel)? = nil
    ) {
        if let model {
            precondition(conditional == nil, "classifier-free guidance needs the exact score, not a learned model")
            denoise(x, count: count, step: step, model: model)
        } else {
            denoise(x, count: count, step: step, mixture: mixture, conditional: conditional)
        }
        let sigma = step.sigma
        guard sigma > 0 else { return }
        let d = dimension
        let noise = UnsafeMutablePointer<Double>.allocate(capacity: d)
        defer { noise.deallocate() }
        for j in 0..<count {
            let row = x + j * d
            var stream = PhiloxStream(
                seed: seed, index: UInt32(firstIndex + j), step: UInt32(stepNumber + 1), stream: .stepNoise)
            stream.fillNormals(UnsafeMutableBufferPointer(start: noise, count: d))
            for c in 0..<d { row[c] += sigma * noise[c] }
        }
    }
}

/// The first half of every mixture-field kernel, for the `m` points `xs` (row-major [m, d]) of one chunk:
/// `top[j]` = max_k l_k(x_j), `total[j]` = sum_k exp(l_k(x_j) - top[j]), and row k of `weights` (stride `stride`)
/// = exp(l_k(x_j) - top[j]) / v_k, where l_k = log w_k - (d/2) log v_k - |x - mean_k|^2 / (2 v_k) comes from the
/// mixture's precomputed `logNormalizers` (log w_k - (d/2) log v_k), `halfPrecisions` (1 / 2v_k) and
/// `precisions` (1 / v_k). The sampler step (eps) and the Langevin score (MixtureFieldKernel) both start here, so
/// they compute these numbers the same way; each point's numbers depend only on that point.
@inline(__always)
func mixtureChunkResponsibilities(
    _ xs: UnsafePointer<Double>, count m: Int, dimension d: Int, components K: Int, means mu: UnsafePointer<Double>,
    logNormalizers ln: UnsafePointer<Double>, halfPrecisions hp: UnsafePointer<Double>,
    precisions precision: UnsafePointer<Double>, weights: UnsafeMutablePointer<Double>, stride C: Int,
    top: UnsafeMutablePointer<Double>, total: UnsafeMutablePointer<Double>
) {
    for k in 0..<K {
        let row = mu + k * d
        let out = weights + k * C
        let lk = ln[k]
        let hk = hp[k]
        for j in 0..<m {
            var dist = 0.0
            for c in 0..<d {
                let diff = xs[j * d + c] - row[c]
                dist += diff * diff
            }
            out[j] = lk - dist * hk
        }
    }
    for j in 0..<m { top[j] = weights[j] }
    for k in 1..<max(K, 1) {
        let row = weights + k * C
        for j in 0..<m {
            let v = row[j]
            top[j] = v > top[j] ? v : top[j]
        }
    }
    for j in 0..<m { total[j] = 0 }
    for k in 0..<K {
        let row = weights + k * C
        let pk = precision[k]
        for j in 0..<m {
            let g = responsibilityExp(row[j] - top[j])
            total[j] += g
            row[j] = g * pk
        }
    }
}

/// exp(x) for the responsibilities, x <= 0 (a logit minus the row maximum): straight-line arithmetic that the
/// compiler vectorises. x is clamped to [-708, 0]; n = round(x / ln 2) by the 1.5 * 2^52 shifter, r = x - n ln 2
/// (Cody-Waite, two constants), |r| <= 0.35, exp(r) by its Taylor series through r^13 (truncation < 1e-17
/// relative), times 2^n built from the exponent bits. Relative error a few ulp; exp(0) = 1 exactly, and any
/// x <= -708 gives about 3e-308 instead of 0 (a zero-weight component's -inf logit included), which no sum notices.
@inline(__always)
func responsibilityExp(_ x0: Double) -> Double {
    let x = x0 < -708 ? -708 : (x0 > 0 ? 0 : x0)
    let shifter = 0x1.8p52
    let t = x * 1.442_695_040_888_963_407_4 + shifter
    let n = t - shifter
    let r = (x - n * 0.693_147_180_369_123_816_49) - n * 1.908_214_929_270_587_700_02e-10
    var p = 1.0 / 6_227_020_800.0
    p = p * r + 1.0 / 479_001_600.0
    p = p * r + 1.0 / 39_916_800.0
    p = p * r + 1.0 / 3_628_800.0
    p = p * r + 1.0 / 362_880.0
    p = p * r + 1.0 / 40_320.0
    p = p * r + 1.0 / 5_040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    // 2^n: n in [-1022, 0] sits in the low bits of t; add the exponent bias and shift into place.
    let bits = (t.bitPattern &- shifter.bitPattern &+ 1023) << 52
    return p * Double(bitPattern: bits)
}

/// What the statistics of a population of samples are computed against. Probes (RFF features, projection
/// directions and histogram ranges) and the argmax-posterior mode classifier come from `target`; the exact law
/// (noise-floor draws, projected CDFs, mean embedding, the weights of `mode_weight_error`) is `reference`, which has
/// the same components and dimension. Plain sampling has reference == target; guided sampling compares against the
/// conditional law.
struct SamplingStatisticsSetup: Sendable {
    var target: GaussianMixture
    var reference: GaussianMixture
    var seed: UInt64
    var samples: Int
}

/// Block statistics (reduced to the maximal tree nodes inside the shard) of the shard's samples and of exact draws of the same indices (stream 2, from the reference
/// law), by the same code.
func summarizeSamplingShard(setup config: SamplingStatisticsSetup, range: Range<Int>, samples x: [Double]) -> (
    SamplingPopulationStats, SamplingPopulationStats
) {
    let d = config.target.dimension
    let probes = SamplingProbes(target: config.target)
    let classifier = ModeClassifier(config.target)
    var sampled = SamplingPopulationStats(projections: probes.projections, bins: probes.bins)
    var exact = SamplingPopulationStats(projections: probes.projections, bins: probes.bins)
    let blockSize = SamplingPlan.blockSize
    let tree = SamplingReductionTree(samples: config.samples)
    var sampledTree = SamplingTreeStack<SamplingTreeNode>(tree: tree, start: range.lowerBound / blockSize)
    var exactTree = sampledTree
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
                    let leaf = sampled.addBlock(
                        index: block, rows: xs.baseAddress! + (lower - range.lowerBound) * d, count: count,
                        probes: probes, classifier: classifier, scratch: sp.baseAddress!)
                    sampledTree.push(leaf.blocks, leaf, combine: SamplingTreeNode.combine)
                    for j in 0..<count {
                        var stream = PhiloxStream(
                            seed: config.seed, index: UInt32(lower + j), step: 0, stream: .dataDraw)
                        _ = config.reference.draw(&stream, into: ds.baseAddress! + j * d)
                    }
                    let exactLeaf = exact.addBlock(
                        index: block, rows: UnsafePointer(ds.baseAddress!), count: count, probes: probes,
                        classifier: classifier, scratch: sp.baseAddress!)
                    exactTree.push(exactLeaf.blocks, exactLeaf, combine: SamplingTreeNode.combine)
                    lower = upper
                }
            }
        }
    }
    sampled.nodes = sampledTree.pending.map(\.value)
    exact.nodes = exactTree.pending.map(\.value)
    return (sampled, exact)
}

extension NoisedMixture {
    /// The chunk loop of both mixture-field kernels (the sampler step above, the Langevin score): the `count` points
    /// of `x` ([count, d]) in chunks of `chunk`; for each chunk `mixtureChunkResponsibilities` fills `weights`
    /// ([K, chunk]), `top` and `total` ([chunk]), then `body(start, m, means)` finishes points start ..< start + m
    /// (`means` = sqrt(a) mu_k, row-major [K, d]).
    @inline(__always)
    func forEachChunk(
        _ x: UnsafePointer<Double>, count: Int, chunk: Int, weights: UnsafeMutablePointer<Double>,
        top: UnsafeMutablePointer<Double>, total: UnsafeMutablePointer<Double>,
        _ body: (_ start: Int, _ m: Int, _ means: UnsafePointer<Double>) -> Void
    ) {
        shiftedMeans.withUnsafeBufferPointer { mu in
            logNormalizers.withUnsafeBufferPointer { ln in
                halfPrecisions.withUnsafeBufferPointer { hp in
                    precisions.withUnsafeBufferPointer { precision in
                        var start = 0
                        while start < count {
                            let m = min(chunk, count - start)
                            mixtureChunkResponsibilities(
                                x + start * dimension, count: m, dimension: dimension, components: componentCount,
                                means: mu.baseAddress!, logNormalizers: ln.baseAddress!,
                                halfPrecisions: hp.baseAddress!, precisions: precision.baseAddress!,
                                weights: weights, stride: chunk, top: top, total: total)
                            body(start, m, mu.baseAddress!)
                            start += m
                        }
                    }
                }
            }
        }
    }
}
