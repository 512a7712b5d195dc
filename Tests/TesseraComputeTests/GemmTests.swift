import Testing
@testable import TesseraCompute
import TesseraKernels

/// Tessera's AVX-512 and AVX2 gemms against the arithmetic contract they document: every C[i, j] is one fused
/// multiply-add chain over k in order, started from 0 (beta = 0) or beta * C[i, j]. The reference below is a plain
/// scalar loop with `Float.addingProduct` (IEEE fusedMultiplyAdd), written independently of the kernels' tiling, so
/// equality is checked bit for bit, for both backends (an AVX-512 CPU runs the AVX2 build too), with and without
/// the two-thread split, and with this CPU's blocking as well as blockings small enough to take every K-block,
/// row-block and loop-order path: the contract says none of them may change a bit. cblas is used only as a sanity
/// check within rounding.
@Suite struct GemmTests {
    struct Case: CustomStringConvertible {
        var m, n, k: Int
        var transA, transB: Bool
        var alpha, beta: Float
        var pad: Int  // extra leading-dimension slack
        var description: String { "m\(m) n\(n) k\(k) tA\(transA) tB\(transB) a\(alpha) b\(beta) pad\(pad)" }
    }

    /// Deterministic pseudo-random floats in [-1, 1) with full 24-bit mantissas (xorshift; no dependency on Philox).
    static func values(_ count: Int, seed: UInt64) -> [Float] {
        var s = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            s ^= s << 13
            s ^= s >> 7
            s ^= s << 17
            return Float(Int64(bitPattern: s >> 40) - (1 << 23)) / Float(1 << 23)
        }
    }

    struct Operands {
        var a: [Float], b: [Float], c: [Float]
        var lda, ldb, ldc: Int
    }

    static func operands(_ t: Case, seed: UInt64) -> Operands {
        let (aRows, aCols) = t.transA ? (t.k, t.m) : (t.m, t.k)
        let (bRows, bCols) = t.transB ? (t.n, t.k) : (t.k, t.n)
        let lda = aCols + t.pad, ldb = bCols + t.pad, ldc = t.n + t.pad
        var c = values(max(t.m * ldc, 1), seed: seed &+ 3)
        // With beta = 0, C's old contents must be ignored, NaN included (BLAS semantics).
        if t.beta == 0 { c = c.map { _ in .nan } }
        return Operands(
            a: values(max(aRows * lda, 1), seed: seed), b: values(max(bRows * ldb, 1), seed: seed &+ 1), c: c,
            lda: lda, ldb: ldb, ldc: ldc)
    }

    static func reference(_ t: Case, _ o: Operands) -> [Float] {
        var out = o.c
        for i in 0..<t.m {
            for j in 0..<t.n {
                var acc: Float = t.beta == 0 ? 0 : (t.beta == 1 ? o.c[i * o.ldc + j] : t.beta * o.c[i * o.ldc + j])
                for kk in 0..<t.k {
                    let aik = t.transA ? o.a[kk * o.lda + i] : o.a[i * o.lda + kk]
                    let bkj = t.transB ? o.b[j * o.ldb + kk] : o.b[kk * o.ldb + j]
                    acc = acc.addingProduct(t.alpha == 1 ? aik : t.alpha * aik, bkj)
                }
                out[i * o.ldc + j] = acc
            }
        }
        return out
    }

    /// The Tessera backends this CPU can run.
    static var backends: [GemmBackend] {
        (GemmBackend.cpuHasAVX512 ? [.avx512] : []) + (GemmBackend.cpuHasAVX2 ? [.avx2] : [])
    }

    /// nil = this CPU's blocking; the others force many K blocks and row blocks (l2Floats 64: C never "fits", so
    /// the row-blocks-outside order runs whenever it moves less data).
    static let blockings: [GemmBlocking?] = [
        nil, GemmBlocking(kc: 16, mc: 16, l2Floats: 64), GemmBlocking(kc: 100, mc: 24, l2Floats: 1 << 20),
    ]

    static func run(
        _ t: Case, _ o: Operands, split: Bool, backend: GemmBackend = .current, blocking: GemmBlocking? = nil
    ) -> [Float] {
        var c = o.c
        o.a.withUnsafeBufferPointer { a in
            o.b.withUnsafeBufferPointer { b in
                c.withUnsafeMutableBufferPointer { cp in
                    TesseraGemm.sgemm(
                        transA: t.transA, transB: t.transB, m: t.m, n: t.n, k: t.k, alpha: t.alpha,
                        a: a.baseAddress!, lda: o.lda, b: b.baseAddress!, ldb: o.ldb, beta: t.beta,
                        c: cp.baseAddress!, ldc: o.ldc, backend: backend, split: split, blocking: blocking)
                }
            }
        }
        return c
    }

    static var cases: [Case] {
        var out: [Case] = []
        // Tile edges (mr = 8, nr = 32), K-block edges (kc = 256), row-block edges (mc = 128).
        let shapes = [
            (1, 1, 1), (8, 32, 1), (7, 31, 5), (9, 33, 17), (16, 64, 256), (17, 65, 257), (130, 34, 300),
            (129, 2, 128), (2, 128, 520), (40, 96, 0), (64, 70, 33),
            // One row (the bias-gradient gemv as a gemm: unpacked B), across the 128/16-column and scalar edges.
            (1, 300, 77), (1, 16, 3), (1, 129, 64), (1, 2, 5),
            // The MLP's narrow output layer and its dW (m = 2).
            (96, 2, 40), (2, 48, 96),
        ]
        var seed: UInt64 = 1
        for (m, n, k) in shapes {
            for tA in [false, true] {
                for tB in [false, true] {
                    let (alpha, beta): (Float, Float) = [(1, 0), (1, 1), (0.5, -0.25), (-1.5, 1)][Int(seed % 4)]
                    out.append(Case(m: m, n: n, k: k, transA: tA, transB: tB, alpha: alpha, beta: beta, pad: Int(seed % 3)))
                    seed += 1
                }
            }
        }
        return out
    }

    @Test(.enabled(if: GemmBackend.cpuHasAVX2, "needs a CPU with AVX2 and FMA"), arguments: cases)
    func bitwiseEqualToTheFmaChain(_ t: Case) {
        let o = Self.operands(t, seed: UInt64(t.m * 1_000_003 + t.n * 1009 + t.k))
        let want = Self.reference(t, o)
        for backend in Self.backends {
            for blocking in Self.blockings {
                for split in [false, true] {
                    let got = Self.run(t, o, split: split, backend: backend, blocking: blocking)
                    let mismatches = zip(got, want).filter { $0.0.bitPattern != $0.1.bitPattern }.count
                    #expect(
                        mismatches == 0,
                        "\(t) \(backend) \(blocking.map(\.description) ?? "cpu blocking") split=\(split): \(mismatches) elements differ from the fma chain")
                }
            }
        }
    }

    /// The MLP's shapes at a size where this CPU's blocking runs several K blocks and both loop orders.
    @Test(.enabled(if: GemmBackend.cpuHasAVX2, "needs a CPU with AVX2 and FMA"), arguments: [
        Case(m: 600, n: 160, k: 700, transA: false, transB: true, alpha: 1, beta: 0, pad: 0),  // forward X W^T
        Case(m: 160, n: 96, k: 1100, transA: true, transB: false, alpha: 1, beta: 1, pad: 0),  // dW = G^T X
        Case(m: 600, n: 96, k: 160, transA: false, transB: false, alpha: 1, beta: 0, pad: 0),  // dX = G W
    ])
    func largeShapesAreTheFmaChain(_ t: Case) {
        let o = Self.operands(t, seed: 5)
        let want = Self.reference(t, o)
        for backend in Self.backends {
            for blocking in [nil, GemmBlocking(kc: 64, mc: 40, l2Floats: 4096)] as [GemmBlocking?] {
                let got = Self.run(t, o, split: true, backend: backend, blocking: blocking)
                #expect(got.map(\.bitPattern) == want.map(\.bitPattern), "\(t) \(backend) \(blocking.map(\.description) ?? "cpu")")
            }
        }
    }

    @Test func cacheSizesAndBlocking() {
        #expect(CPUCaches.parseSize("48K") == 48 << 10)
        #expect(CPUCaches.parseSize("2048K") == 2 << 20)
        #expect(CPUCaches.parseSize("1M") == 1 << 20)
        #expect(CPUCaches.parseSize("x") == nil)
        let (l1, l2) = CPUCaches.sizes
        #expect(l1 >= 4 << 10 && l2 >= l1)
        for (l1, l2) in [(32 << 10, 1 << 20), (48 << 10, 2 << 20), (48 << 10, 1 << 20), (1 << 10, 1 << 10)] {
            for (mr, nr) in [(8, 32), (6, 16)] {
                let b = GemmBlocking.forCaches(l1dBytes: l1, l2Bytes: l2, mr: mr, nr: nr)
                #expect(b.kc >= 64 && b.kc % 16 == 0 && b.mc >= mr && b.mc % mr == 0, "\(b)")
            }
        }
    }

    /// The same products as OpenBLAS within float rounding (catches a wrong transpose or stride that a reference
    /// sharing the kernel's misreading could miss).
    @Test(.enabled(if: GemmBackend.cpuHasAVX2, "needs a CPU with AVX2 and FMA"), arguments: cases.filter { $0.k > 0 })
    func agreesWithOpenBLAS(_ t: Case) {
        let o = Self.operands(t, seed: 77)
        let ours = Self.run(t, o, split: true, backend: Self.backends[0])
        var theirs = o.c
        o.a.withUnsafeBufferPointer { a in
            o.b.withUnsafeBufferPointer { b in
                theirs.withUnsafeMutableBufferPointer { cp in
                    Float.blasGemm(
                        transA: t.transA, transB: t.transB, m: t.m, n: t.n, k: t.k, alpha: t.alpha,
                        a: a.baseAddress!, lda: o.lda, b: b.baseAddress!, ldb: o.ldb, beta: t.beta,
                        c: cp.baseAddress!, ldc: o.ldc)
                }
            }
        }
        var worst: Float = 0
        for i in 0..<t.m {
            for j in 0..<t.n {
                let x = ours[i * o.ldc + j], y = theirs[i * o.ldc + j]
                worst = max(worst, abs(x - y) / (1 + abs(y)))
            }
        }
        // Sums of k products of magnitude <= ~2: rounding differences are O(k * 2^-24).
        #expect(worst <= Float(t.k) * 1e-6, "\(t): worst relative difference \(worst)")
        // Padding between rows of C (ldc > n) is never written.
        for i in 0..<t.m {
            for j in t.n..<o.ldc { #expect(ours[i * o.ldc + j].bitPattern == o.c[i * o.ldc + j].bitPattern) }
        }
    }

    /// gemv (both orientations) goes through the same kernel as a one-row gemm: the same chain, bit for bit.
    @Test(.enabled(if: GemmBackend.current.isTessera, "needs a Tessera backend"), arguments: [false, true])
    func gemvIsTheFmaChain(_ trans: Bool) {
        for (m, n) in [(1, 1), (7, 33), (256, 128), (300, 45)] {
            let lda = n + 2
            let a = Self.values(m * lda, seed: 11), x = Self.values(trans ? m : n, seed: 12)
            for (alpha, beta) in [(Float(1), Float(0)), (0.5, 1), (1, -2)] {
                let y0 = Self.values(trans ? n : m, seed: 13)
                var want = y0
                for o in 0..<(trans ? n : m) {
                    var acc: Float = beta == 0 ? 0 : (beta == 1 ? y0[o] : beta * y0[o])
                    for i in 0..<(trans ? m : n) {
                        let aij = trans ? a[i * lda + o] : a[o * lda + i]
                        acc = acc.addingProduct(alpha == 1 ? x[i] : alpha * x[i], aij)
                    }
                    want[o] = acc
                }
                var got = y0
                a.withUnsafeBufferPointer { ap in
                    x.withUnsafeBufferPointer { xp in
                        got.withUnsafeMutableBufferPointer { yp in
                            Float.gemv(
                                trans: trans, m: m, n: n, alpha: alpha, a: ap.baseAddress!, lda: lda,
                                x: xp.baseAddress!, beta: beta, y: yp.baseAddress!)
                        }
                    }
                }
                #expect(got.map(\.bitPattern) == want.map(\.bitPattern), "gemv trans=\(trans) \(m)x\(n) alpha=\(alpha) beta=\(beta)")
            }
        }
    }

    @Test func backendSelection() {
        let all = GemmBackend.requiredFlags
        #expect(GemmBackend.select(choice: .openblas, cpuFlags: all) == .openblas)
        #if arch(x86_64)
        #expect(GemmBackend.select(choice: .auto, cpuFlags: all) == .avx512)
        #expect(GemmBackend.select(choice: .auto, cpuFlags: all.subtracting(["avx512bw"])) == .avx2)
        #expect(GemmBackend.select(choice: .avx2, cpuFlags: all) == .avx2)
        #expect(GemmBackend.select(choice: .auto, cpuFlags: GemmBackend.requiredFlagsAVX2) == .avx2)
        #expect(GemmBackend.select(choice: .auto, cpuFlags: all.subtracting(["fma"])) == .openblas)
        #expect(GemmBackend.select(choice: .avx2, cpuFlags: GemmBackend.requiredFlagsAVX2.subtracting(["avx2"])) == .openblas)
        #else
        #expect(GemmBackend.select(choice: .auto, cpuFlags: all) == .openblas)
        #endif
        #expect(GemmBackend.select(choice: .auto, cpuFlags: []) == .openblas)
        #expect(GemmChoice(rawValue: "openblass") == nil)
        #expect(GemmChoice(rawValue: "avx2") == .avx2)
    }

}
