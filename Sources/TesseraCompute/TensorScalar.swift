// The element types of the runtime: Float (training, inference) and Double (finite-difference checks, exact math).
//
// Design note: the model and optimizer code is generic over `TensorScalar` and is called from other modules without
// specialization. So every loop over elements that sits on the training path is a *requirement* of this protocol,
// implemented per type (and specialised there by the compiler), and generic code only makes one dynamic call per
// operation, never one per element. Float's exp-heavy kernels use a vectorised exp (TesseraKernels/FastMath.swift), in
// its AVX-512 build (TesseraAVX512) or AVX2 build (TesseraAVX2) with the matching gemm backend.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import TesseraKernels
#if arch(x86_64)
import TesseraAVX2
import TesseraAVX512
#endif

/// Hidden-layer activation functions.
public enum Activation: String, Sendable, CaseIterable, Codable {
    case identity, relu, silu
}

/// Float or Double.
public protocol TensorScalar: BinaryFloatingPoint, Sendable, CustomStringConvertible {
    /// The safetensors dtype of this type (F32 or F64).
    static var safeTensorDType: SafeTensorDType { get }

    static func mathExp(_ x: Self) -> Self
    static func mathLog(_ x: Self) -> Self
    static func mathLog1p(_ x: Self) -> Self
    static func mathSin(_ x: Self) -> Self
    static func mathCos(_ x: Self) -> Self

    /// C = alpha op(A) op(B) + beta C, row-major (cblas ?gemm).
    static func gemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Self,
        a: UnsafePointer<Self>, lda: Int, b: UnsafePointer<Self>, ldb: Int,
        beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)
    /// y = alpha op(A) x + beta y, row-major, A is m x n (cblas ?gemv).
    static func gemv(
        trans: Bool, m: Int, n: Int, alpha: Self, a: UnsafePointer<Self>, lda: Int,
        x: UnsafePointer<Self>, beta: Self, y: UnsafeMutablePointer<Self>)

    /// z[r, c] += bias[c]; then out = act(z) (out may equal z for an in-place, inference-only pass).
    static func kernelBiasActivation(
        z: UnsafeMutablePointer<Self>, bias: UnsafePointer<Self>, out: UnsafeMutablePointer<Self>,
        rows: Int, cols: Int, activation: Activation)
    /// grad[i] *= act'(z[i]).
    static func kernelActivationBackward(
        z: UnsafePointer<Self>, grad: UnsafeMutablePointer<Self>, count: Int, activation: Activation)
    /// out[i] = act(x[i]).
    static func kernelActivation(
        x: UnsafePointer<Self>, out: UnsafeMutablePointer<Self>, count: Int, activation: Activation)
    /// Sum of squares, accumulated in Double in index order.
    static func kernelSumOfSquares(_ x: UnsafePointer<Self>, count: Int) -> Double
    /// x[i] *= factor.
    static func kernelScale(_ x: UnsafeMutablePointer<Self>, count: Int, by factor: Self)
    /// grad = 2 (pred - target) / count; returns mean squared error (accumulated in Double).
    static func kernelMSE(
        prediction: UnsafePointer<Self>, target: UnsafePointer<Self>, grad: UnsafeMutablePointer<Self>?,
        count: Int) -> Double
    /// One Adam/AdamW update over a flat parameter range (see Adam.swift for the exact PyTorch semantics).
    static func kernelAdam(
        params: UnsafeMutablePointer<Self>, grads: UnsafePointer<Self>, expAvg: UnsafeMutablePointer<Self>,
        expAvgSq: UnsafeMutablePointer<Self>, count: Int, coefficients: AdamCoefficients)
}

/// Per-step scalars of one Adam update, computed in Double as PyTorch computes them in Python.
public struct AdamCoefficients: Sendable, Equatable {
    public var lerpWeight: Double  // 1 - beta1
    public var beta2: Double
    public var oneMinusBeta2: Double
    public var biasCorrection2Sqrt: Double  // sqrt(1 - beta2^k)
    public var eps: Double
    public var stepSize: Double  // -lr / (1 - beta1^k)
    public var decoupledDecayFactor: Double?  // AdamW: 1 - lr * wd
    public var l2WeightDecay: Double?  // Adam: g += wd * p
}

// MARK: - Generic kernel bodies, specialised per conformance

@usableFromInline enum KernelImpl {
    @inline(__always)
    static func act<T: TensorScalar>(_ z: T, _ a: Activation) -> T {
        switch a {
        case .identity: return z
        case .relu: return z > 0 ? z : 0
        case .silu: return z / (1 + T.mathExp(-z))
        }
    }

    @inline(__always)
    static func actDerivative<T: TensorScalar>(_ z: T, _ a: Activation) -> T {
        switch a {
        case .identity: return 1
        case .relu: return z > 0 ? 1 : 0
        case .silu:
            let s = 1 / (1 + T.mathExp(-z))
            return s * (1 + z * (1 - s))
        }
    }

    @inline(__always)
    static func biasActivation<T: TensorScalar>(
        z: UnsafeMutablePointer<T>, bias: UnsafePointer<T>, out: UnsafeMutablePointer<T>,
        rows: Int, cols: Int, activation: Activation
    ) {
        for r in 0..<rows {
            let zr = z + r * cols, orow = out + r * cols
            for c in 0..<cols {
                let v = zr[c] + bias[c]
                zr[c] = v
                orow[c] = act(v, activation)
            }
        }
    }

    @inline(__always)
    static func activationBackward<T: TensorScalar>(
        z: UnsafePointer<T>, grad: UnsafeMutablePointer<T>, count: Int, activation: Activation
    ) {
        if activation == .identity { return }
        for i in 0..<count { grad[i] *= actDerivative(z[i], activation) }
    }

    @inline(__always)
    static func activation<T: TensorScalar>(
        x: UnsafePointer<T>, out: UnsafeMutablePointer<T>, count: Int, activation: Activation
    ) {
        for i in 0..<count { out[i] = act(x[i], activation) }
    }

    @inline(__always)
    static func sumOfSquares<T: TensorScalar>(_ x: UnsafePointer<T>, count: Int) -> Double {
        var s = 0.0
        for i in 0..<count {
            let v = Double(x[i])
            s += v * v
        }
        return s
    }

    @inline(__always)
    static func scale<T: TensorScalar>(_ x: UnsafeMutablePointer<T>, count: Int, by f: T) {
        for i in 0..<count { x[i] *= f }
    }

    @inline(__always)
    static func mse<T: TensorScalar>(
        prediction: UnsafePointer<T>, target: UnsafePointer<T>, grad: UnsafeMutablePointer<T>?, count: Int
    ) -> Double {
        var s = 0.0
        let g = T(2) / T(count)
        for i in 0..<count {
            let d = prediction[i] - target[i]
            s += Double(d) * Double(d)
            grad?[i] = g * d
        }
        return s / Double(count)
    }

    /// Element order of operations follows PyTorch's Adam (torch/optim/adam.py, single-tensor and `_foreach` paths):
    /// decay (AdamW `mul_(1 - lr wd)` or Adam `grad + wd p`), `lerp_(grad, 1 - b1)`, `mul_(b2).addcmul_(g, g, 1 - b2)`,
    /// `sqrt / sqrt(bc2) + eps`, `addcdiv_(m, denom, -lr / bc1)`. Each Python scalar is first rounded to the tensor's
    /// type, as ATen does, and ATen's scalar formulas are kept (lerp's two branches; addcmul/addcdiv left to right).
    @inline(__always)
    static func adam<T: TensorScalar>(
        params: UnsafeMutablePointer<T>, grads: UnsafePointer<T>, expAvg: UnsafeMutablePointer<T>,
        expAvgSq: UnsafeMutablePointer<T>, count: Int, c: AdamCoefficients
    ) {
        let w = T(c.lerpWeight), b2 = T(c.beta2), omb2 = T(c.oneMinusBeta2)
        let bc2 = T(c.biasCorrection2Sqrt), eps = T(c.eps), step = T(c.stepSize)
        let smallWeight = abs(c.lerpWeight) < 0.5
        let decay = c.decoupledDecayFactor.map { T($0) }
        let l2 = c.l2WeightDecay.map { T($0) }
        for i in 0..<count {
            var p = params[i]
            var g = grads[i]
            if let decay { p = p * decay }
            if let l2 { g = g + l2 * p }
            let m0 = expAvg[i]
            // ATen's vectorised lerp is one fused multiply-add: fma(weight, end - start, start), or
            // fma(weight - 1, end - start, end) for weight >= 0.5 (aten/src/ATen/native/cpu/Lerp.h).
            let m = smallWeight ? m0.addingProduct(w, g - m0) : g.addingProduct(w - 1, g - m0)
            let v = expAvgSq[i] * b2 + omb2 * g * g
            let denom = v.squareRoot() / bc2 + eps
            p = p + step * m / denom  // addcdiv: self + value * t1 / t2, evaluated left to right
            expAvg[i] = m
            expAvgSq[i] = v
            params[i] = p
        }
    }
}

// MARK: - Float

extension Float: TensorScalar {
    public static var safeTensorDType: SafeTensorDType { .F32 }
    @inline(__always) public static func mathExp(_ x: Float) -> Float { expf(x) }
    @inline(__always) public static func mathLog(_ x: Float) -> Float { logf(x) }
    @inline(__always) public static func mathLog1p(_ x: Float) -> Float { log1pf(x) }
    @inline(__always) public static func mathSin(_ x: Float) -> Float { sinf(x) }
    @inline(__always) public static func mathCos(_ x: Float) -> Float { cosf(x) }

    public static func gemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        let backend = GemmBackend.current
        if backend.isTessera {
            TesseraGemm.sgemm(
                transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                beta: beta, c: c, ldc: ldc, backend: backend)
            return
        }
        blasGemm(
            transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
            beta: beta, c: c, ldc: ldc)
    }

    public static func gemv(
        trans: Bool, m: Int, n: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
        x: UnsafePointer<Float>, beta: Float, y: UnsafeMutablePointer<Float>
    ) {
        let backend = GemmBackend.current
        if backend.isTessera {
            // As a one-row gemm, so the same fma-chain contract holds, and OpenBLAS's thread pool (which spins with
            // sched_yield after every call) never wakes during a training step.
            if trans {  // y[n] = alpha A^T x + beta y: the row x^T [1, m] times A [m, n]
                TesseraGemm.sgemm(
                    transA: false, transB: false, m: 1, n: n, k: m, alpha: alpha, a: x, lda: m, b: a, ldb: lda,
                    beta: beta, c: y, ldc: n, backend: backend)
            } else {  // y[m] = alpha A x + beta y: the row x^T [1, n] times A^T [n, m]
                TesseraGemm.sgemm(
                    transA: false, transB: true, m: 1, n: m, k: n, alpha: alpha, a: x, lda: n, b: a, ldb: lda,
                    beta: beta, c: y, ldc: m, backend: backend)
            }
            return
        }
        blasGemv(trans: trans, m: m, n: n, alpha: alpha, a: a, lda: lda, x: x, beta: beta, y: y)
    }

    public static func kernelBiasActivation(
        z: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
        rows: Int, cols: Int, activation: Activation
    ) {
        Parallel.rows(rows, cols: cols) { lo, hi in
            let (z, out) = (z + lo * cols, out + lo * cols)
            if activation == .silu {
                #if arch(x86_64)
                switch GemmBackend.current {
                case .avx512: return AVX512Elementwise.biasSiLU(z: z, bias: bias, out: out, rows: hi - lo, cols: cols)
                case .avx2: return AVX2Elementwise.biasSiLU(z: z, bias: bias, out: out, rows: hi - lo, cols: cols)
                case .openblas: break
                }
                #endif
                FastMath.biasSiLU(z: z, bias: bias, out: out, rows: hi - lo, cols: cols)
            } else {
                KernelImpl.biasActivation(z: z, bias: bias, out: out, rows: hi - lo, cols: cols, activation: activation)
            }
        }
    }

    public static func kernelActivationBackward(
        z: UnsafePointer<Float>, grad: UnsafeMutablePointer<Float>, count: Int, activation: Activation
    ) {
        // Split a flat range as rows of 8 (results do not depend on the split: the pass is elementwise).
        Parallel.rows(count / 8, cols: 8) { lo, hi in
            let end = hi == count / 8 ? count : hi * 8
            if activation == .silu {
                #if arch(x86_64)
                switch GemmBackend.current {
                case .avx512: return AVX512Elementwise.siluBackward(z: z + lo * 8, grad: grad + lo * 8, count: end - lo * 8)
                case .avx2: return AVX2Elementwise.siluBackward(z: z + lo * 8, grad: grad + lo * 8, count: end - lo * 8)
                case .openblas: break
                }
                #endif
                FastMath.siluBackward(z: z + lo * 8, grad: grad + lo * 8, count: end - lo * 8)
            } else {
                KernelImpl.activationBackward(z: z + lo * 8, grad: grad + lo * 8, count: end - lo * 8, activation: activation)
            }
        }
    }

    public static func kernelActivation(
        x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int, activation: Activation
    ) {
        if activation == .silu {
            #if arch(x86_64)
            switch GemmBackend.current {
            case .avx512: return AVX512Elementwise.silu(x: x, out: out, count: count)
            case .avx2: return AVX2Elementwise.silu(x: x, out: out, count: count)
            case .openblas: break
            }
            #endif
            FastMath.silu(x: x, out: out, count: count)
        } else {
            KernelImpl.activation(x: x, out: out, count: count, activation: activation)
        }
    }

    public static func kernelSumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
        KernelImpl.sumOfSquares(x, count: count)
    }

    public static func kernelScale(_ x: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
        KernelImpl.scale(x, count: count, by: factor)
    }

    public static func kernelMSE(
        prediction: UnsafePointer<Float>, target: UnsafePointer<Float>, grad: UnsafeMutablePointer<Float>?,
        count: Int
    ) -> Double {
        KernelImpl.mse(prediction: prediction, target: target, grad: grad, count: count)
    }

    public static func kernelAdam(
        params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, expAvg: UnsafeMutablePointer<Float>,
        expAvgSq: UnsafeMutablePointer<Float>, count: Int, coefficients: AdamCoefficients
    ) {
        // Elementwise, so splitting the range between the two threads changes no bit (as for the SiLU passes).
        let backend = GemmBackend.current
        Parallel.rows(count / 16, cols: 16) { lo, hi in
            let end = hi == count / 16 ? count : hi * 16
            let o = lo * 16
            kernelAdam(
                params: params + o, grads: grads + o, expAvg: expAvg + o, expAvgSq: expAvgSq + o, count: end - o,
                coefficients: coefficients, backend: backend)
        }
    }

    /// The Adam update with the given backend's build (tests run the AVX2 build on an AVX-512 CPU this way).
    static func kernelAdam(
        params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, expAvg: UnsafeMutablePointer<Float>,
        expAvgSq: UnsafeMutablePointer<Float>, count: Int, coefficients: AdamCoefficients, backend: GemmBackend
    ) {
        #if arch(x86_64)
        if backend.isTessera {
            // The same operations in the same order as KernelImpl.adam, 16 lanes at a time (AdamKernelTests).
            let c = coefficients
            let vectors = count / 16 * 16
            let adam = backend == .avx2 ? AVX2Elementwise.adam : AVX512Elementwise.adam
            adam(
                params, grads, expAvg, expAvgSq, vectors,
                AdamKernel.Coefficients(
                    lerpWeight: Float(c.lerpWeight), beta2: Float(c.beta2), oneMinusBeta2: Float(c.oneMinusBeta2),
                    biasCorrection2Sqrt: Float(c.biasCorrection2Sqrt), eps: Float(c.eps), stepSize: Float(c.stepSize),
                    smallWeight: abs(c.lerpWeight) < 0.5, decoupledDecayFactor: c.decoupledDecayFactor.map { Float($0) },
                    l2WeightDecay: c.l2WeightDecay.map { Float($0) }))
            KernelImpl.adam(
                params: params + vectors, grads: grads + vectors, expAvg: expAvg + vectors, expAvgSq: expAvgSq + vectors,
                count: count - vectors, c: coefficients)
            return
        }
        #endif
        KernelImpl.adam(
            params: params, grads: grads, expAvg: expAvg, expAvgSq: expAvgSq, count: count, c: coefficients)
    }
}

// MARK: - Double

extension Double: TensorScalar {
    public static var safeTensorDType: SafeTensorDType { .F64 }
    @inline(__always) public static func mathExp(_ x: Double) -> Double { exp(x) }
    @inline(__always) public static func mathLog(_ x: Double) -> Double { log(x) }
    @inline(__always) public static func mathLog1p(_ x: Double) -> Double { log1p(x) }
    @inline(__always) public static func mathSin(_ x: Double) -> Double { sin(x) }
    @inline(__always) public static func mathCos(_ x: Double) -> Double { cos(x) }

    public static func gemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double,
        a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
        beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int
    ) {
        blasGemm(
            transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
            beta: beta, c: c, ldc: ldc)
    }

    public static func gemv(
        trans: Bool, m: Int, n: Int, alpha: Double, a: UnsafePointer<Double>, lda: Int,
        x: UnsafePointer<Double>, beta: Double, y: UnsafeMutablePointer<Double>
    ) {
        blasGemv(trans: trans, m: m, n: n, alpha: alpha, a: a, lda: lda, x: x, beta: beta, y: y)
    }

    public static func kernelBiasActivation(
        z: UnsafeMutablePointer<Double>, bias: UnsafePointer<Double>, out: UnsafeMutablePointer<Double>,
        rows: Int, cols: Int, activation: Activation
    ) {
        Parallel.rows(rows, cols: cols) { lo, hi in
            KernelImpl.biasActivation(
                z: z + lo * cols, bias: bias, out: out + lo * cols, rows: hi - lo, cols: cols, activation: activation)
        }
    }

    public static func kernelActivationBackward(
        z: UnsafePointer<Double>, grad: UnsafeMutablePointer<Double>, count: Int, activation: Activation
    ) {
        KernelImpl.activationBackward(z: z, grad: grad, count: count, activation: activation)
    }

    public static func kernelActivation(
        x: UnsafePointer<Double>, out: UnsafeMutablePointer<Double>, count: Int, activation: Activation
    ) {
        KernelImpl.activation(x: x, out: out, count: count, activation: activation)
    }

    public static func kernelSumOfSquares(_ x: UnsafePointer<Double>, count: Int) -> Double {
        KernelImpl.sumOfSquares(x, count: count)
    }

    public static func kernelScale(_ x: UnsafeMutablePointer<Double>, count: Int, by factor: Double) {
        KernelImpl.scale(x, count: count, by: factor)
    }

    public static func kernelMSE(
        prediction: UnsafePointer<Double>, target: UnsafePointer<Double>, grad: UnsafeMutablePointer<Double>?,
        count: Int
    ) -> Double {
        KernelImpl.mse(prediction: prediction, target: target, grad: grad, count: count)
    }

    public static func kernelAdam(
        params: UnsafeMutablePointer<Double>, grads: UnsafePointer<Double>, expAvg: UnsafeMutablePointer<Double>,
        expAvgSq: UnsafeMutablePointer<Double>, count: Int, coefficients: AdamCoefficients
    ) {
        KernelImpl.adam(
            params: params, grads: grads, expAvg: expAvg, expAvgSq: expAvgSq, count: count, c: coefficients)
    }
}
