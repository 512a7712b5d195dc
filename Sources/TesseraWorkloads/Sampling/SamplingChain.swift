// The bare reverse chain, without the statistics pass: for benchmarks (`tessera-bench sampling`) and tools that
// bring their own x_T. Same kernel and the same Philox step noise as `runSamplingShard`, so for the same x_T
// (Philox stream 0) the rows come out bit for bit as a shard's samples.

import TesseraCompute

/// Sample i's x_T: `d` Box-Muller normals from Philox(seed; i, step 0, stream 0), rows [count, d] from `firstIndex`.
public func samplingInitialNoise(config: SamplingConfig, firstIndex: Int, count: Int) -> [Double] {
    let d = config.target.dimension
    var x = [Double](repeating: 0, count: count * d)
    x.withUnsafeMutableBufferPointer { xs in
        for j in 0..<count {
            var stream = PhiloxStream(
                seed: config.seed, index: UInt32(firstIndex + j), step: 0, stream: .initialNoise)
            stream.fillNormals(UnsafeMutableBufferPointer(start: xs.baseAddress! + j * d, count: d))
        }
    }
    return x
}

/// Runs all `config.samplingSteps` reverse steps in place on `x` (row-major [count, d]; row j is global sample
/// `firstIndex + j`, which keys its step noise). `model` nil = exact score.
public func runSamplingChain(
    config: SamplingConfig, x: inout [Double], firstIndex: Int, model: (any SamplingNoiseModel)? = nil
) {
    let d = config.target.dimension
    precondition(x.count % d == 0, "x has \(x.count) numbers, not a multiple of d = \(d)")
    let n = x.count / d
    let engine = SamplerEngine(target: config.target)
    let steps = samplerSteps(schedule: config.schedule, sampler: config.sampler, samplingSteps: config.samplingSteps)
    x.withUnsafeMutableBufferPointer { xs in
        for (k, step) in steps.enumerated() {
            engine.advance(
                xs.baseAddress!, count: n, firstIndex: firstIndex, step: step, stepNumber: k,
                mixture: config.target.noised(alphaBar: step.alphaBar), seed: config.seed, model: model)
        }
    }
}

/// The timesteps t of the reverse steps, in sampling order (diffusers' leading spacing, reversed).
public func samplingTimesteps(config: SamplingConfig) -> [Int] {
    samplerSteps(schedule: config.schedule, sampler: config.sampler, samplingSteps: config.samplingSteps).map(\.t)
}
