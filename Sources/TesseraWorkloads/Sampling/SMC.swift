// Sequential Monte Carlo correction of a diffusion sampler (WORKLOADS.md §1 S3 iii; "Correcting Diffusion Generation
// through Resampling"): the DDPM/DDIM sampler runs with a WRONG model p~ (the exact eps of a proposal mixture), and
// particle weights with the exact density-ratio increments
//   log w += log[p_{t'}(x_{t'}) / p~_{t'}(x_{t'})] - log[p_t(x_t) / p~_t(x_t)]
// (both marginals closed form) telescope to p_0 / p~_0, pulling the output toward the true target p. Systematic
// resampling when ESS < threshold * N.
//
// Resampling couples the particles of a population, so an SMC job is sharded by independent POPULATIONS: population p
// owns sample indices [p N, (p + 1) N) and its own Philox counters, shards are contiguous population ranges, and the
// merge reduces per-population numbers in population order. The result is identical for any shard count given the
// same (populations, particles) layout.

import Foundation
import TesseraCompute
import TesseraCore

/// What corrects the wrong-model sampler.
public enum SMCCorrection: String, Sendable, CaseIterable {
    /// Exact density-ratio weights and systematic resampling.
    case exact
    /// No weights, no resampling: the plain wrong-model sampler (the "without SMC" baseline).
    case none
    /// Weights from a trained discriminator's logit d(x, t) ~ log p_t(x)/p~_t(x) instead of the closed form
    /// (the paper's practical variant; `SMCDiscriminator`).
    case discriminator
}

/// The validated parameters of one SMC job. Two equal configs give bitwise-identical results.
public struct SMCConfig: Sendable, Equatable {
    /// p, the true target the weights correct toward (and the statistics compare against).
    public var target: GaussianMixture
    /// p~, the wrong model whose exact eps drives the sampler.
    public var proposal: GaussianMixture
    public var schedule: BetaSchedule
    /// The proposal sampler: ddpm or ddim(eta).
    public var sampler: SamplerKind
    public var samplingSteps: Int
    /// N, particles per population: a positive multiple of `SamplingPlan.blockSize`, so populations are whole blocks.
    public var particles: Int
    /// P, independent populations (the unit of sharding).
    public var populations: Int
    /// Resample when ESS < essThreshold * N (0 never, 1 at every step).
    public var essThreshold: Double
    public var correction: SMCCorrection
    /// Training settings when `correction == .discriminator` (nil otherwise).
    public var discriminator: SMCDiscriminatorSettings?
    public var seed: UInt64
    public var keepSamples: Bool

    /// Philox stream of the resampling uniforms (WORKLOADS.md §0 numbers 0-7; 8 is SMC's).
    public static let resampleStream: UInt32 = 8

    public init(
        target: GaussianMixture, proposal: GaussianMixture, schedule: BetaSchedule, sampler: SamplerKind,
        samplingSteps: Int, particles: Int, populations: Int, essThreshold: Double = 0.5,
        correction: SMCCorrection = .exact, discriminator: SMCDiscriminatorSettings? = nil, seed: UInt64,
        keepSamples: Bool = false
    ) throws {
        guard (correction == .discriminator) == (discriminator != nil) else {
            throw SamplingError(
                .invalidConfig, "discriminator settings go with (and only with) correction: discriminator")
        }
        guard proposal.dimension == target.dimension else {
            throw SamplingError(
                .invalidConfig,
                "the proposal has dimension \(proposal.dimension); the target has \(target.dimension)")
        }
        let block = SamplingPlan.blockSize
        guard particles >= block, particles % block == 0 else {
            throw SamplingError(
                .invalidConfig, "particles is \(particles); it must be a positive multiple of \(block)")
        }
        guard populations >= 1, particles * populations <= SamplingConfig.maxSamples else {
            throw SamplingError(
                .invalidConfig,
                "populations is \(populations); it must be >= 1 with particles * populations <= \(SamplingConfig.maxSamples)"
            )
        }
        guard essThreshold.isFinite, essThreshold >= 0, essThreshold <= 1 else {
            throw SamplingError(.invalidConfig, "ess_threshold is \(essThreshold); it must be in [0, 1]")
        }
        // The same checks as a ddpm/ddim job of P * N samples.
        _ = try SamplingConfig(
            target: proposal, schedule: schedule, sampler: sampler, samplingSteps: samplingSteps, seed: seed,
            samples: particles * populations)
        self.target = target
        self.proposal = proposal
        self.schedule = schedule
        self.sampler = sampler
        self.samplingSteps = samplingSteps
        self.particles = particles
        self.populations = populations
        self.essThreshold = essThreshold
        self.correction = correction
        self.discriminator = discriminator
        self.seed = seed
        self.keepSamples = keepSamples
    }

    /// P * N, all particles of the job.
    public var samples: Int { particles * populations }

    var statistics: SamplingStatisticsSetup {
        SamplingStatisticsSetup(target: target, reference: target, seed: seed, samples: samples)
    }
}

public enum SMCPlan {
    /// Deals the P populations into at most `shards` contiguous ranges (the first ones get one more), as
    /// `SamplingPlan.ranges` deals blocks. Fewer ranges than `shards` when P < shards.
    public static func populationRanges(populations: Int, shards: Int) -> [Range<Int>] {
        precondition(shards >= 1 && populations >= 0)
        let count = min(shards, populations)
        guard count > 0 else { return [] }
        let base = populations / count
        let extra = populations % count
        var result: [Range<Int>] = []
        var p = 0
        for s in 0..<count {
            let size = base + (s < extra ? 1 : 0)
            result.append(p..<(p + size))
            p += size
        }
        return result
    }
}

/// Streamed after every reverse step of a shard.
public struct SMCStepMetrics: Sendable, Equatable {
    public var step: Int
    /// The timestep the step started from.
    public var t: Int
    /// Mean over the shard's populations of ESS / N after this step's weight update (before any resampling).
    public var ess: Double
    /// Populations of the shard that resampled at this step.
    public var resampled: Int
    public var meanSquaredNorm: Double
    public var nanCount: Int
}

/// Runs populations `populations` of `config` (particles [p0 N, p1 N)) and summarises the final, equally weighted
/// particles with the exact block statistics of §4.
///
/// Particle j of population p is sample i = p N + j: x_T and step noise are those of a ddpm/ddim job's sample i
/// (stream 0 step 0; stream 1 step k + 1) — the particle in slot i after a resampling continues with slot i's noise.
/// The resampling uniform of population p at step k is the first word of Philox(seed; p, step k + 1, stream 8); the
/// final resampling (exact correction only, after the last step's weight update) uses step S + 1.
///
/// Extras, one entry per population in population order: reals `final_ess` (ESS / N of the final weights),
/// `min_ess` (smallest ESS / N after any update), `log_normalizer` (log of the product over resampling epochs of the
/// mean incremental weight: an estimate of log E[p_0/p~_0 * p~_T/p_T], near 0), `weighted_mode_mass` (K per
/// population: sum of final normalised weights of the particles in each mode, the importance-weighted mode weights);
/// integers `resample_count` (resamplings during the run, the final one not counted).
public func runSMCShard(
    config: SMCConfig, populations: Range<Int>, onStep: (SMCStepMetrics) -> Void, shouldStop: () -> Bool
) throws -> SamplingShardResult {
    guard !populations.isEmpty, populations.lowerBound >= 0, populations.upperBound <= config.populations else {
        throw SamplingError(
            .invalidRange, "population range \(populations) must be non-empty and inside [0, \(config.populations))")
    }
    let N = config.particles
    let d = config.target.dimension
    let K = config.target.componentCount
    let range = (populations.lowerBound * N)..<(populations.upperBound * N)
    let n = range.count
    let P = populations.count
    let steps = samplerSteps(schedule: config.schedule, sampler: config.sampler, samplingSteps: config.samplingSteps)
    let engine = SamplerEngine(target: config.proposal)
    let correcting = config.correction != .none
    let classifier = ModeClassifier(config.target)
    let discriminator = try config.discriminator.map {
        try SMCDiscriminator.train(config: config, settings: $0, shouldStop: shouldStop)
    }

    var x = [Double](repeating: 0, count: n * d)
    var logRatio = [Double](repeating: 0, count: n)  // log p_t(x) - log p~_t(x) at the current time
    var logWeight = [Double](repeating: 0, count: n)  // since the last resampling
    var scratchP = [Double](repeating: 0, count: n)
    var scratchQ = [Double](repeating: 0, count: n)
    var finalESS = [Double](repeating: 1, count: P)
    var minESS = [Double](repeating: 1, count: P)
    var logNormalizer = [Double](repeating: 0, count: P)
    var weightedModes = [Double](repeating: 0, count: P * K)
    var resamples = [Int64](repeating: 0, count: P)

    /// Normalised weights of population q (local index) and its ESS / N.
    func normalized(_ logW: UnsafePointer<Double>) -> (weights: [Double], ess: Double, logMean: Double) {
        var top = -Double.infinity
        for j in 0..<N where logW[j] > top { top = logW[j] }
        var w = [Double](repeating: 0, count: N)
        var sum = 0.0
        for j in 0..<N {
            w[j] = exp(logW[j] - top)
            sum += w[j]
        }
        var sumSq = 0.0
        for j in 0..<N {
            w[j] /= sum
            sumSq += w[j] * w[j]
        }
        return (w, 1 / (sumSq * Double(N)), top + log(sum / Double(N)))
    }

    /// Systematic resampling of population q (local) with normalised weights `w` and uniform u.
    func resample(
        _ q: Int, weights w: [Double], u: Double, x: UnsafeMutablePointer<Double>,
        logRatio: UnsafeMutablePointer<Double>
    ) {
        let base = q * N
        var ancestors = [Int](repeating: 0, count: N)
        var cumulative = w[0]
        var a = 0
        for j in 0..<N {
            let position = (u + Double(j)) / Double(N)
            while cumulative < position && a < N - 1 {
                a += 1
                cumulative += w[a]
            }
            ancestors[j] = a
        }
        let oldX = Array(UnsafeBufferPointer(start: x + base * d, count: N * d))
        let oldR = Array(UnsafeBufferPointer(start: logRatio + base, count: N))
        for j in 0..<N {
            let from = ancestors[j]
            for c in 0..<d { x[(base + j) * d + c] = oldX[from * d + c] }
            logRatio[base + j] = oldR[from]
        }
    }

    func resampleUniform(population p: Int, step: Int) -> Double {
        var stream = PhiloxStream(
            seed: config.seed, index: UInt32(p), step: UInt32(step), stream: SMCConfig.resampleStream)
        return stream.nextUniform()
    }

    try x.withUnsafeMutableBufferPointer { xb in
        try logRatio.withUnsafeMutableBufferPointer { rb in
            try logWeight.withUnsafeMutableBufferPointer { wb in
                try scratchP.withUnsafeMutableBufferPointer { pb in
                    try scratchQ.withUnsafeMutableBufferPointer { qb in
                        let xs = xb.baseAddress!
                        let r = rb.baseAddress!
                        let lw = wb.baseAddress!
                        let sp = pb.baseAddress!
                        let sq = qb.baseAddress!
                        /// sp[j] = log p_a(x_j) - log p~_a(x_j) for the whole shard at timestep t (alphabar a):
                        /// closed form, or the discriminator's logit at max(t, 0) (t = -1 is the clean data).
                        func ratio(alphaBar a: Double, t: Int) throws {
                            if let discriminator {
                                try discriminator.logRatio(xs, count: n, t: max(t, 0), into: sp)
                                return
                            }
                            MixtureFieldKernel(noised: config.target.noised(alphaBar: a))
                                .evaluate(xs, count: n, score: nil, logDensity: sp)
                            MixtureFieldKernel(noised: config.proposal.noised(alphaBar: a))
                                .evaluate(xs, count: n, score: nil, logDensity: sq)
                            for j in 0..<n { sp[j] -= sq[j] }
                        }
                        for j in 0..<n {
                            var stream = PhiloxStream(
                                seed: config.seed, index: UInt32(range.lowerBound + j), step: 0, stream: .initialNoise)
                            stream.fillNormals(UnsafeMutableBufferPointer(start: xs + j * d, count: d))
                        }
                        if correcting, let first = steps.first {
                            try ratio(alphaBar: first.alphaBar, t: first.t)
                            for j in 0..<n { r[j] = sp[j] }
                        }
                        for (k, step) in steps.enumerated() {
                            if shouldStop() { throw CancellationError() }
                            engine.advance(
                                xs, count: n, firstIndex: range.lowerBound, step: step, stepNumber: k,
                                mixture: config.proposal.noised(alphaBar: step.alphaBar), seed: config.seed)
                            var essSum = 0.0
                            var resampledNow = 0
                            if correcting {
                                try ratio(alphaBar: step.alphaBarPrev, t: step.prev)
                                for j in 0..<n {
                                    lw[j] += sp[j] - r[j]
                                    r[j] = sp[j]
                                }
                                let last = k == steps.count - 1
                                for q in 0..<P {
                                    let (w, ess, logMean) = normalized(lw + q * N)
                                    essSum += ess
                                    minESS[q] = min(minESS[q], ess.isNaN ? 0 : ess)
                                    if last {
                                        finalESS[q] = ess
                                        for j in 0..<N {
                                            weightedModes[q * K + classifier.mode(xs + (q * N + j) * d)] += w[j]
                                        }
                                    }
                                    if last || ess < config.essThreshold {
                                        if !last {
                                            resamples[q] += 1
                                            resampledNow += 1
                                        }
                                        logNormalizer[q] += logMean
                                        let p = populations.lowerBound + q
                                        resample(
                                            q, weights: w,
                                            u: resampleUniform(population: p, step: last ? k + 2 : k + 1),
                                            x: xs, logRatio: r)
                                        for j in 0..<N { lw[q * N + j] = 0 }
                                    }
                                }
                            } else {
                                essSum = Double(P)
                            }
                            var norm = 0.0
                            var finite = 0
                            for j in 0..<n {
                                var s = 0.0
                                for c in 0..<d { s += xs[j * d + c] * xs[j * d + c] }
                                if s.isFinite {
                                    norm += s
                                    finite += 1
                                }
                            }
                            onStep(
                                SMCStepMetrics(
                                    step: k, t: step.t, ess: essSum / Double(P), resampled: resampledNow,
                                    meanSquaredNorm: finite > 0 ? norm / Double(finite) : .nan, nanCount: n - finite))
                        }
                        if !correcting {
                            // Uniform weights: the weighted mode mass is the plain mode frequency.
                            for q in 0..<P {
                                for j in 0..<N {
                                    weightedModes[q * K + classifier.mode(xs + (q * N + j) * d)] += 1 / Double(N)
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if shouldStop() { throw CancellationError() }
    let (sampled, exact) = summarizeSamplingShard(setup: config.statistics, range: range, samples: x)
    var extras = SamplingShardExtras(
        integers: ["resample_count": resamples],
        reals: [
            "final_ess": finalESS, "min_ess": minESS, "log_normalizer": logNormalizer,
            "weighted_mode_mass": weightedModes,
        ])
    if let discriminator {
        extras.integers["discriminator_digest"] = [Int64(bitPattern: discriminator.digest)]
        extras.reals["discriminator_rmse"] = [discriminator.logRatioRMSE]
        extras.reals["discriminator_loss"] = [discriminator.finalLoss]
    }
    return SamplingShardResult(
        range: range, dimension: d, componentCount: K, samples: config.keepSamples ? x.map { Float($0) } : nil,
        sampled: sampled, exact: exact, extras: extras)
}

/// The merged result of an SMC job.
public struct SMCResult: Sendable, Equatable {
    public var config: SMCConfig
    var statistics: SamplingStatisticsResult
    /// Mean over populations of the final ESS / N (before the final resampling).
    public var ess: Double
    /// Smallest ESS / N any population reached.
    public var minESS: Double
    /// Resamplings in all populations (the final one of each population not counted).
    public var resampleCount: Int64
    /// Importance-weighted mode weights, averaged over populations (before the final resampling).
    public var weightedModeWeights: [Double]
    /// Mean over populations of the log-normaliser estimate (near 0 when the proposal sampler is accurate).
    public var logNormalizer: Double
    /// Per population, in population order.
    public var populationESS: [Double]
    public var populationResamples: [Int64]
    /// `correction: discriminator`: sqrt(mean (d(x, t) - log p_t(x)/p~_t(x))^2) on the evaluation set.
    public var discriminatorRMSE: Double?
    /// `correction: discriminator`: mean binary cross-entropy of the last training batch.
    public var discriminatorLoss: Double?

    public var n: Int { statistics.n }
    public var mean: [Double] { statistics.mean }
    public var cov: [[Double]] { statistics.cov }
    /// Mode weights of the final, equally weighted (resampled) particles.
    public var modeWeights: [Double] { statistics.modeWeights }
    public var modeWeightError: Double { statistics.modeWeightError }
    public var sw1: Double { statistics.sw1 }
    public var mmd: Double { statistics.mmd }
    public var noiseFloor: SamplingMetrics { statistics.noiseFloor }
    public var nanCount: Int { statistics.nanCount }

    /// One JSON object: the sampling statistics keys (n … target, against the TRUE target), then `ess`, `min_ess`,
    /// `resample_count`, `weighted_mode_weights`, `log_normalizer`, `population_ess`, `population_resamples`,
    /// `sampler` {algorithm "smc", sampler, eta (ddim), sampling_steps, schedule, proposal {weights, means, stds},
    /// correction, ess_threshold, particles, populations, seed, samples}, `metric_setup`.
    public func json(spelling: JSONNumber.Spelling) -> JSONValue {
        let j = SamplingJSON(spelling: spelling)
        var o = statistics.json(j, target: config.target)
        o["ess"] = j.number(ess)
        o["min_ess"] = j.number(minESS)
        o["resample_count"] = j.integer(resampleCount)
        o["weighted_mode_weights"] = j.numbers(weightedModeWeights)
        o["log_normalizer"] = j.number(logNormalizer)
        o["population_ess"] = j.numbers(populationESS)
        o["population_resamples"] = .array(populationResamples.map { j.integer($0) })
        if let rmse = discriminatorRMSE, let loss = discriminatorLoss {
            o["discriminator_log_ratio_rmse"] = j.number(rmse)
            o["discriminator_loss"] = j.number(loss)
        }
        var sampler: JSONObject = ["algorithm": .string("smc"), "sampler": .string(config.sampler.algorithmName)]
        if case .ddim(let eta) = config.sampler { sampler["eta"] = j.number(eta) }
        sampler["sampling_steps"] = .int(config.samplingSteps)
        sampler["schedule"] = j.schedule(config.schedule)
        sampler["proposal"] = j.target(config.proposal)
        sampler["correction"] = .string(config.correction.rawValue)
        if let settings = config.discriminator {
            sampler["discriminator"] = .object([
                "width": .int(settings.width), "steps": .int(settings.steps), "batch": .int(settings.batch),
                "learning_rate": j.number(settings.learningRate), "eval_samples": .int(settings.evalSamples),
            ])
        }
        sampler["ess_threshold"] = j.number(config.essThreshold)
        sampler["particles"] = .int(config.particles)
        sampler["populations"] = .int(config.populations)
        return j.result(o, sampler: sampler, seed: config.seed, samples: config.samples)
    }
}

extension SMCResult: SamplingResultJSON {}

/// Merges SMC shards (any order; together they must cover every population once): block statistics as
/// `mergeSampling`, per-population numbers concatenated in population order and averaged in that order. Identical
/// for any shard count with the same (populations, particles).
public func mergeSMC(config: SMCConfig, shards: [SamplingShardResult]) throws -> SMCResult {
    var merge = SMCMerge(config: config)
    for shard in shards.sorted(by: { $0.range.lowerBound < $1.range.lowerBound }) { try merge.add(shard) }
    return try merge.finish()
}

/// `mergeSMC` one shard at a time, in range order. It keeps the per-population numbers (a few per population: they
/// are part of the result), never the shards.
struct SMCMerge {
    let config: SMCConfig
    private var statistics: SamplingStatisticsReducer
    private var finalESS: [Double] = []
    private var minESS: [Double] = []
    private var logNormalizer: [Double] = []
    private var weightedModes: [Double] = []
    private var resamples: [Int64] = []
    private var discriminator: (digest: Int64, rmse: Double, loss: Double)?

    init(config: SMCConfig) {
        self.config = config
        statistics = SamplingStatisticsReducer(setup: config.statistics)
    }

    mutating func add(_ shard: SamplingShardResult) throws {
        let N = config.particles
        let K = config.target.componentCount
        try statistics.add(shard)
        if config.correction == .discriminator {
            guard let digest = shard.extras.integers["discriminator_digest"]?.first,
                let rmse = shard.extras.reals["discriminator_rmse"]?.first,
                let loss = shard.extras.reals["discriminator_loss"]?.first
            else {
                throw SamplingError(.malformedResult, "SMC shard \(shard.range) lacks its discriminator numbers")
            }
            if let first = discriminator, first.digest != digest {
                // Every shard trains the same network from the same seed; different bits mean different BLAS
                // arithmetic (thread count or kernel), so the populations were weighted by different models.
                throw SamplingError(
                    .malformedResult,
                    "SMC shards trained different discriminators (digest \(first.digest) vs \(digest)); "
                        + "run all workers with the same OPENBLAS_NUM_THREADS and OPENBLAS_CORETYPE")
            }
            discriminator = discriminator ?? (digest, rmse, loss)
        }
        guard shard.range.lowerBound % N == 0, shard.range.count % N == 0 else {
            throw SamplingError(
                .malformedResult, "SMC shard \(shard.range) is not a whole number of populations of \(N)")
        }
        let P = shard.range.count / N
        let e = shard.extras
        guard let f = e.reals["final_ess"], f.count == P, let m = e.reals["min_ess"], m.count == P,
            let z = e.reals["log_normalizer"], z.count == P, let w = e.reals["weighted_mode_mass"], w.count == P * K,
            let r = e.integers["resample_count"], r.count == P
        else {
            throw SamplingError(.malformedResult, "SMC shard \(shard.range) lacks its per-population numbers")
        }
        finalESS += f
        minESS += m
        logNormalizer += z
        weightedModes += w
        resamples += r
    }

    func finish() throws -> SMCResult {
        let statistics = try statistics.finish()
        let K = config.target.componentCount
        guard finalESS.count == config.populations else {
            throw SamplingError(
                .malformedResult, "SMC shards hold \(finalESS.count) populations; the job has \(config.populations)")
        }
        let P = Double(config.populations)
        var modes = [Double](repeating: 0, count: K)
        for q in 0..<config.populations {
            for k in 0..<K { modes[k] += weightedModes[q * K + k] }
        }
        return SMCResult(
            config: config, statistics: statistics, ess: finalESS.reduce(0, +) / P, minESS: minESS.min() ?? .nan,
            resampleCount: resamples.reduce(0, +), weightedModeWeights: modes.map { $0 / P },
            logNormalizer: logNormalizer.reduce(0, +) / P, populationESS: finalESS, populationResamples: resamples,
            discriminatorRMSE: discriminator?.rmse, discriminatorLoss: discriminator?.loss)
    }
}
