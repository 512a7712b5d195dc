// OpenBLAS behind one choke point. Only this file imports the C module, so no C type reaches the public API.
//
// Every call here is synchronous and may block its thread for milliseconds: callers run training on threads they own
// (a worker's compute slot), never on Swift's cooperative pool. OpenBLAS keeps one global thread count per process,
// so a worker sets it once, at start-up, with `BLASRuntime.configure(threads:)`.

internal import COpenBLAS

/// Process-wide OpenBLAS settings.
public enum BLASRuntime {
    /// Sets the number of OpenBLAS threads (`openblas_set_num_threads`), which also decides whether Tessera's own
    /// kernels split work in two (2+), and the Float gemm backend (docs/compute.md, "Gemm"). Call once per process
    /// before compute starts; with several compute slots per machine, give each slot's share (usually 1).
    public static func configure(threads: Int, gemm: GemmChoice = .auto) {
        precondition(threads >= 1, "BLASRuntime.configure: threads must be >= 1")
        openblas_set_num_threads(Int32(threads))
        GemmBackend.configure(gemm)
    }

    /// The thread count OpenBLAS will use.
    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// The kernel family OpenBLAS picked for this CPU (e.g. "Haswell").
    public static var coreName: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p)
    }

    /// OpenBLAS's build configuration string.
    public static var configuration: String {
        guard let p = openblas_get_config() else { return "unknown" }
        return String(cString: p)
    }
}

@inline(__always) private func trans(_ t: Bool) -> CBLAS_TRANSPOSE { t ? CblasTrans : CblasNoTrans }

/// Direct OpenBLAS calls whatever `GemmBackend.current` says: for benchmarks and comparisons.
public enum OpenBLAS {
    /// cblas_sgemm, row-major: C = alpha op(A) op(B) + beta C.
    public static func sgemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        Float.blasGemm(
            transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
            beta: beta, c: c, ldc: ldc)
    }
}

extension Float {
    @inline(__always)
    static func blasGemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        cblas_sgemm(
            CblasRowMajor, trans(transA), trans(transB), Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b,
            Int32(ldb), beta, c, Int32(ldc))
    }

    @inline(__always)
    static func blasGemv(
        trans t: Bool, m: Int, n: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
        x: UnsafePointer<Float>, beta: Float, y: UnsafeMutablePointer<Float>
    ) {
        cblas_sgemv(CblasRowMajor, trans(t), Int32(m), Int32(n), alpha, a, Int32(lda), x, 1, beta, y, 1)
    }
}

extension Double {
    @inline(__always)
    static func blasGemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double,
        a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
        beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int
    ) {
        cblas_dgemm(
            CblasRowMajor, trans(transA), trans(transB), Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b,
            Int32(ldb), beta, c, Int32(ldc))
    }

    @inline(__always)
    static func blasGemv(
        trans t: Bool, m: Int, n: Int, alpha: Double, a: UnsafePointer<Double>, lda: Int,
        x: UnsafePointer<Double>, beta: Double, y: UnsafeMutablePointer<Double>
    ) {
        cblas_dgemv(CblasRowMajor, trans(t), Int32(m), Int32(n), alpha, a, Int32(lda), x, 1, beta, y, 1)
    }
}
