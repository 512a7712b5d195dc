// Denoising score matching (DDPM's "simple" loss) for the S2 noise network on a Gaussian-mixture target
// (WORKLOADS.md §1 S2), with the exact-predictor evaluation that makes training checkable:
//
//   L(theta) = E_{t ~ U{0..T-1}, x0 ~ GMM, e ~ N(0, I)} | e - eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) e, t) |^2
//
// eps*(x, t) = E[e | x_t = x] is known in closed form for the mixture, so by Pythagoras
// E L(theta) - E L(eps*) = E |eps_theta - eps*|^2, the "excess", measured on a fixed Philox evaluation set.
//
// Randomness (Philox4x32-10, key = job seed): row b of training update k (1-based) draws x0 on stream 2 (data),
// t on stream 4 (timestep: t = floor(u T)), e on stream 1 (noise), all at counter (index b, step k). Evaluation
// sample j uses the same three streams at (index j, step 0). Every batch is therefore a pure function of
// (seed, k), which is what makes a resumed run bitwise identical to an uninterrupted one.

import TesseraCompute
import TesseraCore

/// The validated parameters of a `ddpm-train` job (docs/jobspec.md).
public struct DenoiserTrainingConfig: Sendable, Equatable {
    public var target: GaussianMixture
    public var schedule: BetaSchedule
    public var architecture: DenoiserArchitecture
    /// Training updates.
    public var steps: Int
    /// Rows per update.
    public var batch: Int
    /// Peak learning rate and the cosine floor it decays to at `steps`.
    public var learningRate: Double
    public var minLearningRate: Double
    public var warmupSteps: Int
    /// torch.nn.utils.clip_grad_norm_ max norm, or nil for no clipping.
    public var gradClip: Double?
    /// Size of the fixed evaluation set.
    public var evalSamples: Int
    /// Updates between evaluations (and at the end).
    public var evalEvery: Int
    /// Updates between loss / grad_norm / lr metrics (and at the end).
    public var logEvery: Int
    public var seed: UInt64

    public init(
        target: GaussianMixture, schedule: BetaSchedule, hidden: [Int] = [128, 128, 128], timeEmbedding: Int = 32,
        steps: Int, batch: Int = 512, learningRate: Double = 1e-3, minLearningRate: Double = 1e-5,
        warmupSteps: Int = 0, gradClip: Double? = nil, evalSamples: Int = 50_000, evalEvery: Int = 500,
        logEvery: Int = 10, seed: UInt64
    ) throws {
        guard steps >= 1, batch >= 1, !hidden.isEmpty, hidden.allSatisfy({ $0 >= 1 }), timeEmbedding >= 2,
            timeEmbedding % 2 == 0, learningRate > 0, minLearningRate >= 0, minLearningRate <= learningRate,
            warmupSteps >= 0, warmupSteps < steps, evalSamples >= 1, evalEvery >= 1, logEvery >= 1,
            gradClip.map({ $0 > 0 }) ?? true
        else {
            throw SamplingError(.invalidConfig, "invalid ddpm-train configuration")
        }
        self.target = target
        self.schedule = schedule
        self.architecture = DenoiserArchitecture(
            dimension: target.dimension, hidden: hidden, timeEmbedding: timeEmbedding)
        self.steps = steps
        self.batch = batch
        self.learningRate = learningRate
        self.minLearningRate = minLearningRate
        self.warmupSteps = warmupSteps
        self.gradClip = gradClip
        self.evalSamples = evalSamples
        self.evalEvery = evalEvery
        self.logEvery = logEvery
        self.seed = seed
    }

    /// Adam (PyTorch semantics, no weight decay) with warm-up then cosine decay from `learningRate` to
    /// `minLearningRate` at update `steps`.
    public var optimizer: AdamConfiguration {
        .adam(
            learningRate: learningRate,
            schedule: .cosine(
                warmupSteps: warmupSteps, totalSteps: steps, minFactor: minLearningRate / learningRate))
    }

    /// The bucket of timestep t among `DenoiserEvaluation.bucketCount` equal slices of 0..<T.
    public func bucket(t: Int) -> Int { t * DenoiserEvaluation.bucketCount / schedule.steps }
}

/// What one update measured.
public struct DenoiserStepMetrics: Sendable, Equatable {
    /// 1-based update number.
    public var step: Int
    /// The batch loss (1/B) sum_b |e_b - eps_theta_b|^2 (sum over coordinates; = d x torch's F.mse_loss).
    public var loss: Double
    /// Global L2 norm of the gradient, before clipping.
    public var gradNorm: Double
    /// Learning rate this update used.
    public var learningRate: Double
}

/// The fixed-evaluation-set numbers.
public struct DenoiserEvaluation: Sendable, Equatable {
    public static let bucketCount = 10
    /// mean_j |eps_theta(x_j, t_j) - eps*(x_j, t_j)|^2.
    public var excess: Double
    /// The same mean over the samples whose t falls in bucket b (t in [b T/10, (b+1) T/10)); NaN for an empty one.
    public var bucketExcess: [Double]
    public var bucketCounts: [Int]
    /// mean_j |e_j - eps_theta(x_j, t_j)|^2 (the DSM loss on the evaluation set).
    public var evalLoss: Double
    /// mean_j |e_j - eps*(x_j, t_j)|^2, the loss of the exact predictor (the unreachable minimum, up to MC error).
    public var evalLossExact: Double
}

/// One training run of the S2 network. Not thread-safe; lives on one compute thread.
public final class DenoiserTrainer {
    public static let algorithmName = "ddpm-train"

    public let config: DenoiserTrainingConfig
    /// The job's params as JSON text, stored in checkpoints and checked on resume.
    public let configText: String
    public private(set) var network: MLP<Float>
    public private(set) var optimizer: Adam<Float>
    /// Updates done.
    public private(set) var step: Int
    /// The last update's metrics (restored from a checkpoint's metrics_last).
    public private(set) var last: DenoiserStepMetrics?

    let table: [Float]
    let sqrtAlphaBar: [Double]
    let sqrtOneMinusAlphaBar: [Double]
    var workspace: MLPWorkspace<Float>
    var input: [Float]
    var noiseTarget: [Float]
    var gradient: [Float]
    var evalSet: DenoiserEvaluationSet?

    /// A fresh run: PyTorch-default initialisation from Philox(seed, stream 8), Adam state zero.
    public init(config: DenoiserTrainingConfig, configText: String = "{}") throws {
        self.config = config
        self.configText = configText
        network = try MLP<Float>(sizes: config.architecture.sizes, activation: .silu, seed: config.seed)
        optimizer = try Adam<Float>(configuration: config.optimizer, parameterCount: network.parameterCount)
        step = 0
        last = nil
        table = config.architecture.embeddingTable(timesteps: config.schedule.steps)
        sqrtAlphaBar = config.schedule.alphaBar.map { $0.squareRoot() }
        sqrtOneMinusAlphaBar = config.schedule.alphaBar.map { (1 - $0).squareRoot() }
        workspace = network.makeWorkspace(batchCapacity: config.batch)
        input = [Float](repeating: 0, count: config.batch * config.architecture.inputSize)
        noiseTarget = [Float](repeating: 0, count: config.batch * config.target.dimension)
        gradient = noiseTarget
    }

    /// Resumes from a checkpoint written by `checkpoint()` of a run with the same configuration.
    public convenience init(config: DenoiserTrainingConfig, configText: String = "{}", checkpoint bytes: [UInt8]) throws
    {
        try self.init(config: config, configText: configText)
        let file = try SafeTensorsFile.parse(bytes)
        let c = try TrainingCheckpoint<Float>(file: file)
        guard c.algo == Self.algorithmName else {
            throw ShardError("checkpoint is from algorithm \(c.algo), not \(Self.algorithmName)")
        }
        guard c.config == configText, c.seed == config.seed, c.model.sizes == config.architecture.sizes,
            c.optimizer.configuration == config.optimizer
        else {
            throw ShardError("checkpoint was written by a different ddpm-train configuration; cannot resume from it")
        }
        guard c.step >= 0, c.step <= config.steps, c.optimizer.step == c.step, c.rngCounter == UInt64(c.step) else {
            throw ShardError("checkpoint step \(c.step) (optimizer step \(c.optimizer.step)) is not resumable")
        }
        network = c.model
        optimizer = c.optimizer
        step = c.step
        if let m = try? JSONValue.parse(c.metricsLast), let loss = m["loss"]?.doubleValue,
            let g = m["grad_norm"]?.doubleValue, let lr = m["lr"]?.doubleValue
        {
            last = DenoiserStepMetrics(step: c.step, loss: loss, gradNorm: g, learningRate: lr)
        }
    }

    /// Fills row `b` of a batch for (index, Philox step): returns t. x0 on stream 2, t on stream 4, e on stream 1.
    @inline(__always)
    func drawExample(
        index: Int, philoxStep: UInt32, x0: UnsafeMutablePointer<Double>, noise: UnsafeMutablePointer<Double>
    ) -> Int {
        let T = config.schedule.steps
        var data = PhiloxStream(seed: config.seed, index: UInt32(index), step: philoxStep, stream: .dataDraw)
        _ = config.target.draw(&data, into: x0)
        var time = PhiloxStream(seed: config.seed, index: UInt32(index), step: philoxStep, stream: .timestep)
        let t = min(T - 1, Int(time.nextUniform() * Double(T)))
        var eps = PhiloxStream(seed: config.seed, index: UInt32(index), step: philoxStep, stream: .stepNoise)
        eps.fillNormals(UnsafeMutableBufferPointer(start: noise, count: config.target.dimension))
        return t
    }

    /// One Adam update on the batch of update number `step + 1`.
    @discardableResult
    public func trainStep() -> DenoiserStepMetrics {
        let k = step + 1
        let d = config.target.dimension
        let D = config.architecture.timeEmbedding
        let width = d + D
        let B = config.batch
        var x0 = [Double](repeating: 0, count: d)
        var e = [Double](repeating: 0, count: d)
        input.withUnsafeMutableBufferPointer { inp in
            noiseTarget.withUnsafeMutableBufferPointer { target in
                table.withUnsafeBufferPointer { tab in
                    x0.withUnsafeMutableBufferPointer { xp in
                        e.withUnsafeMutableBufferPointer { ep in
                            for b in 0..<B {
                                let t = drawExample(
                                    index: b, philoxStep: UInt32(k), x0: xp.baseAddress!, noise: ep.baseAddress!)
                                let row = inp.baseAddress! + b * width
                                let ra = sqrtAlphaBar[t], rb = sqrtOneMinusAlphaBar[t]
                                for c in 0..<d {
                                    row[c] = Float(ra * xp[c] + rb * ep[c])
                                    target[b * d + c] = Float(ep[c])
                                }
                                (row + d).update(from: tab.baseAddress! + t * D, count: D)
                            }
                        }
                    }
                }
            }
        }
        input.withUnsafeBufferPointer { inp in
            try! network.forward(inp, batch: B, workspace: &workspace, training: true)
        }
        // L = (1/B) sum |out - e|^2, dL/dout = 2 (out - e) / B.
        var loss = 0.0
        let scale = Float(2) / Float(B)
        workspace.withOutput { out in
            noiseTarget.withUnsafeBufferPointer { target in
                gradient.withUnsafeMutableBufferPointer { g in
                    for i in 0..<(B * d) {
                        let r = out[i] - target[i]
                        loss += Double(r) * Double(r)
                        g[i] = scale * r
                    }
                }
            }
        }
        loss /= Double(B)
        gradient.withUnsafeBufferPointer { g in
            try! network.backward(g, workspace: &workspace)
        }
        let norm: Double
        if let clip = config.gradClip {
            norm = network.clipGradientNorm(maxNorm: clip)
        } else {
            norm = network.gradientNorm()
        }
        let lr = optimizer.nextLearningRate
        optimizer.update(&network)
        step = k
        let m = DenoiserStepMetrics(step: k, loss: loss, gradNorm: norm, learningRate: lr)
        last = m
        return m
    }

    /// The network as a sampler noise model.
    public func noiseModel() throws -> NetworkNoiseModel {
        try NetworkNoiseModel(network: network, architecture: config.architecture, timesteps: config.schedule.steps)
    }

    /// Excess, per-bucket excess and the two evaluation losses on the fixed evaluation set (built on first use).
    public func evaluate() -> DenoiserEvaluation {
        if evalSet == nil { evalSet = DenoiserEvaluationSet(config: config) }
        return evalSet!.evaluate(try! noiseModel(), config: config)
    }

    /// The worker-ckpt/1 safetensors file of the current state (WORKLOADS.md §7): model, Adam m/v/step,
    /// `schedule.betas` F64 [T], `target.weights` F64 [K], `target.means` F64 [K, d], `target.stds` F64 [K];
    /// metadata rng_counter = step (the Philox step word of the last batch; the next update draws step + 1),
    /// `time_embedding`, `prediction_type` epsilon, `schedule` "linear:beta_start:beta_end:T".
    public func checkpoint() throws -> [UInt8] {
        var metrics = JSONObject()
        if let last {
            metrics["loss"] = .number(last.loss)
            metrics["grad_norm"] = .number(last.gradNorm)
            metrics["lr"] = .number(last.learningRate)
        }
        let t = config.target
        let s = config.schedule
        let ckpt = TrainingCheckpoint(
            model: network, optimizer: optimizer, seed: config.seed, rngCounter: UInt64(step), step: step,
            algo: Self.algorithmName, config: configText, metricsLast: JSONValue.object(metrics).render(),
            extraTensors: [
                try SafeTensor(name: "schedule.betas", float64: s.betas, shape: [s.steps]),
                try SafeTensor(name: "target.weights", float64: t.weights, shape: [t.componentCount]),
                try SafeTensor(
                    name: "target.means", float64: t.means.flatMap { $0 }, shape: [t.componentCount, t.dimension]),
                try SafeTensor(name: "target.stds", float64: t.stds, shape: [t.componentCount]),
            ],
            extraMetadata: [
                "time_embedding": String(config.architecture.timeEmbedding),
                "prediction_type": "epsilon",
                "schedule": "linear:\(s.betaStart):\(s.betaEnd):\(s.steps)",
                "input": "x,temb(t)",
            ])
        return try ckpt.safeTensorsFile().serialize()
    }
}

/// The fixed evaluation set: E triples (x0, t, e) at Philox step 0, with x_t and the exact eps*(x_t, t).
struct DenoiserEvaluationSet {
    let count: Int
    let points: [Double]  // x_t, [E, d]
    let timesteps: [Int]
    let noise: [Double]  // e, [E, d]
    let exact: [Double]  // eps*(x_t, t), [E, d]

    init(config: DenoiserTrainingConfig) {
        let d = config.target.dimension
        let E = config.evalSamples
        let T = config.schedule.steps
        var points = [Double](repeating: 0, count: E * d)
        var noise = points
        var exact = points
        var timesteps = [Int](repeating: 0, count: E)
        var mixtures = [NoisedMixture?](repeating: nil, count: T)
        var x0 = [Double](repeating: 0, count: d)
        var scratch = [Double](repeating: 0, count: config.target.componentCount)
        let seed = config.seed
        x0.withUnsafeMutableBufferPointer { xp in
            scratch.withUnsafeMutableBufferPointer { sp in
                points.withUnsafeMutableBufferPointer { pts in
                    noise.withUnsafeMutableBufferPointer { nz in
                        exact.withUnsafeMutableBufferPointer { ex in
                            for j in 0..<E {
                                var data = PhiloxStream(seed: seed, index: UInt32(j), step: 0, stream: .dataDraw)
                                _ = config.target.draw(&data, into: xp.baseAddress!)
                                var time = PhiloxStream(seed: seed, index: UInt32(j), step: 0, stream: .timestep)
                                let t = min(T - 1, Int(time.nextUniform() * Double(T)))
                                var eps = PhiloxStream(seed: seed, index: UInt32(j), step: 0, stream: .stepNoise)
                                let e = nz.baseAddress! + j * d
                                eps.fillNormals(UnsafeMutableBufferPointer(start: e, count: d))
                                let a = config.schedule.alphaBar[t]
                                let ra = a.squareRoot(), rb = (1 - a).squareRoot()
                                let x = pts.baseAddress! + j * d
                                for c in 0..<d { x[c] = ra * xp[c] + rb * e[c] }
                                if mixtures[t] == nil { mixtures[t] = config.target.noised(alphaBar: a) }
                                // eps* = -sqrt(1 - a) score = sqrt(1 - a) sum_k g_k (x - sqrt(a) mu_k) / v_k.
                                let out = ex.baseAddress! + j * d
                                mixtures[t]!.weightedResidual(UnsafePointer(x), into: out, scratch: sp.baseAddress!)
                                for c in 0..<d { out[c] *= rb }
                                timesteps[j] = t
                            }
                        }
                    }
                }
            }
        }
        self.count = E
        self.points = points
        self.timesteps = timesteps
        self.noise = noise
        self.exact = exact
    }

    func evaluate(_ model: NetworkNoiseModel, config: DenoiserTrainingConfig) -> DenoiserEvaluation {
        let d = config.target.dimension
        let K = DenoiserEvaluation.bucketCount
        var predicted = [Double](repeating: 0, count: count * d)
        // Rows grouped by timestep would need a reorder; the model takes one t per call, so run runs of equal t.
        points.withUnsafeBufferPointer { pts in
            predicted.withUnsafeMutableBufferPointer { out in
                var j = 0
                while j < count {
                    var end = j + 1
                    while end < count && timesteps[end] == timesteps[j] { end += 1 }
                    model.predictNoise(
                        pts.baseAddress! + j * d, count: end - j, t: timesteps[j], into: out.baseAddress! + j * d)
                    j = end
                }
            }
        }
        var excess = 0.0, loss = 0.0, lossExact = 0.0
        var bucketSum = [Double](repeating: 0, count: K)
        var bucketCount = [Int](repeating: 0, count: K)
        for j in 0..<count {
            var ex = 0.0, l = 0.0, le = 0.0
            for c in 0..<d {
                let i = j * d + c
                let p = predicted[i]
                ex += (p - exact[i]) * (p - exact[i])
                l += (noise[i] - p) * (noise[i] - p)
                le += (noise[i] - exact[i]) * (noise[i] - exact[i])
            }
            excess += ex
            loss += l
            lossExact += le
            let b = config.bucket(t: timesteps[j])
            bucketSum[b] += ex
            bucketCount[b] += 1
        }
        let n = Double(count)
        return DenoiserEvaluation(
            excess: excess / n,
            bucketExcess: (0..<K).map { bucketCount[$0] > 0 ? bucketSum[$0] / Double(bucketCount[$0]) : .nan },
            bucketCounts: bucketCount, evalLoss: loss / n, evalLossExact: lossExact / n)
    }
}
