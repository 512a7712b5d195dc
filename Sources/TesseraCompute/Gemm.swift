// Which single-precision gemm a process runs, and Tessera's own for CPUs with AVX-512.
//
// On a CPU with AVX-512 (F, CD, BW, DQ, VL) every Float gemm goes to `AVX512Gemm` (module TesseraAVX512): each
// element of C is one fused multiply-add chain in k order, so the bits do not depend on the blocking, the thread
// count or the OpenBLAS kernel family the host happens to pick. Elsewhere, and always for Double, gemm is cblas.
// `BLASRuntime.configure(threads:gemm: .openblas)` forces cblas for Float too, and the portable SIMD build.
//
// Threads: with `BLASRuntime.threads >= 2` a large gemm is cut into two row ranges, one on the caller and one on the
// module's helper thread (Parallel.swift); the cut does not change any result. Scratch is per thread and grows
// once, so a training step with fixed shapes allocates nothing.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization

#if arch(x86_64)
import TesseraAVX512
#endif

/// What a process asks for (`BLASRuntime.configure(threads:gemm:)`); executables take it from a flag or
/// `TESSERA_GEMM`, the library never reads the environment.
public enum GemmChoice: String, Sendable, CaseIterable {
    /// Tessera's AVX-512 kernels when the CPU has AVX-512, else OpenBLAS.
    case auto
    /// OpenBLAS and the portable SIMD build whatever the CPU: what a CPU without AVX-512 runs.
    case openblas
}

/// The Float gemm implementation in use (and with it, whether the activation passes and Adam run their AVX-512
/// builds).
public enum GemmBackend: String, Sendable, CaseIterable {
    /// Tessera's AVX-512 kernel: one fma chain per element, bitwise independent of threads and blocking.
    case avx512
    /// cblas_sgemm from OpenBLAS.
    case openblas

    /// The backend for `choice` on this CPU. Set the choice once, before compute starts: switching while networks
    /// train changes their bits.
    public static var current: GemmBackend { choice.load(ordering: .relaxed) == 1 ? .openblas : automatic }

    /// 0 = auto, 1 = openblas.
    static let choice = Atomic<UInt8>(0)

    static func configure(_ c: GemmChoice) { choice.store(c == .openblas ? 1 : 0, ordering: .relaxed) }

    /// Whether this CPU can run the TesseraAVX512 module. With the `avx512` backend the activation passes and Adam
    /// use it too (the same bits as their baseline builds); the `openblas` choice runs none of it.
    public static let cpuHasAVX512: Bool = select(choice: .auto, cpuFlags: CPUFeatures.flags) == .avx512

    /// What `auto` picks on this CPU. A build with `-DTESSERA_PORTABLE_KERNELS` picks OpenBLAS everywhere: ops/test
    /// builds the tests that way a second time, to run what a CPU without AVX-512 runs.
    static var automatic: GemmBackend {
        #if TESSERA_PORTABLE_KERNELS
        return .openblas
        #else
        return cpuHasAVX512 ? .avx512 : .openblas
        #endif
    }

    /// The x86 feature flags the TesseraAVX512 module is compiled for (`-target-cpu skylake-avx512`).
    static let requiredFlags: Set<String> = [
        "avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "popcnt", "abm", "avx512f", "avx512cd", "avx512bw",
        "avx512dq", "avx512vl",
    ]

    static func select(choice: GemmChoice, cpuFlags: Set<String>) -> GemmBackend {
        if choice == .openblas { return .openblas }
        #if arch(x86_64)
        return requiredFlags.isSubset(of: cpuFlags) ? .avx512 : .openblas
        #else
        return .openblas
        #endif
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

    /// C = alpha op(A) op(B) + beta C (row-major), with the fma-chain contract of AVX512Gemm. `split` overrides the
    /// choice of cutting the rows in two (tests use it to show the cut changes nothing).
    static func sgemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, split: Bool? = nil
    ) {
        #if arch(x86_64)
        guard m > 0, n > 0 else { return }
        let scratch = GemmScratch.forCurrentThread()
        let mr = AVX512Gemm.mr
        let parallel = split ?? (m >= 2 * mr && m * n * k >= parallelThreshold && BLASRuntime.threads >= 2)
        // op(B) packed once into 32-column panels (aligned, contiguous), shared by both row ranges.
        let packed = scratch.operand.reserve(AVX512Gemm.packedCount(k: k, n: n))
        let panels = AVX512Gemm.panels(n)
        func pack(_ lo: Int, _ hi: Int) {
            AVX512Gemm.packB(trans: transB, b, lds: ldb, k: k, n: n, panelStart: lo, panelEnd: hi, into: packed)
        }
        if parallel && panels >= 2 {
            ForkJoinHelper.shared.run({ pack(0, panels / 2) }, { pack(panels / 2, panels) })
        } else {
            pack(0, panels)
        }
        let sharedB = UnsafePointer(packed)
        func rows(_ lo: Int, _ hi: Int, _ pair: GemmScratchPair) {
            let s = pair.packing.reserve(AVX512Gemm.scratchCount)
            AVX512Gemm.gemmRows(
                rowStart: lo, rowEnd: hi, transA: transA, n: n, k: k, alpha: alpha, a: a, lda: lda, packedB: sharedB,
                beta: beta, c: c, ldc: ldc, scratch: s)
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
        preconditionFailure("TesseraGemm.sgemm needs x86-64 with AVX-512")
        #endif
    }
}
