import Testing
import TesseraCompute

/// Central finite differences on the Float64 path: every layer (Linear through MLP), activation and loss.
/// Relative error |analytic - numeric| / max(1, |analytic|, |numeric|) must be below 1e-6 (h = 1e-6 gives ~1e-9).
@Suite struct GradientCheckTests {
    static let h = 1e-6
    static let tolerance = 1e-6

    static func normals(_ n: Int, seed: UInt64, stream: UInt32 = 2) -> [Double] {
        var s = PhiloxStream(seed: seed, index: 0, step: 0, stream: stream)
        return s.normals(n)
    }

    static func relErr(_ a: Double, _ b: Double) -> Double { abs(a - b) / max(1, abs(a), abs(b)) }

    /// A scalar objective of the MLP output so that dL/dY is a fixed, non-trivial tensor: L = sum(Y * R).
    static func objective(_ mlp: MLP<Double>, _ x: Tensor<Double>, _ r: Tensor<Double>) throws -> Double {
        try (mlp.predict(x) * r).sum()
    }

    @Test(arguments: [Activation.silu, .relu, .identity])
    func mlpParametersAndInput(activation: Activation) throws {
        let sizes = [5, 7, 6, 3]
        var mlp = try MLP<Double>(sizes: sizes, activation: activation, seed: 3)
        let batch = 4
        // For ReLU keep pre-activations away from the kink: the FD step must not cross 0.
        let x = try Tensor<Double>(shape: [batch, 5], scalars: Self.normals(batch * 5, seed: 1))
        let r = try Tensor<Double>(shape: [batch, 3], scalars: Self.normals(batch * 3, seed: 2))
        var ws = mlp.makeWorkspace(batchCapacity: batch)
        try mlp.forward(x, workspace: &ws)
        try mlp.backward(r, workspace: &ws, inputGradient: true)
        let analytic = mlp.gradients
        let inputGrad = ws.inputGradient!
        var worst = 0.0
        for i in 0..<mlp.parameterCount {
            let saved = mlp.parameters[i]
            mlp.parameters[i] = saved + Self.h
            let up = try Self.objective(mlp, x, r)
            mlp.parameters[i] = saved - Self.h
            let down = try Self.objective(mlp, x, r)
            mlp.parameters[i] = saved
            worst = max(worst, Self.relErr(analytic[i], (up - down) / (2 * Self.h)))
        }
        #expect(worst < Self.tolerance, "parameter gradient error \(worst) for \(activation)")
        var worstX = 0.0
        for i in 0..<x.count {
            var xp = x, xm = x
            xp.scalars[i] += Self.h
            xm.scalars[i] -= Self.h
            let numeric = (try Self.objective(mlp, xp, r) - Self.objective(mlp, xm, r)) / (2 * Self.h)
            worstX = max(worstX, Self.relErr(inputGrad.scalars[i], numeric))
        }
        #expect(worstX < Self.tolerance, "input gradient error \(worstX) for \(activation)")

        // Accumulation adds, as PyTorch's .grad does.
        try mlp.forward(x, workspace: &ws)
        try mlp.backward(r, workspace: &ws, accumulate: true)
        #expect(zip(mlp.gradients, analytic).allSatisfy { abs($0 - 2 * $1) <= 1e-12 * max(1, abs($1)) })
    }

    @Test func singleLinearLayerIsXWtPlusB() throws {
        var mlp = try MLP<Double>.linear(inFeatures: 3, outFeatures: 2, seed: 9)
        try mlp.setWeight(0, Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6]))
        try mlp.setBias(0, Tensor(shape: [2], scalars: [0.5, -0.5]))
        let y = try mlp.predict(Tensor(shape: [1, 3], scalars: [1, 1, 1]))
        #expect(y.scalars == [6.5, 14.5])
        var ws = mlp.makeWorkspace(batchCapacity: 2)
        try mlp.forward(Tensor(shape: [2, 3], scalars: [1, 0, 0, 0, 1, 0]), workspace: &ws)
        try mlp.backward(Tensor(shape: [2, 2], scalars: [1, 0, 0, 1]), workspace: &ws)
        #expect(mlp.weightGradient(0).scalars == [1, 0, 0, 0, 1, 0])
        #expect(mlp.biasGradient(0).scalars == [1, 1])
    }

    @Test func float32GradientsAgreeWithFloat64() throws {
        let sizes = [34, 32, 32, 2]
        var m64 = try MLP<Double>(sizes: sizes, activation: .silu, seed: 5)
        var m32 = try MLP<Float>(sizes: sizes, activation: .silu, parameters: m64.parameters.map { Float($0) })
        m64.parameters = m32.parameters.map { Double($0) }
        let x = Self.normals(16 * 34, seed: 7)
        let t = Self.normals(16 * 2, seed: 8)
        var w64 = m64.makeWorkspace(batchCapacity: 16)
        var w32 = m32.makeWorkspace(batchCapacity: 16)
        try m64.forward(Tensor(shape: [16, 34], scalars: x), workspace: &w64)
        try m32.forward(Tensor(shape: [16, 34], scalars: x.map { Float($0) }), workspace: &w32)
        let (l64, g64) = try Loss.mse(w64.output, Tensor(shape: [16, 2], scalars: t))
        let (l32, g32) = try Loss.mse(w32.output, Tensor(shape: [16, 2], scalars: t.map { Float($0) }))
        #expect(abs(l64 - l32) < 1e-5 * max(1, l64))
        try m64.backward(g64, workspace: &w64)
        try m32.backward(g32, workspace: &w32)
        let scale = m64.gradients.map(abs).max()!
        let worst = zip(m32.gradients, m64.gradients).map { abs(Double($0) - $1) }.max()!
        #expect(worst < 1e-4 * scale, "Float32 vs Float64 gradient gap \(worst), scale \(scale)")
    }

    /// Checks d sum(f(x) * u) / dx for an elementwise or row-wise function with its backward.
    static func check(
        _ name: String, shape: [Int], seed: UInt64,
        f: (Tensor<Double>) throws -> Tensor<Double>,
        backward: (Tensor<Double>, Tensor<Double>) throws -> Tensor<Double>,
        outShape: [Int]? = nil, xScale: Double = 1
    ) throws {
        let x = try Tensor<Double>(shape: shape, scalars: normals(shape.reduce(1, *), seed: seed).map { $0 * xScale })
        let os = outShape ?? shape
        let u = try Tensor<Double>(shape: os, scalars: normals(os.reduce(1, *), seed: seed + 100))
        let analytic = try backward(x, u)
        #expect(analytic.shape == x.shape)
        var worst = 0.0
        for i in 0..<x.count {
            var xp = x, xm = x
            xp.scalars[i] += h
            xm.scalars[i] -= h
            let numeric = (try (f(xp) * u).sum() - (f(xm) * u).sum()) / (2 * h)
            worst = max(worst, relErr(analytic.scalars[i], numeric))
        }
        #expect(worst < tolerance, "\(name): gradient error \(worst)")
    }

    @Test func activations() throws {
        for a in [Activation.silu, .relu, .identity] {
            try Self.check("\(a)", shape: [6, 5], seed: 11, f: { $0.activated(a) },
                backward: { try $0.activationBackward(a, upstream: $1) }, xScale: 3)
        }
    }

    @Test func losses() throws {
        try Self.check("logSigmoid", shape: [4, 6], seed: 21, f: { Loss.logSigmoid($0) },
            backward: { try Loss.logSigmoidBackward($0, upstream: $1) }, xScale: 8)
        try Self.check("logSumExp", shape: [5, 7], seed: 22, f: { try $0.logSumExpRows() },
            backward: { try Loss.logSumExpBackward($0, upstream: $1) }, outShape: [5], xScale: 4)
        try Self.check("logSoftmax", shape: [5, 7], seed: 23, f: { try $0.logSoftmaxRows() },
            backward: { try Loss.logSoftmaxBackward($0, upstream: $1) }, xScale: 4)
        let idx = [3, 0, 6, 2, 2]
        try Self.check("logSoftmaxGather", shape: [5, 7], seed: 24,
            f: { try Loss.logSoftmaxGather($0, indices: idx) },
            backward: { try Loss.logSoftmaxGatherBackward($0, indices: idx, upstream: $1) }, outShape: [5], xScale: 4)
        // MSE: the gradient of the mean loss itself.
        let target = try Tensor<Double>(shape: [3, 4], scalars: Self.normals(12, seed: 25))
        try Self.check("mse", shape: [3, 4], seed: 26,
            f: { try Tensor(shape: [1], scalars: [Loss.mse($0, target).loss]) },
            backward: { x, u in try Loss.mse(x, target).gradient * u.scalars[0] }, outShape: [1])
    }

    @Test func gradientClippingFollowsTorch() throws {
        var mlp = try MLP<Double>(sizes: [2, 2], activation: .identity, seed: 1)
        mlp.gradients = [3, 4, 0, 0, 0, 0]
        let norm = mlp.clipGradientNorm(maxNorm: 1)
        #expect(norm == 5)
        #expect(abs(mlp.gradientNorm() - 5 / (5 + 1e-6)) < 1e-12)
        mlp.gradients = [0.3, 0.4, 0, 0, 0, 0]
        mlp.clipGradientNorm(maxNorm: 1)
        #expect(mlp.gradients == [0.3, 0.4, 0, 0, 0, 0])
    }
}
