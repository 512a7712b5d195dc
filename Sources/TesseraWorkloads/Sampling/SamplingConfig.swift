// The validated parameters of one sampling job, and how its sample indices are cut into shards (WORKLOADS.md §4).

/// Everything a sampling shard needs. Two configs that compare equal produce bitwise-identical results.
public struct SamplingConfig: Sendable, Equatable {
    public var target: GaussianMixture
    public var schedule: BetaSchedule
    public var sampler: SamplerKind
    /// S, the number of reverse steps (1...T).
    public var samplingSteps: Int
    /// The Philox key of the job: sample i's x_T, step noise and exact draw are pure functions of (seed, i).
    public var seed: UInt64
    /// N, the total number of samples of the job; shards cover [0, N).
    public var samples: Int
    /// Keep each shard's samples as F32 [n, d] (`SamplingShardResult.samples`, `samplesFile()`).
    public var keepSamples: Bool
    /// Classifier-free guidance, or nil for plain sampling (the default; results without guidance are exactly
    /// those of a config that never had the field).
    public var guidance: SamplingGuidance?

    /// Largest N: sample indices go into one 32-bit Philox counter word.
    public static let maxSamples = Int(UInt32.max)

    public init(
        target: GaussianMixture, schedule: BetaSchedule, sampler: SamplerKind, samplingSteps: Int, seed: UInt64,
        samples: Int, keepSamples: Bool = false, guidance: SamplingGuidance? = nil
    ) throws {
        guard samplingSteps >= 1, samplingSteps <= schedule.steps else {
            throw SamplingError(
                .invalidConfig,
                "sampling_steps is \(samplingSteps); it must be between 1 and the schedule's \(schedule.steps) steps")
        }
        if case .ddim(let eta) = sampler {
            guard eta.isFinite, eta >= 0, eta <= 1 else {
                throw SamplingError(.invalidConfig, "eta is \(eta); it must be in [0, 1]")
            }
        }
        guard samples >= 1, samples <= Self.maxSamples else {
            throw SamplingError(.invalidConfig, "samples is \(samples); it must be between 1 and \(Self.maxSamples)")
        }
        if let guidance {
            guard guidance.conditional.dimension == target.dimension,
                guidance.conditional.componentCount == target.componentCount
            else {
                throw SamplingError(
                    .invalidConfig,
                    "the guidance conditional has \(guidance.conditional.componentCount) component(s) in \(guidance.conditional.dimension) dimension(s); the target has \(target.componentCount) in \(target.dimension)"
                )
            }
        }
        self.target = target
        self.schedule = schedule
        self.sampler = sampler
        self.samplingSteps = samplingSteps
        self.seed = seed
        self.samples = samples
        self.keepSamples = keepSamples
        self.guidance = guidance
    }

    /// The law the statistics compare against: the conditional p(x | c) when guided, else the target.
    var reference: GaussianMixture { guidance?.conditional ?? target }

    /// What the statistics pass and the merge need.
    var statistics: SamplingStatisticsSetup {
        SamplingStatisticsSetup(target: target, reference: reference, seed: seed, samples: samples)
    }
}

/// Classifier-free guidance (WORKLOADS.md §1 S1, diffusers' `guidance_scale` convention):
/// eps~(x, t) = eps_u(x, t) + w (eps_c(x, t) - eps_u(x, t)), where eps_u is the exact eps of the whole target mixture
/// and eps_c the exact eps of the conditional law p(x | c) = N(mu_c, s_c^2 I) alone (its noised form
/// N(sqrt(a) mu_c, (a s_c^2 + 1 - a) I), so eps_c = sqrt(1 - a) (x - sqrt(a) mu_c) / v_c). w = 0 is unconditional
/// sampling, w = 1 conditional sampling, w > 1 the usual "guided" regime.
public struct SamplingGuidance: Sendable, Equatable {
    /// w, the guidance scale.
    public var scale: Double
    /// p(x | c), as a mixture with the target's components and dimension and exactly one non-zero weight (the
    /// class's component c); only that component enters eps_c. It is also the law the result's statistics and noise
    /// floor compare against.
    public var conditional: GaussianMixture
    /// c, the index of the conditional's non-zero weight.
    public var component: Int

    /// Guidance toward an explicit conditional law (closed-form tests pair a Gaussian target with a different
    /// Gaussian conditional). `conditional` must have exactly one non-zero weight; w must be finite and in [0, 100].
    public init(scale: Double, conditional: GaussianMixture) throws {
        guard scale.isFinite, scale >= 0, scale <= 100 else {
            throw SamplingError(.invalidConfig, "guidance_scale is \(scale); it must be in [0, 100]")
        }
        let support = conditional.weights.indices.filter { conditional.weights[$0] > 0 }
        guard support.count == 1 else {
            throw SamplingError(
                .invalidConfig,
                "the guidance conditional must have exactly one component with non-zero weight; it has \(support.count)"
            )
        }
        self.scale = scale
        self.conditional = conditional
        self.component = support[0]
    }

    /// Guidance toward component `k` of `target` (the job spec's `class: k`): p(x | c) = N(mu_k, s_k^2 I).
    public static func component(_ k: Int, of target: GaussianMixture, scale: Double) throws -> SamplingGuidance {
        guard k >= 0, k < target.componentCount else {
            throw SamplingError(
                .invalidConfig, "class is \(k); the target has components 0..<\(target.componentCount)")
        }
        var weights = [Double](repeating: 0, count: target.componentCount)
        weights[k] = 1
        return try SamplingGuidance(
            scale: scale, conditional: GaussianMixture(weights: weights, means: target.means, stds: target.stds))
    }
}

public enum SamplingPlan {
    /// Statistics are kept per block of this many consecutive sample indices; shard boundaries fall on block
    /// boundaries, which is what makes the merged result independent of the shard count.
    public static let blockSize = 4096

    /// Number of blocks covering [0, samples).
    public static func blockCount(samples: Int) -> Int { (samples + blockSize - 1) / blockSize }

    /// Splits [0, samples) into at most `shards` contiguous, non-empty ranges whose boundaries are multiples of
    /// `blockSize` (the last range ends at `samples`). Blocks are dealt as evenly as possible, the first ranges
    /// getting one block more. When there are fewer blocks than requested shards, fewer ranges are returned (one per
    /// block): the caller learns the real shard count from the result's `count`. `samples == 0` gives `[]`.
    /// Precondition: `shards >= 1`, `samples >= 0` (validate user input before calling).
    public static func ranges(samples: Int, shards: Int) -> [Range<Int>] {
        precondition(shards >= 1, "shards must be >= 1")
        precondition(samples >= 0, "samples must be >= 0")
        let blocks = blockCount(samples: samples)
        let count = min(shards, blocks)
        guard count > 0 else { return [] }
        let base = blocks / count
        let extra = blocks % count
        var result: [Range<Int>] = []
        result.reserveCapacity(count)
        var block = 0
        for s in 0..<count {
            let size = base + (s < extra ? 1 : 0)
            let lower = block * blockSize
            let upper = min((block + size) * blockSize, samples)
            result.append(lower..<upper)
            block += size
        }
        return result
    }

    /// Checks that `range` is a valid shard of a job with `samples` samples: non-empty, inside [0, samples), and with
    /// both ends on block boundaries (or the upper end at `samples`).
    public static func validate(range: Range<Int>, samples: Int) throws {
        guard !range.isEmpty, range.lowerBound >= 0, range.upperBound <= samples else {
            throw SamplingError(
                .invalidRange, "shard range \(range) must be non-empty and inside [0, \(samples))")
        }
        guard range.lowerBound % blockSize == 0, range.upperBound % blockSize == 0 || range.upperBound == samples
        else {
            throw SamplingError(
                .invalidRange,
                "shard range \(range) is not aligned to blocks of \(blockSize) samples (ends must be multiples of \(blockSize), or \(samples) for the last)"
            )
        }
    }
}
