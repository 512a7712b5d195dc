// The coordinator (ARCHITECTURE.md §Processes): one ZeroMQ ROUTER for workers and clients, the scheduler, every
// PostgreSQL write, and the checkpoint store.
//
// Concurrency: one loop thread owns the ROUTER socket and the PostgreSQL connection (neither is thread-safe) and
// processes messages in arrival order. Nothing here runs on Swift's cooperative pool. Each loop iteration drains
// what arrived, writes all metric batches in one transaction (group commit), acknowledges them after the commit,
// and on every heartbeat tick checks worker liveness, rescues expired leases and dispatches against credits.

import Foundation
import LibPQ
import Logging
import Synchronization
import TesseraCore
import TesseraProtocol
import TesseraStore
import ZeroMQ

public struct CoordinatorConfiguration: Sendable {
    /// ZeroMQ endpoint to bind, e.g. `tcp://127.0.0.1:5555` (`tcp://127.0.0.1:*` picks a free port).
    public var bind: String
    /// libpq conninfo or postgres:// URL.
    public var databaseURL: String
    /// Where the checkpoint store lives.
    public var dataDir: String
    /// Heartbeat period in seconds, both directions (Paranoid Pirate).
    public var heartbeatInterval: Double = 1.0
    /// Heartbeats a worker may miss before it is declared lost and its shards go back to the queue.
    public var liveness: Int = 3
    /// A lease not renewed for this long is rescued even if no worker session noticed (coordinator restarts).
    public var leaseSeconds: Double = 15
    /// Largest blob slice sent in one reply.
    public var maxReadChunk: Int = 1 << 20
    /// If set, the bound endpoint is written here once the coordinator listens (for scripts binding `:*`).
    public var endpointFile: String?

    public init(bind: String, databaseURL: String, dataDir: String) {
        self.bind = bind
        self.databaseURL = databaseURL
        self.dataDir = dataDir
    }
}

/// Counters the coordinator keeps in memory and reports through `tessera workers --json` / status.
public struct CoordinatorCounters: Sendable {
    public var messagesIn = 0
    public var malformedFrames = 0
    public var staleDropped = 0
    public var metricPoints = 0
    public var metricCommits = 0
    public var dispatched = 0
    public var workersLost = 0
    /// ERROR messages peers sent us (never answered).
    public var errorsReceived = 0
    /// ERRORs not sent because the peer already had its 10 this second.
    public var errorsSuppressed = 0
    /// Replies replaced by `tooLarge` because they would have exceeded the frame limits.
    public var repliesTooLarge = 0
}

public final class Coordinator: @unchecked Sendable {
    // @unchecked: all mutable state below is touched only by the thread running `run()`; `stopRequested` and
    // `boundEndpoint` are the cross-thread parts and are atomics / set before `ready` is signalled.

    public static let schemaVersion = 2

    let config: CoordinatorConfiguration
    let catalogue: AlgorithmCatalogue
    let logger: Logger
    private let stopRequested = Atomic<Bool>(false)
    private let endpointBox = Mutex<String?>(nil)

    // Loop-thread state.
    private var store: PostgresJobStore!
    private var blobs: BlobStore!
    private var router: ZMQSocket!
    private var sessions: [[UInt8]: WorkerSession] = [:]
    private var pendingMetrics: [(identity: [UInt8], workerID: Int64, key: ShardRef, sequence: UInt64, rows: [MetricPoint])] = []
    private var transfers: [TransferKey: IncomingTransfer] = [:]
    private var dispatchNeeded = true
    private var errorLimit = ErrorRateLimit(perSecond: 10)
    private(set) var counters = CoordinatorCounters()

    public init(config: CoordinatorConfiguration, catalogue: AlgorithmCatalogue, logger: Logger) {
        self.config = config
        self.catalogue = catalogue
        self.logger = logger
    }

    /// The endpoint actually bound (after `run()` has started), e.g. with the port chosen for `:*`.
    public var boundEndpoint: String? { endpointBox.withLock { $0 } }

    /// Asks the loop to stop: no new work is accepted, pending writes are finished, `run()` returns.
    public func requestStop() { stopRequested.store(true, ordering: .relaxed) }

    // MARK: Loop

    /// Runs until `requestStop()`. Blocking: call it on a thread of its own (or the main thread).
    public func run() throws {
        let db = try PGConnection(config.databaseURL)
        defer { db.close() }
        store = PostgresJobStore(db: db, leaseSeconds: config.leaseSeconds)
        let version = try store.schemaVersion()
        guard version == Self.schemaVersion else {
            throw CoordinatorError(
                version < Self.schemaVersion
                    ? "database schema is at version \(version), this build needs \(Self.schemaVersion): run `tessera migrate --database-url URL` first"
                    : "database schema is at version \(version), newer than this build (\(Self.schemaVersion)): upgrade tessera"
            )
        }
        blobs = try BlobStore(dataDir: config.dataDir)

        let context = try ZMQContext(ioThreads: 1)
        defer { context.terminate() }
        router = try ZMQSocket(context: context, type: .router)
        defer { router.close() }
        try router.setRouterMandatory(true)
        try router.setLinger(milliseconds: 2000)
        try router.setSendHighWaterMark(100_000)
        try router.setReceiveHighWaterMark(100_000)
        try router.setMaxMessageSize(Int64(WireCodec.limits.maxMessageBytes))
        try router.bind(config.bind)
        let endpoint = try router.lastEndpoint
        endpointBox.withLock { $0 = endpoint }
        if let file = config.endpointFile {
            let tmp = file + ".tmp"
            guard FileManager.default.createFile(atPath: tmp, contents: Data((endpoint + "\n").utf8)), rename(tmp, file) == 0 else {
                throw CoordinatorError("cannot write the endpoint file \(file)")
            }
        }
        logger.info("coordinator listening", metadata: ["zmq.endpoint": "\(endpoint)"])

        try store.markAllWorkersLost(reason: "coordinator restarted")
        try mergeFinishedJobs()

        let tick = Duration.milliseconds(Int64(config.heartbeatInterval * 1000))
        var nextTick = ContinuousClock.now
        while !stopRequested.load(ordering: .relaxed) {
            let now = ContinuousClock.now
            let wait = max(0, min(50, (nextTick - now).milliseconds))
            if try ZMQ.poll([ZMQPollItem(socket: router)], timeoutMilliseconds: wait)[0] {
                var n = 0
                while n < 2000, let frames = try router.receive(dontWait: true) {
                    n += 1
                    handle(frames)
                }
            }
            try flushMetrics()
            if ContinuousClock.now >= nextTick {
                nextTick = ContinuousClock.now + tick
                try onTick()
            }
            if dispatchNeeded {
                dispatchNeeded = false
                try dispatch()
            }
        }
        // Graceful stop: finish writes; workers keep their shards and re-register with the next coordinator.
        try flushMetrics()
        for identity in sessions.keys { send(identity, .disconnect(Disconnect(reason: "coordinator shutting down"))) }
        for t in transfers.values { blobs.abort(t.transfer) }
        transfers.removeAll()
        logger.info("coordinator stopped")
    }

    // MARK: Message handling

    private func handle(_ frames: [[UInt8]]) {
        counters.messagesIn += 1
        let identity: [UInt8]
        let message: Message
        do {
            let split = try WireCodec.splitRouterEnvelope(frames)
            identity = split.identity
            do {
                message = try WireCodec.decode(split.frames)
            } catch {
                counters.malformedFrames += 1
                logger.debug("malformed frame", metadata: ["error": "\(error)"])
                // SPEC §6.1.7: never answer an ERROR with an ERROR (a peer's ERROR we cannot decode included).
                if WireCodec.typeCodeIfPresent(split.frames) != MessageType.error.rawValue {
                    sendError(identity, code: error.code.wireCode, error.description)
                }
                return
            }
        } catch {
            // No empty delimiter after the identity: the peer is not speaking this protocol's envelope. ROUTER always
            // gives us the identity, so it can be told (§8 badEnvelope).
            counters.malformedFrames += 1
            if let identity = frames.first, !identity.isEmpty {
                sendError(identity, code: error.code.wireCode, error.description)
            }
            return
        }
        do {
            try handle(message, from: identity)
        } catch {
            logger.error("failed to handle message", metadata: ["error": "\(error)"])
            if case .request(let r) = message {
                reply(identity, r, status: WireStatus.internalError, ["error": .string("\(error)")])
            }
        }
    }

    private func handle(_ message: Message, from identity: [UInt8]) throws {
        if let s = sessions[identity] { s.lastSeen = ContinuousClock.now }
        switch message {
        case .ready(let r): try onReady(r, from: identity)
        case .heartbeat(let h):
            guard let s = sessions[identity] else { return unknownWorker(identity) }
            try onHeartbeat(h, session: s)
        case .metrics(let b):
            guard let s = sessions[identity] else { return unknownWorker(identity) }
            pendingMetrics.append(
                (identity, s.id, b.ref, b.sequence, b.points)
            )
        case .chunk(let c):
            guard let s = sessions[identity] else { return unknownWorker(identity) }
            try onChunk(c, from: identity, workerID: s.id)
        case .shardDone(let d):
            guard let s = sessions[identity] else { return unknownWorker(identity) }
            try onShardDone(d, session: s)
        case .shardFailed(let f):
            guard let s = sessions[identity] else { return unknownWorker(identity) }
            try onShardFailed(f, session: s)
        case .disconnect(let d):
            if let s = sessions.removeValue(forKey: identity) {
                logger.info("worker disconnected", metadata: ["worker.id": "\(s.id)", "reason": "\(d.reason)"])
                try store.markWorker(s.id, state: "gone", reason: d.reason)
                _ = try store.requeueShards(ofWorker: s.id, reason: "worker disconnected: \(d.reason)")
                dropTransfers(of: identity)
                dispatchNeeded = true
            }
        case .fetch(let f): onFetch(f, from: identity)
        case .request(let r): try onRequest(r, from: identity)
        case .error(let e):
            // Counted and logged, never answered (SPEC §6.1.7).
            counters.errorsReceived += 1
            logger.debug("peer sent ERROR", metadata: ["code": "\(e.code)", "reason": "\(e.message)"])
        case .dispatch, .ack, .cancel, .fetchReply, .reply:
            sendError(identity, code: WireStatus.unexpectedMessage, "unexpected message for a coordinator")
        }
    }

    /// A worker we do not know (this coordinator restarted, or declared it lost): SPEC §6.1.5, ERROR notReady;
    /// the worker sends READY again with its running shards.
    private func unknownWorker(_ identity: [UInt8]) {
        sendError(identity, code: WireStatus.notReady, "unknown worker: send READY")
    }

    /// Sends an ERROR unless this peer already got `errorLimit.perSecond` of them in the current second
    /// (SPEC §6.1.7: at most 10 per second to one peer); suppressed ones are counted.
    private func sendError(_ identity: [UInt8], code: UInt16, _ reason: String) {
        guard errorLimit.allow(identity, now: ContinuousClock.now) else {
            counters.errorsSuppressed += 1
            return
        }
        send(identity, .error(ErrorMessage(code: code, message: reason)))
    }

    private func onReady(_ r: Ready, from identity: [UInt8]) throws {
        guard r.protocolVersion == WireCodec.version else {
            sendError(
                identity, code: ProtocolError.Code.unsupportedVersion.wireCode,
                "protocol version \(r.protocolVersion) not supported; this coordinator speaks \(WireCodec.version)")
            return
        }
        // A READY replaces any registration of the same worker (same identity, or same name on an older
        // connection): SPEC §6.1.4. Its shards are re-adopted below; the rest go back to the queue.
        var replaced: [WorkerSession] = []
        for (other, session) in sessions where other == identity || session.name == r.workerName {
            sessions[other] = nil
            dropTransfers(of: other)
            replaced.append(session)
        }
        let id = try store.registerWorker(
            name: r.workerName, host: r.host, slots: Int(r.slots), capabilities: r.capabilities
        )
        let session = WorkerSession(id: id, identity: identity, name: r.workerName, slots: Int(r.slots), capabilities: r.capabilities)
        sessions[identity] = session
        // Shards the worker still runs from before (coordinator restart, reconnect): keep those whose attempt is
        // still the live one, stop the others.
        let adopted = Set(try store.adoptShards(workerID: id, keys: r.running))
        for ref in r.running {
            if adopted.contains(ref) {
                session.inflight[ref] = ContinuousClock.now
            } else {
                send(identity, .cancel(Cancel(ref: ref, reason: "superseded: the shard was re-leased")))
            }
        }
        session.credits = max(0, Int(r.slots) - session.inflight.count)
        for old in replaced {
            try store.markWorker(old.id, state: "gone", reason: "re-registered")
            _ = try store.requeueShards(ofWorker: old.id, reason: "worker re-registered")
        }
        logger.info(
            "worker ready",
            metadata: ["worker.id": "\(id)", "worker.name": "\(r.workerName)", "slots": "\(r.slots)", "adopted": "\(adopted.count)"]
        )
        send(identity, .heartbeat(Heartbeat()))
        dispatchNeeded = true
    }

    private func onHeartbeat(_ h: Heartbeat, session s: WorkerSession) throws {
        s.credits = Int(h.credits)
        let stale = try store.renewLeases(workerID: s.id, progress: h.progress.map { ($0.ref, $0.step) })
        for key in stale {
            counters.staleDropped += 1
            send(s.identity, .cancel(Cancel(ref: key, reason: "lease lost: the shard was re-leased or cancelled")))
        }
        // Reconcile in-flight accounting: a shard dispatched a while ago that the worker no longer reports is gone.
        let reported = Set(h.progress.map(\.ref))
        let grace = Duration.milliseconds(Int64(config.heartbeatInterval * 2000))
        for (key, since) in s.inflight where !reported.contains(key) && ContinuousClock.now - since > grace {
            s.inflight[key] = nil
            dispatchNeeded = true
        }
        if s.freeSlots > 0 { dispatchNeeded = true }
    }

    private func onShardDone(_ d: ShardDone, session s: WorkerSession) throws {
        try flushMetrics()  // metrics sent before DONE are committed before the shard is
        let key = d.ref
        if s.inflight.removeValue(forKey: key) != nil { s.credits += 1 }
        dispatchNeeded = true
        let summary = (try? JSONValue.parse(d.summary)) ?? .object([:])
        let complete = try store.completeShard(
            key, workerID: s.id, summary: summary.render(), resultSHA256: d.resultSHA256.isEmpty ? nil : d.resultSHA256
        )
        send(s.identity, .ack(Ack(ref: d.ref, kind: .done, accepted: complete != nil)))
        guard let complete else {
            counters.staleDropped += 1
            return
        }
        if complete { try mergeJob(key.jobID) }
    }

    private func onShardFailed(_ f: ShardFailed, session s: WorkerSession) throws {
        try flushMetrics()
        let key = f.ref
        // A retryable failure is often the worker handing work back (draining, no free slot): wait for its next
        // heartbeat to say how many slots it has, rather than dispatching straight back to it.
        if s.inflight.removeValue(forKey: key) != nil, !f.retryable { s.credits += 1 }
        dispatchNeeded = true
        let (outcome, toCancel) = try store.failShard(key, workerID: s.id, reason: f.reason, retryable: f.retryable)
        send(s.identity, .ack(Ack(ref: f.ref, kind: .failed, accepted: outcome != .rejected)))
        if outcome == .rejected { counters.staleDropped += 1 }
        cancelShards(toCancel, reason: "job failed")
        if outcome != .rejected {
            logger.info("shard failed", metadata: ["shard": "\(key)", "retryable": "\(f.retryable)", "reason": "\(f.reason)"])
        }
    }

    // MARK: Metrics (group commit)

    private func flushMetrics() throws {
        guard !pendingMetrics.isEmpty else { return }
        let batch = pendingMetrics
        pendingMetrics.removeAll(keepingCapacity: true)
        let accepted = try store.ingestMetrics(batch.map { ($0.key, $0.workerID, $0.rows) })
        counters.metricCommits += 1
        for (item, ok) in zip(batch, accepted) {
            if ok { counters.metricPoints += item.rows.count } else { counters.staleDropped += 1 }
            send(item.identity, .ack(Ack(ref: item.key, kind: .metrics, sequence: item.sequence, accepted: ok)))
        }
    }

    // MARK: Blobs

    private struct TransferKey: Hashable {
        var identity: [UInt8]
        var id: UInt64
    }

    private final class IncomingTransfer {
        let transfer: BlobStore.Transfer
        let key: ShardRef
        let kind: BlobKind
        let step: Int64
        init(transfer: BlobStore.Transfer, key: ShardRef, kind: BlobKind, step: Int64) {
            self.transfer = transfer
            self.key = key
            self.kind = kind
            self.step = step
        }
    }

    private func onChunk(_ c: BlobChunk, from identity: [UInt8], workerID: Int64) throws {
        let tk = TransferKey(identity: identity, id: c.transferID)
        let key = c.ref
        if c.offset == 0, transfers[tk] == nil || transfers[tk]!.transfer.received > 0 {
            if let old = transfers.removeValue(forKey: tk) { blobs.abort(old.transfer) }
            guard c.totalSize <= WireCodec.limits.maxBlobBytes else {
                send(identity, .ack(Ack(ref: c.ref, kind: .chunk, sequence: c.transferID, offset: 0, accepted: false)))
                return
            }
            transfers[tk] = IncomingTransfer(
                transfer: try blobs.beginTransfer(totalSize: c.totalSize), key: key, kind: c.kind, step: c.step
            )
        }
        guard let t = transfers[tk] else {
            // A chunk of a transfer we do not have (the coordinator restarted): ask for it from the start.
            send(identity, .ack(Ack(ref: c.ref, kind: .chunk, sequence: c.transferID, offset: 0, accepted: true)))
            return
        }
        do {
            try t.transfer.append(offset: c.offset, data: c.data)
        } catch {
            transfers[tk] = nil
            blobs.abort(t.transfer)
            logger.info("blob transfer rejected", metadata: ["error": "\(error)"])
            send(identity, .ack(Ack(ref: c.ref, kind: .chunk, sequence: c.transferID, offset: 0, accepted: false)))
            return
        }
        guard c.isLast else {
            send(identity, .ack(Ack(ref: c.ref, kind: .chunk, sequence: c.transferID, offset: t.transfer.received, accepted: true)))
            return
        }
        transfers[tk] = nil
        var accepted = false
        do {
            let path = try blobs.finish(t.transfer, expectedSHA256: c.sha256)
            accepted = try store.registerBlob(
                key, workerID: workerID, kind: t.kind.name, step: t.step, sha256: c.sha256, size: Int64(t.transfer.totalSize), path: path
            )
            if !accepted { counters.staleDropped += 1 }
        } catch let e as BlobStoreError {
            logger.info("blob transfer rejected", metadata: ["error": "\(e)"])
        }
        send(identity, .ack(Ack(ref: c.ref, kind: .chunk, sequence: c.transferID, offset: t.transfer.received, accepted: accepted)))
    }

    private func dropTransfers(of identity: [UInt8]) {
        for (k, t) in transfers where k.identity == identity {
            blobs.abort(t.transfer)
            transfers[k] = nil
        }
    }

    private func onFetch(_ f: Fetch, from identity: [UInt8]) {
        do {
            let (data, total) = try blobs.read(
                sha256: f.sha256, offset: f.offset, length: min(Int(f.length), config.maxReadChunk)
            )
            send(identity, .fetchReply(FetchReply(requestID: f.requestID, sha256: f.sha256, offset: f.offset, totalSize: total, data: data, error: "")))
        } catch {
            send(identity, .fetchReply(FetchReply(requestID: f.requestID, sha256: f.sha256, offset: f.offset, totalSize: 0, data: [], error: "\(error)")))
        }
    }

    // MARK: Scheduling

    private func onTick() throws {
        let now = ContinuousClock.now
        errorLimit.prune(now: now)
        let deadline = Duration.milliseconds(Int64(config.heartbeatInterval * 1000 * Double(config.liveness)))
        for (identity, s) in sessions {
            if now - s.lastSeen > deadline {
                sessions[identity] = nil
                counters.workersLost += 1
                dropTransfers(of: identity)
                let released = try store.requeueShards(ofWorker: s.id, reason: "worker \(s.name) lost (no heartbeat)")
                try store.markWorker(s.id, state: "lost", reason: "missed \(config.liveness) heartbeats")
                logger.warning("worker lost", metadata: ["worker.id": "\(s.id)", "worker.name": "\(s.name)", "requeued": "\(released.count)"])
                dispatchNeeded = true
            } else {
                send(identity, .heartbeat(Heartbeat()))
            }
        }
        if !(try store.requeueExpiredLeases()).isEmpty { dispatchNeeded = true }
        dispatchNeeded = true  // dependencies may have been satisfied, shards requeued elsewhere
    }

    private func dispatch() throws {
        for s in sessions.values.sorted(by: { $0.id < $1.id }) where s.freeSlots > 0 {
            let claimed = try store.claimShards(workerID: s.id, limit: s.freeSlots, capabilities: s.capabilities)
            for c in claimed {
                let d = Dispatch(
                    ref: c.key, kind: c.kind, algorithm: c.algorithm, seed: c.seed, spec: Array(c.spec.utf8),
                    slice: Array(c.slice.utf8),
                    resume: c.checkpoint.map { CheckpointInfo(step: $0.step, sha256: $0.sha256, size: UInt64($0.size)) },
                    totalSteps: c.totalSteps
                )
                s.inflight[c.key] = ContinuousClock.now
                s.credits -= 1
                counters.dispatched += 1
                if !send(s.identity, .dispatch(d)) {
                    // Unroutable: the worker vanished; its lease will be rescued with the session.
                    break
                }
            }
        }
    }

    private func cancelShards(_ shards: [(ShardRef, Int64)], reason: String) {
        for (key, workerID) in shards {
            if let s = sessions.values.first(where: { $0.id == workerID }) {
                send(s.identity, .cancel(Cancel(ref: key, reason: reason)))
            }
        }
    }

    // MARK: Merge

    private func mergeFinishedJobs() throws {
        for id in try store.jobsAwaitingMerge() { try mergeJob(id) }
    }

    private func mergeJob(_ jobID: Int64) throws {
        do {
            let inputs = try store.mergeInputs(jobID: jobID)
            let spec = try JobSpec.fromStored(Array(inputs.spec.utf8))
            let algorithm = try catalogue.resolve(spec)
            var outputs: [ShardOutput] = []
            for shard in inputs.shards {
                let result = try shard.resultPath.map { try blobs.readAll(relativePath: $0) }
                outputs.append(ShardOutput(summary: try JSONValue.parse(shard.summary), result: result))
            }
            let merged = try algorithm.merge(spec, outputs: outputs)
            try store.finishJob(jobID, result: merged.render())
            logger.info("job succeeded", metadata: ["job.id": "\(jobID)"])
        } catch {
            logger.error("merge failed", metadata: ["job.id": "\(jobID)", "error": "\(error)"])
            cancelShards(try store.failJob(jobID, error: "merge failed: \(error)"), reason: "job failed")
        }
    }

    // MARK: Sending

    @discardableResult
    func send(_ identity: [UInt8], _ message: Message) -> Bool {
        do {
            return try router.send(WireCodec.encodeForRouter(identity: identity, message), dontWait: true)
        } catch let e as ProtocolError where e.code == .oversize {
            // A reply too big for one message (e.g. `metrics` without a limit on a long run): the client is told to
            // narrow the request instead of getting a frame it must reject.
            guard case .reply(let r) = message, r.status != WireStatus.tooLarge else {
                logger.error("message over the protocol limits not sent", metadata: ["error": "\(e)"])
                return false
            }
            counters.repliesTooLarge += 1
            let body: JSONObject = [
                "error": .string("the reply would exceed the protocol limits (\(e.message)); narrow the request (--limit, --shard, --name)")
            ]
            return send(identity, .reply(ClientReply(
                requestID: r.requestID, status: WireStatus.tooLarge, body: JSONValue.object(body).utf8Bytes)))
        } catch let e as ZMQError where e.isHostUnreachable {
            if let s = sessions[identity] {
                logger.info("worker unreachable", metadata: ["worker.id": "\(s.id)"])
            }
            return false
        } catch {
            logger.error("send failed", metadata: ["error": "\(error)"])
            return false
        }
    }

    func reply(_ identity: [UInt8], _ r: ClientRequest, status: UInt16 = 0, _ body: JSONObject, blob: [UInt8] = []) {
        send(identity, .reply(ClientReply(requestID: r.requestID, status: status, body: JSONValue.object(body).utf8Bytes, blob: blob)))
    }

    func replyRaw(_ identity: [UInt8], _ r: ClientRequest, json: String, blob: [UInt8] = []) {
        send(identity, .reply(ClientReply(requestID: r.requestID, status: 0, body: Array(json.utf8), blob: blob)))
    }

    // MARK: Client requests (ClientRequests.swift)

    var storeForRequests: PostgresJobStore { store }
    var blobsForRequests: BlobStore { blobs }
    func markDispatchNeeded() { dispatchNeeded = true }
    func cancelForRequests(_ shards: [(ShardRef, Int64)]) { cancelShards(shards, reason: "job cancelled") }
    var liveWorkers: [WorkerSession] { Array(sessions.values) }
}

/// What the coordinator knows about one connected worker.
final class WorkerSession {
    let id: Int64
    let identity: [UInt8]
    let name: String
    let slots: Int
    let capabilities: [String]
    var lastSeen = ContinuousClock.now
    var inflight: [ShardRef: ContinuousClock.Instant] = [:]
    /// Free slots as the worker last advertised them (heartbeat), minus dispatches since, plus completions since.
    /// A draining worker advertises 0.
    var credits: Int

    init(id: Int64, identity: [UInt8], name: String, slots: Int, capabilities: [String]) {
        self.id = id
        self.identity = identity
        self.name = name
        self.slots = slots
        self.capabilities = capabilities
        self.credits = slots
    }

    /// Credits: never more shards in flight than the worker advertised.
    var freeSlots: Int { max(0, min(slots - inflight.count, credits)) }
}

public struct CoordinatorError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}


extension Duration {
    var milliseconds: Int {
        let (s, a) = components
        return Int(s) * 1000 + Int(a / 1_000_000_000_000_000)
    }
}

/// At most `perSecond` ERRORs to one peer per one-second window (SPEC §6.1.7). Memory is bounded by the peers that
/// got an ERROR in the last second: `prune` drops the rest.
struct ErrorRateLimit {
    let perSecond: Int
    private var windows: [[UInt8]: (start: ContinuousClock.Instant, sent: Int)] = [:]

    init(perSecond: Int) { self.perSecond = perSecond }

    mutating func allow(_ peer: [UInt8], now: ContinuousClock.Instant) -> Bool {
        if let w = windows[peer], now - w.start < .seconds(1) {
            guard w.sent < perSecond else { return false }
            windows[peer] = (w.start, w.sent + 1)
            return true
        }
        windows[peer] = (now, 1)
        return true
    }

    mutating func prune(now: ContinuousClock.Instant) {
        windows = windows.filter { now - $0.value.start < .seconds(1) }
    }
}
