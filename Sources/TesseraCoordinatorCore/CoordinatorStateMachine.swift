// The coordinator's decisions, as a pure state machine (events in, actions out), in the manner of postgres-nio's
// ConnectionStateMachine: no sockets, no database, no clock reads. The transport feeds it decoded frames and ticks,
// the writer feeds it commit outcomes; it answers with messages to send, a batch of store commands to commit, and
// merges to run. Every rule of protocol/SPEC.md §6 that the coordinator enforces lives here and is unit-tested
// step by step (Tests/TesseraCoordinatorCoreTests).
//
// Group commit: commands accumulate while one batch is being committed; when its outcomes arrive, everything that
// accumulated goes out as the next batch (the busier the coordinator, the bigger the batch). Replies that promise
// durability (ACKs) are sent only from outcomes, i.e. after COMMIT.

import TesseraModel
import TesseraProtocol

public struct CoordinatorStateMachine: Sendable {
    public typealias Peer = [UInt8]
    public typealias Instant = ContinuousClock.Instant

    public struct Configuration: Sendable {
        /// HEARTBEAT period (SPEC §6 defaults).
        public var heartbeatInterval: Duration = .seconds(1)
        /// Intervals of silence after which a worker is lost.
        public var liveness = 3
        /// ERRORs one peer may get per second (SPEC §6.1.7).
        public var errorsPerSecond = 10
        /// Shards leased ahead for each worker beyond its slots (at most `slots` of them): they are dispatched the
        /// moment a slot frees, without waiting for a commit. Never more than credits are *sent* (SPEC §6.2).
        /// When the queue runs dry, shards leased ahead of busy workers go back (unsent, at their old attempt) to
        /// workers with idle slots, so a small job never waits on one worker while another idles.
        public var prefetch = 64
        /// A worker with nothing running or leased ahead has its liveness row (`last_heartbeat`) written at most this
        /// often; leases are renewed at every tick. With thousands of idle workers, one row update each per second
        /// was most of the writer's work.
        public var idleRenewalInterval: Duration = .seconds(5)
        /// Every this many ticks, workers whose capability set found nothing queued are asked again even if nothing
        /// signalled a change (a safety net: submissions, requeues, rescues and finished dependencies signal).
        public var reclaimTicks = 5
        public init() {}
        var deadline: Duration { heartbeatInterval * liveness }
    }

    public enum Event: Sendable {
        /// A decoded message from a peer.
        case received(Peer, Message)
        /// Frames that did not decode; `headerType` is the type byte if the header looked like one.
        case malformed(Peer, ProtocolError, headerType: UInt8?)
        /// The heartbeat timer fired.
        case tick
        /// The batch from the last `.commit` action committed; outcomes in command order.
        case committed([StoreOutcome])
        /// A CHUNK transfer's last chunk is durable in the blob store (verified, fsynced, renamed).
        case blobStored(Peer, ref: ShardRef, transferID: UInt64, kind: BlobKind, step: Int64, sha256: String, size: Int64, path: String)
        /// The blob service refused a chunk (gap, size, checksum), deferred it (no space), or acknowledges a
        /// non-final one.
        case chunkAnswered(Peer, ref: ShardRef, transferID: UInt64, offset: UInt64, status: AckStatus)
        /// Leases ended outside the writer (a client cancelled the job, or its merge failed): tell their holders.
        case leasesEnded([Lease], reason: String)
        /// A client submitted a job or something else may have made shards claimable.
        case queueChanged
        /// The peer's key was taken off the allow-list: its session ends now (its leases go back to the queue at the
        /// next attempt, as for a lost worker) and it is told DISCONNECT. Nothing more from it is accepted.
        case revoked(Peer, reason: String)
    }

    public enum Action: Sendable, Equatable {
        case send(Peer, Message)
        /// Run these commands in one transaction and answer with `.committed` (retrying on database failure).
        case commit([StoreCommand])
        /// Every shard of the job succeeded: merge it (off the hot path).
        case merge(jobID: Int64)
        /// A fenced-in CHUNK for the blob service to write.
        case writeChunk(Peer, BlobChunk)
        /// A client request or a FETCH: served by the read pool, which answers the peer directly.
        case serve(Peer, Message)
        /// The transfers of this peer are void (it is gone): the blob service drops their temp files.
        case dropTransfers(Peer)
        /// One transfer is void (a chunk of it was fenced): the blob service drops its temp file.
        case dropTransfer(Peer, transferID: UInt64)
    }

    public struct Counters: Sendable, Equatable {
        public var messagesIn = 0
        public var malformedFrames = 0
        /// Messages fenced: a superseded attempt, or a sender that does not hold the lease.
        public var staleDropped = 0
        public var metricPoints = 0
        /// Shard log lines committed, and LOGS batches the store could not take (dropped, acknowledged anyway: a
        /// log never fails a shard).
        public var logLines = 0
        public var logBatchesRejected = 0
        public var metricCommits = 0
        public var commits = 0
        public var dispatched = 0
        public var workersLost = 0
        public var errorsReceived = 0
        public var errorsSuppressed = 0
        /// Sessions ended because their key was revoked.
        public var sessionsRevoked = 0
        /// CHUNKs answered `deferred` (the data dir is out of space).
        public var chunksDeferred = 0
        /// SHARD_DONEs committed (the shard succeeded), and SHARD_FAILEDs committed (retried or failed for good).
        public var shardsSucceeded = 0
        public var shardsFailed = 0
        /// Leases that ran out without a renewal and were requeued by the rescue (not those of a worker found lost).
        public var leasesExpired = 0
        public init() {}
    }

    // MARK: State

    struct Session {
        enum Phase { case registering, ready }
        let peer: Peer
        let name: String
        let slots: Int
        let capabilities: [String]
        var phase: Phase = .registering
        /// Which READY this session is: an outcome for an older one is not this session's.
        let registration: UInt64
        var workerID: Int64 = 0
        var lastSeen: Instant
        /// Free slots as last advertised, minus dispatches since, plus completions since.
        var credits: Int
        /// Attempts dispatched or adopted and not yet finished, with when they were handed out.
        var inFlight: [ShardRef: Instant] = [:]
        /// Shards being claimed for this worker in the batch being committed.
        var claiming = 0
        /// Shards leased to this worker and not yet sent (prefetch): sent as credits allow.
        var leasedAhead: [ClaimedShard] = []
        /// It advertised no credit with slots idle: it is draining and takes nothing new.
        var draining = false
        /// Latest heartbeat progress, renewed in the next batch.
        var progress: [ShardProgressStep]?
        /// When its liveness was last put in a renewal.
        var lastRenewal: Instant?
        /// Messages that arrived while READY was being committed, processed once it is.
        var held: [Message] = []

        /// Shards that may be sent now (SPEC §6.2: in flight < slots and credits > 0).
        var freeSlots: Int { max(0, min(slots - inFlight.count, credits)) }

        /// Shards to claim: enough to fill the free slots and keep `prefetch` (at most `slots`) leased ahead.
        func wanted(prefetch: Int) -> Int {
            max(0, freeSlots + min(prefetch, slots) - leasedAhead.count - claiming)
        }
    }

    /// What the outcome of one command in the batch being committed means.
    enum Pending {
        case register(Peer, registration: UInt64, running: [ShardRef])
        case gone
        case renew([Int64: Peer])
        case metrics(Peer, ref: ShardRef, sequence: UInt64, points: Int)
        case logs(Peer, ref: ShardRef, sequence: UInt64, lines: Int)
        case complete(Peer, ref: ShardRef)
        case fail(Peer, ref: ShardRef)
        case blob(Peer, ref: ShardRef, transferID: UInt64, offset: UInt64)
        case claim(Peer, limit: Int, capabilities: [String])
        case rescue
        /// A leased-ahead shard given back unsent (its worker is draining).
        case handBack
    }

    /// (job, shard) → the attempt and peer this coordinator knows holds the lease.
    struct ShardSlot: Hashable {
        var jobID: Int64
        var shardIndex: Int32
        init(_ r: ShardRef) {
            jobID = r.jobID
            shardIndex = r.shardIndex
        }
    }

    public let configuration: Configuration
    private(set) var sessions = SessionTable()
    private var leases: [ShardSlot: (attempt: Int32, peer: Peer)] = [:]
    private var queued: [(StoreCommand, Pending)] = []
    private var committing: [Pending]?
    /// Capability sets (as workers advertise them) whose last claim came back short, or is being committed: nothing
    /// to claim for their workers until something changes the queue. Kept per set so that workers that can run
    /// nothing queued (another kind, an algorithm no job uses) cost no claim per batch while others dispatch.
    private var dryCapabilities: Set<[String]> = []
    private var ticks = 0
    /// Sessions registered since the last claim round: asked once whatever their capability set's state.
    private var freshlyReady: Set<Peer> = []
    private var nextRegistration: UInt64 = 1
    private var errorWindows: [Peer: (start: Instant, sent: Int)] = [:]
    public private(set) var counters = Counters()
    /// Seconds from DISPATCH to SHARD_DONE of the shards that finished since the last `takeShardSeconds()` (for the
    /// shard-duration histogram; the driver takes them so they do not pile up).
    private var shardSeconds: [Double] = []

    /// The shard durations observed since the last call, oldest first.
    public mutating func takeShardSeconds() -> [Double] {
        defer { shardSeconds.removeAll(keepingCapacity: true) }
        return shardSeconds
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
    }

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// Connected workers (registered or registering).
    public var sessionCount: Int { sessions.count }
    /// Their connections (to say DISCONNECT to at shutdown).
    public var peers: [Peer] { Array(sessions.keys) }
    /// Until when claims are paused because the blob service deferred a transfer (out of space); nil otherwise.
    public private(set) var storagePausedUntil: Instant?
    /// How long one deferral pauses dispatch; every deferral extends it, a stored blob ends it.
    public static let storagePause: Duration = .seconds(30)
    /// Whether a batch is being committed.
    public var isCommitting: Bool { committing != nil }

    // MARK: Events

    public mutating func handle(_ event: Event, now: Instant) -> [Action] {
        var out: [Action] = []
        switch event {
        case .received(let peer, let message):
            counters.messagesIn += 1
            receive(message, from: peer, now: now, into: &out)
        case .malformed(let peer, let error, let headerType):
            counters.messagesIn += 1
            counters.malformedFrames += 1
            // Never answer an ERROR with an ERROR, not even a broken one (SPEC §6.1.7).
            if headerType != MessageType.error.rawValue {
                sendError(peer, code: error.code.wireCode, error.description, now: now, into: &out)
            }
        case .tick:
            tick(now: now, into: &out)
        case .committed(let outcomes):
            committed(outcomes, now: now, into: &out)
        case .blobStored(let peer, let ref, let transferID, let kind, let step, let sha256, let size, let path):
            if storagePausedUntil != nil {
                storagePausedUntil = nil  // space is back
                queueMayHaveChanged()
            }
            if let s = sessions[peer], s.phase == .ready, holds(peer, ref) {
                enqueue(
                    .registerBlob(workerID: s.workerID, ref: ref, kind: kind, step: step, sha256: sha256, size: size, path: path),
                    .blob(peer, ref: ref, transferID: transferID, offset: UInt64(size)))
            } else {
                counters.staleDropped += 1
                out.append(.send(peer, .ack(Ack(ref: ref, kind: .chunk, sequence: transferID, offset: 0, accepted: false))))
            }
        case .chunkAnswered(let peer, let ref, let transferID, let offset, let status):
            if status == .deferred {
                counters.chunksDeferred += 1
                storagePausedUntil = now + Self.storagePause
            }
            out.append(.send(peer, .ack(Ack(ref: ref, kind: .chunk, sequence: transferID, offset: offset, status: status))))
        case .leasesEnded(let ended, let reason):
            for lease in ended { stop(lease, reason: reason, into: &out) }
            queueMayHaveChanged()
        case .queueChanged:
            queueMayHaveChanged()
        case .revoked(let peer, let reason):
            out.append(.send(peer, .disconnect(Disconnect(reason: reason))))
            if let s = sessions.removeValue(forKey: peer) {
                counters.sessionsRevoked += 1
                end(s, lost: true, reason: reason, into: &out)
                queueMayHaveChanged()
            }
        }
        flush(now: now, into: &out)
        return out
    }

    // MARK: Messages

    private mutating func receive(_ message: Message, from peer: Peer, now: Instant, into out: inout [Action]) {
        sessions[peer]?.lastSeen = now
        switch message {
        case .ready(let r):
            ready(r, from: peer, now: now, into: &out)
        case .heartbeat, .metrics, .logs, .chunk, .shardDone, .shardFailed:
            guard let s = sessions[peer] else {
                // Unknown worker (this coordinator restarted, or declared it lost): it must READY again (§6.1.5).
                return sendError(peer, code: WireStatus.notReady, "unknown worker: send READY", now: now, into: &out)
            }
            if s.phase == .registering {
                sessions[peer]!.held.append(message)
                return
            }
            workerMessage(message, session: s, now: now, into: &out)
        case .disconnect(let d):
            guard let s = sessions.removeValue(forKey: peer) else { return }
            end(s, lost: false, reason: "worker disconnected: \(d.reason)", into: &out)
        case .fetch, .request:
            out.append(.serve(peer, message))
        case .error:
            counters.errorsReceived += 1
        case .dispatch, .ack, .cancel, .fetchReply, .reply:
            sendError(peer, code: WireStatus.unexpectedMessage, "unexpected message for a coordinator", now: now, into: &out)
        }
    }

    private mutating func ready(_ r: Ready, from peer: Peer, now: Instant, into out: inout [Action]) {
        guard r.protocolVersion == WireCodec.version else {
            return sendError(
                peer, code: ProtocolError.Code.unsupportedVersion.wireCode,
                "protocol version \(r.protocolVersion) not supported; this coordinator speaks \(WireCodec.version)",
                now: now, into: &out)
        }
        // A READY replaces any registration of the same connection or the same worker name (SPEC §6.1.4). The
        // new registration is committed first, so its adoption of the running shards precedes the old one's requeue.
        var replaced: [Session] = []
        if let same = sessions[peer] { replaced.append(same) }
        if let named = sessions.peer(named: r.workerName), named != peer { replaced.append(sessions[named]!) }
        for old in replaced { sessions[old.peer] = nil }
        let registration = nextRegistration
        nextRegistration += 1
        sessions[peer] = Session(
            peer: peer, name: r.workerName, slots: Int(r.slots), capabilities: r.capabilities, registration: registration,
            lastSeen: now, credits: Int(r.slots))
        enqueue(
            .registerWorker(name: r.workerName, host: r.host, slots: Int(r.slots), capabilities: r.capabilities, running: r.running),
            .register(peer, registration: registration, running: r.running))
        for old in replaced { end(old, lost: false, reason: "worker re-registered", into: &out) }
    }

    private mutating func workerMessage(_ message: Message, session s: Session, now: Instant, into out: inout [Action]) {
        let peer = s.peer
        switch message {
        case .heartbeat(let h):
            sessions[peer]!.credits = Int(h.credits)
            sessions[peer]!.progress = h.progress.map { ShardProgressStep(ref: $0.ref, step: $0.step) }
            // No credit while fewer shards run than it has slots: the worker is draining (SPEC §6.6). What was
            // leased ahead for it goes back to the queue unsent, at no cost.
            let draining = h.credits == 0 && h.progress.count < s.slots
            sessions[peer]!.draining = draining
            if draining {
                for c in sessions[peer]!.leasedAhead {
                    leases[ShardSlot(c.ref)] = nil
                    enqueue(.unleaseShard(workerID: s.workerID, ref: c.ref), .handBack)
                }
                sessions[peer]!.leasedAhead = []
            }
            // A shard dispatched a while ago that the worker no longer reports is gone (lost DISPATCH, or its final
            // message raced the heartbeat): stop counting it against the worker's slots.
            let reported = Set(h.progress.map(\.ref))
            for (ref, since) in s.inFlight where !reported.contains(ref) && now - since > configuration.heartbeatInterval * 2 {
                sessions[peer]!.inFlight[ref] = nil
            }
        case .metrics(let b):
            guard holds(peer, b.ref) else {
                counters.staleDropped += 1
                return out.append(.send(peer, .ack(Ack(ref: b.ref, kind: .metrics, sequence: b.sequence, accepted: false))))
            }
            enqueue(
                .ingestMetrics(workerID: s.workerID, ref: b.ref, points: b.points),
                .metrics(peer, ref: b.ref, sequence: b.sequence, points: b.points.count))
        case .logs(let b):
            // Fenced like METRICS (SPEC §6.3); the store checks attempt and sender again in the commit.
            guard holds(peer, b.ref) else {
                counters.staleDropped += 1
                return out.append(.send(peer, .ack(Ack(ref: b.ref, kind: .logs, sequence: b.sequence, accepted: false))))
            }
            enqueue(
                .ingestLogs(workerID: s.workerID, ref: b.ref, sequence: b.sequence, lines: b.lines),
                .logs(peer, ref: b.ref, sequence: b.sequence, lines: b.lines.count))
        case .chunk(let c):
            guard holds(peer, c.ref) else {
                counters.staleDropped += 1
                // The blob service may hold the start of this transfer (written while the attempt was current).
                out.append(.dropTransfer(peer, transferID: c.transferID))
                return out.append(.send(peer, .ack(Ack(ref: c.ref, kind: .chunk, sequence: c.transferID, offset: 0, accepted: false))))
            }
            out.append(.writeChunk(peer, c))
        case .shardDone(let d):
            if let dispatched = sessions[peer]!.inFlight.removeValue(forKey: d.ref) {
                sessions[peer]!.credits += 1
                if holds(peer, d.ref) { shardSeconds.append(Self.seconds(now - dispatched)) }
            }
            guard holds(peer, d.ref) else {
                counters.staleDropped += 1
                return out.append(.send(peer, .ack(Ack(ref: d.ref, kind: .done, accepted: false))))
            }
            enqueue(
                .completeShard(
                    workerID: s.workerID, ref: d.ref, summary: String(decoding: d.summary, as: UTF8.self),
                    resultSHA256: d.resultSHA256.isEmpty ? nil : d.resultSHA256),
                .complete(peer, ref: d.ref))
        case .shardFailed(let f):
            // A retryable failure is often the worker handing work back (draining, no free slot): its next heartbeat
            // says how many slots it has, rather than dispatching straight back to it.
            if sessions[peer]!.inFlight.removeValue(forKey: f.ref) != nil, !f.retryable { sessions[peer]!.credits += 1 }
            guard holds(peer, f.ref) else {
                counters.staleDropped += 1
                return out.append(.send(peer, .ack(Ack(ref: f.ref, kind: .failed, accepted: false))))
            }
            enqueue(
                .failShard(workerID: s.workerID, ref: f.ref, reason: f.reason, failure: f.failure),
                .fail(peer, ref: f.ref))
        default:
            break
        }
        sendLeased(peer, now: now, into: &out)
    }

    /// Only the leaseholder's session may speak for a lease, and only about its current attempt (SPEC §6.3).
    private func holds(_ peer: Peer, _ ref: ShardRef) -> Bool {
        guard let lease = leases[ShardSlot(ref)] else { return false }
        return lease.attempt == ref.attempt && lease.peer == peer
    }

    // MARK: Time

    private mutating func tick(now: Instant, into out: inout [Action]) {
        errorWindows = errorWindows.filter { now - $0.value.start < .seconds(1) }
        var renewals: [LeaseRenewal] = []
        var peers: [Int64: Peer] = [:]
        for (peer, s) in sessions.sorted(by: { $0.value.name < $1.value.name }) {
            if now - s.lastSeen > configuration.deadline {
                sessions[peer] = nil
                counters.workersLost += 1
                end(s, lost: true, reason: "worker \(s.name) lost (no heartbeat for \(configuration.deadline))", into: &out)
                continue
            }
            out.append(.send(peer, .heartbeat(Heartbeat())))
            guard s.phase == .ready else { continue }
            // Leased-ahead shards are renewed with the running ones: the worker does not report them.
            let ahead = s.leasedAhead.map { ShardProgressStep(ref: $0.ref, step: 0) }
            let progress = (s.progress ?? []) + ahead
            sessions[peer]!.progress = nil
            // Leases every tick; an idle worker's liveness row only every idleRenewalInterval.
            if progress.isEmpty && s.inFlight.isEmpty, let last = s.lastRenewal, now - last < configuration.idleRenewalInterval {
                continue
            }
            renewals.append(LeaseRenewal(workerID: s.workerID, progress: progress))
            peers[s.workerID] = peer
            sessions[peer]!.lastRenewal = now
        }
        if !renewals.isEmpty { enqueue(.renewLeases(renewals), .renew(peers)) }
        enqueue(.requeueExpiredLeases, .rescue)
        ticks += 1
        if ticks % max(1, configuration.reclaimTicks) == 0 { queueMayHaveChanged() }
    }

    // MARK: Outcomes

    private mutating func committed(_ outcomes: [StoreOutcome], now: Instant, into out: inout [Action]) {
        guard let pending = committing else { return }
        committing = nil
        counters.commits += 1
        precondition(pending.count == outcomes.count, "a batch of \(pending.count) commands got \(outcomes.count) outcomes")
        var metricBatches = 0
        var shortClaims: [Peer] = []
        for (p, o) in zip(pending, outcomes) {
            switch (p, o) {
            case (.register(let peer, let registration, let running), .workerRegistered(let workerID, let adopted)):
                registered(peer, registration: registration, running: running, workerID: workerID, adopted: adopted, now: now, into: &out)
            case (.gone, _), (.handBack, _):
                queueMayHaveChanged()
            case (.renew(let peers), .leasesRenewed(let stale)):
                // The database says these are not the reporting worker's current lease (re-leased by a rescue, or
                // cancelled): the worker must stop them (SPEC §6.3).
                for lease in stale {
                    counters.staleDropped += 1
                    release(lease.ref)
                    guard let peer = peers[lease.workerID] else { continue }
                    if let i = sessions[peer]?.leasedAhead.firstIndex(where: { $0.ref == lease.ref }) {
                        sessions[peer]!.leasedAhead.remove(at: i)
                        continue
                    }
                    out.append(.send(peer, .cancel(Cancel(ref: lease.ref, reason: "lease lost: the shard was re-leased or cancelled"))))
                }
            case (.metrics(let peer, let ref, let sequence, let points), .metricsIngested(let accepted)):
                metricBatches += 1
                if accepted { counters.metricPoints += points } else { counters.staleDropped += 1 }
                out.append(.send(peer, .ack(Ack(ref: ref, kind: .metrics, sequence: sequence, accepted: accepted))))
            case (.logs(let peer, let ref, let sequence, let lines), .logsIngested(let accepted)):
                if accepted { counters.logLines += lines } else { counters.staleDropped += 1 }
                out.append(.send(peer, .ack(Ack(ref: ref, kind: .logs, sequence: sequence, accepted: accepted))))
            case (.complete(let peer, let ref), .shardCompleted(let accepted, let jobComplete, let releasedDependents)):
                if accepted {
                    release(ref)
                    counters.shardsSucceeded += 1
                } else {
                    counters.staleDropped += 1
                }
                out.append(.send(peer, .ack(Ack(ref: ref, kind: .done, accepted: accepted))))
                // Shards of the same job that waited on this one can run now: claim at once, not at the next tick.
                if releasedDependents { queueMayHaveChanged() }
                if jobComplete {
                    out.append(.merge(jobID: ref.jobID))
                    queueMayHaveChanged()  // jobs depending on it may now run
                }
            case (.fail(let peer, let ref), .shardFailed(let outcome, let stopList)):
                if outcome == .rejected {
                    counters.staleDropped += 1
                } else {
                    release(ref)
                    counters.shardsFailed += 1
                }
                out.append(.send(peer, .ack(Ack(ref: ref, kind: .failed, accepted: outcome != .rejected))))
                for lease in stopList { stop(lease, reason: "job failed", into: &out) }
                queueMayHaveChanged()
            case (.blob(let peer, let ref, let transferID, let offset), .blobRegistered(let accepted)):
                if !accepted { counters.staleDropped += 1 }
                out.append(.send(peer, .ack(Ack(ref: ref, kind: .chunk, sequence: transferID, offset: offset, accepted: accepted))))
            case (.claim(let peer, let limit, let capabilities), .shardsClaimed(let claimed)):
                sessions[peer]?.claiming -= limit
                dispatch(claimed, to: peer, now: now, into: &out)
                // A full claim means there may be more; a short one that the queue is empty for now.
                if claimed.count == limit {
                    dryCapabilities.remove(capabilities)
                } else {
                    shortClaims.append(peer)
                }
            case (.rescue, .expiredLeasesRequeued(let n)):
                counters.leasesExpired += n
                if n > 0 { queueMayHaveChanged() }
            case (_, .rejected):
                rejected(p, into: &out)
            default:
                preconditionFailure("outcome \(o) does not answer \(p)")
            }
        }
        if metricBatches > 0 { counters.metricCommits += 1 }
        if !shortClaims.isEmpty { rebalance(to: shortClaims) }
    }

    private mutating func registered(
        _ peer: Peer, registration: UInt64, running: [ShardRef], workerID: Int64, adopted: [ShardRef], now: Instant,
        into out: inout [Action]
    ) {
        guard var s = sessions[peer], s.registration == registration else {
            // The connection went away (or READY again) while the registration committed: that row is gone.
            enqueue(.workerGone(workerID: workerID, lost: false, reason: "connection replaced during registration"), .gone)
            return
        }
        s.phase = .ready
        s.workerID = workerID
        for ref in adopted {
            s.inFlight[ref] = now
            leases[ShardSlot(ref)] = (ref.attempt, peer)
        }
        // Every shard the READY listed holds a slot until the worker says otherwise (its next HEARTBEAT's credits):
        // one that is cancelled below still computes until it sees the CANCEL, and a shard sent into its slot
        // meanwhile would only be refused ("no free slot") at the cost of an attempt.
        s.credits = max(0, s.slots - max(s.inFlight.count, running.count))
        let held = s.held
        s.held = []
        sessions[peer] = s
        // Re-adoption (SPEC §6.1.4): what the worker still runs but is no longer its lease is stopped.
        let kept = Set(adopted)
        for ref in running where !kept.contains(ref) {
            out.append(.send(peer, .cancel(Cancel(ref: ref, reason: "superseded: the shard was re-leased"))))
        }
        out.append(.send(peer, .heartbeat(Heartbeat())))
        // Its first claim goes out even if workers like it found the queue dry: the others are not asked again.
        freshlyReady.insert(peer)
        for message in held {
            guard let current = sessions[peer] else { break }
            workerMessage(message, session: current, now: now, into: &out)
        }
    }

    private mutating func dispatch(_ claimed: [ClaimedShard], to peer: Peer, now: Instant, into out: inout [Action]) {
        guard sessions[peer] != nil else {
            // The worker vanished while its shards were being claimed: its workerGone requeues them.
            for c in claimed { leases[ShardSlot(c.ref)] = nil }
            return
        }
        for c in claimed { leases[ShardSlot(c.ref)] = (c.ref.attempt, peer) }
        sessions[peer]!.leasedAhead.append(contentsOf: claimed)
        sendLeased(peer, now: now, into: &out)
    }

    /// The queue ran dry while these workers (in claim order) still have idle slots: shards leased ahead for other
    /// workers (waiting behind their running ones) go back to the queue, unsent and at no cost, so the idle workers can
    /// claim them next. Donors are looked up once per batch, so a tick with many idle workers stays linear.
    private mutating func rebalance(to idlePeers: [Peer]) {
        var donors = sessions.values.filter { $0.phase == .ready && !$0.leasedAhead.isEmpty }.map(\.peer)
        guard !donors.isEmpty else { return }
        donors.sort(by: { $0.lexicographicallyPrecedes($1) })
        for peer in idlePeers {
            guard var idle = sessions[peer].map({ $0.freeSlots - $0.leasedAhead.count }), idle > 0 else { continue }
            for other in donors where other != peer && idle > 0 {
                guard let s = sessions[other], !s.leasedAhead.isEmpty else { continue }
                let n = min(idle, s.leasedAhead.count)
                for c in s.leasedAhead.suffix(n) {
                    leases[ShardSlot(c.ref)] = nil
                    enqueue(.unleaseShard(workerID: s.workerID, ref: c.ref), .handBack)
                }
                sessions[other]!.leasedAhead.removeLast(n)
                idle -= n
            }
        }
    }

    /// Sends leased-ahead shards while the worker has free slots and credits.
    private mutating func sendLeased(_ peer: Peer, now: Instant, into out: inout [Action]) {
        guard var s = sessions[peer], s.phase == .ready else { return }
        var sent = 0
        while s.freeSlots > 0, sent < s.leasedAhead.count {
            let c = s.leasedAhead[sent]
            sent += 1
            s.inFlight[c.ref] = now
            s.credits -= 1
            counters.dispatched += 1
            out.append(.send(peer, .dispatch(Dispatch(
                ref: c.ref, kind: c.kind, algorithm: c.algorithm, seed: c.seed, spec: Array(c.spec.utf8),
                slice: Array(c.slice.utf8),
                resume: c.resume.map { CheckpointInfo(step: $0.step, sha256: $0.sha256, size: UInt64($0.size)) },
                totalSteps: c.totalSteps))))
        }
        s.leasedAhead.removeFirst(sent)
        sessions[peer] = s
    }

    private mutating func rejected(_ p: Pending, into out: inout [Action]) {
        switch p {
        case .metrics(let peer, let ref, let sequence, _):
            counters.staleDropped += 1
            out.append(.send(peer, .ack(Ack(ref: ref, kind: .metrics, sequence: sequence, accepted: false))))
        case .logs(let peer, let ref, let sequence, _):
            // The store refused the lines (not a fenced attempt): drop them rather than stop the shard.
            counters.logBatchesRejected += 1
            out.append(.send(peer, .ack(Ack(ref: ref, kind: .logs, sequence: sequence, accepted: true))))
        case .complete(let peer, let ref):
            out.append(.send(peer, .ack(Ack(ref: ref, kind: .done, accepted: false))))
        case .fail(let peer, let ref):
            out.append(.send(peer, .ack(Ack(ref: ref, kind: .failed, accepted: false))))
        case .blob(let peer, let ref, let transferID, _):
            out.append(.send(peer, .ack(Ack(ref: ref, kind: .chunk, sequence: transferID, offset: 0, accepted: false))))
        case .claim(let peer, let limit, _):
            sessions[peer]?.claiming -= limit
        case .register(let peer, let registration, _):
            // Without a registration the worker cannot be served: drop the session; it will READY again.
            guard sessions[peer]?.registration == registration else { return }
            sessions[peer] = nil
            out.append(.send(peer, .error(ErrorMessage(code: WireStatus.notReady, message: "registration failed: send READY"))))
        case .gone, .renew, .rescue, .handBack:
            break
        }
    }

    // MARK: Helpers

    /// Ends a session: its leases go back to the queue in the next batch, its transfers are void.
    private mutating func end(_ s: Session, lost: Bool, reason: String, into out: inout [Action]) {
        for (slot, lease) in leases where lease.peer == s.peer { leases[slot] = nil }
        out.append(.dropTransfers(s.peer))
        if s.phase == .ready { enqueue(.workerGone(workerID: s.workerID, lost: lost, reason: reason), .gone) }
        // A registering session's row is ended when its registration outcome finds the session gone.
    }

    private mutating func release(_ ref: ShardRef) {
        if let lease = leases[ShardSlot(ref)], lease.attempt == ref.attempt { leases[ShardSlot(ref)] = nil }
    }

    /// A lease ended elsewhere (cancel, job failed): tell its holder to stop and forget it.
    private mutating func stop(_ lease: Lease, reason: String, into out: inout [Action]) {
        guard let held = leases[ShardSlot(lease.ref)], held.attempt == lease.ref.attempt else { return }
        leases[ShardSlot(lease.ref)] = nil
        if let i = sessions[held.peer]?.leasedAhead.firstIndex(where: { $0.ref == lease.ref }) {
            sessions[held.peer]!.leasedAhead.remove(at: i)  // never sent: nothing to stop
            return
        }
        out.append(.send(held.peer, .cancel(Cancel(ref: lease.ref, reason: reason))))
    }

    /// Something may have made shards claimable for any worker (a submission, a requeue, a finished dependency).
    private mutating func queueMayHaveChanged() { dryCapabilities.removeAll(keepingCapacity: true) }

    private mutating func enqueue(_ command: StoreCommand, _ pending: Pending) {
        // One lease-expiry sweep per batch is enough.
        if case .requeueExpiredLeases = command, queued.contains(where: { if case .rescue = $0.1 { true } else { false } }) {
            return
        }
        queued.append((command, pending))
    }

    /// Claims for every worker with free slots, then the next batch if the writer is idle.
    private mutating func flush(now: Instant, into out: inout [Action]) {
        guard committing == nil else { return }
        // Only the workers of capability sets that may have something to claim are looked at, so thousands of idle
        // workers that can run nothing queued cost nothing per batch.
        var askable: [Session] = []
        func consider(_ s: Session) {
            if !s.draining && s.wanted(prefetch: configuration.prefetch) > 0 { askable.append(s) }
        }
        for (capabilities, members) in sessions.readyByCapabilities where !dryCapabilities.contains(capabilities) {
            for peer in members { consider(sessions[peer]!) }
        }
        for peer in freshlyReady {
            if let s = sessions[peer], s.phase == .ready, dryCapabilities.contains(s.capabilities) { consider(s) }
        }
        freshlyReady.removeAll(keepingCapacity: true)
        // While the data dir is out of space nothing new is dispatched: it would compute outputs that cannot be stored
        // and hold them in workers' memory. Running shards keep going; their transfers wait (`deferred`).
        if let until = storagePausedUntil, now < until {
            askable.removeAll()
        } else {
            storagePausedUntil = nil
        }
        if !askable.isEmpty {
            // Two rounds: first every worker's free slots, then the shards leased ahead, so a worker never prefetches
            // what an idle one could run now (the writer runs claims in this order).
            let ordered = askable.sorted(by: { $0.workerID < $1.workerID }).map(\.peer)
            var asked: Set<[String]> = []
            for round in 0..<2 {
                for peer in ordered {
                    let s = sessions[peer]!
                    let free = max(0, s.freeSlots - s.leasedAhead.count - s.claiming)
                    let n = round == 0 ? free : s.wanted(prefetch: configuration.prefetch)
                    guard n > 0 else { continue }
                    sessions[peer]!.claiming += n
                    queued.append((
                        .claimShards(workerID: s.workerID, limit: n, capabilities: s.capabilities),
                        .claim(peer, limit: n, capabilities: s.capabilities)))
                    asked.insert(s.capabilities)
                }
            }
            // Until its outcome says whether the queue had enough, do not ask again for these capabilities.
            dryCapabilities.formUnion(asked)
        }
        guard !queued.isEmpty else { return }
        committing = queued.map(\.1)
        out.append(.commit(queued.map(\.0)))
        queued.removeAll(keepingCapacity: true)
    }

    /// Sends an ERROR unless the peer already had `errorsPerSecond` of them this second; those are counted.
    private mutating func sendError(_ peer: Peer, code: UInt16, _ reason: String, now: Instant, into out: inout [Action]) {
        if let w = errorWindows[peer], now - w.start < .seconds(1) {
            guard w.sent < configuration.errorsPerSecond else {
                counters.errorsSuppressed += 1
                return
            }
            errorWindows[peer] = (w.start, w.sent + 1)
        } else {
            errorWindows[peer] = (now, 1)
        }
        out.append(.send(peer, .error(ErrorMessage(code: code, message: reason))))
    }
}

/// The sessions by connection, indexed by worker name and, for ready sessions, by capability set (so that a claim
/// round looks only at workers that can run something queued, and a READY finds the session it replaces at once).
struct SessionTable: Sequence {
    typealias Session = CoordinatorStateMachine.Session
    typealias Peer = CoordinatorStateMachine.Peer
    private var storage: [Peer: Session] = [:]
    private var byName: [String: Peer] = [:]
    private(set) var readyByCapabilities: [[String]: Set<Peer>] = [:]

    var count: Int { storage.count }
    var keys: Dictionary<Peer, Session>.Keys { storage.keys }
    var values: Dictionary<Peer, Session>.Values { storage.values }
    func makeIterator() -> Dictionary<Peer, Session>.Iterator { storage.makeIterator() }

    func peer(named name: String) -> Peer? { byName[name] }

    subscript(peer: Peer) -> Session? {
        get { storage[peer] }
        _modify {
            let before = storage[peer].map { (name: $0.name, ready: $0.phase == .ready, capabilities: $0.capabilities) }
            yield &storage[peer]
            let after = storage[peer].map { (name: $0.name, ready: $0.phase == .ready, capabilities: $0.capabilities) }
            if before?.name != after?.name {
                if let b = before, byName[b.name] == peer { byName[b.name] = nil }
                if let a = after { byName[a.name] = peer }
            }
            let wasIn = before.flatMap { $0.ready ? $0.capabilities : nil }
            let isIn = after.flatMap { $0.ready ? $0.capabilities : nil }
            guard wasIn != isIn else { return }
            if let caps = wasIn {
                readyByCapabilities[caps]?.remove(peer)
                if readyByCapabilities[caps]?.isEmpty == true { readyByCapabilities[caps] = nil }
            }
            if let caps = isIn { readyByCapabilities[caps, default: []].insert(peer) }
        }
    }

    @discardableResult
    mutating func removeValue(forKey peer: Peer) -> Session? {
        let s = storage[peer]
        self[peer] = nil
        return s
    }

    func sorted(by areInIncreasingOrder: ((key: Peer, value: Session), (key: Peer, value: Session)) throws -> Bool) rethrows -> [(key: Peer, value: Session)] {
        try storage.sorted(by: areInIncreasingOrder)
    }
}
