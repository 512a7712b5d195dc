// Two-way fork-join for large elementwise passes (bias + SiLU, SiLU backward).
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

final class ForkJoinHelper: @unchecked Sendable {
    // Invariant: `job`, `generation` and `finished` are only touched with `mutex` held; `owner` serialises callers.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let owner = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let done = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var job: (() -> Void)?
    private var generation = 0
    private var finished = 0

    static let shared = ForkJoinHelper()

    /// Passes smaller than this many elements run on the caller alone (a wake-up costs ~10-30 µs).
    static let minimumElements = 1 << 17

    private init() {
        pthread_mutex_init(mutex, nil)
        pthread_mutex_init(owner, nil)
        pthread_cond_init(wake, nil)
        pthread_cond_init(done, nil)
        let thread = Thread { [self] in loop() }
        thread.name = "tessera.compute.helper"
        thread.start()
    }

    private func loop() {
        var seen = 0
        while true {
            pthread_mutex_lock(mutex)
            while generation == seen { pthread_cond_wait(wake, mutex) }
            seen = generation
            var work = job
            pthread_mutex_unlock(mutex)
            work?()
            work = nil  // release before reporting done: the caller's withoutActuallyEscaping checks for leaks
            pthread_mutex_lock(mutex)
            finished = seen
            pthread_cond_signal(done)
            pthread_mutex_unlock(mutex)
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
            pthread_mutex_lock(mutex)
            job = second
            generation += 1
            let target = generation
            pthread_cond_signal(wake)
            pthread_mutex_unlock(mutex)
            first()
            pthread_mutex_lock(mutex)
            while finished != target { pthread_cond_wait(done, mutex) }
            job = nil
            pthread_mutex_unlock(mutex)
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
