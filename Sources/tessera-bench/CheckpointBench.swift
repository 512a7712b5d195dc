// `tessera-bench checkpoint`: issue 9's "256 MiB checkpoint, worker → store, sha256-verified, fsynced" row, against a
// running coordinator (ops/bench checkpoint starts it on a durable PostgreSQL, with no worker of its own). One
// invocation measures, for the same --size bytes, best of --rounds (the rounds interleave the phases, so a burst of
// load on the shared machine hits one round of every phase rather than one phase):
//  1. raw ZeroMQ: a DEALER → ROUTER over tcp loopback in this process, the bytes in messages of the worker's chunk
//     size, at most the worker's chunk window unacknowledged (the ROUTER answers each message with 8 bytes, as the
//     coordinator ACKs every chunk), through our ZMQSocket wrapper; also without window or ACKs, for reference;
//  2. sha256 of the bytes (swift-crypto, as the worker and BlobStore hash);
//  3. disk: write in chunk-size pieces into a file on the coordinator's data-dir filesystem, fsync, rename, fsync
//     the directory (what BlobStore.finish does);
//  4. the real path: the worker side is the real `WorkerStateMachine` on a loop thread of its own driving a DEALER
//     (as TesseraWorker.WorkerDaemon does), registered with capability `rl/noop`, leased a one-shard noop job
//     submitted through the client protocol. This thread plays the compute thread: the clock starts when it holds
//     the blob; it does what ShardChannel.enqueueBlob does (hands the blob over as `.computed`, hashes it while the
//     loop sends, hands over the digest), and the clock stops when the transfer's final CHUNK ACK arrives
//     (verified, fsynced, renamed, registered: durable). It then finishes the shard with DONE, so the job succeeds
//     and nothing is left leased.
//     --hash-first hashes before the hand-over instead, as ShardChannel did before, to show what the overlap gains.
//  5. the ratio of the throughputs real / min(1, 2, 3) against issue 9's target of 70 %, the peak RSS (VmHWM, reset
//     through /proc/PID/clear_refs before each real transfer) of the coordinator (--coordinator-pid) and of this
//     process, and the CPU time both and the whole machine used during the best transfer (/proc), which says
//     whether the path waited on something or the CPUs were full.
// Prints a table; --json FILE writes the figures.

import ArgumentParser
import Crypto
import Foundation
import Synchronization
import TesseraCore
import TesseraModel
import TesseraProtocol
import TesseraWorkerCore
import ZeroMQ

struct CheckpointBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "A checkpoint's transfer worker → store against raw ZeroMQ, sha256 and disk write+fsync.")

    @Option(help: "Coordinator endpoint.") var coordinator: String
    @Option(help: "The coordinator's data dir: the disk phase writes on its filesystem.") var dataDir: String
    @Option(help: "The coordinator's pid, for its peak RSS (VmHWM) during the transfer.") var coordinatorPid: Int32?
    @Option(help: "Blob size: bytes, or with a KiB / MiB / GiB suffix.") var size: String = "256MiB"
    @Option(help: "Rounds; each figure is the best round.") var rounds: Int = 3
    @Option(help: "Write the figures to this file as JSON.") var json: String?
    @Option(help: "Give up on a phase after this many seconds.") var timeout: Double = 300
    @Option(help: "Chunk size in bytes (default: the worker's, WorkerStateMachine.Configuration).") var chunkSize: Int?
    @Option(help: "Chunks in flight (default: the worker's).") var window: Int?
    @Flag(help: "Hash the whole blob before handing it over, as the worker did before it overlapped the two.")
    var hashFirst = false

    var bytes: Int { (try? Self.parseSize(size)) ?? 0 }

    func validate() throws {
        guard let n = try? Self.parseSize(size), n > 0 else { throw ValidationError("--size: not a size: '\(size)'") }
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
        if let c = chunkSize, c < 1 || c > WireCodec.limits.maxBlobBytes { throw ValidationError("--chunk-size: 1...64 MiB") }
        if let w = window, w < 1 { throw ValidationError("--window must be at least 1") }
    }

    static func parseSize(_ s: String) throws -> Int {
        let units: [(String, Int)] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1), ("", 1)]
        for (suffix, scale) in units where s.hasSuffix(suffix) {
            guard let n = Int(s.dropLast(suffix.count)), n >= 0 else { break }
            return n * scale
        }
        throw ValidationError("not a size: '\(s)'")
    }

    func run() throws {
        // The worker's own transfer parameters, so the baselines move the bytes the way the real path does.
        var machine = WorkerStateMachine.Configuration(name: "", host: "", slots: 1, capabilities: [])
        machine.chunkSize = self.chunkSize ?? machine.chunkSize
        machine.chunkWindow = self.window ?? machine.chunkWindow
        let chunkSize = machine.chunkSize
        let window = machine.chunkWindow
        let size = bytes
        var blob = [UInt8](repeating: 0, count: size)
        fillRandom(&blob, seed: 0x7e55e7a)

        let worker = try BenchWorker(endpoint: coordinator, chunkSize: chunkSize, window: window, timeout: timeout)
        defer { worker.shutDown() }
        let client = try BenchClient(endpoint: coordinator)
        try worker.waitRegistered()

        var zmqWindowed: [Double] = []
        var zmqStreaming: [Double] = []
        var sha: [Double] = []
        var disk: [Double] = []
        var real: [Transfer] = []
        for round in 0..<rounds {
            zmqWindowed.append(try rawZeroMQ(blob, chunkSize: chunkSize, window: window))
            zmqStreaming.append(try rawZeroMQ(blob, chunkSize: chunkSize, window: nil))
            sha.append(hashSeconds(blob))
            disk.append(try diskSeconds(blob, chunkSize: chunkSize))
            // A different blob each round (its first 8 bytes), so each round stores a new content address.
            blob.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(round + 1), toByteOffset: 0, as: UInt64.self) }
            real.append(try realTransfer(blob, worker: worker, client: client, round: round))
            FileHandle.standardError.write(Data(
                "round \(round + 1)/\(rounds): zmq \(mbps(size, zmqWindowed.last!)) MB/s, sha256 \(mbps(size, sha.last!)), disk \(mbps(size, disk.last!)), real \(mbps(size, real.last!.seconds))\n".utf8))
        }

        let best = real.min { $0.seconds < $1.seconds }!
        let floor = [zmqWindowed.min()!, sha.min()!, disk.min()!].max()!  // the slowest component sets the bar
        let ratio = floor / best.seconds
        let figures: [(String, Double)] = [
            ("raw ZeroMQ, \(chunkSize >> 10) KiB messages, window \(window), per-message ACK", zmqWindowed.min()!),
            ("raw ZeroMQ, \(chunkSize >> 10) KiB messages, no window (reference)", zmqStreaming.min()!),
            ("sha256 (swift-crypto)", sha.min()!),
            ("disk: write \(chunkSize >> 10) KiB pieces + fsync + rename", disk.min()!),
            ("real path: worker sha256 + transfer + verify + fsync + register", best.seconds),
        ]
        print("checkpoint transfer: \(size) bytes (\(String(format: "%.1f", Double(size) / 1048576)) MiB), best of \(rounds) rounds; MB = 10^6 bytes")
        print("")
        print("phase".padding(toLength: 66, withPad: " ", startingAt: 0) + "   seconds      MB/s")
        for (name, s) in figures {
            print(name.padding(toLength: 66, withPad: " ", startingAt: 0) + String(format: "  %8.3f  %8.0f", s, Double(size) / s / 1e6))
        }
        print("")
        print(String(format: "real / min(zmq, sha256, disk), in MB/s = %.1f %% (target >= 70 %%)", ratio * 100))
        let when = hashFirst ? "before the first chunk, --hash-first" : "overlapping the chunks"
        print(String(format: "real path, best round: worker sha256 done after %.3f s (", best.hashSeconds) + when
            + String(
                format: "), first → last chunk sent %.3f s, last chunk sent → final ACK %.3f s", best.sendSeconds,
                best.tailSeconds))
        print(String(
            format: "CPU during that transfer (%.3f s): coordinator %.3f s (busiest thread %.3f), worker side %.3f s (busiest thread %.3f), whole machine %.3f s of %.3f available (%d CPUs)",
            best.seconds, best.coordinatorCPU.total, best.coordinatorCPU.busiestThread, best.workerCPU.total,
            best.workerCPU.busiestThread, best.machineBusy, best.seconds * Double(CPUTime.cpus), CPUTime.cpus))
        let hwm = real.compactMap(\.coordinatorHWM).max()
        let workerHWM = real.compactMap(\.workerHWM).max()
        print("peak RSS during the transfer (VmHWM): coordinator \(kib(hwm)) (\(kib(real.compactMap(\.coordinatorRSSBefore).max())) before), "
            + "worker side (this process, holding the blob) \(kib(workerHWM)) (\(kib(real.compactMap(\.workerRSSBefore).max())) before)")

        if let json {
            let rows: JSONObject = [
                "bytes": .int(size), "chunk_size": .int(chunkSize), "chunk_window": .int(window), "rounds": .int(rounds),
                "hash_first": .bool(hashFirst),
                "zmq_windowed_s": .array(zmqWindowed.map { .number($0) }),
                "zmq_streaming_s": .array(zmqStreaming.map { .number($0) }),
                "sha256_s": .array(sha.map { .number($0) }), "disk_s": .array(disk.map { .number($0) }),
                "real_s": .array(real.map { .number($0.seconds) }),
                "zmq_windowed_mb_s": .number(Double(size) / zmqWindowed.min()! / 1e6),
                "zmq_streaming_mb_s": .number(Double(size) / zmqStreaming.min()! / 1e6),
                "sha256_mb_s": .number(Double(size) / sha.min()! / 1e6),
                "disk_mb_s": .number(Double(size) / disk.min()! / 1e6),
                "real_mb_s": .number(Double(size) / best.seconds / 1e6),
                "ratio": .number(ratio), "target_ratio": .number(0.7),
                "real_best_hash_s": .number(best.hashSeconds), "real_best_send_s": .number(best.sendSeconds),
                "real_best_tail_s": .number(best.tailSeconds),
                "real_best_cpu_coordinator_s": .number(best.coordinatorCPU.total),
                "real_best_cpu_worker_s": .number(best.workerCPU.total),
                "real_best_cpu_machine_s": .number(best.machineBusy), "cpus": .int(CPUTime.cpus),
                "coordinator_hwm_kb": hwm.map { .int($0) } ?? .null,
                "worker_hwm_kb": workerHWM.map { .int($0) } ?? .null,
                "coordinator_rss_before_kb": real.compactMap(\.coordinatorRSSBefore).max().map { .int($0) } ?? .null,
                "worker_rss_before_kb": real.compactMap(\.workerRSSBefore).max().map { .int($0) } ?? .null,
            ]
            try Data(JSONValue.object(rows).render(pretty: true).utf8).write(to: URL(fileURLWithPath: json))
        }
    }

    private func mbps(_ n: Int, _ s: Double) -> String { String(format: "%.0f", Double(n) / s / 1e6) }
    private func kib(_ kb: Int?) -> String { kb.map { String(format: "%.0f MiB", Double($0) / 1024) } ?? "n/a" }

    // MARK: 1. Raw ZeroMQ

    /// Seconds to move `blob` from a DEALER to a ROUTER on another thread, `chunkSize` per message; with a window,
    /// the ROUTER answers each message and the DEALER keeps at most `window` unanswered, as a transfer does.
    func rawZeroMQ(_ blob: [UInt8], chunkSize: Int, window: Int?) throws -> Double {
        let context = try ZMQContext(ioThreads: 1)
        defer { context.terminate() }
        let router = try ZMQSocket(context: context, type: .router)
        try router.setLinger(milliseconds: 0)
        try router.setReceiveHighWaterMark(1_000_000)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint
        let dealer = try ZMQSocket(context: context, type: .dealer)
        defer { dealer.close() }
        try dealer.setLinger(milliseconds: 0)
        try dealer.setSendHighWaterMark(1_000_000)
        try dealer.connect(endpoint)
        // The chunks exist before the clock starts: this is ZeroMQ's (and our wrapper's) cost, not slicing's.
        let chunks = stride(from: 0, to: blob.count, by: chunkSize).map { Array(blob[$0..<min(blob.count, $0 + chunkSize)]) }
        let acks = window != nil
        let finished = DispatchSemaphore(value: 0)
        let total = blob.count
        let receiver = Thread { [router] in
            defer {
                router.close()
                finished.signal()
            }
            var n = 0
            while n < total {
                guard (try? ZMQ.poll([ZMQPollItem(socket: router)], timeoutMilliseconds: 1000))?.first == true else { continue }
                while n < total, let frames = try? router.receive(dontWait: true) {
                    let data = frames.last!
                    n += data.count
                    // The ping (an empty message) is always answered; data only when the sender keeps a window.
                    if acks || data.isEmpty {
                        _ = try? router.send([frames[0], [], withUnsafeBytes(of: UInt64(n)) { Array($0) }])
                    }
                }
            }
        }
        receiver.start()
        // A ping first, so the connection is up before the clock starts.
        _ = try dealer.send([[], []])
        _ = try dealer.receive()
        let start = ContinuousClock.now
        var inFlight = 0
        for chunk in chunks {
            if let window {
                while inFlight >= window {
                    _ = try dealer.receive()
                    inFlight -= 1
                }
            }
            _ = try dealer.send([[], chunk])
            inFlight += 1
        }
        if acks {
            while inFlight > 0 {
                _ = try dealer.receive()
                inFlight -= 1
            }
        } else {
            finished.wait()
        }
        let seconds = (ContinuousClock.now - start).seconds
        if acks { finished.wait() }
        return seconds
    }

    // MARK: 2. sha256

    func hashSeconds(_ blob: [UInt8]) -> Double {
        let start = ContinuousClock.now
        let hex = sha256Hex(blob)
        let seconds = (ContinuousClock.now - start).seconds
        precondition(hex.count == 64)
        return seconds
    }

    // MARK: 3. Disk

    /// Seconds to write `blob` in `chunkSize` pieces to a new file next to the coordinator's store, fsync it, rename
    /// it and fsync the directory, as BlobStore does with a transfer.
    func diskSeconds(_ blob: [UInt8], chunkSize: Int) throws -> Double {
        let dir = "\(dataDir)/bench-disk"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let tmp = "\(dir)/\(getpid()).part"
        let final = "\(dir)/\(getpid()).blob"
        defer {
            unlink(tmp)
            unlink(final)
        }
        let start = ContinuousClock.now
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw BenchClient.Failure(description: "cannot create \(tmp): errno \(errno)") }
        try blob.withUnsafeBytes { buf in
            var offset = 0
            while offset < buf.count {
                let end = min(buf.count, offset + chunkSize)
                var done = offset
                while done < end {
                    let n = write(fd, buf.baseAddress! + done, end - done)
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { throw BenchClient.Failure(description: "write failed: errno \(errno)") }
                    done += n
                }
                offset = end
            }
        }
        guard fsync(fd) == 0 else { throw BenchClient.Failure(description: "fsync failed: errno \(errno)") }
        close(fd)
        guard rename(tmp, final) == 0 else { throw BenchClient.Failure(description: "rename failed: errno \(errno)") }
        let dfd = open(dir, O_RDONLY)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
        return (ContinuousClock.now - start).seconds
    }

    // MARK: 4. The real path

    struct Transfer {
        var seconds: Double
        var hashSeconds: Double
        var sendSeconds: Double
        var tailSeconds: Double
        var coordinatorHWM: Int?
        var workerHWM: Int?
        /// RSS when the transfer started (VmHWM starts there after the reset).
        var coordinatorRSSBefore: Int?
        var workerRSSBefore: Int?
        /// CPU seconds used during the transfer: the coordinator, this process (the worker side), the whole machine
        /// (all processes, from /proc/stat), and its busiest thread for each of the first two.
        var coordinatorCPU = CPUTime.Use()
        var workerCPU = CPUTime.Use()
        var machineBusy = 0.0
    }

    func realTransfer(_ blob: [UInt8], worker: BenchWorker, client: BenchClient, round: Int) throws -> Transfer {
        // Leased to our worker and kept running (sleep_ms) until it reports DONE itself.
        let spec = try JobSpec.parse(
            "name: checkpoint-bench\nkind: rl\nalgorithm: noop\nseed: \(round + 1)\nshards: 1\nparams: {sleep_ms: 3600000}\n",
            file: "checkpoint-bench.yaml")
        let submitted = try client.call("submit", ["spec": spec.json])
        guard let job = submitted["job_id"]?.intValue else { throw BenchClient.Failure(description: "submit gave no job id") }
        do {
            let dispatch = try worker.waitDispatch(job: Int64(job))
            resetPeakRSS(getpid())
            if let coordinatorPid { resetPeakRSS(coordinatorPid) }
            let rssBefore = (coordinatorPid.flatMap { peakRSS($0, field: "VmRSS:") }, peakRSS(getpid(), field: "VmRSS:"))
            let cpuBefore = (coordinatorPid.map { CPUTime.threads($0) } ?? [:], CPUTime.threads(getpid()), CPUTime.machineBusy())

            let start = ContinuousClock.now
            // What ShardChannel.enqueueBlob does on the compute thread: hand the blob over, hash it while the loop
            // sends it, hand over the digest (the last chunk waits for it).
            let hashed: ContinuousClock.Instant
            if hashFirst {
                let checkpoint = WorkerStateMachine.Blob(kind: .checkpoint, step: 1, bytes: blob, sha256: sha256Hex(blob))
                hashed = ContinuousClock.now
                worker.post(dispatch.ref, WorkerStateMachine.ComputeOutput(step: 1, blobs: [checkpoint]))
            } else {
                let checkpoint = WorkerStateMachine.Blob(kind: .checkpoint, step: 1, bytes: blob, sha256: "")
                worker.post(dispatch.ref, WorkerStateMachine.ComputeOutput(step: 1, blobs: [checkpoint]))
                let digest = sha256Hex(blob)
                hashed = ContinuousClock.now
                worker.post(dispatch.ref, WorkerStateMachine.ComputeOutput(step: 1, digests: [digest]))
            }
            let t = try worker.waitFinalChunkAck(dispatch.ref, size: UInt64(blob.count))
            let cpuAfter = (coordinatorPid.map { CPUTime.threads($0) } ?? [:], CPUTime.threads(getpid()), CPUTime.machineBusy())
            let transfer = Transfer(
                seconds: (t.finalAck - start).seconds, hashSeconds: (hashed - start).seconds,
                sendSeconds: (t.lastSent - t.firstSent).seconds, tailSeconds: (t.finalAck - t.lastSent).seconds,
                coordinatorHWM: coordinatorPid.flatMap { peakRSS($0) }, workerHWM: peakRSS(getpid()),
                coordinatorRSSBefore: rssBefore.0, workerRSSBefore: rssBefore.1,
                coordinatorCPU: CPUTime.use(cpuBefore.0, cpuAfter.0), workerCPU: CPUTime.use(cpuBefore.1, cpuAfter.1),
                machineBusy: cpuAfter.2 - cpuBefore.2)

            // The summary noop's merge expects of shard 0.
            let summary: JSONValue = .object(["index": .int(0), "metrics": .int(0), "result_bytes": .int(0)])
            worker.post(dispatch.ref, WorkerStateMachine.ComputeOutput(step: 1, outcome: .done(summary: summary.utf8Bytes)))
            try worker.waitDoneAck(dispatch.ref)
            return transfer
        } catch {
            _ = try? client.call("cancel", ["job": .int(job)])
            throw error
        }
    }

    /// VmHWM (or another `Vm…:` line) of a process in kB (Linux), nil if unreadable.
    func peakRSS(_ pid: Int32, field: String = "VmHWM:") -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field) })
        else { return nil }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }

    /// Resets VmHWM to the current RSS (`echo 5 > /proc/PID/clear_refs`), so it measures the transfer alone.
    func resetPeakRSS(_ pid: Int32) {
        let fd = open("/proc/\(pid)/clear_refs", O_WRONLY)
        guard fd >= 0 else { return }
        _ = write(fd, "5", 1)
        close(fd)
    }

    /// Incompressible bytes (SplitMix64), so nothing along the path could get them cheaper than real data.
    func fillRandom(_ bytes: inout [UInt8], seed: UInt64) {
        var x = seed
        bytes.withUnsafeMutableBytes { buf in
            let words = buf.count / 8
            let p = buf.baseAddress!
            for i in 0..<words {
                x &+= 0x9E37_79B9_7F4A_7C15
                var z = x
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                p.storeBytes(of: z ^ (z >> 31), toByteOffset: i * 8, as: UInt64.self)
            }
            for i in words * 8..<buf.count { buf[i] = UInt8(truncatingIfNeeded: i) }
        }
    }
}

/// CPU time from /proc (Linux; clock ticks of 10 ms, so figures are ± 0.01 s per thread).
enum CPUTime {
    struct Use {
        var total = 0.0
        var busiestThread = 0.0
    }

    static let cpus = ProcessInfo.processInfo.activeProcessorCount
    static let tick = Double(sysconf(Int32(_SC_CLK_TCK)))

    /// utime + stime of each thread of `pid`, in seconds.
    static func threads(_ pid: Int32) -> [Int: Double] {
        var out: [Int: Double] = [:]
        for tid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? [] {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { continue }
            // Fields after the command name: state is field 3, utime 14 and stime 15.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]), let t = Int(tid) else { continue }
            out[t] = (u + s) / tick
        }
        return out
    }

    static func use(_ before: [Int: Double], _ after: [Int: Double]) -> Use {
        let deltas = after.map { $0.value - (before[$0.key] ?? 0) }
        return Use(total: deltas.reduce(0, +), busiestThread: deltas.max() ?? 0)
    }

    /// Seconds all CPUs of the machine have been busy (not idle or iowait) since boot, from /proc/stat.
    static func machineBusy() -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
            let line = stat.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") })
        else { return 0 }
        let v = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard v.count >= 5 else { return 0 }
        return (v.reduce(0, +) - v[3] - v[4]) / tick
    }
}

/// The hex digest as the worker (ShardChannel's BlobHash) and BlobStore write it.
func sha256Hex(_ bytes: [UInt8]) -> String {
    SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

/// The worker side of the real path: the real `WorkerStateMachine` on a loop thread of its own, driving a DEALER the
/// way TesseraWorker.WorkerDaemon does (poll the socket and a wake-up pipe, feed the machine frames, compute output
/// and ticks, carry out its actions). The bench's main thread plays the compute thread: it `post`s output and waits
/// for what the loop observed (DISPATCH, chunk sends, ACKs).
final class BenchWorker: @unchecked Sendable {
    // @unchecked: `observed` and `outbox` are touched only under `condition`; the socket and the machine only by the
    // loop thread.
    struct Observed {
        var registered = false
        var dispatches: [Dispatch] = []
        var firstChunkSent: [ShardRef: ContinuousClock.Instant] = [:]
        var lastChunkSent: [ShardRef: ContinuousClock.Instant] = [:]
        var finalChunkAck: [ShardRef: (ContinuousClock.Instant, Ack)] = [:]
        var doneAck: [ShardRef: Ack] = [:]
        var failure: String?
        var exited = false
    }

    private let condition = NSCondition()
    private var observed = Observed()
    private var outbox: [(ShardRef, WorkerStateMachine.ComputeOutput)] = []
    private let wakeup: Wakeup
    private let stop = Atomic<Bool>(false)
    private let endpoint: String
    private let timeout: Double
    private var socket: ZMQSocket?

    private let chunkSize: Int
    private let window: Int

    init(endpoint: String, chunkSize: Int, window: Int, timeout: Double) throws {
        self.endpoint = endpoint
        self.chunkSize = chunkSize
        self.window = window
        self.timeout = timeout
        wakeup = try Wakeup()
        let thread = Thread { [self] in
            do {
                try loop()
            } catch {
                update { $0.failure = "worker loop: \(error)" }
            }
            update { $0.exited = true }
        }
        thread.name = "bench-worker-loop"
        thread.start()
    }

    private func update(_ change: (inout Observed) -> Void) {
        condition.lock()
        change(&observed)
        condition.broadcast()
        condition.unlock()
    }

    /// Hands the machine a shard's output, as ShardChannel does for a compute thread.
    func post(_ ref: ShardRef, _ output: WorkerStateMachine.ComputeOutput) {
        condition.lock()
        outbox.append((ref, output))
        condition.unlock()
        wakeup.signal()
    }

    /// Graceful: the machine drains (it holds no shard by now), says DISCONNECT and exits.
    func shutDown() {
        stop.store(true, ordering: .relaxed)
        wakeup.signal()
        _ = try? wait("the worker loop to exit") { $0.exited ? true : nil }
    }

    private func wait<T>(_ what: String, _ check: (Observed) -> T?) throws -> T {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let v = check(observed) { return v }
            if let f = observed.failure { throw BenchClient.Failure(description: f) }
            if observed.exited { throw BenchClient.Failure(description: "the worker loop exited waiting for \(what)") }
            guard condition.wait(until: deadline) else {
                throw BenchClient.Failure(description: "no \(what) within \(timeout) s")
            }
        }
    }

    func waitRegistered() throws { _ = try wait("HEARTBEAT after READY") { $0.registered ? true : nil } }

    func waitDispatch(job: Int64) throws -> Dispatch {
        try wait("DISPATCH of job \(job)") { $0.dispatches.first { $0.ref.jobID == job } }
    }

    func waitFinalChunkAck(_ ref: ShardRef, size: UInt64) throws -> (firstSent: ContinuousClock.Instant, lastSent: ContinuousClock.Instant, finalAck: ContinuousClock.Instant) {
        let (first, last, at, ack) = try wait("final CHUNK ACK") { o -> (ContinuousClock.Instant, ContinuousClock.Instant, ContinuousClock.Instant, Ack)? in
            guard let (at, ack) = o.finalChunkAck[ref], let f = o.firstChunkSent[ref], let l = o.lastChunkSent[ref] else { return nil }
            return (f, l, at, ack)
        }
        guard ack.accepted, ack.offset == size else {
            throw BenchClient.Failure(description: "the coordinator rejected the transfer (ACK offset \(ack.offset), accepted \(ack.accepted)); see its log")
        }
        return (first, last, at)
    }

    func waitDoneAck(_ ref: ShardRef) throws {
        let ack = try wait("DONE ACK") { $0.doneAck[ref] }
        guard ack.accepted else { throw BenchClient.Failure(description: "SHARD_DONE not accepted") }
    }

    // MARK: Loop thread

    private func loop() throws {
        let context = try ZMQContext(ioThreads: 1)
        self.context = context
        defer { context.terminate() }
        var configuration = WorkerStateMachine.Configuration(
            name: "checkpoint-bench-\(getpid())", host: ProcessInfo.processInfo.hostName, slots: 1, capabilities: ["rl/noop"])
        configuration.chunkSize = chunkSize
        configuration.chunkWindow = window
        var machine = WorkerStateMachine(configuration: configuration)
        var draining = false
        try perform(machine.handle(.start, now: .now))
        while !machine.hasExited {
            if stop.load(ordering: .relaxed) && !draining {
                draining = true
                try perform(machine.handle(.drainRequested, now: .now))
                continue
            }
            var wait = 100
            if let deadline = machine.nextDeadline() {
                wait = max(0, min(wait, (deadline - ContinuousClock.now).wholeMilliseconds + 1))
            }
            var items = [ZMQPollItem(wakeup: wakeup)]
            if let socket { items.append(ZMQPollItem(socket: socket)) }
            let ready = try ZMQ.poll(items, timeoutMilliseconds: wait)
            if ready[0] { wakeup.reset() }
            if ready.count > 1 && ready[1], let socket {
                while !machine.hasExited, let frames = try socket.receive(dontWait: true) {
                    let event: WorkerStateMachine.Event
                    do {
                        let message = try WireCodec.decode(WireCodec.splitDealerEnvelope(frames))
                        observe(message, at: .now)
                        event = .received(message)
                    } catch {
                        event = .malformed("\(error)")
                    }
                    try perform(machine.handle(event, now: .now))
                    if self.socket !== socket { break }
                }
            }
            condition.lock()
            let outputs = outbox
            outbox.removeAll()
            condition.unlock()
            for (ref, output) in outputs { try perform(machine.handle(.computed(ref, output), now: .now)) }
            try perform(machine.handle(.tick, now: .now))
        }
        socket?.close()
        socket = nil
    }

    // Loop-thread state: whether a HEARTBEAT came (the registration committed) and each transfer's size.
    private var heard = false
    private var sizes: [ShardRef: UInt64] = [:]

    private func observe(_ message: Message, at now: ContinuousClock.Instant) {
        switch message {
        case .heartbeat where !heard:
            heard = true
            update { $0.registered = true }
        case .ack(let a) where a.kind == .chunk:
            // Non-final ACKs carry the bytes written so far; only the final one reaches the size (or it rejects).
            if !a.accepted || a.offset == sizes[a.ref] { update { $0.finalChunkAck[a.ref] = (now, a) } }
        case .ack(let a) where a.kind == .done:
            update { $0.doneAck[a.ref] = a }
        default:
            break
        }
    }

    private func perform(_ actions: [WorkerStateMachine.Action]) throws {
        for action in actions {
            switch action {
            case .connect:
                socket?.close()
                let s = try ZMQSocket(context: context!, type: .dealer)
                try s.setLinger(milliseconds: 1000)
                try s.setSendHighWaterMark(100_000)
                try s.setReceiveHighWaterMark(100_000)
                try s.setMaxMessageSize(Int64(WireCodec.limits.maxMessageBytes))
                try s.connect(endpoint)
                socket = s
            case .disconnect:
                socket?.close()
                socket = nil
            case .send(let m):
                guard let socket else { continue }
                if case .chunk(let c) = m {
                    let now = ContinuousClock.now
                    if c.offset == 0 {
                        sizes[c.ref] = c.totalSize
                        update { $0.firstChunkSent[c.ref] = now }
                    }
                    if c.isLast { update { $0.lastChunkSent[c.ref] = now } }
                }
                // As the worker does: a refused send is logged, and the machine's liveness check recovers.
                if try !socket.send(WireCodec.encodeForDealer(m), dontWait: true) {
                    FileHandle.standardError.write(Data("bench worker: send refused (high-water mark): \(m.type)\n".utf8))
                }
            case .startShard(let d):
                update { $0.dispatches.append(d) }
            case .stopShard(let ref, let reason):
                update { $0.failure = "the coordinator stopped shard \(ref): \(reason)" }
            case .deliverFetch, .deliverReply, .forget:
                break
            case .log(let message, let metadata):
                if message != "shard finished" {
                    FileHandle.standardError.write(Data("bench worker: \(message) \(metadata)\n".utf8))
                }
            case .exit:
                return
            }
        }
    }

    private var context: ZMQContext?
}

extension Duration {
    var wholeMilliseconds: Int {
        let (s, a) = components
        return Int(s) * 1000 + Int(a / 1_000_000_000_000_000)
    }
}
