// Multi-layer perceptrons with exact gradients (WORKLOADS.md §0).
//
// Layout follows torch.nn.Linear: layer l has weight [out, in] (row-major) and bias [out]; state-dict names are
// `layers.<l>.weight` / `layers.<l>.bias`. All parameters live in one flat array (weight then bias, layer by layer)
// and so do the gradients, which makes Adam, clipping and checkpoints single passes over contiguous memory.
//
// Forward: Z_l = X_l W_l^T (one gemm), then one fused pass Z_l += b_l, A_l = act(Z_l).
// Backward: G_l = dL/dZ_l; dW_l = G_l^T X_l and dX_l = G_l W_l (two gemm), db_l = G_l^T 1 (one gemv),
// G_{l-1} = dX_l * act'(Z_{l-1}). Every buffer lives in an `MLPWorkspace` sized once per batch capacity, so a
// training step allocates nothing.

/// A fully connected network: Linear, act, Linear, act, ..., Linear (the output layer has no activation).
public struct MLP<Scalar: TensorScalar>: Sendable, Equatable {
    /// [in, hidden..., out]; layer l maps sizes[l] -> sizes[l + 1].
    public let sizes: [Int]
    public let activation: Activation
    /// All weights and biases, layer by layer: W_0 (row-major [out, in]), b_0, W_1, b_1, ...
    public var parameters: [Scalar]
    /// dL/d(parameters), same layout.
    public var gradients: [Scalar]

    /// The Philox stream used for parameter initialisation (after the §0 streams 0-7).
    public static var initStream: UInt32 { 8 }

    public var layerCount: Int { sizes.count - 1 }
    public var inputSize: Int { sizes[0] }
    public var outputSize: Int { sizes[sizes.count - 1] }
    public var parameterCount: Int { parameters.count }

    /// PyTorch's default `nn.Linear` initialisation (kaiming_uniform with a = sqrt(5)): weight and bias uniform in
    /// [-1/sqrt(in), 1/sqrt(in)], drawn from Philox(seed; index = flat parameter index, step 0, stream 8).
    public init(sizes: [Int], activation: Activation, seed: UInt64) throws {
        try self.init(sizes: sizes, activation: activation, parameters: nil)
        for l in 0..<layerCount {
            let bound = 1 / Double(sizes[l]).squareRoot()
            for i in weightRange(l).lowerBound..<biasRange(l).upperBound {
                let w = Philox4x32.words(seed: seed, index: UInt64(i), step: 0, stream: Self.initStream)
                parameters[i] = Scalar((2 * Philox4x32.uniform(w.0) - 1) * bound)
            }
        }
    }

    /// A single `nn.Linear(inFeatures, outFeatures)`: weight [out, in], bias [out], no activation.
    public static func linear(inFeatures: Int, outFeatures: Int, seed: UInt64) throws -> MLP {
        try MLP(sizes: [inFeatures, outFeatures], activation: .identity, seed: seed)
    }

    /// A network with the given flat parameters (throws if the count does not match `sizes`).
    public init(sizes: [Int], activation: Activation, parameters: [Scalar]) throws {
        try self.init(sizes: sizes, activation: activation, parameters: Optional(parameters))
    }

    private init(sizes: [Int], activation: Activation, parameters: [Scalar]?) throws {
        guard sizes.count >= 2, sizes.allSatisfy({ $0 > 0 }) else {
            throw ComputeError(.invalidArgument, "MLP: sizes \(sizes) need at least two positive entries")
        }
        self.sizes = sizes
        self.activation = activation
        var n = 0
        for l in 0..<(sizes.count - 1) { n += sizes[l + 1] * sizes[l] + sizes[l + 1] }
        if let parameters {
            guard parameters.count == n else {
                throw ComputeError(.invalidShape, "MLP \(sizes): \(parameters.count) parameters, expected \(n)")
            }
            self.parameters = parameters
        } else {
            self.parameters = [Scalar](repeating: 0, count: n)
        }
        self.gradients = [Scalar](repeating: 0, count: n)
    }

    // MARK: Parameter views

    /// Offset of layer l's weight in `parameters`.
    public func weightRange(_ l: Int) -> Range<Int> {
        precondition(l >= 0 && l < layerCount, "MLP: layer \(l) outside 0..<\(layerCount)")
        var o = 0
        for j in 0..<l { o += sizes[j + 1] * sizes[j] + sizes[j + 1] }
        return o..<(o + sizes[l + 1] * sizes[l])
    }

    public func biasRange(_ l: Int) -> Range<Int> {
        let w = weightRange(l)
        return w.upperBound..<(w.upperBound + sizes[l + 1])
    }

    /// (state-dict name, range in `parameters`, shape) for every tensor, in layer order.
    public var namedParameters: [(name: String, range: Range<Int>, shape: [Int])] {
        (0..<layerCount).flatMap { l in
            [
                (name: "layers.\(l).weight", range: weightRange(l), shape: [sizes[l + 1], sizes[l]]),
                (name: "layers.\(l).bias", range: biasRange(l), shape: [sizes[l + 1]]),
            ]
        }
    }

    public func weight(_ l: Int) -> Tensor<Scalar> {
        try! Tensor(shape: [sizes[l + 1], sizes[l]], scalars: Array(parameters[weightRange(l)]))
    }

    public func bias(_ l: Int) -> Tensor<Scalar> {
        try! Tensor(shape: [sizes[l + 1]], scalars: Array(parameters[biasRange(l)]))
    }

    public func weightGradient(_ l: Int) -> Tensor<Scalar> {
        try! Tensor(shape: [sizes[l + 1], sizes[l]], scalars: Array(gradients[weightRange(l)]))
    }

    public func biasGradient(_ l: Int) -> Tensor<Scalar> {
        try! Tensor(shape: [sizes[l + 1]], scalars: Array(gradients[biasRange(l)]))
    }

    public mutating func setWeight(_ l: Int, _ w: Tensor<Scalar>) throws {
        guard w.shape == [sizes[l + 1], sizes[l]] else {
            throw ComputeError(.shapeMismatch, "setWeight(\(l)): \(w.shape), expected [\(sizes[l + 1]), \(sizes[l])]")
        }
        parameters.replaceSubrange(weightRange(l), with: w.scalars)
    }

    public mutating func setBias(_ l: Int, _ b: Tensor<Scalar>) throws {
        guard b.shape == [sizes[l + 1]] else {
            throw ComputeError(.shapeMismatch, "setBias(\(l)): \(b.shape), expected [\(sizes[l + 1])]")
        }
        parameters.replaceSubrange(biasRange(l), with: b.scalars)
    }

    // MARK: Gradients

    public mutating func zeroGradients() {
        gradients.withUnsafeMutableBufferPointer { g in
            if g.count > 0 { g.baseAddress!.update(repeating: 0, count: g.count) }
        }
    }

    /// The global L2 norm of all gradients (accumulated in Double).
    public func gradientNorm() -> Double {
        gradients.withUnsafeBufferPointer { Scalar.kernelSumOfSquares($0.baseAddress!, count: $0.count) }
            .squareRoot()
    }

    /// torch.nn.utils.clip_grad_norm_ semantics: scale all gradients by min(1, maxNorm / (norm + 1e-6)).
    /// Returns the norm before clipping.
    @discardableResult
    public mutating func clipGradientNorm(maxNorm: Double) -> Double {
        let norm = gradientNorm()
        let coef = maxNorm / (norm + 1e-6)
        if coef < 1 {
            gradients.withUnsafeMutableBufferPointer {
                Scalar.kernelScale($0.baseAddress!, count: $0.count, by: Scalar(coef))
            }
        }
        return norm
    }

    // MARK: Forward / backward

    /// Scratch buffers for batches of up to `batchCapacity` rows.
    public func makeWorkspace(batchCapacity: Int) -> MLPWorkspace<Scalar> {
        MLPWorkspace(sizes: sizes, batchCapacity: batchCapacity)
    }

    /// Forward pass over `input` ([B, in], B <= capacity). With `training: true` (default) the pre-activations are
    /// kept for `backward`; `training: false` runs the cheaper in-place inference pass. Read the result with
    /// `workspace.output` or `workspace.withOutput`.
    public func forward(_ input: Tensor<Scalar>, workspace: inout MLPWorkspace<Scalar>, training: Bool = true) throws {
        guard input.rank == 2, input.shape[1] == inputSize else {
            throw ComputeError(.shapeMismatch, "MLP.forward: input \(input.shape), expected [B, \(inputSize)]")
        }
        try input.scalars.withUnsafeBufferPointer { x in
            try forward(x, batch: input.shape[0], workspace: &workspace, training: training)
        }
    }

    /// Forward pass over a raw row-major [batch, in] buffer.
    public func forward(
        _ input: UnsafeBufferPointer<Scalar>, batch: Int, workspace ws: inout MLPWorkspace<Scalar>,
        training: Bool = true
    ) throws {
        guard ws.sizes == sizes else {
            throw ComputeError(.shapeMismatch, "MLP.forward: workspace for \(ws.sizes), model is \(sizes)")
        }
        guard batch >= 0, batch <= ws.batchCapacity, input.count == batch * inputSize else {
            throw ComputeError(
                .shapeMismatch,
                "MLP.forward: \(input.count) inputs for batch \(batch) x \(inputSize) (capacity \(ws.batchCapacity))")
        }
        ws.batch = batch
        ws.trainingPass = training
        let layout = ws.layout
        let sizes = self.sizes, activation = self.activation, L = layerCount
        parameters.withUnsafeBufferPointer { params in
            ws.storage.withUnsafeMutableBufferPointer { buf in
                let base = buf.baseAddress!, p = params.baseAddress!
                if batch > 0 { (base + layout.input).update(from: input.baseAddress!, count: batch * sizes[0]) }
                var x = UnsafePointer(base + layout.input)
                var wOffset = 0
                for l in 0..<L {
                    let (k, n) = (sizes[l], sizes[l + 1])
                    let w = p + wOffset, b = p + wOffset + n * k
                    wOffset += n * k + n
                    let z = base + (training ? layout.z[l] : layout.inference[l % 2])
                    let out = (training && l < L - 1) ? base + layout.a[l] : z
                    if batch > 0 {
                        Scalar.gemm(
                            transA: false, transB: true, m: batch, n: n, k: k, alpha: 1, a: x, lda: k, b: w, ldb: k,
                            beta: 0, c: z, ldc: n)
                        Scalar.kernelBiasActivation(
                            z: z, bias: b, out: out, rows: batch, cols: n,
                            activation: l < L - 1 ? activation : .identity)
                    }
                    x = UnsafePointer(out)
                }
                ws.outputOffset = x - UnsafePointer(base)
            }
        }
    }

    /// Backward pass for the last `forward(training: true)`: `gradOutput` = dL/d(output), [B, out]. Writes the
    /// parameter gradients (adds to them with `accumulate: true`, as PyTorch does). With `inputGradient: true`
    /// dL/d(input) is left in `workspace.inputGradient`.
    public mutating func backward(
        _ gradOutput: Tensor<Scalar>, workspace: inout MLPWorkspace<Scalar>, accumulate: Bool = false,
        inputGradient: Bool = false
    ) throws {
        guard gradOutput.shape == [workspace.batch, outputSize] else {
            throw ComputeError(
                .shapeMismatch, "MLP.backward: gradOutput \(gradOutput.shape), expected [\(workspace.batch), \(outputSize)]")
        }
        try gradOutput.scalars.withUnsafeBufferPointer { g in
            try backward(g, workspace: &workspace, accumulate: accumulate, inputGradient: inputGradient)
        }
    }

    /// Backward from a raw [batch, out] gradient buffer.
    public mutating func backward(
        _ gradOutput: UnsafeBufferPointer<Scalar>, workspace ws: inout MLPWorkspace<Scalar>,
        accumulate: Bool = false, inputGradient: Bool = false
    ) throws {
        guard ws.sizes == sizes, ws.trainingPass else {
            throw ComputeError(.invalidArgument, "MLP.backward: needs a forward(training: true) on this workspace first")
        }
        let batch = ws.batch
        guard gradOutput.count == batch * outputSize else {
            throw ComputeError(.shapeMismatch, "MLP.backward: \(gradOutput.count) gradients for [\(batch), \(outputSize)]")
        }
        let layout = ws.layout
        let sizes = self.sizes, activation = self.activation, L = layerCount
        let beta: Scalar = accumulate ? 1 : 0
        var inputGradOffset = -1
        parameters.withUnsafeBufferPointer { params in
            gradients.withUnsafeMutableBufferPointer { grads in
                ws.storage.withUnsafeMutableBufferPointer { buf in
                    let base = buf.baseAddress!, p = params.baseAddress!, gp = grads.baseAddress!
                    var gCur = base + layout.grad[0], gNext = base + layout.grad[1]
                    if batch > 0 { gCur.update(from: gradOutput.baseAddress!, count: batch * sizes[L]) }
                    var wOffset = 0
                    for j in 0..<L { wOffset += sizes[j + 1] * sizes[j] + sizes[j + 1] }
                    for l in stride(from: L - 1, through: 0, by: -1) {
                        let (k, n) = (sizes[l], sizes[l + 1])
                        wOffset -= n * k + n
                        let w = p + wOffset
                        let dW = gp + wOffset, db = gp + wOffset + n * k
                        let x = UnsafePointer(base + (l == 0 ? layout.input : layout.a[l - 1]))
                        if batch == 0 {
                            if !accumulate { dW.update(repeating: 0, count: n * k + n) }
                            continue
                        }
                        Scalar.gemm(
                            transA: true, transB: false, m: n, n: k, k: batch, alpha: 1, a: gCur, lda: n, b: x,
                            ldb: k, beta: beta, c: dW, ldc: k)
                        Scalar.gemv(
                            trans: true, m: batch, n: n, alpha: 1, a: gCur, lda: n, x: base + layout.ones, beta: beta,
                            y: db)
                        if l > 0 || inputGradient {
                            Scalar.gemm(
                                transA: false, transB: false, m: batch, n: k, k: n, alpha: 1, a: gCur, lda: n, b: w,
                                ldb: k, beta: 0, c: gNext, ldc: k)
                            if l > 0 {
                                Scalar.kernelActivationBackward(
                                    z: base + layout.z[l - 1], grad: gNext, count: batch * k, activation: activation)
                            }
                            swap(&gCur, &gNext)
                        }
                    }
                    if inputGradient { inputGradOffset = gCur - base }
                }
            }
        }
        ws.inputGradientOffset = inputGradient ? inputGradOffset : nil
    }

    /// Allocating convenience: inference-mode forward of `input` with a temporary workspace.
    public func predict(_ input: Tensor<Scalar>) throws -> Tensor<Scalar> {
        guard input.rank == 2 else {
            throw ComputeError(.shapeMismatch, "MLP.predict: input \(input.shape), expected [B, \(inputSize)]")
        }
        var ws = makeWorkspace(batchCapacity: input.shape[0])
        try forward(input, workspace: &ws, training: false)
        return ws.output
    }
}

/// Preallocated buffers for one MLP shape and a maximum batch. Not shared between threads: one per compute thread.
public struct MLPWorkspace<Scalar: TensorScalar>: Sendable {
    struct Layout: Sendable {
        var input = 0
        var z: [Int] = []
        var a: [Int] = []
        var inference: [Int] = [0, 0]
        var grad: [Int] = [0, 0]
        var ones = 0
        var total = 0
    }

    public let sizes: [Int]
    public let batchCapacity: Int
    /// Rows in the last forward pass.
    public internal(set) var batch = 0
    var trainingPass = false
    var storage: [Scalar]
    let layout: Layout
    var outputOffset = 0
    var inputGradientOffset: Int?

    init(sizes: [Int], batchCapacity: Int) {
        precondition(batchCapacity >= 0)
        self.sizes = sizes
        self.batchCapacity = batchCapacity
        let B = batchCapacity
        let maxWidth = sizes.max()!
        var lay = Layout()
        var o = 0
        func take(_ n: Int) -> Int {
            defer { o += n }
            return o
        }
        lay.input = take(B * sizes[0])
        for l in 0..<(sizes.count - 1) { lay.z.append(take(B * sizes[l + 1])) }
        for l in 0..<(sizes.count - 2) { lay.a.append(take(B * sizes[l + 1])) }
        lay.grad = [take(B * maxWidth), take(B * maxWidth)]
        // The inference pass ping-pongs through the two gradient buffers (it never needs gradients).
        lay.inference = lay.grad
        lay.ones = take(B)
        lay.total = o
        layout = lay
        storage = [Scalar](repeating: 0, count: o)
        for i in 0..<B { storage[lay.ones + i] = 1 }
    }

    /// The output of the last forward pass, [batch, out] (a copy).
    public var output: Tensor<Scalar> {
        let n = batch * sizes[sizes.count - 1]
        return try! Tensor(shape: [batch, sizes[sizes.count - 1]], scalars: Array(storage[outputOffset..<(outputOffset + n)]))
    }

    /// Reads the output of the last forward pass without copying.
    public func withOutput<R>(_ body: (UnsafeBufferPointer<Scalar>) throws -> R) rethrows -> R {
        let n = batch * sizes[sizes.count - 1]
        return try storage.withUnsafeBufferPointer { try body(UnsafeBufferPointer(rebasing: $0[outputOffset..<(outputOffset + n)])) }
    }

    /// dL/d(input) of the last `backward(inputGradient: true)`, [batch, in].
    public var inputGradient: Tensor<Scalar>? {
        guard let o = inputGradientOffset else { return nil }
        let n = batch * sizes[0]
        return try! Tensor(shape: [batch, sizes[0]], scalars: Array(storage[o..<(o + n)]))
    }
}
