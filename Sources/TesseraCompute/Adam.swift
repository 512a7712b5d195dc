// Adam and AdamW with PyTorch's exact semantics (torch.optim.Adam / AdamW, amsgrad=False, maximize=False):
//
//   k += 1
//   AdamW: p *= 1 - lr wd                      Adam: g = g + wd p
//   m = lerp(m, g, 1 - b1)                     v = v b2 + (1 - b2) g g
//   p = p + (-lr / (1 - b1^k)) m / (sqrt(v) / sqrt(1 - b2^k) + eps)
//
// The per-step scalars are computed in Double (PyTorch computes them in Python) and rounded to the parameter type;
// the element formulas keep ATen's evaluation order (see KernelImpl.adam). Checked against PyTorch-generated
// fixtures in Tests/TesseraComputeTests/Fixtures/adam_reference.json.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Learning-rate multiplier as a function of the 1-based update number k (the k-th call to `Adam.update`).
public enum LRSchedule: Sendable, Equatable {
    /// factor 1.
    case constant
    /// factor min(1, k / warmupSteps).
    case linearWarmup(warmupSteps: Int)
    /// min(1, k / warmupSteps) during warm-up, then minFactor + (1 - minFactor) (1 + cos(pi p)) / 2 with
    /// p = min(1, (k - warmupSteps) / (totalSteps - warmupSteps)).
    case cosine(warmupSteps: Int, totalSteps: Int, minFactor: Double)

    public func factor(step k: Int) -> Double {
        switch self {
        case .constant:
            return 1
        case .linearWarmup(let w):
            return w <= 0 ? 1 : Swift.min(1, Double(k) / Double(w))
        case .cosine(let w, let total, let minFactor):
            if w > 0 && k < w { return Double(k) / Double(w) }
            let span = Swift.max(1, total - w)
            let p = Swift.min(1, Swift.max(0, Double(k - w) / Double(span)))
            return minFactor + (1 - minFactor) * 0.5 * (1 + cos(Double.pi * p))
        }
    }

    /// A compact text form for checkpoint metadata: "constant", "linear_warmup:W", "cosine:W:T:minFactor".
    public var text: String {
        switch self {
        case .constant: "constant"
        case .linearWarmup(let w): "linear_warmup:\(w)"
        case .cosine(let w, let t, let m): "cosine:\(w):\(t):\(m)"
        }
    }

    public init(text: String) throws {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        switch (parts.first, parts.count) {
        case ("constant", 1): self = .constant
        case ("linear_warmup", 2):
            guard let w = Int(parts[1]) else { throw ComputeError(.invalidArgument, "LRSchedule: \"\(text)\"") }
            self = .linearWarmup(warmupSteps: w)
        case ("cosine", 4):
            guard let w = Int(parts[1]), let t = Int(parts[2]), let m = Double(parts[3]) else {
                throw ComputeError(.invalidArgument, "LRSchedule: \"\(text)\"")
            }
            self = .cosine(warmupSteps: w, totalSteps: t, minFactor: m)
        default:
            throw ComputeError(.invalidArgument, "LRSchedule: unknown schedule \"\(text)\"")
        }
    }
}

/// Hyper-parameters. Defaults are PyTorch's (Adam: wd 0; AdamW: wd 0.01).
public struct AdamConfiguration: Sendable, Equatable {
    public var learningRate: Double
    public var beta1: Double
    public var beta2: Double
    public var eps: Double
    public var weightDecay: Double
    /// true = AdamW (decoupled decay), false = Adam (L2 added to the gradient).
    public var decoupledWeightDecay: Bool
    public var schedule: LRSchedule

    public init(
        learningRate: Double = 1e-3, beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8,
        weightDecay: Double = 0, decoupledWeightDecay: Bool = false, schedule: LRSchedule = .constant
    ) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        self.decoupledWeightDecay = decoupledWeightDecay
        self.schedule = schedule
    }

    public static func adam(
        learningRate: Double = 1e-3, betas: (Double, Double) = (0.9, 0.999), eps: Double = 1e-8,
        weightDecay: Double = 0, schedule: LRSchedule = .constant
    ) -> AdamConfiguration {
        AdamConfiguration(
            learningRate: learningRate, beta1: betas.0, beta2: betas.1, eps: eps, weightDecay: weightDecay,
            decoupledWeightDecay: false, schedule: schedule)
    }

    public static func adamW(
        learningRate: Double = 1e-3, betas: (Double, Double) = (0.9, 0.999), eps: Double = 1e-8,
        weightDecay: Double = 0.01, schedule: LRSchedule = .constant
    ) -> AdamConfiguration {
        AdamConfiguration(
            learningRate: learningRate, beta1: betas.0, beta2: betas.1, eps: eps, weightDecay: weightDecay,
            decoupledWeightDecay: true, schedule: schedule)
    }

    func validate() throws {
        guard learningRate >= 0, (0..<1).contains(beta1), (0..<1).contains(beta2), eps >= 0, weightDecay >= 0 else {
            throw ComputeError(.invalidArgument, "Adam: invalid hyper-parameters \(self)")
        }
    }
}

/// Adam/AdamW state over one flat parameter vector (e.g. `MLP.parameters`).
public struct Adam<Scalar: TensorScalar>: Sendable, Equatable {
    public var configuration: AdamConfiguration
    /// Updates done so far (PyTorch's `state["step"]`).
    public private(set) var step: Int
    /// First moment, PyTorch's `exp_avg`.
    public private(set) var expAvg: [Scalar]
    /// Second moment, PyTorch's `exp_avg_sq`.
    public private(set) var expAvgSq: [Scalar]

    public init(configuration: AdamConfiguration, parameterCount: Int) throws {
        try configuration.validate()
        self.configuration = configuration
        self.step = 0
        self.expAvg = [Scalar](repeating: 0, count: parameterCount)
        self.expAvgSq = [Scalar](repeating: 0, count: parameterCount)
    }

    /// Restores a saved state.
    public init(configuration: AdamConfiguration, step: Int, expAvg: [Scalar], expAvgSq: [Scalar]) throws {
        try configuration.validate()
        guard step >= 0, expAvg.count == expAvgSq.count else {
            throw ComputeError(.invalidArgument, "Adam: step \(step), moments \(expAvg.count)/\(expAvgSq.count)")
        }
        self.configuration = configuration
        self.step = step
        self.expAvg = expAvg
        self.expAvgSq = expAvgSq
    }

    /// The learning rate the next update will use.
    public var nextLearningRate: Double {
        configuration.learningRate * configuration.schedule.factor(step: step + 1)
    }

    /// The scalars of update number k (1-based).
    public func coefficients(step k: Int) -> AdamCoefficients {
        let c = configuration
        let lr = c.learningRate * c.schedule.factor(step: k)
        let bc1 = 1 - pow(c.beta1, Double(k))
        let bc2 = 1 - pow(c.beta2, Double(k))
        return AdamCoefficients(
            lerpWeight: 1 - c.beta1, beta2: c.beta2, oneMinusBeta2: 1 - c.beta2,
            biasCorrection2Sqrt: bc2.squareRoot(), eps: c.eps, stepSize: -(lr / bc1),
            decoupledDecayFactor: c.decoupledWeightDecay && c.weightDecay != 0 ? 1 - lr * c.weightDecay : nil,
            l2WeightDecay: !c.decoupledWeightDecay && c.weightDecay != 0 ? c.weightDecay : nil)
    }

    /// One update of `parameters` with `gradients` (same count as the state). No allocation.
    public mutating func update(_ parameters: inout [Scalar], gradients: [Scalar]) {
        precondition(
            parameters.count == expAvg.count && gradients.count == expAvg.count,
            "Adam.update: \(parameters.count) parameters, \(gradients.count) gradients, state for \(expAvg.count)")
        step += 1
        let coefficients = coefficients(step: step)
        let n = expAvg.count
        if n == 0 { return }
        parameters.withUnsafeMutableBufferPointer { p in
            gradients.withUnsafeBufferPointer { g in
                expAvg.withUnsafeMutableBufferPointer { m in
                    expAvgSq.withUnsafeMutableBufferPointer { v in
                        Scalar.kernelAdam(
                            params: p.baseAddress!, grads: g.baseAddress!, expAvg: m.baseAddress!,
                            expAvgSq: v.baseAddress!, count: n, coefficients: coefficients)
                    }
                }
            }
        }
    }

    /// One update of a model from its current gradients.
    public mutating func update(_ model: inout MLP<Scalar>) {
        update(&model.parameters, gradients: model.gradients)
    }
}
