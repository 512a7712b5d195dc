// Two-way fork-join for gemms (Gemm.swift) and large elementwise passes (bias + SiLU, SiLU backward).
//
// OpenBLAS parallelises the gemms; between them its threads sit idle while one core runs the activation pass, which
// at B=4096, H=512 costs a quarter of the forward time. When OpenBLAS is configured for 2+ threads, large passes are
// split in two row ranges: the calling thread runs one, a single helper thread (a plain pthread owned by this
// module, never Swift's cooperative pool) runs the other. The split is by rows of an elementwise operation, so the
// result is bitwise the same as the single-threaded pass. If the helper is busy (another compute thread got it
// first), the caller simply runs the whole pass itself.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization

final class ForkJoinHelper: @unchecked Sendable {
    // Hand-off: the caller stores `job`, then bumps `posted` (sequentially consistent); the helper runs the job and
    // stores its generation in `finished`. Between jobs the helper spins on `posted` (a
    // training step posts one job per gemm and per activation pass, tens of microseconds apart, and a futex wake-up
    // costs about as much as a small gemm) for `spinSeconds`, then sleeps on `wake`. `sleeping` tells a caller it must signal.
    // `job` is written only by the caller holding `owner`, before `posted` is bumped, and read by the helper after it
    // sees the bump; it is cleared by the caller only after `finished` reaches its generation.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let owner = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var job: (() -> Void)?
    private let posted = Atomic<Int>(0)
    private let finished = Atomic<Int>(0)
    private let sleeping = Atomic<Bool>(false)

    static let shared = ForkJoinHelper()

    /// Passes smaller than this many elements run on the caller alone.
    /// With OpenBLAS doing the gemms the helper sleeps between jobs (below), so a pass pays a futex wake-up and
    /// must be larger to gain from the split.
    static var minimumElements: Int { GemmBackend.current.isTessera ? 1 << 15 : 1 << 17 }

    /// How long the helper spins for the next job before it sleeps.
    /// Only with Tessera's own gemm: OpenBLAS's pool threads spin (with sched_yield) after each cblas call too,
    /// and on a 2-core machine two spinning helpers slowed the cblas step by 15% and its forward pass by 70%.
    static var spinSeconds: Double { GemmBackend.current.isTessera ? 200e-6 : 0 }
    /// Checks of `finished` before a waiting caller starts yielding its core.
    static let spinLimit = 100_000

    static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    private init() {
        pthread_mutex_init(mutex, nil)
        pthread_mutex_init(owner, nil)
        pthread_cond_init(wake, nil)
        let thread = Thread { [self] in loop() }
        thread.name = "tessera.compute.helper"
        thread.start()
    }

    private func loop() {
        var seen = 0
        while true {
            var spins = 0
            var spinStart = 0.0
            while posted.load(ordering: .sequentiallyConsistent) == seen {
                spins += 1
                if spins & 255 != 0 { continue }
                let now = Self.monotonicSeconds()
                if spinStart == 0 { spinStart = now }
                if now - spinStart < Self.spinSeconds { continue }
                pthread_mutex_lock(mutex)
                sleeping.store(true, ordering: .sequentiallyConsistent)
                while posted.load(ordering: .sequentiallyConsistent) == seen { pthread_cond_wait(wake, mutex) }
                sleeping.store(false, ordering: .sequentiallyConsistent)
                pthread_mutex_unlock(mutex)
            }
            seen = posted.load(ordering: .sequentiallyConsistent)
            var work = job
            work?()
            work = nil  // release before reporting done: the caller's withoutActuallyEscaping checks for leaks
            finished.store(seen, ordering: .sequentiallyConsistent)
        }
    }

    /// Runs `first` on the calling thread and `second` on the helper, returning when both are done; or both on the
    /// caller if the helper is taken.
    func run(_ first: () -> Void, _ second: () -> Void) {
        guard pthread_mutex_trylock(owner) == 0 else {
            first()
            second()
            return
        }
        defer { pthread_mutex_unlock(owner) }
        withoutActuallyEscaping(second) { second in
            job = second
            let target = posted.wrappingAdd(1, ordering: .sequentiallyConsistent).newValue
            if sleeping.load(ordering: .sequentiallyConsistent) {
                pthread_mutex_lock(mutex)
                pthread_cond_signal(wake)
                pthread_mutex_unlock(mutex)
            }
            first()
            var spins = 0
            while finished.load(ordering: .sequentiallyConsistent) != target {
                spins += 1
                // The helper may have been descheduled: give the core back rather than burn the time slice.
                if spins > Self.spinLimit { sched_yield() }
            }
            job = nil
        }
    }
}

enum Parallel {
    /// Splits rows [0, rows) in two when the pass is large and OpenBLAS runs 2+ threads; `body(lo, hi)`.
    @inline(__always)
    static func rows(_ rows: Int, cols: Int, _ body: (Int, Int) -> Void) {
        if rows >= 2, rows * cols >= ForkJoinHelper.minimumElements, BLASRuntime.threads >= 2 {
            let mid = rows / 2
            ForkJoinHelper.shared.run({ body(0, mid) }, { body(mid, rows) })
        } else {
            body(0, rows)
        }
    }
}
