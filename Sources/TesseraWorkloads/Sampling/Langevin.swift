// Langevin samplers on a Gaussian-mixture target (WORKLOADS.md §1 S3 i, ii): unadjusted Langevin (ULA), the
// Metropolis-adjusted algorithm (MALA) and annealed Langevin dynamics (Song & Ermon 2019) with the exact score of the
// noised mixture. Chains are independent, so a job is sharded by sample (chain) index like ddpm/ddim, and the same
// block statistics and exact merge apply (§4).

import Foundation
import TesseraCompute
import TesseraCore

/// Which Langevin update to run.
public enum LangevinMethod: String, Sendable, CaseIterable {
    /// x <- x + h grad log p(x) + sqrt(2h) z.
    case ula
    /// The ULA proposal plus a Metropolis-Hastings accept step with q(x'|x) = N(x + h grad log p(x), 2h I).
    case mala
    /// ULA on a geometric ladder of noise levels sigma_1 > ... > sigma_L, using the score of the target convolved
    /// with N(0, sigma_i^2 I) (component variances s_k^2 + sigma_i^2) and step h_i = e sigma_i^2 / sigma_L^2.
    case annealed
}

/// Where chain i starts.
public enum LangevinInitialization: Sendable, Equatable {
    /// x_0 = std * z, z = d normals from Philox(seed; i, step 0, stream 0).
    case normal(std: Double)
    /// x_0 = exact target draw number (i mod samples), from Philox(seed; i mod samples, step 1, stream 2): the
    /// "data-based initialisation" of Koehler & Vuong with an empirical set of `samples` exact draws.
    case data(samples: Int)
}

/// The noise ladder of annealed Langevin: sigma_i = sigma_max (sigma_min / sigma_max)^(i / (L - 1)), i = 0..L-1.
public struct LangevinAnnealing: Sendable, Equatable {
    public var sigmaMax: Double
    public var sigmaMin: Double
    public var levels: Int

    public init(sigmaMax: Double, sigmaMin: Double, levels: Int) throws {
        guard sigmaMin.isFinite, sigmaMax.isFinite, sigmaMin > 0, sigmaMin <= sigmaMax else {
            throw SamplingError(
                .invalidConfig,
                "annealing needs 0 < sigma_min <= sigma_max; got sigma_min=\(sigmaMin), sigma_max=\(sigmaMax)")
        }
        guard levels >= 2, levels <= 10_000 else {
            throw SamplingError(.invalidConfig, "annealing levels is \(levels); it must be between 2 and 10000")
        }
        self.sigmaMax = sigmaMax
        self.sigmaMin = sigmaMin
        self.levels = levels
    }

    /// sigma_0 = sigma_max, ..., sigma_{L-1} = sigma_min (geometric; the ends are exact).
    public var sigmas: [Double] {
        let ratio = sigmaMin / sigmaMax
        return (0..<levels).map { i in
            if i == 0 { return sigmaMax }
            if i == levels - 1 { return sigmaMin }
            return sigmaMax * pow(ratio, Double(i) / Double(levels - 1))
        }
    }
}

/// The validated parameters of one Langevin job. Two equal configs give bitwise-identical results.
public struct LangevinConfig: Sendable, Equatable {
    public var target: GaussianMixture
    public var method: LangevinMethod
    /// Steps per chain (ula, mala), or steps per noise level (annealed: L * steps in all).
    public var steps: Int
    /// h for ula and mala; e (the step at sigma_min) for annealed.
    public var stepSize: Double
    public var initialization: LangevinInitialization
    /// The noise ladder; required for (and only for) `annealed`.
    public var annealing: LangevinAnnealing?
    public var seed: UInt64
    /// N, the number of chains (one sample each).
    public var samples: Int
    public var keepSamples: Bool

    /// Largest number of steps a chain may take in all (the step number goes into a 32-bit Philox counter word).
    public static let maxTotalSteps = 10_000_000

    public init(
        target: GaussianMixture, method: LangevinMethod, steps: Int, stepSize: Double,
        initialization: LangevinInitialization, annealing: LangevinAnnealing? = nil, seed: UInt64, samples: Int,
        keepSamples: Bool = false
    ) throws {
        guard steps >= 1 else { throw SamplingError(.invalidConfig, "steps is \(steps); it must be >= 1") }
        guard stepSize.isFinite, stepSize > 0 else {
            throw SamplingError(.invalidConfig, "step_size is \(stepSize); it must be finite and > 0")
        }
        if method == .annealed {
            guard annealing != nil else {
                throw SamplingError(
                    .invalidConfig, "method annealed needs a noise ladder (sigma_max, sigma_min, levels)")
            }
        } else if annealing != nil {
            throw SamplingError(.invalidConfig, "only method annealed takes a noise ladder")
        }
        switch initialization {
        case .normal(let std):
            guard std.isFinite, std >= 0 else {
                throw SamplingError(.invalidConfig, "init_std is \(std); it must be finite and >= 0")
            }
        case .data(let m):
            guard m >= 1, m <= SamplingConfig.maxSamples else {
                throw SamplingError(
                    .invalidConfig, "init_samples is \(m); it must be between 1 and \(SamplingConfig.maxSamples)")
            }
        }
        guard samples >= 1, samples <= SamplingConfig.maxSamples else {
            throw SamplingError(
                .invalidConfig, "samples is \(samples); it must be between 1 and \(SamplingConfig.maxSamples)")
        }
        self.target = target
        self.method = method
        self.steps = steps
        self.stepSize = stepSize
        self.initialization = initialization
        self.annealing = annealing
        self.seed = seed
        self.samples = samples
        self.keepSamples = keepSamples
        guard totalSteps <= Self.maxTotalSteps else {
            throw SamplingError(.invalidConfig, "a chain would take \(totalSteps) steps; at most \(Self.maxTotalSteps)")
        }
    }

    /// Steps per chain in all.
    public var totalSteps: Int { steps * (annealing?.levels ?? 1) }

    /// The levels the chain runs through: (sigma, h) pairs, `steps` steps each. ULA and MALA have one level,
    /// sigma = 0 and h = step_size; annealed has h_i = e sigma_i^2 / sigma_L^2.
    var levels: [(sigma: Double, h: Double)] {
        guard let annealing else { return [(0, stepSize)] }
        let last = annealing.sigmaMin
        return annealing.sigmas.map { ($0, stepSize * $0 * $0 / (last * last)) }
    }

    /// The law the chain targets at noise level sigma: the target with component variances s_k^2 + sigma^2.
    func mixture(sigma: Double) -> GaussianMixture {
        if sigma == 0 { return target }
        // Force-unwrapped: the inputs are a valid mixture and positive stds.
        return try! GaussianMixture(
            weights: target.weights, means: target.means,
            stds: target.stds.map { ($0 * $0 + sigma * sigma).squareRoot() })
    }

    var statistics: SamplingStatisticsSetup {
        SamplingStatisticsSetup(target: target, reference: target, seed: seed, samples: samples)
    }
}

/// Streamed after every step of a shard.
public struct LangevinStepMetrics: Sendable, Equatable {
    /// 0..<totalSteps.
    public var step: Int
    /// Noise level of the step (0 for ula and mala).
    public var sigma: Double
    /// Step size h of the step.
    public var stepSize: Double
    /// Mean |x|^2 over the shard's finite chains after the step.
    public var meanSquaredNorm: Double
    /// Chains with a non-finite coordinate after the step.
    public var nanCount: Int
    /// MALA: fraction of the shard's proposals accepted in this step (nil for ula and annealed).
    public var acceptRate: Double?
}

/// Score and log-density of a Gaussian mixture (the `NoisedMixture` at alphabar 1, so v_k = s_k^2) for many points,
/// in chunks whose inner loops run over points with no calls (the exp is `responsibilityExp`).
struct MixtureFieldKernel: Sendable {
    let mixture: NoisedMixture
    static let chunk = 128

    init(_ target: GaussianMixture) {
        mixture = target.noised(alphaBar: 1)
    }

    /// The same fields for a noised marginal p_a (means sqrt(a) mu_k, variances a s_k^2 + 1 - a).
    init(noised: NoisedMixture) {
        mixture = noised
    }

    /// score[j] = -sum_k g_k(x_j) (x_j - mu_k) / s_k^2; when `logDensity` is given, also
    /// log p(x_j) = max_k l_k + log sum_k exp(l_k - max) - (d/2) log 2 pi, with l_k = log w_k - (d/2) log s_k^2 - |x - mu_k|^2 / (2 s_k^2).
    /// Each point's numbers depend only on that point, never on the chunk it falls in.
    func evaluate(
        _ x: UnsafePointer<Double>, count: Int, score: UnsafeMutablePointer<Double>?,
        logDensity: UnsafeMutablePointer<Double>?
    ) {
        let d = mixture.dimension
        let K = mixture.componentCount
        let C = Self.chunk
        let buffer = UnsafeMutablePointer<Double>.allocate(capacity: K * C + 2 * C)
        defer { buffer.deallocate() }
        let weights = buffer  // [K, C]: logits, then g_k / v_k
        let top = buffer + K * C
        let total = top + C
        let logTwoPi = 0.5 * Double(d) * log(2 * Double.pi)
        mixture.forEachChunk(x, count: count, chunk: C, weights: weights, top: top, total: total) { start, m, mu in
            let xs = x + start * d
            if let score {
                let out = score + start * d
                for i in 0..<(m * d) { out[i] = 0 }
                for k in 0..<K {
                    let row = weights + k * C
                    let centre = mu + k * d
                    for j in 0..<m {
                        let gk = row[j]
                        for c in 0..<d { out[j * d + c] -= gk * (xs[j * d + c] - centre[c]) }
                    }
                }
                for j in 0..<m {
                    let inv = 1 / total[j]
                    for c in 0..<d { out[j * d + c] *= inv }
                }
            }
            if let logDensity {
                for j in 0..<m { logDensity[start + j] = top[j] + log(total[j]) - logTwoPi }
            }
        }
    }
}

/// Runs the chains `range` of `config` and summarises them with the exact block statistics of §4.
///
/// Randomness of chain i (Philox, key = seed): the start (see `LangevinInitialization`); the step noise of step k
/// (0-based over all levels) is d normals from Philox(seed; i, step k + 1, stream 1), and MALA's accept uniform is
/// the next word of the same stream after those normals. Chain i is therefore a pure function of (seed, i). The
/// noise floor is exact target draws of the same indices (stream 2, step 0), as for ddpm/ddim.
///
/// The result's extras: `accepted` and `proposals` (I64 [1], MALA accept counts; 0 otherwise) and
/// `init_mode_count` (I64 [K], how many of the shard's chains started in each mode, by argmax posterior).
/// `onStep` gets every step's metrics; `shouldStop` is polled before each step and a `true` throws
/// `CancellationError`.
public func runLangevinShard(
    config: LangevinConfig, range: Range<Int>, onStep: (LangevinStepMetrics) -> Void, shouldStop: () -> Bool
) throws -> SamplingShardResult {
    try SamplingPlan.validate(range: range, samples: config.samples)
    let d = config.target.dimension
    let K = config.target.componentCount
    let n = range.count
    let classifier = ModeClassifier(config.target)
    var x = [Double](repeating: 0, count: n * d)
    var initModes = [Int64](repeating: 0, count: K)
    var score = [Double](repeating: 0, count: n * d)
    var logDensity = [Double](repeating: 0, count: n)
    var proposal = [Double](repeating: 0, count: n * d)
    var proposalScore = [Double](repeating: 0, count: n * d)
    var proposalLogDensity = [Double](repeating: 0, count: n)
    var uniforms = [Double](repeating: 0, count: n)
    var accepted: Int64 = 0
    var proposals: Int64 = 0
    let mala = config.method == .mala

    try x.withUnsafeMutableBufferPointer { xb in
        try score.withUnsafeMutableBufferPointer { sb in
            try logDensity.withUnsafeMutableBufferPointer { lb in
                try proposal.withUnsafeMutableBufferPointer { pb in
                    try proposalScore.withUnsafeMutableBufferPointer { psb in
                        try proposalLogDensity.withUnsafeMutableBufferPointer { plb in
                            try uniforms.withUnsafeMutableBufferPointer { ub in
                                var xs = xb.baseAddress!
                                let s = sb.baseAddress!
                                let lp = lb.baseAddress!
                                var px = pb.baseAddress!
                                let ps = psb.baseAddress!
                                let plp = plb.baseAddress!
                                let u = ub.baseAddress!
                                // Starting points.
                                for j in 0..<n {
                                    let i = range.lowerBound + j
                                    let row = xs + j * d
                                    switch config.initialization {
                                    case .normal(let std):
                                        var stream = PhiloxStream(
                                            seed: config.seed, index: UInt32(i), step: 0, stream: .initialNoise)
                                        stream.fillNormals(UnsafeMutableBufferPointer(start: row, count: d))
                                        for c in 0..<d { row[c] *= std }
                                    case .data(let m):
                                        var stream = PhiloxStream(
                                            seed: config.seed, index: UInt32(i % m), step: 1, stream: .dataDraw)
                                        _ = config.target.draw(&stream, into: row)
                                    }
                                    initModes[classifier.mode(row)] += 1
                                }
                                var stepNumber = 0
                                for level in config.levels {
                                    let kernel = MixtureFieldKernel(config.mixture(sigma: level.sigma))
                                    let h = level.h
                                    let noiseScale = (2 * h).squareRoot()
                                    kernel.evaluate(xs, count: n, score: s, logDensity: mala ? lp : nil)
                                    for _ in 0..<config.steps {
                                        if shouldStop() { throw CancellationError() }
                                        // Proposal x' = x + h score(x) + sqrt(2h) z (the ULA step itself).
                                        for j in 0..<n {
                                            var stream = PhiloxStream(
                                                seed: config.seed, index: UInt32(range.lowerBound + j),
                                                step: UInt32(stepNumber + 1), stream: .stepNoise)
                                            let row = px + j * d
                                            stream.fillNormals(UnsafeMutableBufferPointer(start: row, count: d))
                                            if mala { u[j] = stream.nextUniform() }
                                            for c in 0..<d {
                                                let i = j * d + c
                                                row[c] = xs[i] + h * s[i] + noiseScale * row[c]
                                            }
                                        }
                                        var acceptedNow = 0
                                        if mala {
                                            kernel.evaluate(px, count: n, score: ps, logDensity: plp)
                                            // log alpha = log p(x') - log p(x) + log q(x | x') - log q(x' | x),
                                            // log q(a | b) = -|a - b - h score(b)|^2 / (4h) + const.
                                            let inv4h = 1 / (4 * h)
                                            for j in 0..<n {
                                                var forward = 0.0
                                                var backward = 0.0
                                                for c in 0..<d {
                                                    let i = j * d + c
                                                    let f = px[i] - xs[i] - h * s[i]
                                                    let b = xs[i] - px[i] - h * ps[i]
                                                    forward += f * f
                                                    backward += b * b
                                                }
                                                let logAlpha = plp[j] - lp[j] + (forward - backward) * inv4h
                                                if log(u[j]) < logAlpha {
                                                    acceptedNow += 1
                                                    for c in 0..<d {
                                                        xs[j * d + c] = px[j * d + c]
                                                        s[j * d + c] = ps[j * d + c]
                                                    }
                                                    lp[j] = plp[j]
                                                }
                                            }
                                            accepted += Int64(acceptedNow)
                                            proposals += Int64(n)
                                        } else {
                                            swap(&xs, &px)
                                            kernel.evaluate(xs, count: n, score: s, logDensity: nil)
                                        }
                                        var norm = 0.0
                                        var finite = 0
                                        for j in 0..<n {
                                            var sq = 0.0
                                            for c in 0..<d { sq += xs[j * d + c] * xs[j * d + c] }
                                            if sq.isFinite {
                                                norm += sq
                                                finite += 1
                                            }
                                        }
                                        onStep(
                                            LangevinStepMetrics(
                                                step: stepNumber, sigma: level.sigma, stepSize: h,
                                                meanSquaredNorm: finite > 0 ? norm / Double(finite) : .nan,
                                                nanCount: n - finite,
                                                acceptRate: mala ? Double(acceptedNow) / Double(n) : nil))
                                        stepNumber += 1
                                    }
                                }
                                // ULA swaps buffers; make sure the final positions are in `x`.
                                if xs != xb.baseAddress! { xb.baseAddress!.update(from: xs, count: n * d) }
                            }
                        }
                    }
                }
            }
        }
    }
    if shouldStop() { throw CancellationError() }
    let (sampled, exact) = summarizeSamplingShard(setup: config.statistics, range: range, samples: x)
    return SamplingShardResult(
        range: range, dimension: d, componentCount: K, samples: config.keepSamples ? x.map { Float($0) } : nil,
        sampled: sampled, exact: exact,
        extras: SamplingShardExtras(integers: [
            "accepted": [accepted], "proposals": [proposals], "init_mode_count": initModes,
        ]))
}

/// The merged result of a Langevin job: the sampling statistics of the final chain positions, plus the accept rate
/// and the mode weights of the starting points.
public struct LangevinResult: Sendable, Equatable {
    public var config: LangevinConfig
    var statistics: SamplingStatisticsResult
    /// MALA: accepted / proposals over all chains and steps (nil for ula and annealed).
    public var acceptRate: Double?
    public var accepted: Int64
    public var proposals: Int64
    /// Mode weights (argmax posterior) of the chains' starting points: w_emp for `init: data`.
    public var initModeWeights: [Double]

    public var n: Int { statistics.n }
    public var mean: [Double] { statistics.mean }
    public var cov: [[Double]] { statistics.cov }
    public var modeWeights: [Double] { statistics.modeWeights }
    public var modeWeightError: Double { statistics.modeWeightError }
    public var sw1: Double { statistics.sw1 }
    public var mmd: Double { statistics.mmd }
    public var noiseFloor: SamplingMetrics { statistics.noiseFloor }
    public var nanCount: Int { statistics.nanCount }

    /// One JSON object: the sampling statistics keys (n … target, as ddpm/ddim), then `accept_rate` (null unless
    /// mala), `accepted`, `proposals`, `init_mode_weights`, `sampler` {algorithm "langevin", method, steps,
    /// step_size, total_steps, init, init_std | init_samples, sigma_max, sigma_min, levels (annealed), seed,
    /// samples}, `metric_setup`.
    public func json(spelling: JSONNumber.Spelling) -> JSONValue {
        let j = SamplingJSON(spelling: spelling)
        var o = statistics.json(j, target: config.target)
        o["accept_rate"] = acceptRate.map(j.number) ?? .null
        o["accepted"] = j.integer(accepted)
        o["proposals"] = j.integer(proposals)
        o["init_mode_weights"] = j.numbers(initModeWeights)
        var sampler: JSONObject = [
            "algorithm": .string("langevin"), "method": .string(config.method.rawValue), "steps": .int(config.steps),
            "step_size": j.number(config.stepSize), "total_steps": .int(config.totalSteps),
        ]
        switch config.initialization {
        case .normal(let std):
            sampler["init"] = .string("normal")
            sampler["init_std"] = j.number(std)
        case .data(let m):
            sampler["init"] = .string("data")
            sampler["init_samples"] = .int(m)
        }
        if let a = config.annealing {
            sampler["sigma_max"] = j.number(a.sigmaMax)
            sampler["sigma_min"] = j.number(a.sigmaMin)
            sampler["levels"] = .int(a.levels)
        }
        return j.result(o, sampler: sampler, seed: config.seed, samples: config.samples)
    }
}

extension LangevinResult: SamplingResultJSON {}

/// Merges Langevin shards (any order, covering [0, N)): the block statistics as `mergeSampling` does, the accept
/// and init-mode counters as integer sums. Bitwise identical for any shard count.
public func mergeLangevin(config: LangevinConfig, shards: [SamplingShardResult]) throws -> LangevinResult {
    var merge = LangevinMerge(config: config)
    for shard in shards.sorted(by: { $0.range.lowerBound < $1.range.lowerBound }) { try merge.add(shard) }
    return try merge.finish()
}

/// `mergeLangevin` one shard at a time, in range order.
struct LangevinMerge {
    let config: LangevinConfig
    private var statistics: SamplingStatisticsReducer
    private var accepted: Int64 = 0
    private var proposals: Int64 = 0
    private var initModes: [Int64]

    init(config: LangevinConfig) {
        self.config = config
        statistics = SamplingStatisticsReducer(setup: config.statistics)
        initModes = [Int64](repeating: 0, count: config.target.componentCount)
    }

    mutating func add(_ shard: SamplingShardResult) throws {
        let K = config.target.componentCount
        guard let a = shard.extras.integers["accepted"], a.count == 1,
            let p = shard.extras.integers["proposals"], p.count == 1,
            let m = shard.extras.integers["init_mode_count"], m.count == K
        else {
            throw SamplingError(.malformedResult, "Langevin shard \(shard.range) lacks its accept or init-mode counts")
        }
        try statistics.add(shard)
        accepted += a[0]
        proposals += p[0]
        for k in 0..<K { initModes[k] += m[k] }
    }

    func finish() throws -> LangevinResult {
        let statistics = try statistics.finish()
        let chains = Double(initModes.reduce(0, +))
        return LangevinResult(
            config: config, statistics: statistics,
            acceptRate: config.method == .mala && proposals > 0 ? Double(accepted) / Double(proposals) : nil,
            accepted: accepted, proposals: proposals, initModeWeights: initModes.map { Double($0) / chains })
    }
}
