// The worker daemon (ARCHITECTURE.md §Processes): one DEALER to the coordinator, N compute slots.
//
// Threads: the loop thread (the caller of `run()`) owns the DEALER socket; it sends heartbeats on time whatever
// the compute threads do, reconnects with backoff when the coordinator goes quiet (Paranoid Pirate), and moves
// data between the socket and the shards. Each running shard has its own compute thread with OpenBLAS pinned to
// `blasThreads`; nothing runs on Swift's cooperative pool. Compute threads talk to the loop only through
// `ShardChannel` (a mutex-protected outbox), never through the socket.
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
import ZeroMQ

public struct WorkerConfiguration: Sendable {
    public var coordinator: String
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
    public var chunkSize: Int = 256 * 1024
    /// Unacknowledged chunks in flight per transfer.
    public var chunkWindow: Int = 8
    /// Metric points per batch, and how long points may wait before a batch is sent.
    public var metricsBatchSize: Int = 512
    public var metricsFlushInterval: Double = 0.05

    public init(coordinator: String, slots: Int, name: String, host: String) {
        self.coordinator = coordinator
        self.slots = slots
        self.name = name
        self.host = host
    }
}

public final class WorkerDaemon: Service, @unchecked Sendable {
    // @unchecked: loop state is touched only by the thread in `run()`; cross-thread state is atomics and the
    // mutex-protected `ShardChannel`s.
    let config: WorkerConfiguration
    let catalogue: AlgorithmCatalogue
    let logger: Logger
    private let drainRequested = Atomic<Bool>(false)
    private let stopNow = Atomic<Bool>(false)

    private var socket: ZMQSocket?
    private var shards: [ShardRef: LoopShard] = [:]
    private var nextTransferID: UInt64 = 1
    private var nextFetchID: UInt64 = 1
    private var fetchWaiters: [UInt64: ShardChannel] = [:]
    private var requestWaiters: [UInt64: ShardChannel] = [:]
    private var lastHeard = ContinuousClock.now
    private var lastHeartbeatSent = ContinuousClock.now
    private var connected = false
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

    // MARK: Loop

    /// Runs the worker on the calling thread until it has drained or `requestStop()`.
    public func runBlocking() throws {
        BLASRuntime.configure(threads: config.blasThreads, gemm: config.gemm)
        // Which Float gemm this host runs decides the bits of every trained network (docs/compute.md, "Gemm").
        logger.info(
            "compute runtime",
            metadata: [
                "gemm": "\(GemmBackend.current.rawValue)", "openblas": "\(BLASRuntime.coreName)",
                "blas_threads": "\(config.blasThreads)",
            ])
        let context = try ZMQContext(ioThreads: 1)
        defer { context.terminate() }
        var delay = config.reconnectDelay
        var drainStarted: ContinuousClock.Instant?

        try connect(context)
        while !stopNow.load(ordering: .relaxed) {
            let now = ContinuousClock.now
            if drainRequested.load(ordering: .relaxed) {
                if drainStarted == nil {
                    drainStarted = now
                    logger.info("draining", metadata: ["running": "\(shards.count)"])
                    sendHeartbeat()
                } else if now - drainStarted! > .seconds(config.drainTimeout) {
                    for s in shards.values { s.channel.requestStop(reason: "worker drained") }
                }
                if shards.isEmpty || now - drainStarted! > .seconds(config.drainTimeout + 10) {
                    if connected { send(.disconnect(Disconnect(reason: "drained"))) }
                    break
                }
            }
            guard let socket else { break }
            // Sleep until a frame arrives, a compute thread has output, or the next heartbeat is due (and at most
            // 100 ms, which bounds how late a drain deadline or a metric flush can be noticed).
            let untilHeartbeat = lastHeartbeatSent + .seconds(config.heartbeatInterval) - ContinuousClock.now
            let wait = max(0, min(100, untilHeartbeat.wholeMilliseconds))
            let ready = try ZMQ.poll([ZMQPollItem(socket: socket), ZMQPollItem(wakeup: wakeup)], timeoutMilliseconds: wait)
            if ready[1] { wakeup.reset() }
            if ready[0] {
                while let frames = try socket.receive(dontWait: true) {
                    lastHeard = ContinuousClock.now
                    delay = config.reconnectDelay
                    handle(frames)
                }
            }
            pumpShards()
            if ContinuousClock.now - lastHeartbeatSent > .seconds(config.heartbeatInterval) { sendHeartbeat() }
            if ContinuousClock.now - lastHeard > .seconds(config.heartbeatInterval * Double(config.liveness)) {
                logger.info("coordinator silent; reconnecting", metadata: ["delay": "\(delay)"])
                connected = false
                socket.close()
                self.socket = nil
                let until = ContinuousClock.now + .seconds(delay)
                while ContinuousClock.now < until && !stopNow.load(ordering: .relaxed) {
                    // A drain must not wait out a long backoff: its own deadline still holds.
                    if let d = drainStarted, ContinuousClock.now - d > .seconds(config.drainTimeout + 10) { break }
                    Thread.sleep(forTimeInterval: 0.05)
                    collectFinishedComputeOnly()
                }
                delay = min(delay * 2, config.maxReconnectDelay)
                try connect(context)
            }
        }
        socket?.close()
        socket = nil
        logger.info("worker stopped")
    }

    private func connect(_ context: ZMQContext) throws {
        let s = try ZMQSocket(context: context, type: .dealer)
        try s.setLinger(milliseconds: 1000)
        try s.setSendHighWaterMark(100_000)
        try s.setReceiveHighWaterMark(100_000)
        try s.setMaxMessageSize(Int64(WireCodec.limits.maxMessageBytes))
        try s.connect(config.coordinator)
        socket = s
        lastHeard = ContinuousClock.now
        connected = true
        // Everything not yet acknowledged is sent again on the new connection.
        reRegister()
    }

    /// READY again on the same connection, and replay everything not yet acknowledged.
    private func reRegister() {
        for sh in shards.values { sh.resetForReconnect() }
        send(
            .ready(
                Ready(
                    protocolVersion: WireCodec.version, workerName: config.name, host: config.host,
                    slots: UInt16(config.slots), capabilities: catalogue.capabilities, running: Array(shards.keys)
                )
            )
        )
        lastHeartbeatSent = ContinuousClock.now
    }

    private var credits: Int {
        drainRequested.load(ordering: .relaxed) ? 0 : max(0, config.slots - shards.count)
    }

    private func sendHeartbeat() {
        lastHeartbeatSent = ContinuousClock.now
        let progress = shards.values.map { ShardProgress(ref: $0.ref, step: $0.channel.step, total: $0.totalSteps) }
        send(.heartbeat(Heartbeat(credits: UInt16(credits), progress: progress)))
    }

    @discardableResult
    private func send(_ m: Message) -> Bool {
        guard let socket else { return false }
        do {
            return try socket.send(WireCodec.encodeForDealer(m), dontWait: true)
        } catch {
            logger.info("send failed", metadata: ["error": "\(error)"])
            return false
        }
    }

    // MARK: Inbound

    private func handle(_ frames: [[UInt8]]) {
        let message: Message
        do {
            message = try WireCodec.decode(WireCodec.splitDealerEnvelope(frames))
        } catch {
            logger.info("malformed frame from coordinator", metadata: ["error": "\(error)"])
            return
        }
        switch message {
        case .heartbeat: break
        case .dispatch(let d): onDispatch(d)
        case .ack(let a): onAck(a)
        case .cancel(let c):
            if let s = shards[c.ref] {
                logger.info("shard cancelled by coordinator", metadata: ["shard": "\(c.ref)", "reason": "\(c.reason)"])
                s.cancelled = true
                s.channel.requestStop(reason: c.reason)
            } else {
                // SPEC §6.2: always answer, so the coordinator's slot accounting converges.
                send(.shardFailed(ShardFailed(ref: c.ref, reason: "cancelled: \(c.reason)", retryable: true)))
            }
        case .fetchReply(let r):
            if let ch = fetchWaiters.removeValue(forKey: r.requestID) { ch.deliverFetch(r) }
        case .reply(let r):
            if let ch = requestWaiters.removeValue(forKey: r.requestID) { ch.deliverReply(r) }
        case .disconnect(let d):
            // The coordinator does not know us (it restarted): register again on a fresh connection.
            logger.info("coordinator asked to re-register", metadata: ["reason": "\(d.reason)"])
            lastHeard = ContinuousClock.now - .seconds(config.heartbeatInterval * Double(config.liveness) + 1)
        case .error(let e) where e.code == WireStatus.notReady:
            // The coordinator does not know us (it restarted or declared us lost): READY again, then replay.
            logger.info("coordinator asked to re-register")
            reRegister()
        case .error(let e):
            logger.info("coordinator reported an error", metadata: ["code": "\(e.code)", "message": "\(e.message)"])
        case .ready, .metrics, .chunk, .shardDone, .shardFailed, .fetch, .request:
            logger.info("unexpected message from coordinator")
        }
    }

    private func onDispatch(_ d: Dispatch) {
        guard shards[d.ref] == nil else { return }  // duplicate delivery
        guard credits > 0 else {
            send(.shardFailed(ShardFailed(ref: d.ref, reason: drainRequested.load(ordering: .relaxed) ? "worker draining" : "no free slot", retryable: true)))
            return
        }
        let shard = LoopShard(ref: d.ref, totalSteps: d.totalSteps, channel: ShardChannel(totalSteps: d.totalSteps, wakeup: wakeup))
        shards[d.ref] = shard
        let catalogue = self.catalogue
        let logger = self.logger
        let channel = shard.channel
        let thread = Thread {
            channel.runCompute(dispatch: d, catalogue: catalogue, logger: logger)
        }
        thread.stackSize = 16 << 20
        thread.name = "tessera-shard-\(d.ref.jobID)-\(d.ref.shardIndex)"
        thread.start()
        logger.info("shard started", metadata: ["shard": "\(d.ref)", "algorithm": "\(d.kind)/\(d.algorithm)"])
    }

    private func onAck(_ a: Ack) {
        guard let s = shards[a.ref] else { return }
        switch a.kind {
        case .metrics:
            s.unackedMetrics[a.sequence] = nil
            if !a.accepted { fence(s) }
        case .chunk:
            guard let t = s.transfers.first(where: { $0.id == a.sequence }) else { return }
            if !a.accepted {
                if s.fenced || s.cancelled { return }
                // Rejected (checksum, size): a shard whose output cannot be stored fails, retryably.
                s.transferFailed = "coordinator rejected blob transfer \(t.id)"
                return
            }
            t.acked = max(t.acked, a.offset)
            if t.acked < t.sent && a.offset == 0 { t.sent = 0 }  // coordinator lost the transfer: restart it
            if t.acked >= UInt64(t.bytes.count) && t.finalSent { t.complete = true }
        case .done, .failed:
            shards[a.ref] = nil
            logger.info("shard finished", metadata: ["shard": "\(a.ref)", "accepted": "\(a.accepted)"])
        }
    }

    /// The coordinator says this attempt is no longer current: stop computing and forget its output.
    private func fence(_ s: LoopShard) {
        guard !s.fenced else { return }
        s.fenced = true
        s.channel.requestStop(reason: "fenced: attempt superseded")
    }

    // MARK: Outbound

    private func pumpShards() {
        for s in Array(shards.values) {
            let drained = s.channel.drain()
            // Metrics: batch and send; keep until acknowledged.
            var points = drained.points
            while !points.isEmpty {
                let n = min(points.count, config.metricsBatchSize)
                let batch = MetricsBatch(ref: s.ref, sequence: s.nextSequence, points: Array(points.prefix(n)))
                points.removeFirst(n)
                s.nextSequence += 1
                s.unackedMetrics[batch.sequence] = batch
                s.unsentMetrics.append(batch.sequence)
            }
            for blob in drained.blobs {
                s.transfers.append(
                    OutgoingTransfer(
                        id: nextTransferID, kind: blob.kind, step: blob.step, bytes: blob.bytes,
                        sha256: BlobHash.sha256Hex(blob.bytes)
                    )
                )
                nextTransferID += 1
            }
            if let f = drained.fetch {
                let id = nextFetchID
                nextFetchID += 1
                fetchWaiters[id] = s.channel
                send(.fetch(Fetch(requestID: id, sha256: f.sha256, offset: f.offset, length: f.length)))
            }
            if let r = drained.request {
                let id = nextFetchID
                nextFetchID += 1
                requestWaiters[id] = s.channel
                send(.request(ClientRequest(requestID: id, method: r.method, body: r.body)))
            }
            if let outcome = drained.outcome { s.outcome = outcome }
            guard connected else { continue }
            if s.fenced {
                // Nothing this attempt produces counts any more; once the computation has stopped, forget it.
                if s.outcome != nil { shards[s.ref] = nil }
                continue
            }
            for seq in s.unsentMetrics {
                if let b = s.unackedMetrics[seq] { send(.metrics(b)) }
            }
            s.unsentMetrics.removeAll()
            for t in s.transfers where !t.complete {
                while t.sent < UInt64(t.bytes.count) || (t.bytes.isEmpty && !t.finalSent) {
                    guard t.sent - min(t.sent, t.acked) < UInt64(config.chunkSize * config.chunkWindow) else { break }
                    let end = min(t.bytes.count, Int(t.sent) + config.chunkSize)
                    let isLast = end == t.bytes.count
                    let chunk = BlobChunk(
                        ref: s.ref, transferID: t.id, kind: t.kind, step: t.step, offset: t.sent,
                        totalSize: UInt64(t.bytes.count), isLast: isLast, sha256: isLast ? t.sha256 : "",
                        data: Array(t.bytes[Int(t.sent)..<end])
                    )
                    guard send(.chunk(chunk)) else { break }
                    t.sent = UInt64(end)
                    if isLast {
                        t.finalSent = true
                        break
                    }
                }
            }
            s.transfers.removeAll { $0.complete && $0.kind != .result }
            // The final message goes once everything before it is durable.
            if let outcome = s.outcome, !s.outcomeSent, s.unackedMetrics.isEmpty, s.transfers.allSatisfy(\.complete) {
                switch outcome {
                case .done(let summary, _):
                    let resultSHA = s.transfers.first(where: { $0.kind == .result })?.sha256 ?? ""
                    send(.shardDone(ShardDone(ref: s.ref, summary: summary, resultSHA256: resultSHA)))
                case .failed(let reason, let retryable):
                    send(.shardFailed(ShardFailed(ref: s.ref, reason: reason, retryable: retryable)))
                }
                s.outcomeSent = true
            } else if let reason = s.transferFailed, !s.outcomeSent, s.outcome != nil {
                send(.shardFailed(ShardFailed(ref: s.ref, reason: reason, retryable: true)))
                s.outcomeSent = true
            }
        }
    }

    /// While disconnected, keep collecting what compute threads produce so they are never blocked for long.
    private func collectFinishedComputeOnly() {
        guard !shards.isEmpty else { return }
        let wasConnected = connected
        connected = false
        pumpShards()
        connected = wasConnected
    }
}

// MARK: - Per-shard state on the loop thread

final class LoopShard {
    let ref: ShardRef
    let totalSteps: Int64
    let channel: ShardChannel
    var nextSequence: UInt64 = 1
    var unackedMetrics: [UInt64: MetricsBatch] = [:]
    var unsentMetrics: [UInt64] = []
    var transfers: [OutgoingTransfer] = []
    var outcome: ShardChannel.Outcome?
    var outcomeSent = false
    var fenced = false
    var cancelled = false
    var transferFailed: String?

    init(ref: ShardRef, totalSteps: Int64, channel: ShardChannel) {
        self.ref = ref
        self.totalSteps = totalSteps
        self.channel = channel
    }

    func resetForReconnect() {
        unsentMetrics = unackedMetrics.keys.sorted()
        for t in transfers where !t.complete {
            t.sent = 0
            t.acked = 0
            t.finalSent = false
        }
        outcomeSent = false
    }
}

final class OutgoingTransfer {
    let id: UInt64
    let kind: BlobKind
    let step: Int64
    let bytes: [UInt8]
    let sha256: String
    var sent: UInt64 = 0
    var acked: UInt64 = 0
    var finalSent = false
    var complete = false

    init(id: UInt64, kind: BlobKind, step: Int64, bytes: [UInt8], sha256: String) {
        self.id = id
        self.kind = kind
        self.step = step
        self.bytes = bytes
        self.sha256 = sha256
    }
}

extension Duration {
    var wholeMilliseconds: Int {
        let (s, a) = components
        return Int(s) * 1000 + Int(a / 1_000_000_000_000_000)
    }
}
