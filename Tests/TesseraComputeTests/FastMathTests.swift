import Foundation
import Testing
import TesseraCompute
import TesseraKernels
#if arch(x86_64)
import TesseraAVX2
import TesseraAVX512
#endif

/// The activation passes exist three times: TesseraCompute's baseline build of TesseraKernels/FastMath.swift and
/// TesseraAVX512's and TesseraAVX2's builds of the same source. They must give the same bits, or results would depend
/// on the CPU.
@Suite struct FastMathTests {
    /// Ordinary values across the clamp range, the clamp edges, and the special values.
    static var inputs: [Float] {
        var xs: [Float] = [0, -0.0, 1, -1, 87, -87, 88, -88, 88.5, -87.5, 100, -100, .infinity, -.infinity,
                           .leastNonzeroMagnitude, -.leastNormalMagnitude, .greatestFiniteMagnitude, 1e-20, -3e-8]
        var s: UInt32 = 12345
        for _ in 0..<20_000 {
            s = s &* 1_664_525 &+ 1_013_904_223
            xs.append((Float(s >> 8) / Float(1 << 24) * 2 - 1) * 95)
        }
        for _ in 0..<5 { xs.append(.nan) }
        return xs  // 20,024 values: the 16-lane loop and the scalar tail both run
    }

    static func same(_ a: [Float], _ b: [Float]) -> Int {
        zip(a, b).filter { !($0.0.bitPattern == $0.1.bitPattern || ($0.0.isNaN && $0.1.isNaN)) }.count
    }

    #if arch(x86_64)
    @Test(.enabled(if: GemmBackend.cpuHasAVX512, "needs a CPU with AVX-512"))
    func avx512BuildGivesTheBaselineBits() {
        let x = Self.inputs
        let n = x.count
        var base = [Float](repeating: 0, count: n), wide = base
        x.withUnsafeBufferPointer { xp in
            base.withUnsafeMutableBufferPointer { FastMath.silu(x: xp.baseAddress!, out: $0.baseAddress!, count: n) }
            wide.withUnsafeMutableBufferPointer {
                AVX512Elementwise.silu(x: xp.baseAddress!, out: $0.baseAddress!, count: n)
            }
        }
        #expect(Self.same(base, wide) == 0, "silu")

        var gBase = [Float](repeating: 0.75, count: n), gWide = gBase
        x.withUnsafeBufferPointer { xp in
            gBase.withUnsafeMutableBufferPointer { FastMath.siluBackward(z: xp.baseAddress!, grad: $0.baseAddress!, count: n) }
            gWide.withUnsafeMutableBufferPointer {
                AVX512Elementwise.siluBackward(z: xp.baseAddress!, grad: $0.baseAddress!, count: n)
            }
        }
        #expect(Self.same(gBase, gWide) == 0, "silu backward")

        // bias + SiLU on [rows, 37] (37 = two 16-lane vectors and a scalar tail per row), out-of-place.
        let cols = 37, rows = n / cols
        let bias = (0..<cols).map { Float($0) * 0.37 - 6 }
        var zBase = Array(x[0..<(rows * cols)]), zWide = zBase
        var oBase = [Float](repeating: 0, count: rows * cols), oWide = oBase
        bias.withUnsafeBufferPointer { bp in
            zBase.withUnsafeMutableBufferPointer { z in
                oBase.withUnsafeMutableBufferPointer { o in
                    FastMath.biasSiLU(z: z.baseAddress!, bias: bp.baseAddress!, out: o.baseAddress!, rows: rows, cols: cols)
                }
            }
            zWide.withUnsafeMutableBufferPointer { z in
                oWide.withUnsafeMutableBufferPointer { o in
                    AVX512Elementwise.biasSiLU(z: z.baseAddress!, bias: bp.baseAddress!, out: o.baseAddress!, rows: rows, cols: cols)
                }
            }
        }
        #expect(Self.same(zBase, zWide) == 0, "bias add")
        #expect(Self.same(oBase, oWide) == 0, "bias + silu")
    }
    @Test(.enabled(if: GemmBackend.cpuHasAVX2, "needs a CPU with AVX2 and FMA"))
    func avx2BuildGivesTheBaselineBits() {
        let x = Self.inputs
        let n = x.count
        var base = [Float](repeating: 0, count: n), wide = base
        x.withUnsafeBufferPointer { xp in
            base.withUnsafeMutableBufferPointer { FastMath.silu(x: xp.baseAddress!, out: $0.baseAddress!, count: n) }
            wide.withUnsafeMutableBufferPointer {
                AVX2Elementwise.silu(x: xp.baseAddress!, out: $0.baseAddress!, count: n)
            }
        }
        #expect(Self.same(base, wide) == 0, "silu")

        var gBase = [Float](repeating: 0.75, count: n), gWide = gBase
        x.withUnsafeBufferPointer { xp in
            gBase.withUnsafeMutableBufferPointer { FastMath.siluBackward(z: xp.baseAddress!, grad: $0.baseAddress!, count: n) }
            gWide.withUnsafeMutableBufferPointer {
                AVX2Elementwise.siluBackward(z: xp.baseAddress!, grad: $0.baseAddress!, count: n)
            }
        }
        #expect(Self.same(gBase, gWide) == 0, "silu backward")

        // bias + SiLU on [rows, 37] (37 = two 16-lane vectors and a scalar tail per row), out-of-place.
        let cols = 37, rows = n / cols
        let bias = (0..<cols).map { Float($0) * 0.37 - 6 }
        var zBase = Array(x[0..<(rows * cols)]), zWide = zBase
        var oBase = [Float](repeating: 0, count: rows * cols), oWide = oBase
        bias.withUnsafeBufferPointer { bp in
            zBase.withUnsafeMutableBufferPointer { z in
                oBase.withUnsafeMutableBufferPointer { o in
                    FastMath.biasSiLU(z: z.baseAddress!, bias: bp.baseAddress!, out: o.baseAddress!, rows: rows, cols: cols)
                }
            }
            zWide.withUnsafeMutableBufferPointer { z in
                oWide.withUnsafeMutableBufferPointer { o in
                    AVX2Elementwise.biasSiLU(z: z.baseAddress!, bias: bp.baseAddress!, out: o.baseAddress!, rows: rows, cols: cols)
                }
            }
        }
        #expect(Self.same(zBase, zWide) == 0, "bias add")
        #expect(Self.same(oBase, oWide) == 0, "bias + silu")
    }
    #endif

    /// The vectorised exp stays within a few ulp of the correctly rounded exp (computed in Double).
    @Test func expIsAccurate() {
        var worst: Double = 0
        for x in stride(from: Float(-87), through: 88, by: 0.013) {
            let got = Double(FastMath.expScalar(x)), want = Foundation.exp(Double(x))
            worst = max(worst, abs(got - want) / want)
        }
        #expect(worst < 4 * Double(Float.ulpOfOne), "worst relative error \(worst)")
    }
}
