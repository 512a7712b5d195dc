import Foundation
import Testing
@testable import TesseraCompute
import TesseraKernels
#if arch(x86_64)
import TesseraAVX512
#endif

/// Float Adam runs TesseraKernels/AdamKernel.swift (16 lanes, hardware fma) on AVX-512 CPUs and the scalar
/// `KernelImpl.adam` elsewhere; both must leave the same bits in parameters and both moments, for every variant.
@Suite struct AdamKernelTests {
    static func values(_ n: Int, seed: UInt64, scale: Float, nonNegative: Bool = false) -> [Float] {
        var s = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<n).map { _ in
            s ^= s << 13
            s ^= s >> 7
            s ^= s << 17
            let u = Float(s >> 40) / Float(1 << 24)
            return (nonNegative ? u : 2 * u - 1) * scale
        }
    }

    #if arch(x86_64)
    @Test(
        .enabled(if: GemmBackend.current.isTessera, "needs a Tessera backend (AVX-512 or AVX2)"),
        arguments: [
            // (1 - beta1, decoupled decay factor, L2 decay): Adam, AdamW, Adam + L2, and lerp's second branch.
            (0.1, nil, nil), (0.1, 0.9999, nil), (0.1, nil, 0.01), (0.7, nil, nil), (0.7, 0.99, nil),
        ] as [(Double, Double?, Double?)])
    func avx512UpdateGivesTheScalarBits(_ variant: (Double, Double?, Double?)) {
        let n = 16 * 67 + 9  // the vector loop and the scalar tail
        let p0 = Self.values(n, seed: 1, scale: 0.5), g = Self.values(n, seed: 2, scale: 3e-2)
        let m0 = Self.values(n, seed: 3, scale: 1e-2), v0 = Self.values(n, seed: 4, scale: 1e-4, nonNegative: true)
        for k in [1, 2, 50] {
            let c = AdamCoefficients(
                lerpWeight: variant.0, beta2: 0.999, oneMinusBeta2: 1 - 0.999,
                biasCorrection2Sqrt: (1 - pow(0.999, Double(k))).squareRoot(), eps: 1e-8,
                stepSize: -1e-3 / (1 - pow(1 - variant.0, Double(k))), decoupledDecayFactor: variant.1,
                l2WeightDecay: variant.2)
            var (pa, ma, va) = (p0, m0, v0)
            var (pb, mb, vb) = (p0, m0, v0)
            KernelImpl.adam(params: &pa, grads: g, expAvg: &ma, expAvgSq: &va, count: n, c: c)
            Float.kernelAdam(params: &pb, grads: g, expAvg: &mb, expAvgSq: &vb, count: n, coefficients: c)
            #expect(pa.map(\.bitPattern) == pb.map(\.bitPattern), "params, variant \(variant), step \(k)")
            #expect(ma.map(\.bitPattern) == mb.map(\.bitPattern), "exp_avg, variant \(variant), step \(k)")
            #expect(va.map(\.bitPattern) == vb.map(\.bitPattern), "exp_avg_sq, variant \(variant), step \(k)")
            #expect(pa != p0)
            // The AVX2 build (what an AVX2-only host runs) gives the same bits; an AVX-512 CPU runs it too.
            if GemmBackend.cpuHasAVX2 {
                var (pc, mc, vc) = (p0, m0, v0)
                Float.kernelAdam(
                    params: &pc, grads: g, expAvg: &mc, expAvgSq: &vc, count: n, coefficients: c, backend: .avx2)
                #expect(pa.map(\.bitPattern) == pc.map(\.bitPattern), "avx2 params, variant \(variant), step \(k)")
                #expect(ma.map(\.bitPattern) == mc.map(\.bitPattern), "avx2 exp_avg, variant \(variant), step \(k)")
                #expect(va.map(\.bitPattern) == vc.map(\.bitPattern), "avx2 exp_avg_sq, variant \(variant), step \(k)")
            }
        }
    }
    #endif
}
