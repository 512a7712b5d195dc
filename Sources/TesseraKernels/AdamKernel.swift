// The Float Adam/AdamW element update, 16 lanes at a time, for TesseraAVX512 to compile with hardware fma.
//
// The operations, and their order, are those of TesseraCompute's scalar `KernelImpl.adam` (which follows ATen's
// `_foreach` Adam: lerp as one fma, addcmul and addcdiv left to right), so both give the same bits
// (AdamKernelTests). The baseline build keeps the scalar loop: without an fma instruction every fused lane would
// be a libm call.

public enum AdamKernel {
    public typealias V = SIMD16<Float>

    /// Per-step scalars, already rounded to Float as ATen rounds Python scalars.
    public struct Coefficients: Sendable {
        public var lerpWeight: Float, beta2: Float, oneMinusBeta2: Float, biasCorrection2Sqrt: Float, eps: Float
        public var stepSize: Float
        public var smallWeight: Bool  // |lerpWeight| < 0.5: lerp's first branch
        public var decoupledDecayFactor: Float?
        public var l2WeightDecay: Float?

        @inlinable
        public init(
            lerpWeight: Float, beta2: Float, oneMinusBeta2: Float, biasCorrection2Sqrt: Float, eps: Float,
            stepSize: Float, smallWeight: Bool, decoupledDecayFactor: Float?, l2WeightDecay: Float?
        ) {
            self.lerpWeight = lerpWeight
            self.beta2 = beta2
            self.oneMinusBeta2 = oneMinusBeta2
            self.biasCorrection2Sqrt = biasCorrection2Sqrt
            self.eps = eps
            self.stepSize = stepSize
            self.smallWeight = smallWeight
            self.decoupledDecayFactor = decoupledDecayFactor
            self.l2WeightDecay = l2WeightDecay
        }
    }

    /// Updates the first `count / 16 * 16` elements; the caller runs the scalar update on the rest.
    @inlinable @inline(__always)
    public static func update(
        params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, expAvg: UnsafeMutablePointer<Float>,
        expAvgSq: UnsafeMutablePointer<Float>, count: Int, c: Coefficients
    ) {
        let w = V(repeating: c.lerpWeight), wm1 = V(repeating: c.lerpWeight - 1)
        let b2 = V(repeating: c.beta2), omb2 = V(repeating: c.oneMinusBeta2)
        let bc2 = V(repeating: c.biasCorrection2Sqrt), eps = V(repeating: c.eps), step = V(repeating: c.stepSize)
        let decay = c.decoupledDecayFactor.map { V(repeating: $0) }
        let l2 = c.l2WeightDecay.map { V(repeating: $0) }
        @inline(__always) func ld(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }
        @inline(__always) func st(_ v: V, _ p: UnsafeMutablePointer<Float>) {
            UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
        }
        var i = 0
        while i + 16 <= count {
            var p = ld(params + i)
            var g = ld(grads + i)
            if let decay { p = p * decay }
            if let l2 { g = g + l2 * p }
            let m0 = ld(expAvg + i)
            let m = c.smallWeight ? m0.addingProduct(w, g - m0) : g.addingProduct(wm1, g - m0)
            let v = ld(expAvgSq + i) * b2 + omb2 * g * g
            let denom = v.squareRoot() / bc2 + eps
            p = p + step * m / denom
            st(m, expAvg + i)
            st(v, expAvgSq + i)
            st(p, params + i)
            i += 16
        }
    }
}
