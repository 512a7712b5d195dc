// Training checkpoints as safetensors files (WORKLOADS.md §7).
//
// Tensors: `layers.N.weight` [out, in] and `layers.N.bias` [out] (F32 or F64, PyTorch state-dict names, so
// `model.load_state_dict(safetensors.torch.load_file(path), strict=False)` works for a module with an
// `nn.ModuleList` called `layers`), `optim.layers.N.weight.exp_avg` / `.exp_avg_sq` (same dtype), `optim.step` I64
// shape [], plus any caller tensors (`ref.*`, `schedule.betas`, `target.*`).
// `__metadata__`: format "worker-ckpt/1", algo, config (JSON text), seed, rng_counter, step, metrics_last, and what is
// needed to rebuild the model and optimizer: mlp.sizes, mlp.activation, optim.kind, optim.lr, optim.beta1,
// optim.beta2, optim.eps, optim.weight_decay, optim.schedule. Doubles are written in Swift's shortest round-trip
// form, so a restore is bit-exact.

public struct TrainingCheckpoint<Scalar: TensorScalar>: Sendable, Equatable {
    public static var format: String { "worker-ckpt/1" }

    public var model: MLP<Scalar>
    public var optimizer: Adam<Scalar>
    /// The job seed (Philox key).
    public var seed: UInt64
    /// The caller's Philox position to continue from (e.g. the next step index).
    public var rngCounter: UInt64
    /// Training steps completed.
    public var step: Int
    public var algo: String
    /// The job configuration, as JSON text.
    public var config: String
    /// The last metrics, as JSON text.
    public var metricsLast: String
    /// Extra tensors saved alongside (names must not start with "layers." or "optim.").
    public var extraTensors: [SafeTensor]
    /// Extra metadata entries (keys must not collide with the reserved ones above).
    public var extraMetadata: [String: String]

    public init(
        model: MLP<Scalar>, optimizer: Adam<Scalar>, seed: UInt64, rngCounter: UInt64, step: Int,
        algo: String, config: String = "{}", metricsLast: String = "{}",
        extraTensors: [SafeTensor] = [], extraMetadata: [String: String] = [:]
    ) {
        self.model = model
        self.optimizer = optimizer
        self.seed = seed
        self.rngCounter = rngCounter
        self.step = step
        self.algo = algo
        self.config = config
        self.metricsLast = metricsLast
        self.extraTensors = extraTensors
        self.extraMetadata = extraMetadata
    }

    static func scalarTensor(name: String, values: ArraySlice<Scalar>, shape: [Int]) throws -> SafeTensor {
        if Scalar.self == Float.self {
            return try SafeTensor(name: name, float32: values.map { Float($0) }, shape: shape)
        }
        return try SafeTensor(name: name, float64: values.map { Double($0) }, shape: shape)
    }

    static func values(of t: SafeTensor) throws -> [Scalar] {
        guard t.dtype == Scalar.safeTensorDType else {
            throw ComputeError(.checkpoint, "tensor \(t.name) is \(t.dtype.rawValue), expected \(Scalar.safeTensorDType.rawValue)")
        }
        if Scalar.self == Float.self { return try t.float32Values().map { Scalar($0) } }
        return try t.float64Values().map { Scalar($0) }
    }

    /// The safetensors file for this checkpoint.
    public func safeTensorsFile() throws -> SafeTensorsFile {
        var tensors: [SafeTensor] = []
        for (name, range, shape) in model.namedParameters {
            tensors.append(try Self.scalarTensor(name: name, values: model.parameters[range], shape: shape))
            tensors.append(
                try Self.scalarTensor(name: "optim.\(name).exp_avg", values: optimizer.expAvg[range], shape: shape))
            tensors.append(
                try Self.scalarTensor(name: "optim.\(name).exp_avg_sq", values: optimizer.expAvgSq[range], shape: shape))
        }
        tensors.append(try SafeTensor(name: "optim.step", int64: [Int64(optimizer.step)], shape: []))
        for t in extraTensors {
            guard !t.name.hasPrefix("layers."), !t.name.hasPrefix("optim.") else {
                throw ComputeError(.checkpoint, "extra tensor name \(t.name) uses a reserved prefix")
            }
            tensors.append(t)
        }
        let c = optimizer.configuration
        var meta: [String: String] = [
            "format": Self.format, "algo": algo, "config": config, "seed": String(seed),
            "rng_counter": String(rngCounter), "step": String(step), "metrics_last": metricsLast,
            "mlp.sizes": model.sizes.map(String.init).joined(separator: ","),
            "mlp.activation": model.activation.rawValue,
            "optim.kind": c.decoupledWeightDecay ? "adamw" : "adam",
            "optim.lr": String(c.learningRate), "optim.beta1": String(c.beta1), "optim.beta2": String(c.beta2),
            "optim.eps": String(c.eps), "optim.weight_decay": String(c.weightDecay), "optim.schedule": c.schedule.text,
        ]
        for (k, v) in extraMetadata {
            guard meta[k] == nil else { throw ComputeError(.checkpoint, "extra metadata key \(k) is reserved") }
            meta[k] = v
        }
        return SafeTensorsFile(tensors: tensors, metadata: meta)
    }

    /// Rebuilds a checkpoint from a file written by `safeTensorsFile()`; throws `.checkpoint` naming what is missing.
    public init(file: SafeTensorsFile) throws {
        let m = file.metadata
        func meta(_ key: String) throws -> String {
            guard let v = m[key] else { throw ComputeError(.checkpoint, "metadata \"\(key)\" is missing") }
            return v
        }
        func number<T: LosslessStringConvertible>(_ key: String, _: T.Type = T.self) throws -> T {
            guard let v = T(try meta(key)) else { throw ComputeError(.checkpoint, "metadata \"\(key)\" is not a number") }
            return v
        }
        guard try meta("format") == Self.format else {
            throw ComputeError(.checkpoint, "format \(m["format"] ?? "") is not \(Self.format)")
        }
        let sizes = try meta("mlp.sizes").split(separator: ",").map { s -> Int in
            guard let v = Int(s) else { throw ComputeError(.checkpoint, "metadata mlp.sizes is malformed") }
            return v
        }
        guard let activation = Activation(rawValue: try meta("mlp.activation")) else {
            throw ComputeError(.checkpoint, "metadata mlp.activation is unknown")
        }
        var model = try MLP<Scalar>(sizes: sizes, activation: activation, seed: 0)
        var expAvg = [Scalar](repeating: 0, count: model.parameterCount)
        var expAvgSq = expAvg
        func load(_ name: String, _ range: Range<Int>, _ shape: [Int], into dest: inout [Scalar]) throws {
            guard let t = file[name] else { throw ComputeError(.checkpoint, "tensor \(name) is missing") }
            guard t.shape == shape else {
                throw ComputeError(.checkpoint, "tensor \(name) has shape \(t.shape), expected \(shape)")
            }
            dest.replaceSubrange(range, with: try Self.values(of: t))
        }
        for (name, range, shape) in model.namedParameters {
            try load(name, range, shape, into: &model.parameters)
            try load("optim.\(name).exp_avg", range, shape, into: &expAvg)
            try load("optim.\(name).exp_avg_sq", range, shape, into: &expAvgSq)
        }
        guard let stepTensor = file["optim.step"], stepTensor.shape == [], let optimStep = try? stepTensor.int64Values().first
        else { throw ComputeError(.checkpoint, "tensor optim.step (I64, shape []) is missing or malformed") }
        let kind = try meta("optim.kind")
        guard kind == "adam" || kind == "adamw" else { throw ComputeError(.checkpoint, "optim.kind \(kind) unknown") }
        let configuration = AdamConfiguration(
            learningRate: try number("optim.lr"), beta1: try number("optim.beta1"), beta2: try number("optim.beta2"),
            eps: try number("optim.eps"), weightDecay: try number("optim.weight_decay"),
            decoupledWeightDecay: kind == "adamw", schedule: try LRSchedule(text: try meta("optim.schedule")))
        self.model = model
        self.optimizer = try Adam(
            configuration: configuration, step: Int(optimStep), expAvg: expAvg, expAvgSq: expAvgSq)
        self.seed = try number("seed")
        self.rngCounter = try number("rng_counter")
        self.step = try number("step")
        self.algo = try meta("algo")
        self.config = try meta("config")
        self.metricsLast = try meta("metrics_last")
        self.extraTensors = file.tensors.filter { !$0.name.hasPrefix("layers.") && !$0.name.hasPrefix("optim.") }
        let reserved: Set<String> = [
            "format", "algo", "config", "seed", "rng_counter", "step", "metrics_last", "mlp.sizes", "mlp.activation",
            "optim.kind", "optim.lr", "optim.beta1", "optim.beta2", "optim.eps", "optim.weight_decay", "optim.schedule",
        ]
        self.extraMetadata = m.filter { !reserved.contains($0.key) }
    }

    /// Writes the checkpoint atomically (tmp + fsync + rename).
    public func write(toPath path: String) throws {
        try safeTensorsFile().write(toPath: path)
    }

    public static func read(path: String) throws -> TrainingCheckpoint {
        try TrainingCheckpoint(file: SafeTensorsFile.read(path: path))
    }

    /// Bitwise equality of every float (so -0 != +0 and NaN payloads count), plus all other fields.
    public static func == (a: TrainingCheckpoint, b: TrainingCheckpoint) -> Bool {
        func same(_ x: [Scalar], _ y: [Scalar]) -> Bool {
            x.count == y.count
                && zip(x, y).allSatisfy {
                    $0.sign == $1.sign && $0.exponentBitPattern == $1.exponentBitPattern
                        && $0.significandBitPattern == $1.significandBitPattern
                }
        }
        return a.model.sizes == b.model.sizes && a.model.activation == b.model.activation
            && same(a.model.parameters, b.model.parameters)
            && a.optimizer.configuration == b.optimizer.configuration && a.optimizer.step == b.optimizer.step
            && same(a.optimizer.expAvg, b.optimizer.expAvg) && same(a.optimizer.expAvgSq, b.optimizer.expAvgSq)
            && a.seed == b.seed && a.rngCounter == b.rngCounter && a.step == b.step && a.algo == b.algo
            && a.config == b.config && a.metricsLast == b.metricsLast && a.extraTensors == b.extraTensors
            && a.extraMetadata == b.extraMetadata
    }
}
