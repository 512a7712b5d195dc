// The FastMath activation passes (module TesseraKernels), compiled here for AVX2 + FMA (`-target-cpu haswell`): the
// same IEEE operations lane for lane as TesseraCompute's baseline copy and TesseraAVX512's, so the same bits (each
// SIMD16 is two ymm here). The Adam update's lerp is one hardware fma, as in the AVX-512 build.

#if arch(x86_64)
import TesseraKernels

public enum AVX2Elementwise {
    /// z[r, c] += bias[c]; out = silu(z) (out may equal z).
    @inline(never)
    public static func biasSiLU(
        z: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
        rows: Int, cols: Int
    ) {
        FastMath.biasSiLU(z: z, bias: bias, out: out, rows: rows, cols: cols)
    }

    /// out[i] = silu(x[i]).
    @inline(never)
    public static func silu(x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
        FastMath.silu(x: x, out: out, count: count)
    }

    /// grad[i] *= silu'(z[i]).
    @inline(never)
    public static func siluBackward(z: UnsafePointer<Float>, grad: UnsafeMutablePointer<Float>, count: Int) {
        FastMath.siluBackward(z: z, grad: grad, count: count)
    }
}
#endif

#if arch(x86_64)
extension AVX2Elementwise {
    /// One Adam/AdamW update (TesseraKernels/AdamKernel.swift) with hardware fma, of the first count / 16 * 16
    /// elements.
    @inline(never)
    public static func adam(
        params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, expAvg: UnsafeMutablePointer<Float>,
        expAvgSq: UnsafeMutablePointer<Float>, count: Int, coefficients: AdamKernel.Coefficients
    ) {
        AdamKernel.update(params: params, grads: grads, expAvg: expAvg, expAvgSq: expAvgSq, count: count, c: coefficients)
    }
}
#endif
