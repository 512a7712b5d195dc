// The worker daemon (ARCHITECTURE.md §Processes): one DEALER to the coordinator, N compute slots.
//
// The rules (registration, heartbeats, Paranoid Pirate reconnects, outboxes kept until acknowledged and replayed
// after a reconnect, chunk windows, fencing, drain) are `WorkerStateMachine` (TesseraWorkerCore), a pure state
// machine tested without sockets. This file is its driver. The loop thread (the caller of `runBlocking()`) owns the
// DEALER socket: it sleeps in zmq_poll until a frame arrives, a compute thread posts output (wake-up pipe) or the
// machine's next deadline, feeds the machine and carries out its actions. Shards run on a pool of one long-lived
// thread per slot with OpenBLAS pinned to `blasThreads`; nothing runs on Swift's cooperative pool. Compute threads
// talk to the loop only through `ShardChannel` (a mutex-protected outbox), never through the socket.
//
// Durability (ARCHITECTURE.md guarantee 4): metric batches and blob transfers stay buffered until the
// coordinator acknowledges them (after its commit / fsync), are replayed after a reconnect, and a shard's DONE is
// sent only once everything before it is acknowledged.

import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import TesseraCompute
import TesseraCore
import TesseraProtocol
import TesseraWorkerCore
import ZeroMQ

public struct WorkerConfiguration: Sendable {
    /// The coordinator's endpoint, or several separated by commas (an active coordinator and its standbys): the
    /// worker connects to one at a time and moves to the next each time it reconnects.
    public var coordinator: String
    public var endpoints: [String] { ZMQ.endpointList(coordinator) }
    public var slots: Int
    public var name: String
    public var host: String
    /// OpenBLAS threads per compute slot (`openblas_set_num_threads`).
    public var blasThreads: Int = 1
    /// Float gemm backend (docs/compute.md, "Gemm"): `.auto` uses Tessera's AVX-512 kernels where the CPU has them.
    public var gemm: GemmChoice = .auto
    public var heartbeatInterval: Double = 1.0
    /// Heartbeats from the coordinator that may be missed before reconnecting.
    public var liveness: Int = 3
    /// Reconnect backoff: starts here, doubles, caps at `maxReconnectDelay` (seconds).
    public var reconnectDelay: Double = 1.0
    public var maxReconnectDelay: Double = 32
    /// On SIGTERM: how long running shards may take to finish before they are stopped and handed back.
    public var drainTimeout: Double = 30
    /// SPEC §6.5's recommended 1 MiB; 8 in flight is its WINDOW of 8 MiB.
    public var chunkSize: Int = 1 << 20
    /// Unacknowledged chunks in flight per transfer.
    public var chunkWindow: Int = 8
    /// Metric points per batch, and how long points may wait before a batch is sent.
    public var metricsBatchSize: Int = 512
    public var metricsFlushInterval: Double = 0.05
    /// CURVE keys (own pair, coordinator's public key): when set, the connection is authenticated and encrypted.
    public var keys: ClientKeys?
    /// The worker's own directory: its spool files live in `spool/` (docs/operations.md, "The worker spool").
    public var dataDir: String
    /// Per shard: output the coordinator has not taken yet is kept in memory up to this, then in a file up to
    /// `spoolDiskBytes`; only then does the shard's computation wait.
    public var spoolMemoryBytes: Int = 256 << 20
    /// False: this worker writes no shard log lines and sends no LOGS (`tessera worker --no-shard-logs`).
    public var shardLogs = true
    public var spoolDiskBytes: Int = 8 << 30

    public init(coordinator: String, slots: Int, name: String, host: String, dataDir: String? = nil) {
        self.coordinator = coordinator
        self.slots = slots
        self.name = name
        self.host = host
        self.dataDir = dataDir ?? Self.defaultDataDir
    }

    /// `$TMPDIR/tessera-worker` (or /tmp/tessera-worker): spool files are scratch, named after the worker's process
    /// id, and useless once that process is gone, so workers on one machine can share the directory.
    public static var defaultDataDir: String {
        let tmp = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        return "\(tmp)/tessera-worker"
    }
}

public final class WorkerDaemon: Service, @unchecked Sendable {
    // @unchecked: the socket, the channels and the state machine are touched only by the thread in `runBlocking()`;
    // cross-thread state is atomics, the wake-up pipe and the mutex-protected `ShardChannel`s.
    let config: WorkerConfiguration
    let catalogue: AlgorithmCatalogue
    let logger: Logger
    private let drainRequested = Atomic<Bool>(false)
    private let stopNow = Atomic<Bool>(false)

    private var socket: ZMQSocket?
    private var connects = 0
    private var channels: [ShardRef: ShardChannel] = [:]
    private var spools: [ShardRef: Spool] = [:]
    private var spoolDir: String { "\(config.dataDir)/spool" }
    /// Compute threads wake the loop through this when they have output (ShardChannel); a drain request does too.
    private let wakeup: Wakeup

    public init(config: WorkerConfiguration, catalogue: AlgorithmCatalogue, logger: Logger) throws {
        self.config = config
        self.catalogue = catalogue
        self.logger = logger
        self.wakeup = try Wakeup()
    }

    /// SIGTERM: take no new shards, let running ones finish (up to `drainTimeout`), hand back the rest, exit.
    public func requestDrain() {
        drainRequested.store(true, ordering: .relaxed)
        wakeup.signal()
    }
    /// A second signal: stop at once (leases will be rescued by the coordinator).
    public func requestStop() {
        stopNow.store(true, ordering: .relaxed)
        wakeup.signal()
    }

    /// The `Service` entry point: graceful shutdown (SIGTERM/SIGINT in a `ServiceGroup`) drains; cancellation (the
    /// group's shutdown deadline passed) stops at once.
    public func run() async throws {
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
                    let thread = Thread { [self] in
                        do {
                            try runBlocking()
                            done.resume()
                        } catch {
                            done.resume(throwing: error)
                        }
                    }
                    thread.name = "tessera-worker-loop"
                    thread.start()
                }
            } onGracefulShutdown: { [self] in
                requestDrain()
            }
        } onCancel: { [self] in
            requestStop()
        }
    }

    var machineConfiguration: WorkerStateMachine.Configuration {
        var c = WorkerStateMachine.Configuration(
            name: config.name, host: config.host, slots: config.slots, capabilities: catalogue.capabilities)
        c.heartbeatInterval = .seconds(config.heartbeatInterval)
        c.liveness = config.liveness
        c.reconnectDelay = .seconds(config.reconnectDelay)
        c.maxReconnectDelay = .seconds(config.maxReconnectDelay)
        c.drainTimeout = .seconds(config.drainTimeout)
        c.chunkSize = config.chunkSize
        c.chunkWindow = config.chunkWindow
        c.metricsBatchSize = config.metricsBatchSize
        c.shardLogs = config.shardLogs
        return c
    }

    // MARK: Spool

    private func spool(for ref: ShardRef) -> Spool {
        if let s = spools[ref] { return s }
        let s = Spool(
            path: "\(spoolDir)/\(getpid())-\(ref.jobID)-\(ref.shardIndex)-\(ref.attempt).spool",
            limits: Spool.Limits(memoryBytes: config.spoolMemoryBytes, diskBytes: config.spoolDiskBytes), logger: logger)
        spools[ref] = s
        return s
    }

    /// Creates the spool directory and removes what dead worker processes left there (files are named after the
    /// process id): those shards were handed to other workers when it died, so their spooled output is of no use.
    private func prepareSpoolDir() throws {
        do {
            try FileManager.default.createDirectory(atPath: spoolDir, withIntermediateDirectories: true)
        } catch {
            throw WorkerError("cannot create the spool directory \(spoolDir) (--data-dir): \(error.localizedDescription)")
        }
        let stale = ((try? FileManager.default.contentsOfDirectory(atPath: spoolDir)) ?? []).filter { f in
            guard f.hasSuffix(".spool"), let pid = f.split(separator: "-").first.flatMap({ Int32($0) }) else { return false }
            return pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH
        }
        for f in stale { try? FileManager.default.removeItem(atPath: "\(spoolDir)/\(f)") }
        if !stale.isEmpty { logger.info("removed spool files of an earlier run", metadata: ["count": "\(stale.count)"]) }
    }

    // MARK: Loop

    /// Runs the worker on the calling thread until it has drained or `requestStop()`. The rules live in
    /// `WorkerStateMachine`; this loop only polls, decodes, feeds it and carries out its actions.
    public func runBlocking() throws {
        BLASRuntime.configure(threads: config.blasThreads, gemm: config.gemm)
        // Which Float gemm this host runs decides the bits of every trained network (docs/compute.md, "Gemm").
        logger.info(
            "compute runtime",
            metadata: [
                "gemm": "\(GemmBackend.current.rawValue)", "openblas": "\(BLASRuntime.coreName)",
                "blas_threads": "\(config.blasThreads)",
            ])
        try prepareSpoolDir()
        let context = try ZMQContext(ioThreads: 1)
        defer { context.terminate() }
        defer {
            for s in spools.values { s.close() }
            spools.removeAll()
        }
        let pool = ComputePool(slots: config.slots, catalogue: catalogue, logger: logger)
        defer { pool.close() }
        var machine = WorkerStateMachine(configuration: machineConfiguration)
        var drainSeen = false
        var stopSeen = false
        var steps: [ShardRef: Int64] = [:]

        try perform(machine.handle(.start, now: .now, wallTime: Date().timeIntervalSince1970), context: context, pool: pool)
        while !machine.hasExited {
            if stopNow.load(ordering: .relaxed) && !stopSeen {
                stopSeen = true
                try perform(machine.handle(.stopRequested, now: .now, wallTime: Date().timeIntervalSince1970), context: context, pool: pool)
                break
            }
            if drainRequested.load(ordering: .relaxed) && !drainSeen {
                drainSeen = true
                try perform(machine.handle(.drainRequested, now: .now, wallTime: Date().timeIntervalSince1970), context: context, pool: pool)
                continue
            }
            // Sleep until a frame arrives, a compute thread has output, or the machine's next deadline (heartbeat,
            // liveness, backoff, drain), and at most 100 ms.
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
                        event = .received(try WireCodec.decode(WireCodec.splitDealerEnvelope(frames)))
                    } catch {
                        event = .malformed("\(error)")
                    }
                    try perform(machine.handle(event, now: .now, wallTime: Date().timeIntervalSince1970), context: context, pool: pool)
                    if self.socket !== socket { break }  // the machine reconnected: the old socket is closed
                }
            }
            for (ref, channel) in channels {
                // Output goes straight to the machine while it has room and nothing older waits in the spool;
                // otherwise into the spool, which hands it over, oldest first, as ACKs make room.
                let spool = spools[ref]
                let output = channel.drain(data: spool?.acceptsMore ?? true)
                let hasRoom = { machine.acceptsMetrics(ref) && machine.bufferedBlobBytes(ref) < self.config.spoolMemoryBytes }
                if (spool?.isEmpty ?? true) && hasRoom() {
                    if !output.isEmpty || steps[ref] != output.step {
                        steps[ref] = output.step
                        try perform(machine.handle(.computed(ref, output), now: .now, wallTime: Date().timeIntervalSince1970), context: context, pool: pool)
                    }
                    continue
                }
                // Fetches, requests and log lines never wait in the spool (logs are bounded by the machine).
                var control = WorkerStateMachine.ComputeOutput(step: output.step)
                control.fetch = output.fetch
                control.request = output.request
                control.logs = output.logs
                var data = output
                data.fetch = nil
                data.request = nil
                data.logs = []
                if !data.isEmpty { self.spool(for: ref).append(data) }
                if !control.isEmpty || steps[ref] != output.step {
                    steps[ref] = output.step
                    try perform(machine.handle(.computed(ref, control), now: .now, wallTime: Date().timeIntervalSince1970), context: context, pool: pool)
                }
                while hasRoom(), let s = spools[ref], var next = s.next() {
                    next.step = output.step
                    try perform(machine.handle(.computed(ref, next), now: .now, wallTime: Date().timeIntervalSince1970), context: context, pool: pool)
                }
            }
            steps = steps.filter { channels[$0.key] != nil }
            try perform(machine.handle(.tick, now: .now, wallTime: Date().timeIntervalSince1970), context: context, pool: pool)
        }
        socket?.close()
        socket = nil
        logger.info("worker stopped")
    }

    /// Closes a connection given up on (the coordinator fell silent or asked us to re-register), dropping what its
    /// socket still queues: the next socket sends everything unacknowledged again, and with the usual linger a READY
    /// queued into a cut link reached the coordinator when the link came back, after the new socket's, and registered
    /// a ghost session that was leased shards and lost 1.5 s later (ops/chaos partition-8s).
    private func abandonSocket() {
        guard let old = socket else { return }
        try? old.setLinger(milliseconds: 0)
        old.close()
        socket = nil
    }

    private func perform(_ actions: [WorkerStateMachine.Action], context: ZMQContext, pool: ComputePool) throws {
        for action in actions {
            switch action {
            case .connect:
                abandonSocket()
                let s = try ZMQSocket(context: context, type: .dealer)
                try s.setLinger(milliseconds: 1000)
                try s.setSendHighWaterMark(100_000)
                try s.setReceiveHighWaterMark(100_000)
                try s.setMaxMessageSize(Int64(WireCodec.limits.maxMessageBytes))
                if let keys = config.keys {
                    try s.setCurveClient(serverPublicKey: keys.coordinatorPublicKey, keys: keys.keyPair)
                }
                // A list of coordinators (an active one and standbys): each reconnect tries the next.
                let endpoint = config.endpoints[connects % config.endpoints.count]
                connects += 1
                try s.connect(endpoint)
                if config.endpoints.count > 1 { logger.info("connecting", metadata: ["zmq.endpoint": "\(endpoint)"]) }
                socket = s
            case .disconnect:
                abandonSocket()
            case .send(let m):
                guard let socket else { continue }
                do {
                    // Non-blocking: the high-water mark (100,000 frames) is far above what the chunk and metric
                    // windows can have in flight, so a refused send means the connection is gone; the machine's
                    // liveness check then reconnects and replays everything unacknowledged.
                    if try !socket.send(WireCodec.encodeForDealer(m), dontWait: true) {
                        logger.info("send refused (high-water mark)", metadata: ["type": "\(m.type)"])
                    }
                } catch {
                    logger.info("send failed", metadata: ["error": "\(error)"])
                }
            case .startShard(let d):
                let channel = ShardChannel(totalSteps: d.totalSteps, wakeup: wakeup)
                channels[d.ref] = channel
                pool.run(d, on: channel)
                logger.info("shard started", metadata: ["shard": "\(d.ref)", "algorithm": "\(d.kind)/\(d.algorithm)"])
            case .stopShard(let ref, let reason):
                channels[ref]?.requestStop(reason: reason)
            case .deliverFetch(let ref, let reply):
                channels[ref]?.deliverFetch(reply)
            case .deliverReply(let ref, let reply):
                channels[ref]?.deliverReply(reply)
            case .forget(let ref):
                channels[ref] = nil
                if let s = spools.removeValue(forKey: ref) {
                    if s.bytesSpooled > 0 { logger.info("spool closed", metadata: ["shard": "\(ref)", "spooledBytes": "\(s.bytesSpooled)"]) }
                    s.close()
                }
            case .log(let message, let metadata):
                logger.info("\(message)", metadata: metadata.mapValues { .string($0) })
            case .exit:
                return
            }
        }
    }
}

/// The worker's compute threads: one long-lived thread per slot (OpenBLAS pinned per thread by
/// `BLASRuntime.configure`), fed shards through a queue. The state machine never starts more shards than slots, so a
/// shard waits in the queue only for the instant between a thread posting its outcome and returning to the queue.
final class ComputePool: Sendable {
    private let queue = WorkQueue<(Dispatch, ShardChannel)>()

    init(slots: Int, catalogue: AlgorithmCatalogue, logger: Logger) {
        for slot in 0..<max(1, slots) {
            let thread = Thread { [queue] in
                while let (d, channel) = queue.pop() {
                    channel.runCompute(dispatch: d, catalogue: catalogue, logger: logger)
                }
            }
            thread.stackSize = 16 << 20
            thread.name = "tessera-compute-\(slot)"
            thread.start()
        }
    }

    func run(_ d: Dispatch, on channel: ShardChannel) { queue.push((d, channel)) }

    /// Threads finish their current shard and end (they are not joined: at a stop the process exits and the
    /// coordinator rescues the leases).
    func close() { queue.close() }
}

extension Duration {
    var wholeMilliseconds: Int {
        let (s, a) = components
        return Int(s) * 1000 + Int(a / 1_000_000_000_000_000)
    }
}

public struct WorkerError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
