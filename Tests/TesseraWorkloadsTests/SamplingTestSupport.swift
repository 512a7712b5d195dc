import TesseraWorkloads

/// Shared fixtures of the sampling tests.
enum SamplingFixtures {
    /// The 8-mode ring of radius 2, s = 0.2, exactly as in examples/sampling-ddim-ring.yaml (issue 2).
    static func ring() throws -> GaussianMixture {
        try GaussianMixture(
            weights: nil,
            means: [
                [2, 0], [1.414, 1.414], [0, 2], [-1.414, 1.414], [-2, 0], [-1.414, -1.414], [0, -2], [1.414, -1.414],
            ],
            stds: [Double](repeating: 0.2, count: 8))
    }

    /// diffusers' default linear schedule, T = 1000.
    static func schedule() throws -> BetaSchedule {
        try BetaSchedule.linear(betaStart: 0.0001, betaEnd: 0.02, steps: 1000)
    }

    /// Runs a whole job in one process: plan `shards` ranges, run each, merge.
    static func run(_ config: SamplingConfig, shards: Int = 1) throws -> SamplingResult {
        let parts = try SamplingPlan.ranges(samples: config.samples, shards: shards).map {
            try runSamplingShard(config: config, range: $0, onStep: { _ in }, shouldStop: { false })
        }
        return try mergeSampling(config: config, shards: parts)
    }
}
