// The blocking and packing half of Tessera's Float gemm, generic over the register tile, so that each ISA module
// (TesseraAVX512, TesseraAVX2) compiles its own specialised copy for its own target (`@inlinable` bodies are
// compiled by the module that calls them, as FastMath's are).
//
// The arithmetic contract, for every tile and every blocking:
//   C[i, j] = fma(alpha*A[i, K-1], B[K-1, j], ... fma(alpha*A[i, 1], B[1, j], fma(alpha*A[i, 0], B[0, j], c0)))
// with c0 = 0 when beta == 0 and c0 = beta*C[i, j] otherwise: one fused multiply-add per k, in k order, in Float.
// Blocking only decides *when* each fma of a chain runs and where its partial sum waits (in a register, or in C
// itself between K blocks: a Float stored and loaded back is the same Float), never which fmas there are or their
// order. So kc, mc, the loop order over blocks, the register tile's shape and the vector width can all be chosen
// per CPU (from its cache sizes) without changing one bit: the same inputs give the same C on every host that runs
// this contract, whatever its ISA. GemmTests checks every backend bit for bit against a scalar `addingProduct` loop.

/// Block sizes for `GemmDriver`. None of them changes a result (see above); they only move data between caches.
public struct GemmBlocking: Sendable, Equatable, CustomStringConvertible {
    /// K block: one kc x nr panel of packed B should stay in L1 while the row panels of A pass.
    public var kc: Int
    /// Row block: mc rows x kc of A, and mc rows of C, should stay in L2 while the B panels pass.
    public var mc: Int
    /// Floats of L2 one thread may count on (decides the loop order over K blocks and row blocks).
    public var l2Floats: Int

    @inlinable
    public init(kc: Int, mc: Int, l2Floats: Int) {
        precondition(kc >= 1 && mc >= 1 && l2Floats >= 1, "GemmBlocking: sizes must be positive")
        self.kc = kc
        self.mc = mc
        self.l2Floats = l2Floats
    }

    /// Blocking for a tile of `nr` columns (`mr` rows) from per-core L1d and L2 sizes in bytes: a kc x nr panel of
    /// packed B in half of L1, an mc x kc block of A in a quarter of L2. kc is a multiple of 16, mc of mr.
    @inlinable
    public static func forCaches(l1dBytes: Int, l2Bytes: Int, mr: Int, nr: Int) -> GemmBlocking {
        let l1 = max(l1dBytes, 16 << 10), l2 = max(l2Bytes, 128 << 10)
        let kc = min(512, max(64, l1 / 2 / (nr * 4) / 16 * 16))
        let mc = min(1024, max(4 * mr, l2 / 4 / (kc * 4) / mr * mr))
        return GemmBlocking(kc: kc, mc: mc, l2Floats: l2 / 4)
    }

    public var description: String { "kc \(kc), mc \(mc), L2 \((l2Floats * 4) >> 10) KiB" }
}

/// A register tile of C: `mr` rows x `nr` columns (a whole number of vectors), one fma chain per element.
public protocol GemmMicroKernel {
    /// Rows of C per tile.
    static var mr: Int { get }
    /// Columns of C per tile.
    static var nr: Int { get }
    /// c[r, 0..<nr] (row stride ldc) = chain over kk in 0..<kb of fma(a[r*rs + kk*ks], b[kk*nr + 0..<nr], .), for
    /// r in 0..<mr, starting from c's current values when `load`, else from zero. b is 64-byte aligned.
    static func tile(
        _ kb: Int, _ a: UnsafePointer<Float>, _ rs: Int, _ ks: Int, _ b: UnsafePointer<Float>,
        _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ load: Bool)
    /// One row of C, unpacked B: c[0..<n] = chain over kk in 0..<k of fma(x[kk], b[kk*ldb + 0..<n], .), starting
    /// from c when `load` (c0 already beta-scaled), else from zero. Used for m == 1 (gemv with A transposed, the
    /// bias gradient), where packing B would cost as much as the multiply.
    static func row(
        _ k: Int, _ x: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ ldb: Int, _ n: Int,
        _ c: UnsafeMutablePointer<Float>, _ load: Bool)
}

public enum GemmDriver<K: GemmMicroKernel> {
    /// Floats of per-thread scratch `gemmRows` needs with `blocking`.
    @inlinable
    public static func scratchCount(_ blocking: GemmBlocking) -> Int {
        (blocking.mc + K.mr) * blocking.kc + K.mr * K.nr
    }

    @inlinable
    public static func paddedColumns(_ n: Int) -> Int { (n + K.nr - 1) / K.nr * K.nr }

    /// Column panels of a [k, n] operand.
    @inlinable
    public static func panels(_ n: Int) -> Int { (n + K.nr - 1) / K.nr }

    /// Floats needed to pack a B of logical shape [k, n] (`packB`).
    @inlinable
    public static func packedCount(k: Int, n: Int) -> Int { k * paddedColumns(n) }

    /// Packs panels [panelStart, panelEnd) of op(B) in the layout `gemmRows` reads: K block pc (kc rows) starts at
    /// pc * paddedColumns(n); within it, panel p holds kb x nr floats (nr per kk), zero past column n. op(B) is
    /// src (row-major [k, n], leading dimension lds) or, with `trans`, src^T (src row-major [n, k]). `dst` must be
    /// 64-byte aligned, so every vector load of B is aligned and contiguous.
    @inlinable
    public static func packB(
        trans: Bool, _ src: UnsafePointer<Float>, lds: Int, k: Int, n: Int, panelStart: Int, panelEnd: Int,
        kc: Int, into dst: UnsafeMutablePointer<Float>
    ) {
        let nr = K.nr
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
                            copy(s, o, nr)
                        } else {
                            for j in 0..<live { o[j] = s[j] }
                            for j in live..<nr { o[j] = 0 }
                        }
                    }
                } else if live == nr && nr % 16 == 0 {
                    // 16 k at a time: a 16 x 16 block of src (16 rows, 16 k each) transposed in registers, so
                    // loads and stores are whole vectors (the scalar gather cost a tenth of a B=256 step).
                    var kk = 0
                    while kk + 16 <= kb {
                        for jj in stride(from: 0, to: nr, by: 16) {
                            transpose16(src + (j0 + jj) * lds + pc + kk, lds, d + kk * nr + jj, nr)
                        }
                        kk += 16
                    }
                    while kk < kb {
                        for jj in 0..<nr { d[kk * nr + jj] = src[(j0 + jj) * lds + pc + kk] }
                        kk += 1
                    }
                } else if live == nr {
                    // Four k at a time: 4 loads from each of nr rows, four sequential nr-float stores.
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

    /// dst[0..<count] = src[0..<count] in whole vectors where possible (the plain loop stayed scalar: the compiler
    /// cannot prove the two do not overlap).
    @inlinable @inline(__always)
    static func copy(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        var i = 0
        while i + 16 <= count {
            UnsafeMutableRawPointer(dst + i).storeBytes(
                of: UnsafeRawPointer(src + i).loadUnaligned(as: SIMD16<Float>.self), as: SIMD16<Float>.self)
            i += 16
        }
        if i + 8 <= count {
            UnsafeMutableRawPointer(dst + i).storeBytes(
                of: UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<Float>.self), as: SIMD8<Float>.self)
            i += 8
        }
        if i + 4 <= count {
            UnsafeMutableRawPointer(dst + i).storeBytes(
                of: UnsafeRawPointer(src + i).loadUnaligned(as: SIMD4<Float>.self), as: SIMD4<Float>.self)
            i += 4
        }
        while i < count {
            dst[i] = src[i]
            i += 1
        }
    }

    /// dst[c * ldd + r] = src[r * lds + c] for r, c in 0..<16: four perfect unshuffles of the 256 elements (each
    /// rotates the 8-bit index (r, c) right by one bit; four of them swap r and c), 16 two-source permutes a round.
    @inlinable @inline(__always)
    static func transpose16(
        _ src: UnsafePointer<Float>, _ lds: Int, _ dst: UnsafeMutablePointer<Float>, _ ldd: Int
    ) {
        typealias V = SIMD16<Float>
        withUnsafeTemporaryAllocation(of: V.self, capacity: 32) { buf in
            let p = buf.baseAddress!
            for i in 0..<16 { p[i] = UnsafeRawPointer(src + i * lds).loadUnaligned(as: V.self) }
            var (x, y) = (p, p + 16)
            for _ in 0..<4 {
                for v in 0..<8 {
                    let pair = SIMD32<Float>(lowHalf: x[2 * v], highHalf: x[2 * v + 1])
                    y[v] = pair.evenHalf
                    y[v + 8] = pair.oddHalf
                }
                swap(&x, &y)
            }
            for i in 0..<16 { UnsafeMutableRawPointer(dst + i * ldd).storeBytes(of: x[i], as: V.self) }
        }
    }

    /// Whether `gemmRows` should run row blocks outside K blocks (C's row block stays in L2 across all of K) rather
    /// than K blocks outside row blocks (a K block of packed B stays in L2 across all rows). Only data movement.
    @inlinable
    public static func rowBlocksOutside(rows: Int, n: Int, k: Int, blocking: GemmBlocking) -> Bool {
        let kBlocks = (k + blocking.kc - 1) / blocking.kc
        guard kBlocks > 1 else { return false }
        let cFloats = rows * paddedColumns(n)
        // With K blocks outside, every K block after the first reloads and rewrites all of C; that only hurts when
        // C does not fit in L2. With row blocks outside, every row block re-reads all of packed B.
        guard cFloats > blocking.l2Floats / 2 else { return false }
        let fit = max(K.mr, blocking.l2Floats / 2 / (paddedColumns(n) + blocking.kc) / K.mr * K.mr)
        let rowBlocks = (rows + min(blocking.mc, fit) - 1) / min(blocking.mc, fit)
        let reloadC = 2 * cFloats * (kBlocks - 1)
        let rereadB = packedCount(k: k, n: n) * (rowBlocks - 1)
        return rereadB < reloadC
    }

    /// Rows [rowStart, rowEnd) of C = alpha op(A) op(B) + beta C, with op(B) already packed by `packB` (all its
    /// panels, same kc). `scratch` holds `scratchCount(blocking)` floats owned by the calling thread, 64-byte
    /// aligned.
    @inlinable
    public static func gemmRows(
        rowStart: Int, rowEnd: Int, transA: Bool, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, packedB b: UnsafePointer<Float>,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, blocking: GemmBlocking,
        scratch: UnsafeMutablePointer<Float>
    ) {
        guard rowEnd > rowStart, n > 0 else { return }
        if !prepareC(rowStart: rowStart, rowEnd: rowEnd, n: n, k: k, beta: beta, c: c, ldc: ldc) { return }
        let kc = blocking.kc, mc = blocking.mc
        let rowsOutside = rowBlocksOutside(rows: rowEnd - rowStart, n: n, k: k, blocking: blocking)
        let tile = scratch + (mc + K.mr) * kc
        if rowsOutside {
            // Row blocks small enough that the block's C (mb x n) and A (mb x kc) stay in half of L2 across K.
            let fit = blocking.l2Floats / 2 / (paddedColumns(n) + kc) / K.mr * K.mr
            let mcOut = max(K.mr, min(mc, fit))
            for ic in stride(from: rowStart, to: rowEnd, by: mcOut) {
                for pc in stride(from: 0, to: k, by: kc) {
                    block(
                        ic: ic, mb: min(mcOut, rowEnd - ic), pc: pc, kb: min(kc, k - pc), transA: transA, n: n,
                        alpha: alpha, a: a, lda: lda, b: b, startFromC: pc > 0 || beta != 0, c: c, ldc: ldc,
                        packedA: scratch, tile: tile)
                }
            }
        } else {
            for pc in stride(from: 0, to: k, by: kc) {
                for ic in stride(from: rowStart, to: rowEnd, by: mc) {
                    block(
                        ic: ic, mb: min(mc, rowEnd - ic), pc: pc, kb: min(kc, k - pc), transA: transA, n: n,
                        alpha: alpha, a: a, lda: lda, b: b, startFromC: pc > 0 || beta != 0, c: c, ldc: ldc,
                        packedA: scratch, tile: tile)
                }
            }
        }
    }

    /// beta != 0 and != 1: scales C first (the chain then starts from beta*C[i, j]); k == 0: C = beta*C, done.
    /// Returns whether there is a product to add.
    @inlinable
    static func prepareC(
        rowStart: Int, rowEnd: Int, n: Int, k: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) -> Bool {
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
            return false
        }
        return true
    }

    /// One (row block, K block): rows [ic, ic+mb) of C, k in [pc, pc+kb), all column panels.
    @inlinable @inline(__always)
    static func block(
        ic: Int, mb: Int, pc: Int, kb: Int, transA: Bool, n: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, startFromC: Bool, c: UnsafeMutablePointer<Float>, ldc: Int,
        packedA: UnsafeMutablePointer<Float>, tile: UnsafeMutablePointer<Float>
    ) {
        let mr = K.mr, nr = K.nr
        let fullPanels = n / nr
        let edgeCols = n - fullPanels * nr
        let panels = fullPanels + (edgeCols > 0 ? 1 : 0)
        let rowPanels = (mb + mr - 1) / mr
        // Non-transposed A with alpha = 1: whole mr-row panels are read where they are (mr row streams, each
        // contiguous in k; only broadcasts, so alignment does not matter). Transposed A (the dW gemm, A = G^T) is
        // always packed: in place, each k would read mr floats from a new row lda floats away, and with lda a power
        // of two those rows fall in a few L1 sets and miss; packed, it is one contiguous copy of mr floats per k.
        // A ragged last panel, and every panel when alpha scales A, is packed too.
        let inPlace = alpha == 1 && !transA
        let firstPacked = inPlace ? mb / mr : 0
        let packedRows = mb - firstPacked * mr
        if packedRows > 0 {
            packA(
                transA: transA, a: a, lda: lda, row0: ic + firstPacked * mr, rows: packedRows, k0: pc, kb: kb,
                alpha: alpha, into: packedA)
        }
        let ldp = paddedColumns(n)
        for jr in 0..<panels {
            let bp = b + pc * ldp + jr * nr * kb
            let cols = jr == fullPanels ? edgeCols : nr
            for ir in 0..<rowPanels {
                let rows = min(mr, mb - ir * mr)
                let ap: UnsafePointer<Float>
                let (rs, ks): (Int, Int)
                if ir < firstPacked {
                    ap = a + (ic + ir * mr) * lda + pc
                    (rs, ks) = (lda, 1)
                } else {
                    ap = UnsafePointer(packedA + (ir - firstPacked) * mr * kb)
                    (rs, ks) = (1, mr)
                }
                let cp = c + (ic + ir * mr) * ldc + jr * nr
                if rows == mr && cols == nr {
                    K.tile(kb, ap, rs, ks, bp, cp, ldc, startFromC)
                } else {
                    if startFromC {
                        for r in 0..<rows { (tile + r * nr).update(from: cp + r * ldc, count: cols) }
                    }
                    K.tile(kb, ap, rs, ks, bp, tile, nr, startFromC)
                    for r in 0..<rows { (cp + r * ldc).update(from: tile + r * nr, count: cols) }
                }
            }
        }
    }

    /// Packs alpha * op(A)[row0 ..< row0+rows, k0 ..< k0+kb] into panels of mr rows: panel p holds, for each kk,
    /// the mr values of rows p*mr ..< p*mr+mr (zero past `rows`).
    @inlinable @inline(__always)
    static func packA(
        transA: Bool, a: UnsafePointer<Float>, lda: Int, row0: Int, rows: Int, k0: Int, kb: Int, alpha: Float,
        into dst: UnsafeMutablePointer<Float>
    ) {
        let mr = K.mr
        let panels = (rows + mr - 1) / mr
        for p in 0..<panels {
            let d = dst + p * mr * kb
            let r0 = row0 + p * mr
            let live = min(mr, rows - p * mr)
            if transA {
                // op(A)[i, kk] = a[kk * lda + i]: mr contiguous floats per kk.
                if live == mr {
                    for kk in 0..<kb { copy(a + (k0 + kk) * lda + r0, d + kk * mr, mr) }
                } else {
                    for kk in 0..<kb {
                        let s = a + (k0 + kk) * lda + r0
                        let o = d + kk * mr
                        for r in 0..<live { o[r] = s[r] }
                        for r in live..<mr { o[r] = 0 }
                    }
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

    /// C[0, 0..<n] = alpha x op(B) + beta C with x = op(A)'s one row (x[kk] at x + kk * incx: incx = 1, or lda
    /// when A is transposed) and B not transposed, read in place. With alpha != 1 or incx != 1, `scratch` holds k
    /// floats.
    @inlinable
    public static func oneRow(
        k: Int, n: Int, alpha: Float, x: UnsafePointer<Float>, incx: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    ) {
        guard n > 0, prepareC(rowStart: 0, rowEnd: 1, n: n, k: k, beta: beta, c: c, ldc: n) else { return }
        var xs = x
        if alpha != 1 || incx != 1 {
            for kk in 0..<k { scratch[kk] = alpha == 1 ? x[kk * incx] : alpha * x[kk * incx] }
            xs = UnsafePointer(scratch)
        }
        K.row(k, xs, b, ldb, n, c, beta != 0)
    }
}
