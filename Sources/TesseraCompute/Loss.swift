// Losses and their exact gradients: MSE (DSM), log-sigmoid (DPO family), log-softmax + gather (policy log-probs),
// log-sum-exp (exact scores). Each `...Backward` returns dL/d(input) given dL/d(output) (`upstream`).
// All are numerically stable: no exp of a positive argument, no log of a value that can underflow to 0.

public enum Loss {
    /// F.mse_loss(prediction, target) with reduction "mean", and d/d(prediction) = 2 (p - t) / n.
    public static func mse<Scalar: TensorScalar>(
        _ prediction: Tensor<Scalar>, _ target: Tensor<Scalar>
    ) throws -> (loss: Double, gradient: Tensor<Scalar>) {
        try prediction.requireSameShape(target, "Loss.mse")
        var grad = Tensor<Scalar>(shape: prediction.shape)
        let loss = mse(prediction: prediction.scalars, target: target.scalars, gradient: &grad.scalars)
        return (loss, grad)
    }

    /// Non-allocating MSE: writes the gradient into `gradient` (same count as `prediction`).
    public static func mse<Scalar: TensorScalar>(
        prediction: UnsafeBufferPointer<Scalar>, target: UnsafeBufferPointer<Scalar>,
        gradient: UnsafeMutableBufferPointer<Scalar>?
    ) -> Double {
        precondition(prediction.count == target.count && (gradient == nil || gradient!.count == prediction.count))
        if prediction.isEmpty { return .nan }
        return Scalar.kernelMSE(
            prediction: prediction.baseAddress!, target: target.baseAddress!, grad: gradient?.baseAddress,
            count: prediction.count)
    }

    public static func mse<Scalar: TensorScalar>(
        prediction: [Scalar], target: [Scalar], gradient: inout [Scalar]
    ) -> Double {
        prediction.withUnsafeBufferPointer { p in
            target.withUnsafeBufferPointer { t in
                gradient.withUnsafeMutableBufferPointer { g in mse(prediction: p, target: t, gradient: g) }
            }
        }
    }

    /// log sigmoid(x) = min(x, 0) - log1p(exp(-|x|)), elementwise (F.logsigmoid).
    @inlinable
    public static func logSigmoid<Scalar: TensorScalar>(_ x: Tensor<Scalar>) -> Tensor<Scalar> {
        x.map { v in Swift.min(v, 0) - Scalar.mathLog1p(Scalar.mathExp(-Swift.abs(v))) }
    }

    /// d/dx log sigmoid(x) = sigmoid(-x), computed stably, times `upstream`.
    @inlinable
    public static func logSigmoidBackward<Scalar: TensorScalar>(
        _ x: Tensor<Scalar>, upstream: Tensor<Scalar>
    ) throws -> Tensor<Scalar> {
        try x.zipMap(upstream, "logSigmoidBackward") { v, u in u * sigmoid(-v) }
    }

    /// Stable logistic function.
    @inlinable
    public static func sigmoid<Scalar: TensorScalar>(_ v: Scalar) -> Scalar {
        if v >= 0 { return 1 / (1 + Scalar.mathExp(-v)) }
        let e = Scalar.mathExp(v)
        return e / (1 + e)
    }

    /// logp[b] = log_softmax(logits[b, :])[indices[b]] (log_softmax + gather).
    @inlinable
    public static func logSoftmaxGather<Scalar: TensorScalar>(
        _ logits: Tensor<Scalar>, indices: [Int]
    ) throws -> Tensor<Scalar> {
        try logits.logSoftmaxRows().gatherRows(indices)
    }

    /// d logp[b] / d logits[b, j] = 1{j = indices[b]} - softmax(logits[b])_j, times upstream[b].
    @inlinable
    public static func logSoftmaxGatherBackward<Scalar: TensorScalar>(
        _ logits: Tensor<Scalar>, indices: [Int], upstream: Tensor<Scalar>
    ) throws -> Tensor<Scalar> {
        let p = try logits.softmaxRows()
        guard upstream.shape == [logits.shape[0]], indices.count == logits.shape[0] else {
            throw ComputeError(.shapeMismatch, "logSoftmaxGatherBackward: upstream \(upstream.shape), logits \(logits.shape)")
        }
        let c = logits.shape[1]
        var g = p
        for b in 0..<logits.shape[0] {
            let j = indices[b]
            guard j >= 0, j < c else { throw ComputeError(.indexOutOfRange, "logSoftmaxGatherBackward: index \(j)") }
            for k in 0..<c { g.scalars[b * c + k] = -upstream.scalars[b] * p.scalars[b * c + k] }
            g.scalars[b * c + j] += upstream.scalars[b]
        }
        return g
    }

    /// d logsumexp(x[b, :]) / d x[b, j] = softmax(x[b])_j, times upstream[b].
    @inlinable
    public static func logSumExpBackward<Scalar: TensorScalar>(
        _ x: Tensor<Scalar>, upstream: Tensor<Scalar>
    ) throws -> Tensor<Scalar> {
        var g = try x.softmaxRows()
        guard upstream.shape == [x.shape[0]] else {
            throw ComputeError(.shapeMismatch, "logSumExpBackward: upstream \(upstream.shape), x \(x.shape)")
        }
        let c = x.shape[1]
        for b in 0..<x.shape[0] {
            for k in 0..<c { g.scalars[b * c + k] *= upstream.scalars[b] }
        }
        return g
    }

    /// d log_softmax(x)[b, :] / d x given upstream [B, C]: u - softmax * sum(u).
    @inlinable
    public static func logSoftmaxBackward<Scalar: TensorScalar>(
        _ x: Tensor<Scalar>, upstream: Tensor<Scalar>
    ) throws -> Tensor<Scalar> {
        try x.requireSameShape(upstream, "logSoftmaxBackward")
        let p = try x.softmaxRows()
        let c = x.shape[1]
        var g = upstream
        for b in 0..<x.shape[0] {
            var s: Scalar = 0
            for k in 0..<c { s += upstream.scalars[b * c + k] }
            for k in 0..<c { g.scalars[b * c + k] -= p.scalars[b * c + k] * s }
        }
        return g
    }
}
