// The worker's protocol rules (protocol/SPEC.md §6) as a pure state machine: events in, actions out, time injected.
//
// It owns everything the worker must remember between frames: the connection's liveness and reconnect backoff
// (Paranoid Pirate), the shards it holds, each shard's outbox (metric batches and blob transfers kept until the
// coordinator acknowledges them, then replayed after a reconnect), the chunk windows, fetch and request waiters,
// fencing and the drain. It never touches a socket, a thread or a clock: the driver (TesseraWorker.WorkerDaemon)
// feeds it decoded frames, compute output and ticks, and carries out the actions in order. Tested step by step in
// Tests/TesseraWorkerCoreTests without sockets.

import TesseraModel
import TesseraProtocol

public struct WorkerStateMachine: Sendable {
    public struct Configuration: Sendable {
        public var name: String
        public var host: String
        public var slots: Int
        public var capabilities: [String]
        public var heartbeatInterval: Duration = .seconds(1)
        /// Heartbeats from the coordinator that may be missed before reconnecting.
        public var liveness: Int = 3
        /// Reconnect backoff: starts here, doubles, caps at `maxReconnectDelay`; reset by any frame received.
        public var reconnectDelay: Duration = .seconds(1)
        public var maxReconnectDelay: Duration = .seconds(32)
        /// After a drain starts: how long running shards may take before they are stopped and handed back; after
        /// `drainTimeout + drainGrace` the worker exits whatever is still unacknowledged.
        public var drainTimeout: Duration = .seconds(30)
        public var drainGrace: Duration = .seconds(10)
        /// SPEC §6.5's recommended chunk; with the window of 8 that is its WINDOW of 8 MiB in flight.
        public var chunkSize: Int = 1 << 20
        /// Unacknowledged chunks in flight per transfer.
        public var chunkWindow: Int = 8
        /// A transfer the coordinator deferred (its data dir is full, ACK `deferred`) is sent again after this
        /// delay, doubling per deferral up to `maxDeferralDelay`; a blob still deferred after `deferralLimit`
        /// fails its shard permanently (the job fails, with that reason, instead of waiting for ever).
        public var deferralDelay: Duration = .seconds(1)
        public var maxDeferralDelay: Duration = .seconds(30)
        public var deferralLimit: Duration = .seconds(600)
        /// Metric points per METRICS batch.
        public var metricsBatchSize: Int = 512
        /// METRICS batches of one shard sent and not yet acknowledged; the rest wait unsent. With the loop taking a
        /// shard's output only while `acceptsMetrics` (SPEC §6.5), a shard that streams faster than the coordinator
        /// commits is slowed down at its compute thread instead of growing buffers here and on the coordinator.
        public var metricsWindow: Int = 16
        /// METRICS batches of one shard held (unacknowledged, sent or not) above which `acceptsMetrics` is false.
        public var metricsBacklog: Int = 64
        /// Log lines per LOGS batch, and LOGS batches of one shard sent and not yet acknowledged (SPEC §6.4).
        public var logsBatchSize: Int = 64
        public var logsWindow: Int = 4
        /// Log lines of one shard held (waiting, or sent and unacknowledged) at most. Logs never slow a shard down:
        /// a line that finds the shard's log full is dropped and counted, and the next line sent says how many were.
        public var logsHeld: Int = 1024
        /// How long a shard's log lines may wait to fill a batch: a batch is cut when it is full, when the shard's
        /// computation has ended (before its SHARD_DONE), while draining, or once its oldest line waited this long.
        /// A short shard's lines (lease, end) then go in one LOGS, not one per line.
        public var logsFlushDelay: Duration = .milliseconds(500)
        /// False: the worker writes no shard log and sends no LOGS (as a worker that predates them).
        public var shardLogs = true

        public init(name: String, host: String, slots: Int, capabilities: [String]) {
            self.name = name
            self.host = host
            self.slots = slots
            self.capabilities = capabilities
        }
    }

    /// A blob a shard produced, with its checksum (computed on the compute thread, off the loop). The checksum may
    /// be empty while the compute thread is still computing it: the transfer starts at once and only its last
    /// chunk, which carries the sha256, waits for the digest (`ComputeOutput.digests`), so hashing overlaps sending.
    public struct Blob: Sendable, Hashable {
        public var kind: BlobKind
        public var step: Int64
        public var bytes: [UInt8]
        public var sha256: String
        public init(kind: BlobKind, step: Int64, bytes: [UInt8], sha256: String) {
            self.kind = kind
            self.step = step
            self.bytes = bytes
            self.sha256 = sha256
        }
    }

    /// How a shard's computation ended.
    public enum Outcome: Sendable, Hashable {
        case done(summary: [UInt8])
        case failed(reason: String, failure: ShardFailureKind)
    }

    /// A blob read (FETCH) a shard waits for.
    public struct BlobRead: Sendable, Hashable {
        public var sha256: String
        public var offset: UInt64
        public var length: UInt32
        public init(sha256: String, offset: UInt64, length: UInt32) {
            self.sha256 = sha256
            self.offset = offset
            self.length = length
        }
    }

    /// A request (method, JSON body) a shard waits for the reply to.
    public struct PendingRequest: Sendable, Hashable {
        public var method: String
        public var body: [UInt8]
        public init(method: String, body: [UInt8]) {
            self.method = method
            self.body = body
        }
    }

    /// What one shard's compute thread handed over since the last time.
    public struct ComputeOutput: Sendable, Hashable {
        public var step: Int64
        public var points: [MetricPoint] = []
        public var blobs: [Blob] = []
        /// The sha256 of blobs handed over without one, in the order they were handed over.
        public var digests: [String] = []
        public var fetch: BlobRead?
        public var request: PendingRequest?
        public var outcome: Outcome?
        /// Log lines the computation wrote (`ShardSink.log`), in order. Never spooled: the driver hands them over at
        /// once, whatever the spool holds, so they never wait behind metrics and never make compute wait.
        public var logs: [LogLine] = []

        public init(
            step: Int64, points: [MetricPoint] = [], blobs: [Blob] = [], digests: [String] = [], outcome: Outcome? = nil
        ) {
            self.step = step
            self.points = points
            self.blobs = blobs
            self.digests = digests
            self.outcome = outcome
        }

        /// Nothing but the step.
        public var isEmpty: Bool {
            points.isEmpty && blobs.isEmpty && digests.isEmpty && fetch == nil && request == nil && outcome == nil
                && logs.isEmpty
        }
    }

    public enum Event: Sendable {
        /// The daemon starts: connect and register.
        case start
        /// A frame set from the coordinator, decoded.
        case received(Message)
        /// A frame set that did not decode.
        case malformed(String)
        /// Output of one shard's compute thread.
        case computed(ShardRef, ComputeOutput)
        /// Time passed (the driver's poll returned).
        case tick
        /// SIGTERM: take no new shards, finish or hand back the running ones, exit.
        case drainRequested
        /// A second signal or the service group's deadline: exit now (the coordinator rescues the leases).
        case stopRequested
    }

    public enum Action: Sendable, Hashable {
        /// Close the current socket (if any) and open a new one to the coordinator; later sends go on it.
        case connect
        /// Close the socket; nothing is sent until the next `.connect`.
        case disconnect
        case send(Message)
        /// Start computing a shard on its own thread.
        case startShard(Dispatch)
        /// Ask a shard's computation to stop (cancelled, fenced, drain deadline).
        case stopShard(ShardRef, reason: String)
        case deliverFetch(ShardRef, FetchReply)
        case deliverReply(ShardRef, ClientReply)
        /// The shard is finished with (its final message was acknowledged, or it was fenced and has stopped):
        /// the driver may drop its compute channel.
        case forget(ShardRef)
        /// Something worth a log line at info level.
        case log(String, [String: String])
        /// The loop ends.
        case exit
    }

    struct Transfer: Sendable {
        let id: UInt64
        let blob: Blob
        /// The blob's sha256; empty until its digest arrives (`Blob`).
        var sha256: String
        /// The shard's next metrics sequence when the blob came: its last chunk waits until every batch before it is
        /// acknowledged, so a registered checkpoint never has unstored metric rows before its step (SPEC §6.5).
        var metricsBefore: UInt64 = 0
        var sent: UInt64 = 0
        var acked: UInt64 = 0
        var finalSent = false
        var complete = false
        /// Restarted by an ACK at offset 0: the chunks sent before it are answered at 0 as well, and those answers
        /// must not restart it again (each would resend a window), so ACKs at 0 are ignored until one above 0.
        var restarted = false
        /// Deferred by the coordinator: sent again from 0 at `deferredUntil`; `deferredSince` is the first deferral
        /// of this run of deferrals (cleared by a chunk accepted above 0).
        var deferredUntil: ContinuousClock.Instant?
        var deferredSince: ContinuousClock.Instant?
        var deferralDelay: Duration?
        var size: UInt64 { UInt64(blob.bytes.count) }
    }

    struct Shard: Sendable {
        let ref: ShardRef
        let totalSteps: Int64
        var step: Int64 = 0
        var nextSequence: UInt64 = 0
        var unackedMetrics: [UInt64: MetricsBatch] = [:]
        var unsentMetrics: [UInt64] = []
        var transfers: [Transfer] = []
        var outcome: Outcome?
        var outcomeSent = false
        var fenced = false
        /// The coordinator's CANCEL reason: the attempt's output is void, and once its computation has stopped it
        /// answers SHARD_FAILED at once, without waiting for ACKs of output the coordinator will refuse anyway.
        var cancelled: String?
        var transferFailed: String?
        var transferFailure = ShardFailureKind.infrastructure
        /// The attempt's log (SPEC §5 LOGS): lines not yet in a batch, batches kept until acknowledged (like
        /// metrics, and replayed after a reconnect), and lines dropped because the log was full.
        var pendingLogs: [LogLine] = []
        /// When the oldest of `pendingLogs` was written (nil while there is none).
        var pendingLogsSince: ContinuousClock.Instant?
        var nextLogSequence: UInt64 = 0
        var unackedLogs: [UInt64: LogBatch] = [:]
        var unsentLogs: [UInt64] = []
        var droppedLogs = 0
        var heldLogLines: Int { pendingLogs.count + unackedLogs.values.reduce(0) { $0 + $1.lines.count } }
    }

    enum Waiter: Sendable {
        case fetch(ShardRef, Fetch)
        case request(ShardRef, ClientRequest)
    }

    enum Connection: Sendable {
        case idle
        case connected
        case backingOff(until: ContinuousClock.Instant)
        case exited
    }

    public let configuration: Configuration
    private var connection = Connection.idle
    private var shards: [ShardRef: Shard] = [:]
    /// Shard refs in the order they were dispatched, so actions come out in a deterministic order.
    private var order: [ShardRef] = []
    private var waiters: [UInt64: Waiter] = [:]
    private var nextTransferID: UInt64 = 1
    private var nextRequestID: UInt64 = 1
    private var lastHeard: ContinuousClock.Instant?
    private var lastHeartbeatSent: ContinuousClock.Instant?
    private var delay: Duration
    private var drainStarted: ContinuousClock.Instant?
    private var drainStopSent = false
    /// When the READY not yet taken by the coordinator was sent (nil once any non-ERROR message arrived).
    private var readySent: ContinuousClock.Instant?
    /// notReady ERRORs that answered messages sent before our READY, and so asked for nothing new.
    public private(set) var ignoredNotReady = 0
    /// The instant of the event being handled (for deferrals decided deep inside `ack`).
    private var now: ContinuousClock.Instant?
    /// Chunk ACKs with status `deferred` that started a wait (one per deferral, not per chunk in flight).
    public private(set) var deferrals = 0
    /// The wall-clock time of the event being handled (seconds since 1970), which stamps the log lines the machine
    /// writes itself; the driver passes it, so the machine reads no clock.
    private var wallTime: Double = 0
    /// False once the coordinator answered a LOGS with ERROR `unknownType` (it predates LOGS): until the next
    /// connection the worker keeps no log lines and sends none, and nothing waits for log ACKs.
    public private(set) var coordinatorTakesLogs = true
    /// Log lines dropped because a shard's log was full or the coordinator takes no logs.
    public private(set) var logLinesDropped = 0

    public init(configuration: Configuration) {
        self.configuration = configuration
        self.delay = configuration.reconnectDelay
    }

    // MARK: Queries (for the driver and tests)

    public var isConnected: Bool { if case .connected = connection { true } else { false } }
    public var hasExited: Bool { if case .exited = connection { true } else { false } }
    public var isDraining: Bool { drainStarted != nil }
    public var runningShards: [ShardRef] { order }
    /// Free slots as advertised to the coordinator (0 while draining).
    /// Free slots: a slot is taken while a shard computes, and free again once its computation ended, even while its
    /// output and final message still wait for ACKs (SPEC §6.2: the coordinator counts a slot free when it processes
    /// SHARD_DONE / SHARD_FAILED, and may dispatch into it at once).
    public var credits: Int {
        drainStarted != nil ? 0 : max(0, configuration.slots - shards.values.count { $0.outcome == nil })
    }
    /// The backoff the next reconnect will wait.
    public var currentReconnectDelay: Duration { delay }
    /// Whether the loop should hand this shard's new metric points to the machine now: false while more than
    /// `metricsBacklog` of its batches wait for an ACK (the coordinator is slow or away), so the points stay in the
    /// shard's bounded channel and its compute thread waits (back-pressure, SPEC §6.5). A fenced shard's output is
    /// dropped anyway, so it always accepts.
    public func acceptsMetrics(_ ref: ShardRef) -> Bool {
        guard let s = shards[ref], !s.fenced, s.cancelled == nil else { return true }
        return s.unackedMetrics.count <= configuration.metricsBacklog
    }

    /// Bytes of this shard's blobs held for transfers not yet complete. The driver's spool hands the machine more
    /// blobs of a shard only while this is under its memory cap (docs/operations.md, "The worker spool").
    public func bufferedBlobBytes(_ ref: ShardRef) -> Int {
        guard let s = shards[ref], !s.fenced, s.cancelled == nil else { return 0 }
        return s.transfers.reduce(0) { $0 + ($1.complete ? 0 : $1.blob.bytes.count) }
    }

    /// The latest instant the driver should call `.tick` at (a heartbeat, liveness or backoff deadline).
    public func nextDeadline() -> ContinuousClock.Instant? {
        var d: [ContinuousClock.Instant] = []
        switch connection {
        case .connected:
            if let s = lastHeartbeatSent { d.append(s + configuration.heartbeatInterval) }
            if let h = lastHeard { d.append(h + configuration.heartbeatInterval * configuration.liveness) }
        case .backingOff(let until): d.append(until)
        case .idle, .exited: break
        }
        if let start = drainStarted {
            d.append(start + configuration.drainTimeout)
            d.append(start + configuration.drainTimeout + configuration.drainGrace)
        }
        for s in shards.values { for t in s.transfers { if let u = t.deferredUntil { d.append(u) } } }
        return d.min()
    }

    // MARK: Events

    /// `wallTime`: seconds since 1970 now, for the log lines the machine writes (0 when not given, as in tests).
    public mutating func handle(_ event: Event, now: ContinuousClock.Instant, wallTime: Double? = nil) -> [Action] {
        if case .exited = connection { return [] }
        self.now = now
        if let wallTime { self.wallTime = wallTime }
        var out: [Action] = []
        switch event {
        case .start:
            connect(now: now, into: &out)
        case .received(let m):
            lastHeard = now
            delay = configuration.reconnectDelay
            receive(m, now: now, into: &out)
            checkDrain(now: now, into: &out)
        case .malformed(let why):
            out.append(.log("malformed frame from coordinator", ["error": why]))
        case .computed(let ref, let output):
            computed(ref, output, into: &out)
            checkDrain(now: now, into: &out)
        case .tick:
            tick(now: now, into: &out)
        case .drainRequested:
            guard drainStarted == nil else { break }
            drainStarted = now
            out.append(.log("draining", ["running": "\(shards.count)"]))
            for ref in order { shardLog(ref, .notice, "worker draining: the shard may run \(configuration.drainTimeout) more, then it is handed back") }
            if isConnected { sendHeartbeat(now: now, into: &out) }
            tick(now: now, into: &out)
        case .stopRequested:
            exit(into: &out)
        }
        return out
    }

    // MARK: Connection

    private mutating func connect(now: ContinuousClock.Instant, into out: inout [Action]) {
        connection = .connected
        lastHeard = now
        // A new connection may reach another coordinator (a standby that took over, or an upgraded one): offer logs.
        coordinatorTakesLogs = true
        out.append(.connect)
        register(now: now, into: &out)
    }

    /// READY on the current connection, then everything not yet acknowledged again.
    private mutating func register(now: ContinuousClock.Instant, into out: inout [Action]) {
        readySent = now
        out.append(
            .send(
                .ready(
                    Ready(
                        workerName: configuration.name, host: configuration.host, slots: UInt16(configuration.slots),
                        capabilities: configuration.capabilities, running: order
                    )
                )
            )
        )
        lastHeartbeatSent = now
        for ref in order {
            shards[ref]!.resetForReplay()
        }
        // Reads the shards still wait for are idempotent: ask again on the new connection.
        for id in waiters.keys.sorted() {
            switch waiters[id]! {
            case .fetch(_, let f): out.append(.send(.fetch(f)))
            case .request(_, let r): out.append(.send(.request(r)))
            }
        }
        for ref in order { flush(ref, into: &out) }
    }

    private mutating func loseConnection(now: ContinuousClock.Instant, reason: String, into out: inout [Action]) {
        out.append(.log(reason, ["delay": "\(delay)"]))
        out.append(.disconnect)
        connection = .backingOff(until: now + delay)
        delay = min(delay * 2, configuration.maxReconnectDelay)
    }

    private mutating func exit(into out: inout [Action]) {
        connection = .exited
        out.append(.exit)
    }

    /// While draining: stop the running shards at the deadline; exit once none is held (every final message was
    /// acknowledged) or the grace period after the deadline has passed.
    private mutating func checkDrain(now: ContinuousClock.Instant, into out: inout [Action]) {
        guard let start = drainStarted, !hasExited else { return }
        if now - start >= configuration.drainTimeout && !drainStopSent {
            drainStopSent = true
            for ref in order { out.append(.stopShard(ref, reason: "worker drained")) }
        }
        if shards.isEmpty || now - start >= configuration.drainTimeout + configuration.drainGrace {
            if isConnected { out.append(.send(.disconnect(Disconnect(reason: "drained")))) }
            exit(into: &out)
        }
    }

    private mutating func tick(now: ContinuousClock.Instant, into out: inout [Action]) {
        checkDrain(now: now, into: &out)
        if hasExited { return }
        switch connection {
        case .connected:
            if let h = lastHeard, now - h > configuration.heartbeatInterval * configuration.liveness {
                return loseConnection(now: now, reason: "coordinator silent; reconnecting", into: &out)
            }
            if let s = lastHeartbeatSent, now - s >= configuration.heartbeatInterval { sendHeartbeat(now: now, into: &out) }
        case .backingOff(let until):
            if now >= until { connect(now: now, into: &out) }
        case .idle, .exited:
            break
        }
        // Log lines that waited long enough go.
        for ref in order {
            guard let since = shards[ref]?.pendingLogsSince, now - since >= configuration.logsFlushDelay else { continue }
            flush(ref, into: &out)
        }
        // Deferred transfers whose wait is over go again.
        for ref in order {
            guard var s = shards[ref], s.transfers.contains(where: { $0.deferredUntil.map { $0 <= now } ?? false }) else { continue }
            for i in s.transfers.indices where s.transfers[i].deferredUntil.map({ $0 <= now }) ?? false { s.transfers[i].deferredUntil = nil }
            shards[ref] = s
            flush(ref, into: &out)
        }
    }

    private mutating func sendHeartbeat(now: ContinuousClock.Instant, into out: inout [Action]) {
        lastHeartbeatSent = now
        let progress = order.map { ShardProgress(ref: $0, step: shards[$0]!.step, total: shards[$0]!.totalSteps) }
        out.append(.send(.heartbeat(Heartbeat(credits: UInt16(min(credits, Int(UInt16.max))), progress: progress))))
    }

    // MARK: Inbound

    private mutating func receive(_ message: Message, now: ContinuousClock.Instant, into out: inout [Action]) {
        // The coordinator sends a peer nothing but ERRORs until it has a session for it, and one connection keeps
        // order: so the first message that is not an ERROR means our READY has been taken.
        if case .error = message {} else { readySent = nil }
        switch message {
        case .heartbeat:
            break
        case .dispatch(let d):
            dispatch(d, into: &out)
        case .ack(let a):
            ack(a, into: &out)
        case .cancel(let c):
            if var s = shards[c.ref] {
                // A CANCEL comes at every heartbeat that still reports the attempt: stop it once.
                guard s.cancelled == nil else { return flush(c.ref, into: &out) }
                s.cancelled = c.reason
                // Its buffered output goes: the coordinator refuses all of it (the lease moved or the job ended).
                // Waiting for ACKs of it kept a superseded shard alive for good (a refused chunk of a cancelled shard
                // was ignored, so its transfer never ended), and the coordinator cancelled it at every heartbeat.
                s.unackedMetrics = [:]
                s.unsentMetrics = []
                s.transfers = []
                s.pendingLogs = []
                s.pendingLogsSince = nil
                s.unackedLogs = [:]
                s.unsentLogs = []
                shards[c.ref] = s
                waiters = waiters.filter { $0.value.ref != c.ref }
                out.append(.log("shard cancelled by coordinator", ["shard": "\(c.ref)", "reason": c.reason]))
                out.append(.stopShard(c.ref, reason: c.reason))
                flush(c.ref, into: &out)
            } else {
                // SPEC §6.2: always answer, so the coordinator's slot accounting converges.
                out.append(.send(.shardFailed(ShardFailed(ref: c.ref, reason: "cancelled: \(c.reason)", retryable: true))))
            }
        case .fetchReply(let r):
            if case .fetch(let ref, _)? = waiters.removeValue(forKey: r.requestID) { out.append(.deliverFetch(ref, r)) }
        case .reply(let r):
            if case .request(let ref, _)? = waiters.removeValue(forKey: r.requestID) { out.append(.deliverReply(ref, r)) }
        case .disconnect(let d):
            // The coordinator does not know us (it restarted): register again on a fresh connection.
            loseConnection(now: now, reason: "coordinator asked to re-register: \(d.reason)", into: &out)
        case .error(let e) where e.code == WireStatus.notReady:
            // A notReady that arrives after our READY and before the coordinator took it answers a message we sent
            // before that READY (every heartbeat, metric batch and chunk in flight gets one): the READY already
            // covers it. Answering each with a fresh READY was a storm of registrations after every outage, each
            // requeueing and re-taking our shards. After a liveness period without any sign that the READY was
            // taken, a notReady does ask for a new one (a coordinator that restarted again meanwhile).
            if let sent = readySent, now - sent < configuration.heartbeatInterval * configuration.liveness {
                ignoredNotReady += 1
                break
            }
            out.append(.log("coordinator asked to re-register", [:]))
            register(now: now, into: &out)
        case .error(let e) where e.code == ProtocolError.Code.unknownType.wireCode:
            // This worker sends one type a coordinator may not know: LOGS (SPEC §6.4). Such a coordinator stores no
            // logs; keep none, so nothing waits for log ACKs that will never come.
            out.append(.log("coordinator reported an error", ["code": "\(e.code)", "message": e.message]))
            if coordinatorTakesLogs {
                coordinatorTakesLogs = false
                out.append(.log("the coordinator does not take LOGS: shard log lines are not sent on this connection", [:]))
                for ref in order {
                    guard var s = shards[ref] else { continue }
                    logLinesDropped += s.heldLogLines
                    s.pendingLogs = []
                    s.pendingLogsSince = nil
                    s.unackedLogs = [:]
                    s.unsentLogs = []
                    shards[ref] = s
                    flush(ref, into: &out)
                }
            }
        case .error(let e):
            out.append(.log("coordinator reported an error", ["code": "\(e.code)", "message": e.message]))
        case .ready, .metrics, .logs, .chunk, .shardDone, .shardFailed, .fetch, .request:
            out.append(.log("unexpected message from coordinator", ["type": "\(message.type)"]))
        }
    }

    private mutating func dispatch(_ d: Dispatch, into out: inout [Action]) {
        guard shards[d.ref] == nil else { return }  // duplicate delivery
        guard credits > 0 else {
            let reason = drainStarted != nil ? "worker draining" : "no free slot"
            out.append(.send(.shardFailed(ShardFailed(ref: d.ref, reason: reason, retryable: true))))
            return
        }
        shards[d.ref] = Shard(ref: d.ref, totalSteps: d.totalSteps, step: d.resume?.step ?? 0)
        order.append(d.ref)
        let from = d.resume.map { "resuming from the checkpoint at step \($0.step)" } ?? "from step 0"
        shardLog(d.ref, .info, "leased by \(configuration.name): attempt \(d.ref.attempt) of \(d.kind)/\(d.algorithm), \(from) of \(d.totalSteps)")
        out.append(.startShard(d))
    }

    private mutating func ack(_ a: Ack, into out: inout [Action]) {
        guard var s = shards[a.ref] else { return }
        switch a.kind {
        case .metrics:
            s.unackedMetrics[a.sequence] = nil
            shards[a.ref] = s
            if !a.accepted && s.cancelled == nil { fence(a.ref, into: &out) }
        case .chunk:
            guard let i = s.transfers.firstIndex(where: { $0.id == a.sequence }) else { return }
            if a.status == .deferred {
                if s.fenced || s.cancelled != nil || s.transferFailed != nil { return }
                var t = s.transfers[i]
                // The other chunks in flight when the coordinator deferred the transfer are deferred too: one wait.
                if t.deferredUntil != nil || t.complete { return }
                let now = self.now ?? .now
                let since = t.deferredSince ?? now
                if now - since >= configuration.deferralLimit {
                    s.transferFailed = "the coordinator could not store blob transfer \(a.sequence) for \(Int((now - since).components.seconds)) s (its data dir is out of space)"
                    s.transferFailure = .permanent
                    shards[a.ref] = s
                    shardLog(a.ref, .error, s.transferFailed!)
                    out.append(.log("blob transfer deferred too long: failing the shard", ["shard": "\(a.ref)", "transfer": "\(a.sequence)"]))
                    return flush(a.ref, into: &out)
                }
                let delay = t.deferralDelay.map { min($0 * 2, configuration.maxDeferralDelay) } ?? configuration.deferralDelay
                t.deferredSince = since
                t.deferralDelay = delay
                t.deferredUntil = now + delay
                t.sent = 0
                t.acked = 0
                t.finalSent = false
                t.restarted = false
                s.transfers[i] = t
                shards[a.ref] = s
                deferrals += 1
                shardLog(a.ref, .warning, "blob transfer \(a.sequence) deferred by the coordinator (its data dir is out of space); sending it again in \(delay)")
                out.append(.log("blob transfer deferred by the coordinator (out of space); sending it again later",
                                ["shard": "\(a.ref)", "transfer": "\(a.sequence)", "retryIn": "\(delay)"]))
                return
            }
            if !a.accepted {
                if s.fenced || s.cancelled != nil { return }
                // Rejected (checksum, size): a shard whose output cannot be stored fails, retryably, and sends no
                // more chunks (flush).
                if s.transferFailed == nil { s.transferFailed = "coordinator rejected blob transfer \(a.sequence)" }
                shards[a.ref] = s
                return flush(a.ref, into: &out)
            }
            var t = s.transfers[i]
            if a.offset == 0 && t.sent > 0 && !t.complete {
                // The coordinator lost the transfer: restart it from 0, once (see `restarted`).
                if !t.restarted {
                    t.sent = 0
                    t.acked = 0
                    t.finalSent = false
                    t.restarted = true
                }
            } else {
                t.acked = max(t.acked, a.offset)
                if a.offset > 0 {
                    t.restarted = false
                    t.deferredSince = nil
                    t.deferralDelay = nil
                }
            }
            if t.acked >= t.size && t.finalSent { t.complete = true }
            s.transfers[i] = t
            shards[a.ref] = s
        case .logs:
            s.unackedLogs[a.sequence] = nil
            shards[a.ref] = s
            if !a.accepted && s.cancelled == nil { fence(a.ref, into: &out) }
        case .done, .failed:
            shards[a.ref] = nil
            order.removeAll { $0 == a.ref }
            waiters = waiters.filter { $0.value.ref != a.ref }
            out.append(.log("shard finished", ["shard": "\(a.ref)", "accepted": "\(a.accepted)"]))
            out.append(.forget(a.ref))
            return
        }
        flush(a.ref, into: &out)
    }

    /// Appends a line to the shard's log (sent by the next `flush`), or drops it, counted, when the log is full, the
    /// attempt's output is void (fenced, cancelled) or the coordinator takes no logs.
    private mutating func shardLog(_ ref: ShardRef, _ line: LogLine) {
        guard var s = shards[ref] else { return }
        guard configuration.shardLogs else { return }
        guard coordinatorTakesLogs, !s.fenced, s.cancelled == nil else {
            logLinesDropped += 1
            return
        }
        if s.heldLogLines >= configuration.logsHeld {
            s.droppedLogs += 1
            logLinesDropped += 1
        } else {
            var line = line
            line.message = LogLine.clip(line.message)
            if s.pendingLogs.isEmpty { s.pendingLogsSince = now }
            s.pendingLogs.append(line)
        }
        shards[ref] = s
    }

    private mutating func shardLog(_ ref: ShardRef, _ level: LogLevel, _ message: String) {
        shardLog(ref, LogLine(time: wallTime, level: level, message: message))
    }

    /// The coordinator says this attempt is no longer current: stop computing and forget its output.
    private mutating func fence(_ ref: ShardRef, into out: inout [Action]) {
        guard shards[ref] != nil, !shards[ref]!.fenced else { return }
        shards[ref]!.fenced = true
        out.append(.stopShard(ref, reason: "fenced: attempt superseded"))
    }

    // MARK: Outbound

    private mutating func computed(_ ref: ShardRef, _ output: ComputeOutput, into out: inout [Action]) {
        guard var s = shards[ref] else { return }
        s.step = max(s.step, output.step)
        if s.cancelled != nil {
            // Output of a cancelled attempt is void (and a fetch or request it makes is answered by its stop).
            if let o = output.outcome { s.outcome = o }
            shards[ref] = s
            return flush(ref, into: &out)
        }
        shards[ref] = s
        for line in output.logs { shardLog(ref, line) }
        if let o = output.outcome, s.outcome == nil {
            switch o {
            case .done: shardLog(ref, .info, "computation finished at step \(s.totalSteps); sending its outputs")
            case .failed(let reason, .shardError): shardLog(ref, .error, "failed (counts against max_attempts): \(reason)")
            case .failed(let reason, .permanent): shardLog(ref, .error, "failed, not retryable: \(reason)")
            case .failed(let reason, .infrastructure): shardLog(ref, .warning, "stopped, handed back without charging an attempt: \(reason)")
            }
        }
        s = shards[ref]!
        var points = output.points[...]
        while !points.isEmpty {
            let batch = MetricsBatch(ref: ref, sequence: s.nextSequence, points: Array(points.prefix(configuration.metricsBatchSize)))
            points = points.dropFirst(configuration.metricsBatchSize)
            s.nextSequence += 1
            s.unackedMetrics[batch.sequence] = batch
            s.unsentMetrics.append(batch.sequence)
        }
        for blob in output.blobs {
            s.transfers.append(Transfer(id: nextTransferID, blob: blob, sha256: blob.sha256, metricsBefore: s.nextSequence))
            nextTransferID += 1
        }
        for digest in output.digests {
            guard let i = s.transfers.firstIndex(where: { $0.sha256.isEmpty }) else { break }
            s.transfers[i].sha256 = digest
        }
        if let o = output.outcome { s.outcome = o }
        shards[ref] = s
        if let f = output.fetch {
            let fetch = Fetch(requestID: nextRequestID, sha256: f.sha256, offset: f.offset, length: f.length)
            waiters[nextRequestID] = .fetch(ref, fetch)
            nextRequestID += 1
            if isConnected { out.append(.send(.fetch(fetch))) }
        }
        if let r = output.request {
            let request = ClientRequest(requestID: nextRequestID, method: r.method, body: r.body)
            waiters[nextRequestID] = .request(ref, request)
            nextRequestID += 1
            if isConnected { out.append(.send(.request(request))) }
        }
        flush(ref, into: &out)
    }

    /// Sends what the shard may send now: new metric batches, chunks within each transfer's window, and its final
    /// message once everything before it is acknowledged (durable).
    private mutating func flush(_ ref: ShardRef, into out: inout [Action]) {
        guard var s = shards[ref] else { return }
        if s.fenced {
            // Nothing this attempt produces counts any more; once the computation has stopped, forget it.
            if s.outcome != nil {
                shards[ref] = nil
                order.removeAll { $0 == ref }
                waiters = waiters.filter { $0.value.ref != ref }
                out.append(.forget(ref))
            }
            return
        }
        guard isConnected else { return }
        if let reason = s.cancelled {
            // SPEC §6.2: a CANCEL is answered with SHARD_FAILED once the computation has stopped (its ACK forgets it).
            if s.outcome != nil && !s.outcomeSent {
                out.append(.send(.shardFailed(ShardFailed(ref: ref, reason: "cancelled: \(reason)", failure: .infrastructure))))
                s.outcomeSent = true
                shards[ref] = s
            }
            return
        }
        // Within the window: the oldest unsent batches first (replay order after a reconnect is sequence order).
        var sending = 0
        while sending < s.unsentMetrics.count, s.unackedMetrics.count - s.unsentMetrics.count + sending < configuration.metricsWindow {
            if let b = s.unackedMetrics[s.unsentMetrics[sending]] { out.append(.send(.metrics(b))) }
            sending += 1
        }
        s.unsentMetrics.removeFirst(sending)
        // Logs: the waiting lines go out in batches within their own window, the oldest first.
        if coordinatorTakesLogs {
            if s.droppedLogs > 0 && s.heldLogLines < configuration.logsHeld {
                s.pendingLogs.append(LogLine(time: wallTime, level: .warning,
                    message: "\(s.droppedLogs) log lines dropped (the worker's log buffer for this shard was full)"))
                s.droppedLogs = 0
            }
            // A batch is cut only when the window has room, so lines wait as lines (and go in fuller batches), and
            // only when it is full, the computation has ended, the worker drains or the oldest line waited long enough.
            let due = s.outcome != nil || drainStarted != nil
                || (s.pendingLogsSince.map { since in now.map { $0 - since >= configuration.logsFlushDelay } ?? true } ?? false)
            while !s.pendingLogs.isEmpty && s.unackedLogs.count < configuration.logsWindow
                && (due || s.pendingLogs.count >= configuration.logsBatchSize)
            {
                let batch = LogBatch(ref: ref, sequence: s.nextLogSequence, lines: Array(s.pendingLogs.prefix(configuration.logsBatchSize)))
                s.pendingLogs.removeFirst(batch.lines.count)
                s.pendingLogsSince = s.pendingLogs.isEmpty ? nil : now
                s.nextLogSequence += 1
                s.unackedLogs[batch.sequence] = batch
                s.unsentLogs.append(batch.sequence)
            }
            var sendingLogs = 0
            while sendingLogs < s.unsentLogs.count, s.unackedLogs.count - s.unsentLogs.count + sendingLogs < configuration.logsWindow {
                if let b = s.unackedLogs[s.unsentLogs[sendingLogs]] { out.append(.send(.logs(b))) }
                sendingLogs += 1
            }
            s.unsentLogs.removeFirst(sendingLogs)
        }
        let window = UInt64(configuration.chunkSize * configuration.chunkWindow)
        // The oldest metrics batch not yet durable: a blob's last chunk (which registers it) waits for the batches the
        // shard emitted before it. Otherwise a checkpoint at step S could be stored while the points up to S still
        // wait in the metrics window, and a worker lost then leaves a gap no resumed attempt fills (it starts after S).
        var oldestUnacked: UInt64?
        var lookedUp = false
        for i in s.transfers.indices where !s.transfers[i].complete && s.transferFailed == nil && s.transfers[i].deferredUntil == nil {
            var t = s.transfers[i]
            while !t.finalSent && t.sent - min(t.sent, t.acked) < window {
                let end = min(t.size, t.sent + UInt64(configuration.chunkSize))
                let isLast = end == t.size
                if isLast && t.sha256.isEmpty { break }  // the digest is still being computed
                if isLast {
                    if !lookedUp { oldestUnacked = s.unackedMetrics.keys.min(); lookedUp = true }
                    if let o = oldestUnacked, o < t.metricsBefore { break }  // earlier points are not stored yet
                }
                out.append(
                    .send(
                        .chunk(
                            BlobChunk(
                                ref: ref, transferID: t.id, kind: t.blob.kind, step: t.blob.step, offset: t.sent,
                                totalSize: t.size, isLast: isLast, sha256: isLast ? t.sha256 : "",
                                data: Array(t.blob.bytes[Int(t.sent)..<Int(end)])
                            )
                        )
                    )
                )
                t.sent = end
                if isLast { t.finalSent = true }
            }
            s.transfers[i] = t
        }
        // A checkpoint or samples blob is done with once stored; the result's checksum goes into SHARD_DONE.
        s.transfers.removeAll { $0.complete && $0.blob.kind != .result }
        if !s.outcomeSent, let outcome = s.outcome {
            if let reason = s.transferFailed {
                out.append(.send(.shardFailed(ShardFailed(ref: ref, reason: reason, failure: s.transferFailure))))
                s.outcomeSent = true
            } else if s.unackedMetrics.isEmpty && s.transfers.allSatisfy(\.complete)
                && s.pendingLogs.isEmpty && s.unsentLogs.isEmpty
            {
                // Logs need to be sent, not acknowledged: the coordinator stores a connection's LOGS no later than
                // the SHARD_DONE after them (SPEC §6.4), and waiting for their ACK would put a durable commit on
                // every shard's path to DONE. Unacknowledged batches stay held and are replayed with the DONE.
                switch outcome {
                case .done(let summary):
                    let sha = s.transfers.first(where: { $0.blob.kind == .result })?.sha256 ?? ""
                    out.append(.send(.shardDone(ShardDone(ref: ref, summary: summary, resultSHA256: sha))))
                case .failed(let reason, let failure):
                    out.append(.send(.shardFailed(ShardFailed(ref: ref, reason: reason, failure: failure))))
                }
                s.outcomeSent = true
            }
        }
        shards[ref] = s
    }
}

extension WorkerStateMachine.Shard {
    /// After a reconnect: every unacknowledged batch is unsent again, transfers restart from 0 (the coordinator
    /// keeps no partial transfer across sessions), and the final message goes again once its turn comes.
    mutating func resetForReplay() {
        unsentMetrics = unackedMetrics.keys.sorted()
        unsentLogs = unackedLogs.keys.sorted()
        for i in transfers.indices where !transfers[i].complete {
            transfers[i].sent = 0
            transfers[i].acked = 0
            transfers[i].finalSent = false
            transfers[i].restarted = false
        }
        outcomeSent = false
    }
}

extension WorkerStateMachine.Waiter {
    var ref: ShardRef {
        switch self {
        case .fetch(let r, _), .request(let r, _): r
        }
    }
}
