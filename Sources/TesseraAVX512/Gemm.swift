// Single-precision gemm for x86-64 CPUs with AVX-512 (F, BW, DQ, VL, CD), compiled for that ISA alone.
//
// This module is built with `-target-cpu skylake-avx512`, so nothing in it may run before the caller has checked the
// CPU (TesseraCompute's `GemmBackend` does, from /proc/cpuinfo). Every entry point is `@inline(never)` so no
// AVX-512 code is inlined into the baseline modules that call it.
//
// The blocking and packing are TesseraKernels' `GemmDriver`, specialised here for `AVX512Tile` (so compiled for
// AVX-512); its header states the arithmetic contract (one fma chain per element of C, in k order), which makes
// results independent of blocking, threads, tile shape and vector width. The micro-kernel keeps an 8 x 32 tile of
// C in 16 zmm registers.

#if arch(x86_64)
import TesseraKernels

public enum AVX512Gemm {
    public typealias V = SIMD16<Float>
    typealias Driver = GemmDriver<AVX512Tile>
    /// Rows of C per micro-kernel tile.
    public static var mr: Int { AVX512Tile.mr }
    /// Columns of C per micro-kernel tile (two zmm vectors).
    public static var nr: Int { AVX512Tile.nr }

    /// Floats of per-thread scratch `gemmRows` needs.
    public static func scratchCount(_ blocking: GemmBlocking) -> Int { Driver.scratchCount(blocking) }

    /// Floats needed to pack a B of logical shape [k, n] (`packB`).
    public static func packedCount(k: Int, n: Int) -> Int { Driver.packedCount(k: k, n: n) }

    /// Column panels of a [k, n] operand.
    public static func panels(_ n: Int) -> Int { Driver.panels(n) }

    /// `GemmDriver.packB`, compiled for AVX-512.
    @inline(never)
    public static func packB(
        trans: Bool, _ src: UnsafePointer<Float>, lds: Int, k: Int, n: Int, panelStart: Int, panelEnd: Int,
        kc: Int, into dst: UnsafeMutablePointer<Float>
    ) {
        Driver.packB(
            trans: trans, src, lds: lds, k: k, n: n, panelStart: panelStart, panelEnd: panelEnd, kc: kc, into: dst)
    }

    /// `GemmDriver.gemmRows`, compiled for AVX-512.
    @inline(never)
    public static func gemmRows(
        rowStart: Int, rowEnd: Int, transA: Bool, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, packedB b: UnsafePointer<Float>,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, blocking: GemmBlocking,
        scratch: UnsafeMutablePointer<Float>
    ) {
        Driver.gemmRows(
            rowStart: rowStart, rowEnd: rowEnd, transA: transA, n: n, k: k, alpha: alpha, a: a, lda: lda, packedB: b,
            beta: beta, c: c, ldc: ldc, blocking: blocking, scratch: scratch)
    }

    /// `GemmDriver.oneRow` (m = 1, B not transposed, unpacked), compiled for AVX-512.
    @inline(never)
    public static func oneRow(
        k: Int, n: Int, alpha: Float, x: UnsafePointer<Float>, incx: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    ) {
        Driver.oneRow(k: k, n: n, alpha: alpha, x: x, incx: incx, b: b, ldb: ldb, beta: beta, c: c, scratch: scratch)
    }

    /// The roofline probe: `iterations` x 16 independent zmm fmas (32 flops each) on registers only, no loads.
    /// Returns a value derived from every accumulator so the loop cannot be dropped.
    @inline(never)
    public static func fmaLoop(iterations: Int) -> Float {
        var a0 = V(repeating: 0.1), a1 = V(repeating: 0.2), a2 = V(repeating: 0.3), a3 = V(repeating: 0.4)
        var a4 = V(repeating: 0.5), a5 = V(repeating: 0.6), a6 = V(repeating: 0.7), a7 = V(repeating: 0.8)
        var a8 = V(repeating: 0.9), a9 = V(repeating: 1.0), a10 = V(repeating: 1.1), a11 = V(repeating: 1.2)
        var a12 = V(repeating: 1.3), a13 = V(repeating: 1.4), a14 = V(repeating: 1.5), a15 = V(repeating: 1.6)
        // a = fma(a, x, y) converges to y / (1 - x) = 1: no infinities, no subnormals.
        let x = V(repeating: 0.999_9), y = V(repeating: 1e-4)
        for _ in 0..<iterations {
            a0 = y.addingProduct(a0, x); a1 = y.addingProduct(a1, x)
            a2 = y.addingProduct(a2, x); a3 = y.addingProduct(a3, x)
            a4 = y.addingProduct(a4, x); a5 = y.addingProduct(a5, x)
            a6 = y.addingProduct(a6, x); a7 = y.addingProduct(a7, x)
            a8 = y.addingProduct(a8, x); a9 = y.addingProduct(a9, x)
            a10 = y.addingProduct(a10, x); a11 = y.addingProduct(a11, x)
            a12 = y.addingProduct(a12, x); a13 = y.addingProduct(a13, x)
            a14 = y.addingProduct(a14, x); a15 = y.addingProduct(a15, x)
        }
        let s0 = (a0 + a1) + (a2 + a3), s1 = (a4 + a5) + (a6 + a7)
        let s2 = (a8 + a9) + (a10 + a11), s3 = (a12 + a13) + (a14 + a15)
        return ((s0 + s1) + (s2 + s3)).sum()
    }
}

/// The 8 x 32 register tile (16 zmm accumulators; per k two aligned loads of B, eight broadcasts of A).
public enum AVX512Tile: GemmMicroKernel {
    public typealias V = SIMD16<Float>
    public static var mr: Int { 8 }
    public static var nr: Int { 32 }

    /// The 8 x 32 tile: c[r, 0..<32] = chain over kk of fma(a[r*rs + kk*ks], b[kk*32 + 0..<32], .), starting from
    /// c's current values when `load`, else from zero. (rs, ks) = (1, 8) for a packed panel.
    @inline(__always)
    public static func tile(
        _ kb: Int, _ a: UnsafePointer<Float>, _ rs: Int, _ ks: Int, _ b: UnsafePointer<Float>,
        _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ load: Bool
    ) {
        @inline(__always) func ld(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }
        @inline(__always) func st(_ v: V, _ p: UnsafeMutablePointer<Float>) {
            UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
        }
        var c00 = V(), c01 = V(), c10 = V(), c11 = V(), c20 = V(), c21 = V(), c30 = V(), c31 = V()
        var c40 = V(), c41 = V(), c50 = V(), c51 = V(), c60 = V(), c61 = V(), c70 = V(), c71 = V()
        if load {
            let cc = UnsafePointer(c)
            c00 = ld(cc); c01 = ld(cc + 16)
            c10 = ld(cc + ldc); c11 = ld(cc + ldc + 16)
            c20 = ld(cc + 2 * ldc); c21 = ld(cc + 2 * ldc + 16)
            c30 = ld(cc + 3 * ldc); c31 = ld(cc + 3 * ldc + 16)
            c40 = ld(cc + 4 * ldc); c41 = ld(cc + 4 * ldc + 16)
            c50 = ld(cc + 5 * ldc); c51 = ld(cc + 5 * ldc + 16)
            c60 = ld(cc + 6 * ldc); c61 = ld(cc + 6 * ldc + 16)
            c70 = ld(cc + 7 * ldc); c71 = ld(cc + 7 * ldc + 16)
        }
        var pa = a, pb = b
        let (r1, r2, r3, r4, r5, r6, r7) = (rs, 2 * rs, 3 * rs, 4 * rs, 5 * rs, 6 * rs, 7 * rs)
        for _ in 0..<kb {
            let b0 = ld(pb), b1 = ld(pb + 16)
            var x = V(repeating: pa[0])
            c00.addProduct(x, b0); c01.addProduct(x, b1)
            x = V(repeating: pa[r1])
            c10.addProduct(x, b0); c11.addProduct(x, b1)
            x = V(repeating: pa[r2])
            c20.addProduct(x, b0); c21.addProduct(x, b1)
            x = V(repeating: pa[r3])
            c30.addProduct(x, b0); c31.addProduct(x, b1)
            x = V(repeating: pa[r4])
            c40.addProduct(x, b0); c41.addProduct(x, b1)
            x = V(repeating: pa[r5])
            c50.addProduct(x, b0); c51.addProduct(x, b1)
            x = V(repeating: pa[r6])
            c60.addProduct(x, b0); c61.addProduct(x, b1)
            x = V(repeating: pa[r7])
            c70.addProduct(x, b0); c71.addProduct(x, b1)
            pa += ks
            pb += 32
        }
        st(c00, c); st(c01, c + 16)
        st(c10, c + ldc); st(c11, c + ldc + 16)
        st(c20, c + 2 * ldc); st(c21, c + 2 * ldc + 16)
        st(c30, c + 3 * ldc); st(c31, c + 3 * ldc + 16)
        st(c40, c + 4 * ldc); st(c41, c + 4 * ldc + 16)
        st(c50, c + 5 * ldc); st(c51, c + 5 * ldc + 16)
        st(c60, c + 6 * ldc); st(c61, c + 6 * ldc + 16)
        st(c70, c + 7 * ldc); st(c71, c + 7 * ldc + 16)
    }

    /// One row of C from unpacked B rows: 128 columns (8 zmm chains) at a time, then 16, then scalar fmas.
    @inline(__always)
    public static func row(
        _ k: Int, _ x: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ ldb: Int, _ n: Int,
        _ c: UnsafeMutablePointer<Float>, _ load: Bool
    ) {
        @inline(__always) func ld(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }
        @inline(__always) func st(_ v: V, _ p: UnsafeMutablePointer<Float>) {
            UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
        }
        var j = 0
        while j + 128 <= n {
            let cc = UnsafePointer(c + j)
            var c0 = V(), c1 = V(), c2 = V(), c3 = V(), c4 = V(), c5 = V(), c6 = V(), c7 = V()
            if load {
                c0 = ld(cc); c1 = ld(cc + 16); c2 = ld(cc + 32); c3 = ld(cc + 48)
                c4 = ld(cc + 64); c5 = ld(cc + 80); c6 = ld(cc + 96); c7 = ld(cc + 112)
            }
            var p = b + j
            for kk in 0..<k {
                let xv = V(repeating: x[kk])
                c0.addProduct(xv, ld(p)); c1.addProduct(xv, ld(p + 16))
                c2.addProduct(xv, ld(p + 32)); c3.addProduct(xv, ld(p + 48))
                c4.addProduct(xv, ld(p + 64)); c5.addProduct(xv, ld(p + 80))
                c6.addProduct(xv, ld(p + 96)); c7.addProduct(xv, ld(p + 112))
                p += ldb
            }
            let o = c + j
            st(c0, o); st(c1, o + 16); st(c2, o + 32); st(c3, o + 48)
            st(c4, o + 64); st(c5, o + 80); st(c6, o + 96); st(c7, o + 112)
            j += 128
        }
        while j + 16 <= n {
            var c0 = load ? ld(UnsafePointer(c + j)) : V()
            var p = b + j
            for kk in 0..<k {
                c0.addProduct(V(repeating: x[kk]), ld(p))
                p += ldb
            }
            st(c0, c + j)
            j += 16
        }
        while j < n {
            var acc: Float = load ? c[j] : 0
            for kk in 0..<k { acc = acc.addingProduct(x[kk], b[kk * ldb + j]) }
            c[j] = acc
            j += 1
        }
    }
}

#endif
