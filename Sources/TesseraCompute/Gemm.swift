// Which single-precision gemm a process runs, and Tessera's own for x86-64 CPUs with AVX-512 or AVX2.
//
// On a CPU with AVX-512 (F, CD, BW, DQ, VL) every Float gemm goes to `AVX512Gemm` (module TesseraAVX512); on one with
// AVX2 and FMA but no AVX-512, to `AVX2Gemm` (module TesseraAVX2). Both are TesseraKernels' `GemmDriver` around
// their own register tile, and both keep its contract: each element of C is one fused multiply-add chain in k order.
// So the bits do not depend on the blocking, the thread count, the vector width or the OpenBLAS kernel family the
// host happens to pick: AVX-512 and AVX2 hosts give the same bits. Elsewhere, and always for Double, gemm is cblas.
// `BLASRuntime.configure(threads:gemm:)` can force `.avx2` (the AVX2 build on an AVX-512 host: tests, benchmarks)
// or `.openblas` (cblas and the portable SIMD build).
//
// Blocking (kc, mc, loop order) comes from this CPU's cache sizes (sysfs), which is allowed because none of it
// changes a result (GemmDriver.swift). Threads: with `BLASRuntime.threads >= 2` a large gemm is cut into two row
// ranges, one on the caller and one on the module's helper thread (Parallel.swift); the cut does not change any
// result. Scratch is per thread and grows once, so a training step with fixed shapes allocates nothing.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization
import TesseraKernels

#if arch(x86_64)
import TesseraAVX2
import TesseraAVX512
#endif

/// What a process asks for (`BLASRuntime.configure(threads:gemm:)`); executables take it from a flag or
/// `TESSERA_GEMM`, the library never reads the environment.
public enum GemmChoice: String, Sendable, CaseIterable {
    /// Tessera's AVX-512 kernels when the CPU has AVX-512, else its AVX2 kernels when it has AVX2 and FMA, else
    /// OpenBLAS.
    case auto
    /// Tessera's AVX2 kernels even on an AVX-512 CPU (what an AVX2-only host runs; the same bits), else OpenBLAS.
    case avx2
    /// OpenBLAS and the portable SIMD build whatever the CPU: what a CPU without AVX2 runs.
    case openblas
}

/// The Float gemm implementation in use (and with it, which build of the activation passes and Adam runs).
public enum GemmBackend: String, Sendable, CaseIterable {
    /// Tessera's AVX-512 kernel: one fma chain per element, bitwise independent of threads and blocking.
    case avx512
    /// Tessera's AVX2 kernel: the same contract, so the same bits as `avx512`.
    case avx2
    /// cblas_sgemm from OpenBLAS.
    case openblas

    /// The backend for the configured choice on this CPU. Set the choice once, before compute starts: switching
    /// to or from `openblas` while networks train changes their bits.
    public static var current: GemmBackend {
        switch choice.load(ordering: .relaxed) {
        case 1: return .openblas
        case 2: return select(choice: .avx2, cpuFlags: CPUFeatures.flags)
        default: return automatic
        }
    }

    /// Whether Tessera's own kernels (either ISA) run, rather than cblas.
    public var isTessera: Bool { self != .openblas }

    /// 0 = auto, 1 = openblas, 2 = avx2.
    static let choice = Atomic<UInt8>(0)

    static func configure(_ c: GemmChoice) {
        choice.store(c == .openblas ? 1 : c == .avx2 ? 2 : 0, ordering: .relaxed)
    }

    /// Whether this CPU can run the TesseraAVX512 module.
    public static let cpuHasAVX512: Bool = select(choice: .auto, cpuFlags: CPUFeatures.flags) == .avx512

    /// Whether this CPU can run the TesseraAVX2 module (true on every AVX-512 CPU too).
    public static let cpuHasAVX2: Bool = select(choice: .avx2, cpuFlags: CPUFeatures.flags) == .avx2

    /// What `auto` picks on this CPU. A build with `-DTESSERA_PORTABLE_KERNELS` picks OpenBLAS everywhere: ops/test
    /// builds the tests that way a second time, to run what a CPU without AVX2 runs. One with
    /// `-DTESSERA_AVX2_KERNELS` picks the AVX2 kernels wherever the CPU has them, to run the whole suite on what an
    /// AVX2-only host runs.
    static var automatic: GemmBackend {
        #if TESSERA_PORTABLE_KERNELS
        return .openblas
        #elseif TESSERA_AVX2_KERNELS
        return cpuHasAVX2 ? .avx2 : .openblas
        #else
        return cpuHasAVX512 ? .avx512 : (cpuHasAVX2 ? .avx2 : .openblas)
        #endif
    }

    /// The x86 feature flags the TesseraAVX2 module is compiled for (`-target-cpu haswell`).
    static let requiredFlagsAVX2: Set<String> = ["avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "popcnt", "abm"]

    /// The x86 feature flags the TesseraAVX512 module is compiled for (`-target-cpu skylake-avx512`).
    static let requiredFlags: Set<String> = requiredFlagsAVX2.union([
        "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl",
    ])

    static func select(choice: GemmChoice, cpuFlags: Set<String>) -> GemmBackend {
        if choice == .openblas { return .openblas }
        #if arch(x86_64)
        if choice == .auto && requiredFlags.isSubset(of: cpuFlags) { return .avx512 }
        return requiredFlagsAVX2.isSubset(of: cpuFlags) ? .avx2 : .openblas
        #else
        return .openblas
        #endif
    }
}

/// Per-core cache sizes from sysfs (Linux), for the gemm blocking; defaults elsewhere.
public enum CPUCaches {
    /// (L1d, L2) bytes of cpu0.
    public static let sizes: (l1d: Int, l2: Int) = {
        var l1d = 32 << 10, l2 = 1 << 20
        for index in 0..<8 {
            let dir = "/sys/devices/system/cpu/cpu0/cache/index\(index)/"
            func read(_ name: String) -> String? {
                (try? String(contentsOfFile: dir + name, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            guard let level = read("level"), let type = read("type"), let size = read("size") else { continue }
            guard let bytes = parseSize(size) else { continue }
            if level == "1" && type == "Data" { l1d = bytes }
            if level == "2" && (type == "Unified" || type == "Data") { l2 = bytes }
        }
        return (l1d, l2)
    }()

    /// "48K", "2048K", "1M" -> bytes.
    static func parseSize(_ s: String) -> Int? {
        guard let last = s.last else { return nil }
        let scale = last == "K" ? 1 << 10 : last == "M" ? 1 << 20 : last == "G" ? 1 << 30 : 1
        let digits = scale == 1 ? Substring(s) : s.dropLast()
        return Int(digits).map { $0 * scale }
    }
}

/// CPU feature flags as the kernel reports them (Linux: the `flags` line of /proc/cpuinfo; empty elsewhere).
enum CPUFeatures {
    static let flags: Set<String> = {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return [] }
        for line in text.split(separator: "\n") where line.hasPrefix("flags") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
        }
        return []
    }()
}

/// Per-thread gemm scratch, created on a thread's first gemm and released when the thread exits.
enum GemmScratch {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        let rc = pthread_key_create(&key) { raw in
            #if canImport(Darwin)
            Unmanaged<GemmScratchPair>.fromOpaque(raw).release()
            #else
            if let raw { Unmanaged<GemmScratchPair>.fromOpaque(raw).release() }
            #endif
        }
        precondition(rc == 0, "pthread_key_create failed: \(rc)")
        return key
    }()

    /// The calling thread's scratch.
    static func forCurrentThread() -> GemmScratchPair {
        if let raw = pthread_getspecific(key) {
            return Unmanaged<GemmScratchPair>.fromOpaque(raw).takeUnretainedValue()
        }
        let pair = GemmScratchPair()
        pthread_setspecific(key, Unmanaged.passRetained(pair).toOpaque())
        return pair
    }
}

/// A thread's two buffers: its own packing space for A, and the packed B it shares with the helper during one call.
final class GemmScratchPair {
    let packing = GemmScratchBuffer()
    let operand = GemmScratchBuffer()
}

/// One growable Float buffer, 64-byte aligned (a cache line, and one zmm register).
final class GemmScratchBuffer {
    private var buffer: UnsafeMutableRawPointer?
    private var capacity = 0

    deinit { buffer?.deallocate() }

    func reserve(_ count: Int) -> UnsafeMutablePointer<Float> {
        if let buffer, count <= capacity { return buffer.assumingMemoryBound(to: Float.self) }
        buffer?.deallocate()
        capacity = max(count, capacity * 2, 16)
        let fresh = UnsafeMutableRawPointer.allocate(byteCount: capacity * MemoryLayout<Float>.stride, alignment: 64)
        buffer = fresh
        return fresh.bindMemory(to: Float.self, capacity: capacity)
    }
}

enum TesseraGemm {
    /// Below this many multiply-adds a gemm runs on the calling thread alone.
    static let parallelThreshold = 1 << 17

    /// This CPU's blocking for each of Tessera's backends (cache sizes from sysfs; results do not depend on it).
    static let avx512Blocking = blocking(mr: 8, nr: 32)
    static let avx2Blocking = blocking(mr: 6, nr: 16)

    static func blocking(mr: Int, nr: Int) -> GemmBlocking {
        GemmBlocking.forCaches(l1dBytes: CPUCaches.sizes.l1d, l2Bytes: CPUCaches.sizes.l2, mr: mr, nr: nr)
    }

    static func defaultBlocking(_ backend: GemmBackend) -> GemmBlocking {
        if let forced = GemmTuning.override.withLock({ $0 }) { return forced }
        return backend == .avx2 ? avx2Blocking : avx512Blocking
    }

    /// C = alpha op(A) op(B) + beta C (row-major), with the fma-chain contract of GemmDriver, on `backend`
    /// (`.avx512` or `.avx2`; the CPU must have it). `split` overrides the choice of cutting the work in two and
    /// `blocking` this CPU's blocking (tests use both to show they change nothing).
    static func sgemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, backend: GemmBackend = GemmBackend.current,
        split: Bool? = nil, blocking: GemmBlocking? = nil
    ) {
        #if arch(x86_64)
        precondition(backend.isTessera, "TesseraGemm.sgemm: backend \(backend) is not Tessera's")
        precondition(backend == .avx2 ? GemmBackend.cpuHasAVX2 : GemmBackend.cpuHasAVX512, "CPU lacks \(backend)")
        guard m > 0, n > 0 else { return }
        let avx2 = backend == .avx2
        let blocking = blocking ?? defaultBlocking(backend)
        let scratch = GemmScratch.forCurrentThread()
        let mr = avx2 ? AVX2Gemm.mr : AVX512Gemm.mr
        let wantSplit = m * n * k >= parallelThreshold && BLASRuntime.threads >= 2

        if m == 1 && !transB {
            // One row times an unpacked B (gemv with A transposed, the bias gradient): no packing at all; the two
            // threads take column halves (multiples of 16 floats, so both keep whole vectors).
            func row(_ j0: Int, _ j1: Int, _ pair: GemmScratchPair) {
                let s = pair.packing.reserve(max(k, 16))
                // op(A)'s row: a[kk], or a[kk * lda] when A is transposed ([k, 1]).
                let incx = transA ? lda : 1
                if avx2 {
                    AVX2Gemm.oneRow(
                        k: k, n: j1 - j0, alpha: alpha, x: a, incx: incx, b: b + j0, ldb: ldb, beta: beta, c: c + j0,
                        scratch: s)
                } else {
                    AVX512Gemm.oneRow(
                        k: k, n: j1 - j0, alpha: alpha, x: a, incx: incx, b: b + j0, ldb: ldb, beta: beta, c: c + j0,
                        scratch: s)
                }
            }
            let mid = (n / 2 + 15) / 16 * 16
            if (split ?? wantSplit) && mid < n {
                ForkJoinHelper.shared.run({ row(0, mid, scratch) }, { row(mid, n, GemmScratch.forCurrentThread()) })
            } else {
                row(0, n, scratch)
            }
            return
        }

        let parallel = split ?? (m >= 2 * mr && wantSplit)
        // op(B) packed once into nr-column panels (aligned, contiguous), shared by both row ranges.
        let packedCount = avx2 ? AVX2Gemm.packedCount(k: k, n: n) : AVX512Gemm.packedCount(k: k, n: n)
        let packed = scratch.operand.reserve(packedCount)
        let panels = avx2 ? AVX2Gemm.panels(n) : AVX512Gemm.panels(n)
        func pack(_ lo: Int, _ hi: Int) {
            if avx2 {
                AVX2Gemm.packB(
                    trans: transB, b, lds: ldb, k: k, n: n, panelStart: lo, panelEnd: hi, kc: blocking.kc, into: packed)
            } else {
                AVX512Gemm.packB(
                    trans: transB, b, lds: ldb, k: k, n: n, panelStart: lo, panelEnd: hi, kc: blocking.kc, into: packed)
            }
        }
        if parallel && panels >= 2 {
            ForkJoinHelper.shared.run({ pack(0, panels / 2) }, { pack(panels / 2, panels) })
        } else {
            pack(0, panels)
        }
        let sharedB = UnsafePointer(packed)
        func rows(_ lo: Int, _ hi: Int, _ pair: GemmScratchPair) {
            if avx2 {
                let s = pair.packing.reserve(AVX2Gemm.scratchCount(blocking))
                AVX2Gemm.gemmRows(
                    rowStart: lo, rowEnd: hi, transA: transA, n: n, k: k, alpha: alpha, a: a, lda: lda, packedB: sharedB,
                    beta: beta, c: c, ldc: ldc, blocking: blocking, scratch: s)
            } else {
                let s = pair.packing.reserve(AVX512Gemm.scratchCount(blocking))
                AVX512Gemm.gemmRows(
                    rowStart: lo, rowEnd: hi, transA: transA, n: n, k: k, alpha: alpha, a: a, lda: lda, packedB: sharedB,
                    beta: beta, c: c, ldc: ldc, blocking: blocking, scratch: s)
            }
        }
        if parallel, m >= 2 {
            // Cut at a multiple of mr so both halves run whole tiles where possible.
            let mid = min((m / 2 + mr - 1) / mr * mr, m - 1)
            ForkJoinHelper.shared.run(
                { rows(0, mid, scratch) },
                { rows(mid, m, GemmScratch.forCurrentThread()) })
        } else {
            rows(0, m, scratch)
        }
        #else
        preconditionFailure("TesseraGemm.sgemm needs x86-64 with AVX2 or AVX-512")
        #endif
    }

    /// Peak Float FMA rate (GFLOP/s) of `threads` threads (1 or 2: the caller and the helper), each running the
    /// register-only fma loop of `backend` for about `seconds`: the roofline the benchmark reports against.
    static func fmaPeak(backend: GemmBackend, threads: Int, seconds: Double) -> Double {
        #if arch(x86_64)
        precondition(backend.isTessera && threads >= 1 && threads <= 2)
        let flopsPerIteration = backend == .avx2 ? 12.0 * 16 : 16.0 * 32
        func loop(_ n: Int) -> Float {
            backend == .avx2 ? AVX2Gemm.fmaLoop(iterations: n) : AVX512Gemm.fmaLoop(iterations: n)
        }
        // Calibrate the iteration count on one thread, then time both threads on the same count.
        var n = 1 << 16
        while true {
            let t0 = ForkJoinHelper.monotonicSeconds()
            _ = loop(n)
            let dt = ForkJoinHelper.monotonicSeconds() - t0
            if dt > seconds / 8 || n >= 1 << 40 {
                n = max(n, Int(Double(n) * seconds / max(dt, 1e-9)))
                break
            }
            n *= 4
        }
        var best = 0.0
        var sink: Float = 0
        for _ in 0..<3 {
            let t0 = ForkJoinHelper.monotonicSeconds()
            if threads == 2 {
                var other: Float = 0
                ForkJoinHelper.shared.run({ sink += loop(n / 3) }, { other = loop(n / 3) })
                sink += other
            } else {
                sink += loop(n / 3)
            }
            let dt = ForkJoinHelper.monotonicSeconds() - t0
            best = max(best, Double(threads) * Double(n / 3) * flopsPerIteration / dt / 1e9)
        }
        precondition(sink.isFinite, "fma loop diverged")
        return best
        #else
        return 0
        #endif
    }
}

/// Gemm blocking as chosen for this CPU, and an override for tuning it. None of it can change a result (every
/// blocking runs the same fma chains, GemmDriver.swift), so a benchmark may try blockings freely.
public enum GemmTuning {
    static let override = Mutex<GemmBlocking?>(nil)

    /// Forces kc (K block) and mc (row block) for every later Tessera gemm in this process; nil restores the
    /// blocking derived from the cache sizes.
    public static func setBlocking(kc: Int?, mc: Int?) {
        override.withLock { value in
            if let kc, let mc {
                value = GemmBlocking(kc: kc, mc: mc, l2Floats: CPUCaches.sizes.l2 / 4)
            } else {
                value = nil
            }
        }
    }

    /// "kc K, mc M, L2 ..." for `backend` (what the next gemm will use), and the cache sizes it came from.
    public static func describe(_ backend: GemmBackend) -> String {
        guard backend.isTessera else { return "cblas" }
        let b = TesseraGemm.defaultBlocking(backend)
        return "\(b) (L1d \(CPUCaches.sizes.l1d >> 10) KiB, L2 \(CPUCaches.sizes.l2 >> 10) KiB per core)"
    }

    /// The measured roofline: Float FMA GFLOP/s of `threads` threads (1 or 2) running a register-only fma loop of
    /// the widest Tessera build this CPU runs (AVX-512, else AVX2; nil without either), best of three runs of about
    /// `seconds` each.
    public static func fmaPeakGflops(threads: Int, seconds: Double = 0.3, backend: GemmBackend? = nil) -> Double? {
        let b = backend ?? (GemmBackend.cpuHasAVX512 ? .avx512 : GemmBackend.cpuHasAVX2 ? .avx2 : .openblas)
        guard b.isTessera, threads == 1 || threads == 2 else { return nil }
        return TesseraGemm.fmaPeak(backend: b, threads: threads, seconds: seconds)
    }
}
