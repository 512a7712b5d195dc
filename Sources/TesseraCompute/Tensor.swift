// Dense, contiguous, row-major tensors and the operations the workload catalogue needs (WORKLOADS.md §0).
//
// Shapes are checked and mismatches throw `ComputeError(.shapeMismatch)` naming both shapes. The element loops are
// `@inlinable` so callers in other modules get code specialised for Float or Double.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The error type of the compute runtime (tensors, models, optimizers, checkpoints).
public struct ComputeError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case shapeMismatch, invalidShape, indexOutOfRange, invalidArgument, checkpoint
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        /// Operand shapes do not fit the operation.
        public static let shapeMismatch = Code(.shapeMismatch)
        /// A shape has a negative dimension or does not match the element count.
        public static let invalidShape = Code(.invalidShape)
        /// A gather index or layer index is out of range.
        public static let indexOutOfRange = Code(.indexOutOfRange)
        /// A hyper-parameter or configuration is out of its domain.
        public static let invalidArgument = Code(.invalidArgument)
        /// A checkpoint is missing a tensor or holds one of the wrong dtype or shape.
        public static let checkpoint = Code(.checkpoint)
        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "compute \(code): \(message)" }
}

/// A dense row-major tensor. Invariant: `scalars.count == shape.reduce(1, *)`; the initialisers check it, and code
/// that writes `scalars` directly must keep the count (use `reshaped` to change the shape).
public struct Tensor<Scalar: TensorScalar>: Sendable, Equatable {
    public let shape: [Int]
    public var scalars: [Scalar]

    /// A tensor of `shape` filled with `value` (zeros by default).
    @inlinable
    public init(shape: [Int], repeating value: Scalar = 0) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor: negative dimension in \(shape)")
        self.shape = shape
        self.scalars = [Scalar](repeating: value, count: shape.reduce(1, *))
    }

    /// A tensor over `scalars`; throws `.invalidShape` unless the counts agree.
    @inlinable
    public init(shape: [Int], scalars: [Scalar]) throws {
        guard shape.allSatisfy({ $0 >= 0 }), shape.reduce(1, *) == scalars.count else {
            throw ComputeError(.invalidShape, "shape \(shape) does not hold \(scalars.count) elements")
        }
        self.shape = shape
        self.scalars = scalars
    }

    /// A rank-0 tensor.
    @inlinable
    public init(scalar: Scalar) {
        self.shape = []
        self.scalars = [scalar]
    }

    @inlinable public var rank: Int { shape.count }
    @inlinable public var count: Int { scalars.count }
    /// Rows of a rank-2 tensor (precondition: rank 2).
    @inlinable public var rows: Int {
        precondition(shape.count == 2, "Tensor.rows: rank \(shape.count)")
        return shape[0]
    }
    /// Columns of a rank-2 tensor (precondition: rank 2).
    @inlinable public var columns: Int {
        precondition(shape.count == 2, "Tensor.columns: rank \(shape.count)")
        return shape[1]
    }

    @inlinable
    public subscript(row: Int, column: Int) -> Scalar {
        get { scalars[row * shape[1] + column] }
        set { scalars[row * shape[1] + column] = newValue }
    }

    /// Same elements, new shape (throws unless the element counts agree).
    @inlinable
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        try Tensor(shape: newShape, scalars: scalars)
    }

    /// Converts the element type (Float <-> Double).
    @inlinable
    public func converted<T: TensorScalar>(to: T.Type = T.self) -> Tensor<T> {
        try! Tensor<T>(shape: shape, scalars: scalars.map { T($0) })
    }

    @inlinable
    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Scalar>) throws -> R) rethrows -> R {
        try scalars.withUnsafeBufferPointer(body)
    }

    @inlinable
    public mutating func withUnsafeMutableBufferPointer<R>(
        _ body: (inout UnsafeMutableBufferPointer<Scalar>) throws -> R
    ) rethrows -> R {
        try scalars.withUnsafeMutableBufferPointer(body)
    }

    @usableFromInline
    func requireRank2(_ op: String) throws {
        guard shape.count == 2 else { throw ComputeError(.shapeMismatch, "\(op): expected rank 2, got shape \(shape)") }
    }

    @usableFromInline
    func requireSameShape(_ other: Tensor, _ op: String) throws {
        guard shape == other.shape else {
            throw ComputeError(.shapeMismatch, "\(op): shapes \(shape) and \(other.shape) differ")
        }
    }
}

// MARK: - BLAS

extension Tensor {
    /// op(a) x op(b) through cblas ?gemm. `a`, `b` are rank 2; op transposes when asked.
    public static func matmul(
        _ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false
    ) throws -> Tensor {
        try a.requireRank2("matmul")
        try b.requireRank2("matmul")
        let (m, k) = transposeA ? (a.shape[1], a.shape[0]) : (a.shape[0], a.shape[1])
        let (kb, n) = transposeB ? (b.shape[1], b.shape[0]) : (b.shape[0], b.shape[1])
        guard k == kb else {
            throw ComputeError(
                .shapeMismatch,
                "matmul: \(a.shape)\(transposeA ? "^T" : "") x \(b.shape)\(transposeB ? "^T" : "") inner dims \(k) != \(kb)")
        }
        var c = Tensor(shape: [m, n])
        try gemm(a, b, into: &c, transposeA: transposeA, transposeB: transposeB)
        return c
    }

    /// c = alpha op(a) op(b) + beta c, in place (no allocation).
    public static func gemm(
        _ a: Tensor, _ b: Tensor, into c: inout Tensor, transposeA: Bool = false, transposeB: Bool = false,
        alpha: Scalar = 1, beta: Scalar = 0
    ) throws {
        try a.requireRank2("gemm")
        try b.requireRank2("gemm")
        try c.requireRank2("gemm")
        let (m, k) = transposeA ? (a.shape[1], a.shape[0]) : (a.shape[0], a.shape[1])
        let (kb, n) = transposeB ? (b.shape[1], b.shape[0]) : (b.shape[0], b.shape[1])
        guard k == kb, c.shape == [m, n] else {
            throw ComputeError(.shapeMismatch, "gemm: \(a.shape) x \(b.shape) into \(c.shape)")
        }
        if m == 0 || n == 0 { return }
        if k == 0 {
            c.withUnsafeMutableBufferPointer { Scalar.kernelScale($0.baseAddress!, count: $0.count, by: beta) }
            return
        }
        a.scalars.withUnsafeBufferPointer { pa in
            b.scalars.withUnsafeBufferPointer { pb in
                c.scalars.withUnsafeMutableBufferPointer { pc in
                    Scalar.gemm(
                        transA: transposeA, transB: transposeB, m: m, n: n, k: k, alpha: alpha,
                        a: pa.baseAddress!, lda: a.shape[1], b: pb.baseAddress!, ldb: b.shape[1],
                        beta: beta, c: pc.baseAddress!, ldc: n)
                }
            }
        }
    }

    /// op(a) x, with `a` rank 2 and `x` rank 1 (cblas ?gemv).
    public static func matvec(_ a: Tensor, _ x: Tensor, transpose: Bool = false) throws -> Tensor {
        try a.requireRank2("matvec")
        let (m, n) = (a.shape[0], a.shape[1])
        let (inLen, outLen) = transpose ? (m, n) : (n, m)
        guard x.shape == [inLen] else {
            throw ComputeError(.shapeMismatch, "matvec: \(a.shape)\(transpose ? "^T" : "") x \(x.shape)")
        }
        var y = Tensor(shape: [outLen])
        if outLen == 0 || inLen == 0 { return y }
        a.scalars.withUnsafeBufferPointer { pa in
            x.scalars.withUnsafeBufferPointer { px in
                y.scalars.withUnsafeMutableBufferPointer { py in
                    Scalar.gemv(
                        trans: transpose, m: m, n: n, alpha: 1, a: pa.baseAddress!, lda: n, x: px.baseAddress!,
                        beta: 0, y: py.baseAddress!)
                }
            }
        }
        return y
    }
}

// MARK: - Elementwise and broadcasting

extension Tensor {
    @inlinable
    public func map(_ f: (Scalar) throws -> Scalar) rethrows -> Tensor {
        var out = self
        try out.scalars.withUnsafeMutableBufferPointer { p in
            for i in p.indices { p[i] = try f(p[i]) }
        }
        return out
    }

    @inlinable
    public func zipMap(_ other: Tensor, _ op: String = "zipMap", _ f: (Scalar, Scalar) -> Scalar) throws -> Tensor {
        try requireSameShape(other, op)
        var out = self
        out.scalars.withUnsafeMutableBufferPointer { p in
            other.scalars.withUnsafeBufferPointer { q in
                for i in p.indices { p[i] = f(p[i], q[i]) }
            }
        }
        return out
    }

    @inlinable public static func + (a: Tensor, b: Tensor) throws -> Tensor { try a.zipMap(b, "+", +) }
    @inlinable public static func - (a: Tensor, b: Tensor) throws -> Tensor { try a.zipMap(b, "-", -) }
    @inlinable public static func * (a: Tensor, b: Tensor) throws -> Tensor { try a.zipMap(b, "*", *) }
    @inlinable public static func / (a: Tensor, b: Tensor) throws -> Tensor { try a.zipMap(b, "/", /) }
    @inlinable public static func * (a: Tensor, s: Scalar) -> Tensor { a.map { $0 * s } }
    @inlinable public static func + (a: Tensor, s: Scalar) -> Tensor { a.map { $0 + s } }

    /// x[r, :] += bias for every row (rank-2 `self`, rank-1 `bias` of length columns).
    @inlinable
    public func addingRowBroadcast(_ bias: Tensor) throws -> Tensor {
        try requireRank2("addingRowBroadcast")
        guard bias.shape == [shape[1]] else {
            throw ComputeError(.shapeMismatch, "addingRowBroadcast: \(shape) + \(bias.shape)")
        }
        var out = self
        let cols = shape[1]
        out.scalars.withUnsafeMutableBufferPointer { p in
            bias.scalars.withUnsafeBufferPointer { b in
                for r in 0..<shape[0] {
                    for c in 0..<cols { p[r * cols + c] += b[c] }
                }
            }
        }
        return out
    }

    /// Elementwise activation (SiLU uses the vectorised kernel for Float).
    public func activated(_ activation: Activation) -> Tensor {
        var out = self
        scalars.withUnsafeBufferPointer { x in
            out.scalars.withUnsafeMutableBufferPointer { o in
                if x.count > 0 {
                    Scalar.kernelActivation(x: x.baseAddress!, out: o.baseAddress!, count: x.count, activation: activation)
                }
            }
        }
        return out
    }

    public func silu() -> Tensor { activated(.silu) }
    public func relu() -> Tensor { activated(.relu) }

    /// d/dx of `activation` at each element, times `upstream`.
    public func activationBackward(_ activation: Activation, upstream: Tensor) throws -> Tensor {
        try requireSameShape(upstream, "activationBackward")
        var g = upstream
        scalars.withUnsafeBufferPointer { z in
            g.scalars.withUnsafeMutableBufferPointer { gp in
                if z.count > 0 {
                    Scalar.kernelActivationBackward(
                        z: z.baseAddress!, grad: gp.baseAddress!, count: z.count, activation: activation)
                }
            }
        }
        return g
    }
}

// MARK: - Reductions

extension Tensor {
    /// Sum of all elements, accumulated in Double.
    @inlinable
    public func sum() -> Double {
        var s = 0.0
        for v in scalars { s += Double(v) }
        return s
    }

    @inlinable
    public func mean() -> Double { count == 0 ? .nan : sum() / Double(count) }

    /// Column sums of a rank-2 tensor: shape [columns] (the bias gradient).
    @inlinable
    public func sumRows() throws -> Tensor {
        try requireRank2("sumRows")
        let (r, c) = (shape[0], shape[1])
        var out = Tensor(shape: [c])
        out.scalars.withUnsafeMutableBufferPointer { o in
            scalars.withUnsafeBufferPointer { x in
                for i in 0..<r {
                    for j in 0..<c { o[j] += x[i * c + j] }
                }
            }
        }
        return out
    }

    /// Row sums of a rank-2 tensor: shape [rows].
    @inlinable
    public func sumColumns() throws -> Tensor {
        try requireRank2("sumColumns")
        let (r, c) = (shape[0], shape[1])
        var out = Tensor(shape: [r])
        scalars.withUnsafeBufferPointer { x in
            for i in 0..<r {
                var s: Scalar = 0
                for j in 0..<c { s += x[i * c + j] }
                out.scalars[i] = s
            }
        }
        return out
    }

    /// Row-wise max of a rank-2 tensor: shape [rows].
    @inlinable
    public func maxColumns() throws -> Tensor {
        try requireRank2("maxColumns")
        let (r, c) = (shape[0], shape[1])
        var out = Tensor(shape: [r], repeating: -.infinity)
        scalars.withUnsafeBufferPointer { x in
            for i in 0..<r {
                var m = -Scalar.infinity
                for j in 0..<c where x[i * c + j] > m { m = x[i * c + j] }
                out.scalars[i] = m
            }
        }
        return out
    }

    /// Row-wise log-sum-exp, stable (max shifted): shape [rows]. A row of all -inf gives -inf.
    @inlinable
    public func logSumExpRows() throws -> Tensor {
        try requireRank2("logSumExpRows")
        let (r, c) = (shape[0], shape[1])
        var out = Tensor(shape: [r])
        scalars.withUnsafeBufferPointer { x in
            for i in 0..<r {
                var m = -Scalar.infinity
                for j in 0..<c where x[i * c + j] > m { m = x[i * c + j] }
                if !m.isFinite {  // all -inf, or a +inf / NaN that dominates the row
                    out.scalars[i] = m
                    continue
                }
                var s: Scalar = 0
                for j in 0..<c { s += Scalar.mathExp(x[i * c + j] - m) }
                out.scalars[i] = m + Scalar.mathLog(s)
            }
        }
        return out
    }

    /// Row-wise log-softmax, stable: x - logsumexp(x).
    @inlinable
    public func logSoftmaxRows() throws -> Tensor {
        let lse = try logSumExpRows()
        let c = shape[1]
        var out = self
        out.scalars.withUnsafeMutableBufferPointer { p in
            for i in 0..<shape[0] {
                for j in 0..<c { p[i * c + j] -= lse.scalars[i] }
            }
        }
        return out
    }

    /// Row-wise softmax, stable.
    @inlinable
    public func softmaxRows() throws -> Tensor {
        try logSoftmaxRows().map { Scalar.mathExp($0) }
    }

    /// out[r] = self[r, indices[r]] for a rank-2 tensor (torch.gather along dim 1 with one index per row).
    @inlinable
    public func gatherRows(_ indices: [Int]) throws -> Tensor {
        try requireRank2("gatherRows")
        guard indices.count == shape[0] else {
            throw ComputeError(.shapeMismatch, "gatherRows: \(indices.count) indices for \(shape[0]) rows")
        }
        let c = shape[1]
        var out = Tensor(shape: [shape[0]])
        for (r, j) in indices.enumerated() {
            guard j >= 0, j < c else {
                throw ComputeError(.indexOutOfRange, "gatherRows: index \(j) in row \(r) outside 0..<\(c)")
            }
            out.scalars[r] = scalars[r * c + j]
        }
        return out
    }
}

// MARK: - Time embedding

extension Tensor {
    /// The sinusoidal time embedding of WORKLOADS.md §0: row b is [sin(t_b w_0..w_{D/2-1}), cos(t_b w_0..)], with
    /// w_j = 10000^(-j/(D/2)). `dimension` must be even (32 in the catalogue). Frequencies and products are
    /// computed in Double, then rounded once to `Scalar`.
    @inlinable
    public static func timeEmbedding(_ t: [Double], dimension: Int = 32) throws -> Tensor {
        guard dimension > 0, dimension % 2 == 0 else {
            throw ComputeError(.invalidArgument, "timeEmbedding: dimension \(dimension) must be even and positive")
        }
        let half = dimension / 2
        var out = Tensor(shape: [t.count, dimension])
        var w = [Double](repeating: 0, count: half)
        for j in 0..<half { w[j] = Double.mathExp(-Double.mathLog(10_000) * Double(j) / Double(half)) }
        out.scalars.withUnsafeMutableBufferPointer { p in
            for (b, tb) in t.enumerated() {
                for j in 0..<half {
                    let a = tb * w[j]
                    p[b * dimension + j] = Scalar(Double.mathSin(a))
                    p[b * dimension + half + j] = Scalar(Double.mathCos(a))
                }
            }
        }
        return out
    }
}
