// Single-precision gemm for x86-64 CPUs with AVX-512 (F, BW, DQ, VL, CD), compiled for that ISA alone.
//
// This module is built with `-target-cpu skylake-avx512`, so nothing in it may run before the caller has checked the
// CPU (TesseraCompute's `GemmBackend` does, from /proc/cpuinfo). Every entry point is `@inline(never)` so no
// AVX-512 code is inlined into the baseline modules that call it.
//
// The arithmetic contract, which makes results independent of blocking, threads and vector width:
//   C[i, j] = fma(alpha*A[i, K-1], B[K-1, j], ... fma(alpha*A[i, 1], B[1, j], fma(alpha*A[i, 0], B[0, j], c0)))
// with c0 = 0 when beta == 0 and c0 = beta*C[i, j] otherwise: one fused multiply-add per k, in k order, in Float.
// A scalar loop with `Float.addingProduct` gives the same bits (GemmTests checks exactly that); so does any other
// tiling of the same chain. OpenBLAS promises nothing of the sort: its results change with its kernel family.
//
// Blocking (Goto style): K in blocks of `kc`, the rows of C in blocks of `mc`. op(B) is packed once per call
// (`packB`) into panels of kc x nr contiguous floats, zero-padded past n, 64-byte aligned: reading B in place was up
// to 2x slower whenever the caller's rows were not 64-byte aligned. A is only broadcast, so whole mr-row panels are
// read in place (strided); a ragged last panel, or every panel when alpha != 1, is packed (`packA`, k-major, mr
// floats per k). The micro-kernel keeps an 8 x 32 tile of C in 16 zmm registers; between K blocks the partial sums
// go through C itself, which continues the same fma chain.

#if arch(x86_64)

public enum AVX512Gemm {
    public typealias V = SIMD16<Float>
    /// Rows of C per micro-kernel tile.
    public static let mr = 8
    /// Columns of C per micro-kernel tile (two zmm vectors).
    public static let nr = 32
    /// K block: a 256 x 32 panel of B is 32 KiB and stays in L1 across the A panels of a row block.
    public static let kc = 256
    /// Row block: 128 rows x 256 k of A (128 KiB) stay in L2 while the B panels pass.
    public static let mc = 128

    /// Floats of per-thread scratch `gemmRows` needs.
    public static var scratchCount: Int { mc * kc + mr * nr }

    /// Floats needed to pack a B of logical shape [k, n] (`packB`).
    public static func packedCount(k: Int, n: Int) -> Int { k * paddedColumns(n) }

    public static func paddedColumns(_ n: Int) -> Int { (n + nr - 1) / nr * nr }

    /// Column panels of a [k, n] operand.
    public static func panels(_ n: Int) -> Int { (n + nr - 1) / nr }

    /// Packs panels [panelStart, panelEnd) of op(B) in the layout `gemmRows` reads: K block pc (kc rows) starts at
    /// pc * paddedColumns(n); within it, panel p holds kb x nr floats (nr per kk), zero past column n. op(B) is
    /// src (row-major [k, n], leading dimension lds) or, with `trans`, src^T (src row-major [n, k]). Packing every
    /// B, not only a transposed one, makes every vector load of B 64-byte aligned (`dst` must be) and contiguous.
    @inline(never)
    public static func packB(
        trans: Bool, _ src: UnsafePointer<Float>, lds: Int, k: Int, n: Int, panelStart: Int, panelEnd: Int,
        into dst: UnsafeMutablePointer<Float>
    ) {
        let ldp = paddedColumns(n)
        for p in panelStart..<panelEnd {
            let j0 = p * nr
            let live = min(nr, n - j0)
            for pc in stride(from: 0, to: k, by: kc) {
                let kb = min(kc, k - pc)
                let d = dst + pc * ldp + p * nr * kb
                if !trans {
                    for kk in 0..<kb {
                        let s = src + (pc + kk) * lds + j0
                        let o = d + kk * nr
                        if live == nr {
                            o.update(from: s, count: nr)
                        } else {
                            o.update(from: s, count: live)
                            (o + live).update(repeating: 0, count: nr - live)
                        }
                    }
                } else if live == nr {
                    // Four k at a time: 4 x 32 loads from 32 rows, four sequential 32-float stores.
                    var kk = 0
                    while kk + 4 <= kb {
                        let o = d + kk * nr
                        for jj in 0..<nr {
                            let s = src + (j0 + jj) * lds + pc + kk
                            o[jj] = s[0]
                            o[nr + jj] = s[1]
                            o[2 * nr + jj] = s[2]
                            o[3 * nr + jj] = s[3]
                        }
                        kk += 4
                    }
                    while kk < kb {
                        for jj in 0..<nr { d[kk * nr + jj] = src[(j0 + jj) * lds + pc + kk] }
                        kk += 1
                    }
                } else {
                    for kk in 0..<kb {
                        for jj in 0..<live { d[kk * nr + jj] = src[(j0 + jj) * lds + pc + kk] }
                        for jj in live..<nr { d[kk * nr + jj] = 0 }
                    }
                }
            }
        }
    }

    /// Rows [rowStart, rowEnd) of C = alpha op(A) op(B) + beta C, with op(B) already packed by `packB` (all its
    /// panels). `scratch` holds `scratchCount` floats owned by the calling thread, 64-byte aligned.
    @inline(never)
    public static func gemmRows(
        rowStart: Int, rowEnd: Int, transA: Bool, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, packedB b: UnsafePointer<Float>,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, scratch: UnsafeMutablePointer<Float>
    ) {
        guard rowEnd > rowStart, n > 0 else { return }
        // beta != 0 and != 1: scale C first; the chain then starts from beta*C[i, j].
        if beta != 0 && beta != 1 {
            for i in rowStart..<rowEnd {
                let row = c + i * ldc
                for j in 0..<n { row[j] *= beta }
            }
        }
        if k == 0 {
            if beta == 0 {
                for i in rowStart..<rowEnd { (c + i * ldc).update(repeating: 0, count: n) }
            }
            return
        }
        let packedA = scratch
        let tile = scratch + mc * kc
        let fullPanels = n / nr
        let edgeCols = n - fullPanels * nr
        let panels = fullPanels + (edgeCols > 0 ? 1 : 0)

        for pc in stride(from: 0, to: k, by: kc) {
            let kb = min(kc, k - pc)
            let startFromC = pc > 0 || beta != 0
            for ic in stride(from: rowStart, to: rowEnd, by: mc) {
                let mb = min(mc, rowEnd - ic)
                let rowPanels = (mb + mr - 1) / mr
                // With alpha = 1, whole 8-row panels of A are read where they are (only broadcasts, so alignment
                // does not matter, and packing would cost as much as a third of the multiply at H = 128); a ragged
                // last panel, or any panel when alpha scales A, is packed.
                let inPlace = alpha == 1
                let packedRows = inPlace ? mb % mr : mb
                let firstPacked = inPlace ? mb / mr : 0
                if packedRows > 0 {
                    packA(
                        transA: transA, a: a, lda: lda, row0: ic + firstPacked * mr, rows: packedRows, k0: pc, kb: kb,
                        alpha: alpha, into: packedA)
                }
                for jr in 0..<panels {
                    let bp = b + pc * paddedColumns(n) + jr * nr * kb
                    let cols = jr == fullPanels ? edgeCols : nr
                    for ir in 0..<rowPanels {
                        let rows = min(mr, mb - ir * mr)
                        let ap: UnsafePointer<Float>
                        let (rs, ks): (Int, Int)
                        if ir < firstPacked {
                            let row = ic + ir * mr
                            ap = transA ? a + pc * lda + row : a + row * lda + pc
                            (rs, ks) = transA ? (1, lda) : (lda, 1)
                        } else {
                            ap = UnsafePointer(packedA + (ir - firstPacked) * mr * kb)
                            (rs, ks) = (1, mr)
                        }
                        let cp = c + (ic + ir * mr) * ldc + jr * nr
                        if rows == mr && cols == nr {
                            micro(kb, ap, rs, ks, bp, cp, ldc, startFromC)
                        } else {
                            if startFromC {
                                for r in 0..<rows {
                                    (tile + r * nr).update(from: cp + r * ldc, count: cols)
                                }
                            }
                            micro(kb, ap, rs, ks, bp, tile, nr, startFromC)
                            for r in 0..<rows {
                                (cp + r * ldc).update(from: tile + r * nr, count: cols)
                            }
                        }
                    }
                }
            }
        }
    }

    /// Packs alpha * op(A)[row0 ..< row0+rows, k0 ..< k0+kb] into panels of mr rows: panel p holds, for each kk,
    /// the mr values of rows p*mr ..< p*mr+mr (zero past `rows`).
    @inline(__always)
    static func packA(
        transA: Bool, a: UnsafePointer<Float>, lda: Int, row0: Int, rows: Int, k0: Int, kb: Int, alpha: Float,
        into dst: UnsafeMutablePointer<Float>
    ) {
        let panels = (rows + mr - 1) / mr
        for p in 0..<panels {
            let d = dst + p * mr * kb
            let r0 = row0 + p * mr
            let live = min(mr, rows - p * mr)
            if transA {
                // op(A)[i, kk] = a[kk * lda + i]: mr contiguous floats per kk.
                for kk in 0..<kb {
                    let s = a + (k0 + kk) * lda + r0
                    let o = d + kk * mr
                    for r in 0..<live { o[r] = s[r] }
                    for r in live..<mr { o[r] = 0 }
                }
            } else {
                for r in 0..<live {
                    let s = a + (r0 + r) * lda + k0
                    for kk in 0..<kb { d[kk * mr + r] = s[kk] }
                }
                if live < mr {
                    for kk in 0..<kb {
                        for r in live..<mr { d[kk * mr + r] = 0 }
                    }
                }
            }
            if alpha != 1 {
                for i in 0..<(kb * mr) { d[i] *= alpha }
            }
        }
    }

    /// The 8 x 32 tile: c[r, 0..<32] = chain over kk of fma(a[r*rs + kk*ks], b[kk*32 + 0..<32], .), starting from
    /// c's current values when `load`, else from zero. (rs, ks) = (1, 8) for a packed panel.
    @inline(__always)
    static func micro(
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
}

#endif
