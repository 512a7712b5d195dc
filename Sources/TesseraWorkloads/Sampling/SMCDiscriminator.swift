// The discriminator-estimated density ratio of "Correcting Diffusion Generation through Resampling" (WORKLOADS.md §1
// S3 iii, variant): a time-conditioned logistic-regression MLP d(x, t) is trained to tell noised REAL data (the true
// target p) from noised GENERATED data (the wrong model p~). With balanced classes its optimal logit is exactly
// log p_t(x) / p~_t(x), so SMC can use it in place of the closed-form ratio, and the closed form measures how well it
// learned (log-ratio RMSE).

import Foundation
import TesseraCompute

/// Training settings of the discriminator (SMC `correction: discriminator`).
public struct SMCDiscriminatorSettings: Sendable, Equatable {
    /// Hidden width of the MLP [d + 32, width, width, 1] (SiLU).
    public var width: Int
    /// Adam steps.
    public var steps: Int
    /// Rows per step, half real and half generated (even).
    public var batch: Int
    /// Adam learning rate (cosine decay to a tenth over `steps`).
    public var learningRate: Double
    /// Evaluation rows for the log-ratio RMSE (half real, half generated, fresh draws).
    public var evalSamples: Int

    public init(
        width: Int = 64, steps: Int = 2000, batch: Int = 512, learningRate: Double = 2e-3, evalSamples: Int = 8192
    )
        throws
    {
        guard width >= 1, width <= 4096 else {
            throw SamplingError(.invalidConfig, "discriminator width is \(width); it must be between 1 and 4096")
        }
        guard steps >= 1, steps <= 1_000_000 else {
            throw SamplingError(.invalidConfig, "discriminator steps is \(steps); it must be between 1 and 1000000")
        }
        guard batch >= 2, batch <= 65_536, batch % 2 == 0 else {
            throw SamplingError(.invalidConfig, "discriminator batch is \(batch); it must be even, 2...65536")
        }
        guard learningRate.isFinite, learningRate > 0, learningRate <= 1 else {
            throw SamplingError(.invalidConfig, "discriminator learning_rate is \(learningRate); it must be in (0, 1]")
        }
        guard evalSamples >= 2, evalSamples <= 10_000_000 else {
            throw SamplingError(.invalidConfig, "discriminator eval_samples is \(evalSamples); it must be 2...10000000")
        }
        self.width = width
        self.steps = steps
        self.batch = batch
        self.learningRate = learningRate
        self.evalSamples = evalSamples
    }
}

/// A trained discriminator and how well it matches the closed-form log ratio.
struct SMCDiscriminator: Sendable {
    let model: MLP<Double>
    /// Mean binary cross-entropy of the last training batch.
    let finalLoss: Double
    /// sqrt(mean (logit - log p_t/p~_t)^2) over the evaluation set.
    let logRatioRMSE: Double
    /// FNV-1a 64 of the parameters' bit patterns: every shard must train the same network.
    let digest: UInt64

    static let embedding = 32
    static let chunk = 1024
    /// Evaluation rows come from the training generator at this (otherwise unused) step.
    static let evalStep = UInt32.max

    /// [sin(t w_j), cos(t w_j)], w_j = 10000^(-j/16), j < 16 (WORKLOADS.md §0 time embedding, D = 32).
    static func timeEmbedding(_ t: Int) -> [Double] {
        let half = embedding / 2
        var e = [Double](repeating: 0, count: embedding)
        for j in 0..<half {
            let w = pow(10_000, -Double(j) / Double(half))
            e[j] = sin(Double(t) * w)
            e[half + j] = cos(Double(t) * w)
        }
        return e
    }

    /// One labelled row: (x_t, t, real). Row b of step s uses Philox(seed; b, step s, stream 3): word 0 picks
    /// t = floor(u T); rows b < batch/2 draw x0 from the target ("real"), the others from the proposal
    /// ("generated"); then d normals e; x_t = sqrt(a_t) x0 + sqrt(1 - a_t) e.
    static func row(config: SMCConfig, index b: Int, step s: UInt32, real: Bool, into x: UnsafeMutablePointer<Double>)
        -> Int
    {
        let d = config.target.dimension
        var stream = PhiloxStream(seed: config.seed, index: UInt32(b), step: s, stream: .minibatch)
        let T = config.schedule.steps
        let t = min(Int(stream.nextUniform() * Double(T)), T - 1)
        _ = (real ? config.target : config.proposal).draw(&stream, into: x)
        let noise = stream.normals(d)
        let a = config.schedule.alphaBar[t]
        let ra = a.squareRoot()
        let rb = (1 - a).squareRoot()
        for c in 0..<d { x[c] = ra * x[c] + rb * noise[c] }
        return t
    }

    /// Trains the discriminator of `config` (deterministic given the seed and the BLAS configuration).
    static func train(config: SMCConfig, settings: SMCDiscriminatorSettings, shouldStop: () -> Bool) throws
        -> SMCDiscriminator
    {
        let d = config.target.dimension
        let inputs = d + embedding
        let B = settings.batch
        var model = try MLP<Double>(
            sizes: [inputs, settings.width, settings.width, 1], activation: .silu, seed: config.seed)
        var optimizer = try Adam<Double>(
            configuration: .adam(
                learningRate: settings.learningRate,
                schedule: .cosine(warmupSteps: 0, totalSteps: settings.steps, minFactor: 0.1)),
            parameterCount: model.parameterCount)
        var workspace = model.makeWorkspace(batchCapacity: B)
        let embeddings = (0..<config.schedule.steps).map(timeEmbedding)
        var input = [Double](repeating: 0, count: B * inputs)
        var gradient = [Double](repeating: 0, count: B)
        var point = [Double](repeating: 0, count: d)
        var loss = 0.0
        for s in 0..<settings.steps {
            if s % 64 == 0, shouldStop() { throw CancellationError() }
            for b in 0..<B {
                let t = point.withUnsafeMutableBufferPointer {
                    row(config: config, index: b, step: UInt32(s), real: b < B / 2, into: $0.baseAddress!)
                }
                for c in 0..<d { input[b * inputs + c] = point[c] }
                for j in 0..<embedding { input[b * inputs + d + j] = embeddings[t][j] }
            }
            try input.withUnsafeBufferPointer { try model.forward($0, batch: B, workspace: &workspace) }
            // Binary cross-entropy with logits: L = mean softplus(l) - y l, dL/dl = (sigmoid(l) - y) / B.
            loss = workspace.withOutput { logits in
                var total = 0.0
                for b in 0..<B {
                    let l = logits[b]
                    let y: Double = b < B / 2 ? 1 : 0
                    total += max(l, 0) - l * y + log1p(exp(-abs(l)))
                    gradient[b] = (1 / (1 + exp(-l)) - y) / Double(B)
                }
                return total / Double(B)
            }
            try gradient.withUnsafeBufferPointer { try model.backward($0, workspace: &workspace) }
            optimizer.update(&model)
        }
        let discriminator = SMCDiscriminator(model: model, finalLoss: loss, logRatioRMSE: .nan, digest: 0)
        // Closed-form comparison on fresh rows.
        let E = settings.evalSamples
        var squared = 0.0
        var rows = [Double](repeating: 0, count: d)
        var logits = [Double](repeating: 0, count: 1)
        for j in 0..<E {
            let t = rows.withUnsafeMutableBufferPointer {
                row(config: config, index: j, step: evalStep, real: j < E / 2, into: $0.baseAddress!)
            }
            try rows.withUnsafeBufferPointer { xp in
                try logits.withUnsafeMutableBufferPointer { lp in
                    try discriminator.logRatio(xp.baseAddress!, count: 1, t: t, into: lp.baseAddress!)
                }
            }
            let a = config.schedule.alphaBar[t]
            let exact = config.target.logDensity(rows, alphaBar: a) - config.proposal.logDensity(rows, alphaBar: a)
            squared += (logits[0] - exact) * (logits[0] - exact)
        }
        var digest: UInt64 = 0xcbf2_9ce4_8422_2325
        for p in model.parameters {
            var bits = p.bitPattern
            for _ in 0..<8 {
                digest = (digest ^ (bits & 0xFF)) &* 0x100_0000_01b3
                bits >>= 8
            }
        }
        return SMCDiscriminator(
            model: model, finalLoss: loss, logRatioRMSE: (squared / Double(E)).squareRoot(), digest: digest)
    }

    /// out[j] = d(x_j, t), the estimated log p_t(x_j) / p~_t(x_j), for `count` rows of x (row-major [count, d]).
    func logRatio(_ x: UnsafePointer<Double>, count: Int, t: Int, into out: UnsafeMutablePointer<Double>) throws {
        let d = model.inputSize - Self.embedding
        let e = Self.timeEmbedding(t)
        let C = min(Self.chunk, max(count, 1))
        var workspace = model.makeWorkspace(batchCapacity: C)
        var input = [Double](repeating: 0, count: C * model.inputSize)
        var start = 0
        while start < count {
            let m = min(C, count - start)
            for j in 0..<m {
                for c in 0..<d { input[j * model.inputSize + c] = x[(start + j) * d + c] }
                for k in 0..<Self.embedding { input[j * model.inputSize + d + k] = e[k] }
            }
            try input.withUnsafeBufferPointer {
                try model.forward(
                    UnsafeBufferPointer(rebasing: $0[0..<(m * model.inputSize)]), batch: m, workspace: &workspace,
                    training: false)
            }
            workspace.withOutput { logits in
                for j in 0..<m { out[start + j] = logits[j] }
            }
            start += m
        }
    }
}
