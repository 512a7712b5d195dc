// The coordinator's rules (protocol/SPEC.md §6), step by step on the pure state machine: no sockets, no database,
// time moved by hand. Each test feeds events and checks the exact actions, as postgres-nio tests its
// ConnectionStateMachine.

import TesseraCoordinatorCore
import TesseraModel
import TesseraProtocol
import Testing

/// A state machine with a hand-moved clock and helpers to pick actions apart.
struct Harness {
    var machine: CoordinatorStateMachine
    var now = ContinuousClock.now

    /// Without prefetch unless a test asks for it, so claims equal free slots.
    init(configure: (inout CoordinatorStateMachine.Configuration) -> Void = { $0.prefetch = 0 }) {
        var c = CoordinatorStateMachine.Configuration()
        configure(&c)
        machine = CoordinatorStateMachine(configuration: c)
    }

    mutating func feed(_ event: CoordinatorStateMachine.Event) -> [CoordinatorStateMachine.Action] {
        machine.handle(event, now: now)
    }

    mutating func receive(_ peer: [UInt8], _ m: Message) -> [CoordinatorStateMachine.Action] { feed(.received(peer, m)) }

    mutating func advance(_ d: Duration) { now += d }

    /// Registers a worker: READY, then the registration's commit with `adopted`; returns the actions of that commit.
    mutating func register(
        _ peer: [UInt8], name: String, slots: UInt16, workerID: Int64, running: [ShardRef] = [], adopted: [ShardRef] = [],
        capabilities: [String] = ["rl/noop"]
    ) -> [CoordinatorStateMachine.Action] {
        let a = receive(peer, .ready(Ready(workerName: name, host: "h", slots: slots, capabilities: capabilities, running: running)))
        let batch = commits(a)
        precondition(batch.count == 1, "READY must commit: \(a)")
        var outcomes: [StoreOutcome] = []
        for c in batch[0] {
            switch c {
            case .registerWorker: outcomes.append(.workerRegistered(workerID: workerID, adopted: adopted))
            case .workerGone: outcomes.append(.workerGone(requeued: 0))
            default: preconditionFailure("unexpected command in a READY batch: \(c)")
            }
        }
        return feed(.committed(outcomes))
    }
}

func commits(_ actions: [CoordinatorStateMachine.Action]) -> [[StoreCommand]] {
    actions.compactMap { if case .commit(let c) = $0 { c } else { nil } }
}

func sends(_ actions: [CoordinatorStateMachine.Action], to peer: [UInt8]? = nil) -> [Message] {
    actions.compactMap {
        if case .send(let p, let m) = $0, peer == nil || p == peer { m } else { nil }
    }
}

func acks(_ actions: [CoordinatorStateMachine.Action]) -> [Ack] {
    sends(actions).compactMap { if case .ack(let a) = $0 { a } else { nil } }
}

func claimed(_ refs: [ShardRef]) -> StoreOutcome {
    .shardsClaimed(refs.map {
        ClaimedShard(ref: $0, kind: "rl", algorithm: "noop", seed: 1, spec: "{}", slice: "{}", totalSteps: 1, resume: nil)
    })
}

let w1: [UInt8] = [1]
let w2: [UInt8] = [2]

func ref(_ shard: Int32, attempt: Int32 = 1, job: Int64 = 7) -> ShardRef {
    ShardRef(jobID: job, shardIndex: shard, attempt: attempt)
}

@Suite("Coordinator state machine (SPEC §6)")
struct CoordinatorStateMachineTests {
    /// w1 (2 slots) registered and holding shards 0 and 1 of job 7 at attempt 1.
    static func withTwoLeases() -> Harness {
        var h = Harness()
        let a = h.register(w1, name: "w1", slots: 2, workerID: 11)
        let claim = commits(a)
        #expect(claim == [[.claimShards(workerID: 11, limit: 2, capabilities: ["rl/noop"])]])
        let d = h.feed(.committed([claimed([ref(0), ref(1)])]))
        #expect(sends(d, to: w1).filter { if case .dispatch = $0 { true } else { false } }.count == 2)
        return h
    }

    @Test("READY: registered in the store first; messages meanwhile are held, then processed; HEARTBEAT confirms")
    func readyRegistersBeforeAnythingElse() {
        var h = Harness()
        let a = h.receive(w1, .ready(Ready(workerName: "w1", host: "h", slots: 1, capabilities: ["rl/noop"], running: [ref(3)])))
        #expect(commits(a) == [[.registerWorker(name: "w1", host: "h", slots: 1, capabilities: ["rl/noop"], running: [ref(3)])]])
        #expect(sends(a).isEmpty)
        // A replayed METRICS batch for the shard it still runs arrives before the registration commits: held.
        let held = h.receive(w1, .metrics(MetricsBatch(ref: ref(3), sequence: 4, points: [MetricPoint(name: "x", step: 1, value: 2)])))
        #expect(held.isEmpty)
        let r = h.feed(.committed([.workerRegistered(workerID: 5, adopted: [ref(3)])]))
        #expect(sends(r, to: w1) == [.heartbeat(Heartbeat())])
        // The held batch is now fenced in (the adopted lease is w1's) and committed with the next batch; the slot is
        // taken by the adopted shard, so nothing is claimed.
        #expect(commits(r) == [[.ingestMetrics(workerID: 5, ref: ref(3), points: [MetricPoint(name: "x", step: 1, value: 2)])]])
    }

    @Test("Re-adoption: running shards whose attempt is not current are cancelled; adopted ones take slots, and so do cancelled ones until the worker's heartbeat frees them")
    func reAdoption() {
        var h = Harness()
        let a = h.register(w1, name: "w1", slots: 3, workerID: 5, running: [ref(0), ref(1, attempt: 2)], adopted: [ref(0)])
        #expect(sends(a, to: w1).contains(.cancel(Cancel(ref: ref(1, attempt: 2), reason: "superseded: the shard was re-leased"))))
        // The cancelled shard still computes on the worker until it sees the CANCEL: its slot is not offered.
        #expect(commits(a) == [[.claimShards(workerID: 5, limit: 1, capabilities: ["rl/noop"])]])
        _ = h.feed(.committed([claimed([ref(5)])]))
        // The worker stopped it and says so: one slot is free again.
        h.advance(.milliseconds(100))
        let hb = h.receive(w1, .heartbeat(Heartbeat(credits: 1, progress: [ShardProgress(ref: ref(0), step: 0, total: 1), ShardProgress(ref: ref(5), step: 0, total: 1)])))
        #expect(commits(hb) == [[.claimShards(workerID: 5, limit: 1, capabilities: ["rl/noop"])]])
    }

    @Test("Counters for /metrics: a committed DONE counts as succeeded, with its DISPATCH-to-DONE time; a fenced one neither")
    func completionCountersAndDurations() {
        var h = Self.withTwoLeases()
        #expect(h.machine.takeShardSeconds().isEmpty)
        h.advance(.milliseconds(1500))
        _ = h.receive(w1, .shardDone(ShardDone(ref: ref(0), summary: Array("{}".utf8))))
        // A DONE for an attempt the worker does not hold is fenced: no duration.
        _ = h.receive(w1, .shardDone(ShardDone(ref: ref(7), summary: Array("{}".utf8))))
        let seconds = h.machine.takeShardSeconds()
        #expect(seconds.count == 1)
        #expect(seconds.first.map { $0 >= 1.5 && $0 < 1.6 } == true, "\(seconds)")
        #expect(h.machine.takeShardSeconds().isEmpty)  // taken once
        #expect(h.machine.counters.shardsSucceeded == 0)  // not before the commit
        _ = h.feed(.committed([.shardCompleted(accepted: true, jobComplete: false), claimed([])]))
        #expect(h.machine.counters.shardsSucceeded == 1 && h.machine.counters.shardsFailed == 0)
    }

    @Test("Credits: never more shards in flight than slots or advertised credits")
    func creditsNeverExceeded() {
        var h = Self.withTwoLeases()
        // All slots busy: a heartbeat advertising credits does not make room that the slots do not have.
        h.advance(.milliseconds(100))
        #expect(commits(h.receive(w1, .heartbeat(Heartbeat(credits: 2, progress: [])))).isEmpty)
        // The worker says it has no free slot (draining): a DONE frees one slot locally, but credits say 0 → 1.
        _ = h.receive(w1, .heartbeat(Heartbeat(credits: 0, progress: [ShardProgress(ref: ref(0), step: 0, total: 1), ShardProgress(ref: ref(1), step: 0, total: 1)])))
        let done = h.receive(w1, .shardDone(ShardDone(ref: ref(0), summary: Array("{}".utf8))))
        #expect(commits(done) == [[
            .completeShard(workerID: 11, ref: ref(0), summary: "{}", resultSHA256: nil),
            .claimShards(workerID: 11, limit: 1, capabilities: ["rl/noop"]),
        ]])
        // A claim that comes back short means the queue is empty: no claim until something changes.
        let after = h.feed(.committed([.shardCompleted(accepted: true, jobComplete: false), claimed([])]))
        #expect(acks(after) == [Ack(ref: ref(0), kind: .done, accepted: true)])
        #expect(commits(after).isEmpty)
        let submitted = h.feed(.queueChanged)
        #expect(commits(submitted) == [[.claimShards(workerID: 11, limit: 1, capabilities: ["rl/noop"])]])
    }

    @Test("A SHARD_DONE that released shards waiting on it makes them claimable at once, not at the next tick")
    func releasedDependentsAreClaimedAtOnce() {
        var h = Self.withTwoLeases()
        let done = h.receive(w1, .shardDone(ShardDone(ref: ref(0), summary: Array("{}".utf8))))
        #expect(commits(done) == [[
            .completeShard(workerID: 11, ref: ref(0), summary: "{}", resultSHA256: nil),
            .claimShards(workerID: 11, limit: 1, capabilities: ["rl/noop"]),
        ]])
        // The claim of that batch came back short (another coordinator took the released shard, say), but the
        // completion released a dependent: ask again now.
        let after = h.feed(.committed([.shardCompleted(accepted: true, jobComplete: false, releasedDependents: true), claimed([])]))
        #expect(commits(after) == [[.claimShards(workerID: 11, limit: 1, capabilities: ["rl/noop"])]])
        // Without a release the short claim stands (creditsNeverExceeded): nothing until something changes.
        let d2 = h.feed(.committed([claimed([])]))
        #expect(commits(d2).isEmpty)
    }

    @Test("ACKs only after COMMIT; commands arriving during a commit go out as the next batch")
    func groupCommit() {
        var h = Self.withTwoLeases()
        let m1 = h.receive(w1, .metrics(MetricsBatch(ref: ref(0), sequence: 1, points: [])))
        #expect(acks(m1).isEmpty)
        #expect(commits(m1).count == 1)
        #expect(h.machine.isCommitting)
        // While batch 1 commits, two more batches accumulate: no second commit yet.
        #expect(commits(h.receive(w1, .metrics(MetricsBatch(ref: ref(0), sequence: 2, points: [])))).isEmpty)
        #expect(commits(h.receive(w1, .metrics(MetricsBatch(ref: ref(1), sequence: 1, points: [])))).isEmpty)
        let c1 = h.feed(.committed([.metricsIngested(accepted: true)]))
        #expect(acks(c1) == [Ack(ref: ref(0), kind: .metrics, sequence: 1)])
        #expect(commits(c1) == [[
            .ingestMetrics(workerID: 11, ref: ref(0), points: []), .ingestMetrics(workerID: 11, ref: ref(1), points: []),
        ]])
        let c2 = h.feed(.committed([.metricsIngested(accepted: true), .metricsIngested(accepted: false)]))
        #expect(acks(c2) == [Ack(ref: ref(0), kind: .metrics, sequence: 2), Ack(ref: ref(1), kind: .metrics, sequence: 1, accepted: false)])
        #expect(h.machine.counters.staleDropped == 1)
        #expect(!h.machine.isCommitting)
    }

    @Test("LOGS: stored in the group commit, acked (kind logs) after it; fenced by the store → refused; refused by the database → dropped, acked")
    func logsCommitted() {
        var h = Self.withTwoLeases()
        let line = LogLine(time: 1.5, level: .warning, message: "deferred")
        let a = h.receive(w1, .logs(LogBatch(ref: ref(0), sequence: 0, lines: [line, line])))
        #expect(acks(a).isEmpty)
        #expect(commits(a) == [[.ingestLogs(workerID: 11, ref: ref(0), sequence: 0, lines: [line, line])]])
        #expect(commits(h.receive(w1, .logs(LogBatch(ref: ref(0), sequence: 1, lines: [line])))).isEmpty)
        #expect(commits(h.receive(w1, .logs(LogBatch(ref: ref(1), sequence: 0, lines: [line])))).isEmpty)
        let c1 = h.feed(.committed([.logsIngested(accepted: true)]))
        #expect(acks(c1) == [Ack(ref: ref(0), kind: .logs, sequence: 0)])
        #expect(h.machine.counters.logLines == 2)
        let c2 = h.feed(.committed([.logsIngested(accepted: false), .rejected(reason: "bad bytes")]))
        #expect(acks(c2) == [Ack(ref: ref(0), kind: .logs, sequence: 1, accepted: false), Ack(ref: ref(1), kind: .logs, sequence: 0)])
        #expect(h.machine.counters.staleDropped == 1 && h.machine.counters.logBatchesRejected == 1)
    }

    @Test("Fencing: a stale attempt is refused at once, without a database round trip", arguments: [
        Message.metrics(MetricsBatch(ref: ref(0, attempt: 0), sequence: 9, points: [])),
        Message.logs(LogBatch(ref: ref(0, attempt: 0), sequence: 9, lines: [LogLine(time: 1, level: .info, message: "x")])),
        Message.shardDone(ShardDone(ref: ref(0, attempt: 0), summary: [])),
        Message.shardFailed(ShardFailed(ref: ref(0, attempt: 0), reason: "x", retryable: false)),
        Message.chunk(BlobChunk(ref: ref(0, attempt: 0), transferID: 3, kind: .checkpoint, step: 1, offset: 0, totalSize: 0, isLast: true, sha256: String(repeating: "0", count: 64), data: [])),
    ])
    func staleAttemptFenced(message: Message) {
        var h = Self.withTwoLeases()
        let a = h.receive(w1, message)
        #expect(commits(a).isEmpty)
        let ack = acks(a)
        #expect(ack.count == 1 && ack[0].accepted == false && ack[0].ref == ref(0, attempt: 0))
        #expect(h.machine.counters.staleDropped == 1)
        // A stale CHUNK also voids what the blob service holds of that transfer (its temp file).
        if case .chunk(let c) = message {
            #expect(a.contains(.dropTransfer(w1, transferID: c.transferID)))
        } else {
            #expect(!a.contains { if case .dropTransfer = $0 { true } else { false } })
        }
    }

    @Test("Fencing by sender: another registered worker cannot speak for w1's current attempt")
    func foreignSenderFenced() {
        var h = Self.withTwoLeases()
        _ = h.register(w2, name: "w2", slots: 1, workerID: 12)
        _ = h.feed(.committed([claimed([])]))
        for m: Message in [
            .metrics(MetricsBatch(ref: ref(0), sequence: 1, points: [])), .shardDone(ShardDone(ref: ref(0), summary: [])),
            .shardFailed(ShardFailed(ref: ref(0), reason: "x", retryable: false)),
            .logs(LogBatch(ref: ref(0), sequence: 1, lines: [LogLine(time: 1, level: .info, message: "x")])),
        ] {
            let a = h.receive(w2, m)
            #expect(commits(a).isEmpty, "\(m)")
            #expect(acks(a).map(\.accepted) == [false])
        }
        // The holder's DONE is still accepted and goes to the store.
        let done = h.receive(w1, .shardDone(ShardDone(ref: ref(0), summary: Array("{}".utf8))))
        #expect(commits(done).first?.first == .completeShard(workerID: 11, ref: ref(0), summary: "{}", resultSHA256: nil))
    }

    @Test("A worker silent for liveness × interval is lost: its shards are requeued at no cost, it must READY again")
    func lostWorker() {
        var h = Self.withTwoLeases()
        h.advance(.milliseconds(3100))
        let t = h.feed(.tick)
        #expect(commits(t) == [[.workerGone(workerID: 11, lost: true, reason: "worker w1 lost (no heartbeat for 3.0 seconds)"), .requeueExpiredLeases]])
        #expect(t.contains(.dropTransfers(w1)))
        #expect(h.machine.counters.workersLost == 1)
        _ = h.feed(.committed([.workerGone(requeued: 2), .expiredLeasesRequeued(count: 0)]))
        // Its late DONE is not taken: unknown peer → notReady.
        let late = h.receive(w1, .shardDone(ShardDone(ref: ref(0), summary: [])))
        #expect(sends(late, to: w1) == [.error(ErrorMessage(code: WireStatus.notReady, message: "unknown worker: send READY"))])
        #expect(commits(late).isEmpty)
    }

    @Test("A revoked key ends its session at once: DISCONNECT, its shards requeued as for a lost worker, nothing more taken")
    func revokedSession() {
        var h = Self.withTwoLeases()
        let r = h.feed(.revoked(w1, reason: "key revoked"))
        #expect(sends(r, to: w1) == [.disconnect(Disconnect(reason: "key revoked"))])
        #expect(commits(r) == [[.workerGone(workerID: 11, lost: true, reason: "key revoked")]])
        #expect(r.contains(.dropTransfers(w1)))
        #expect(h.machine.counters.sessionsRevoked == 1)
        #expect(h.machine.sessionCount == 0)
        _ = h.feed(.committed([.workerGone(requeued: 2)]))
        // Whatever it still sends is not taken for the leases it held.
        let late = h.receive(w1, .shardDone(ShardDone(ref: ref(0), summary: [])))
        #expect(commits(late).isEmpty)
        // A second revocation of a peer without a session only repeats the DISCONNECT.
        let again = h.feed(.revoked(w1, reason: "key revoked"))
        #expect(sends(again, to: w1) == [.disconnect(Disconnect(reason: "key revoked"))])
        #expect(commits(again).isEmpty)
        #expect(h.machine.counters.sessionsRevoked == 1)
    }

    @Test("Ticks: HEARTBEAT to every worker, every worker's progress renewed in one command, one lease sweep")
    func tickRenewsAllWorkersInOneCommand() {
        var h = Self.withTwoLeases()
        _ = h.register(w2, name: "w2", slots: 1, workerID: 12)
        _ = h.feed(.committed([claimed([])]))
        _ = h.receive(w1, .heartbeat(Heartbeat(credits: 0, progress: [ShardProgress(ref: ref(0), step: 4, total: 9)])))
        h.advance(.seconds(1))
        let t = h.feed(.tick)
        #expect(sends(t, to: w1) == [.heartbeat(Heartbeat())])
        #expect(sends(t, to: w2) == [.heartbeat(Heartbeat())])
        #expect(commits(t) == [[
            .renewLeases([
                LeaseRenewal(workerID: 11, progress: [ShardProgressStep(ref: ref(0), step: 4)]),
                LeaseRenewal(workerID: 12, progress: []),
            ]),
            .requeueExpiredLeases,
        ]])
        // The store says w1's shard 0 is no longer its lease: w1 is told to stop it.
        let c = h.feed(.committed([
            .leasesRenewed(stale: [Lease(ref: ref(0), workerID: 11)]), .expiredLeasesRequeued(count: 0),
        ]))
        #expect(sends(c, to: w1).contains(.cancel(Cancel(ref: ref(0), reason: "lease lost: the shard was re-leased or cancelled"))))
        // ...and its messages about it are fenced from now on.
        #expect(acks(h.receive(w1, .shardDone(ShardDone(ref: ref(0), summary: [])))).map(\.accepted) == [false])
    }

    @Test("Drain: a retryable SHARD_FAILED hands the shard back without returning the slot's credit")
    func drainHandsBackFree() {
        var h = Self.withTwoLeases()
        let a = h.receive(w1, .shardFailed(ShardFailed(ref: ref(1), reason: "worker drained", retryable: true)))
        #expect(commits(a) == [[.failShard(workerID: 11, ref: ref(1), reason: "worker drained", failure: .infrastructure)]])
        let c = h.feed(.committed([.shardFailed(.requeued, stop: [])]))
        #expect(acks(c) == [Ack(ref: ref(1), kind: .failed, accepted: true)])
        // No claim back to the draining worker until its heartbeat advertises a credit.
        #expect(commits(c).isEmpty)
    }

    @Test("A failure that fails the job stops the job's other leases")
    func jobFailureStopsOthers() {
        var h = Self.withTwoLeases()
        // A shard's own error returns its slot's credit, so a claim rides along.
        let a = h.receive(w1, .shardFailed(ShardFailed(ref: ref(1), reason: "nan", retryable: false)))
        #expect(commits(a) == [[
            .failShard(workerID: 11, ref: ref(1), reason: "nan", failure: .shardError),
            .claimShards(workerID: 11, limit: 1, capabilities: ["rl/noop"]),
        ]])
        let c = h.feed(.committed([.shardFailed(.jobFailed, stop: [Lease(ref: ref(0), workerID: 11)]), claimed([])]))
        #expect(sends(c, to: w1).contains(.cancel(Cancel(ref: ref(0), reason: "job failed"))))
    }

    @Test("A permanent SHARD_FAILED goes to the store as permanent (the store fails the job at once)")
    func permanentFailure() {
        var h = Self.withTwoLeases()
        let a = h.receive(w1, .shardFailed(ShardFailed(ref: ref(1), reason: "bad slice", failure: .permanent)))
        #expect(commits(a).first?.first == .failShard(workerID: 11, ref: ref(1), reason: "bad slice", failure: .permanent))
    }

    @Test("Out of space: a deferred CHUNK is answered deferred and pauses claims; a stored blob or the pause's end resumes them")
    func storageDeferralPausesClaims() {
        var h = Self.withTwoLeases()
        let d = h.feed(.chunkAnswered(w1, ref: ref(0), transferID: 2, offset: 0, status: .deferred))
        #expect(acks(d) == [Ack(ref: ref(0), kind: .chunk, sequence: 2, offset: 0, status: .deferred)])
        #expect(h.machine.counters.chunksDeferred == 1)
        #expect(h.machine.storagePausedUntil == h.now + CoordinatorStateMachine.storagePause)
        // Shard 1 ends and frees a slot, but nothing new is claimed: it would compute outputs that cannot be stored.
        let done = h.receive(w1, .shardDone(ShardDone(ref: ref(1), summary: Array("{}".utf8))))
        #expect(commits(done) == [[.completeShard(workerID: 11, ref: ref(1), summary: "{}", resultSHA256: nil)]])
        let c = h.feed(.committed([.shardCompleted(accepted: true, jobComplete: false)]))
        #expect(commits(c).isEmpty)
        // Each deferral extends the pause.
        h.advance(.seconds(20))
        _ = h.feed(.chunkAnswered(w1, ref: ref(0), transferID: 2, offset: 0, status: .deferred))
        #expect(h.machine.storagePausedUntil == h.now + CoordinatorStateMachine.storagePause)
        #expect(h.machine.counters.chunksDeferred == 2)
        // Space is back: the blob is stored, the pause ends and the free slot is claimed.
        let sha = String(repeating: "a", count: 64)
        let s = h.feed(.blobStored(w1, ref: ref(0), transferID: 2, kind: .checkpoint, step: 1, sha256: sha, size: 3, path: "aa/x"))
        #expect(h.machine.storagePausedUntil == nil)
        #expect(commits(s) == [[
            .registerBlob(workerID: 11, ref: ref(0), kind: .checkpoint, step: 1, sha256: sha, size: 3, path: "aa/x"),
            .claimShards(workerID: 11, limit: 1, capabilities: ["rl/noop"]),
        ]])
    }

    @Test("Out of space with no blob ever stored: claims resume when the pause runs out")
    func storagePauseRunsOut() {
        var h = Self.withTwoLeases()
        _ = h.feed(.chunkAnswered(w1, ref: ref(0), transferID: 2, offset: 0, status: .deferred))
        _ = h.receive(w1, .shardDone(ShardDone(ref: ref(1), summary: Array("{}".utf8))))
        _ = h.feed(.committed([.shardCompleted(accepted: true, jobComplete: false)]))
        func claims(_ batch: [StoreCommand]) -> [StoreCommand] { batch.filter { if case .claimShards = $0 { true } else { false } } }
        // Every batch committed (renewals, sweeps, claims finding nothing), answered until the machine is quiet.
        func settle(_ actions: [CoordinatorStateMachine.Action]) -> [StoreCommand] {
            var all: [StoreCommand] = []
            var pending = commits(actions)
            while let batch = pending.first {
                pending.removeFirst()
                all += batch
                pending += commits(h.feed(.committed(batch.map {
                    switch $0 {
                    case .renewLeases: .leasesRenewed(stale: [])
                    case .requeueExpiredLeases: .expiredLeasesRequeued(count: 0)
                    default: claimed([])
                    }
                })))
            }
            return all
        }
        func tick() -> [StoreCommand] {
            h.advance(.seconds(1))
            let hb = settle(h.receive(w1, .heartbeat(Heartbeat(credits: 1, progress: [ShardProgress(ref: ref(0), step: 1, total: 9)]))))
            return hb + settle(h.feed(.tick))
        }
        let during = (1...29).flatMap { _ in claims(tick()) }
        #expect(during.isEmpty)
        // 30 s after the deferral the pause is over; the next pass asks for the free slot.
        h.advance(.seconds(1))
        let after = (1...5).flatMap { _ in claims(tick()) }
        #expect(after.first == .claimShards(workerID: 11, limit: 1, capabilities: ["rl/noop"]))
        #expect(h.machine.storagePausedUntil == nil)
    }

    @Test("The last shard's commit starts the merge")
    func mergeAfterLastShard() {
        var h = Self.withTwoLeases()
        _ = h.receive(w1, .shardDone(ShardDone(ref: ref(0), summary: [])))
        let c = h.feed(.committed([.shardCompleted(accepted: true, jobComplete: true), claimed([])]))
        #expect(c.contains(.merge(jobID: 7)))
    }

    @Test("A READY under a registered name replaces the old session after the new registration")
    func readyReplacesSameName() {
        var h = Self.withTwoLeases()
        let a = h.receive(w2, .ready(Ready(workerName: "w1", host: "h", slots: 2, capabilities: ["rl/noop"], running: [ref(0)])))
        #expect(commits(a) == [[
            .registerWorker(name: "w1", host: "h", slots: 2, capabilities: ["rl/noop"], running: [ref(0)]),
            .workerGone(workerID: 11, lost: false, reason: "worker re-registered"),
        ]])
        #expect(a.contains(.dropTransfers(w1)))
        // The old connection is no longer a worker.
        #expect(sends(h.receive(w1, .heartbeat(Heartbeat()))).first == .error(ErrorMessage(code: WireStatus.notReady, message: "unknown worker: send READY")))
    }

    @Test("A registration outcome for a READY that was superseded meanwhile does not take over the new session")
    func staleRegistrationOutcome() {
        var h = Harness()
        _ = h.receive(w1, .ready(Ready(workerName: "w1", host: "h", slots: 1, capabilities: [], running: [])))
        // READY again on the same connection while the first registration commits.
        #expect(commits(h.receive(w1, .ready(Ready(workerName: "w1", host: "h", slots: 1, capabilities: [], running: [])))).isEmpty)
        let first = h.feed(.committed([.workerRegistered(workerID: 1, adopted: [])]))
        // The first row is ended; the second READY is registered next.
        #expect(commits(first) == [[
            .registerWorker(name: "w1", host: "h", slots: 1, capabilities: [], running: []),
            .workerGone(workerID: 1, lost: false, reason: "connection replaced during registration"),
        ]])
        #expect(sends(first).isEmpty)
        let second = h.feed(.committed([.workerRegistered(workerID: 2, adopted: []), .workerGone(requeued: 0)]))
        #expect(sends(second, to: w1) == [.heartbeat(Heartbeat())])
        #expect(commits(second) == [[.claimShards(workerID: 2, limit: 1, capabilities: [])]])
    }

    @Test("ERRORs: at most 10 per second to one peer, never one for an ERROR")
    func errorRateAndNoErrorForError() {
        var h = Harness()
        let bad = ProtocolError(code: .badMagic, message: "bad magic")
        var sent = 0
        for _ in 0..<25 { sent += sends(h.feed(.malformed([9], bad, headerType: nil))).count }
        #expect(sent == 10)
        #expect(h.machine.counters.errorsSuppressed == 15)
        h.advance(.milliseconds(1001))
        #expect(sends(h.feed(.malformed([9], bad, headerType: nil))).count == 1)
        // An ERROR, decodable or not, is never answered.
        #expect(h.receive([8], .error(ErrorMessage(code: 6, message: "x"))).isEmpty)
        #expect(h.feed(.malformed([8], bad, headerType: MessageType.error.rawValue)).isEmpty)
        #expect(h.machine.counters.errorsReceived == 1)
    }

    @Test("A lease cancelled by a client is stopped on its holder; later messages about it are fenced")
    func clientCancel() {
        var h = Self.withTwoLeases()
        let c = h.feed(.leasesEnded([Lease(ref: ref(0), workerID: 11)], reason: "job cancelled"))
        #expect(sends(c, to: w1) == [.cancel(Cancel(ref: ref(0), reason: "job cancelled"))])
        #expect(acks(h.receive(w1, .metrics(MetricsBatch(ref: ref(0), sequence: 1, points: [])))).map(\.accepted) == [false])
    }

    @Test("A blob registers only for the holder, and its final ACK waits for the commit")
    func blobRegistration() {
        var h = Self.withTwoLeases()
        let sha = String(repeating: "a", count: 64)
        let a = h.feed(.blobStored(w1, ref: ref(0), transferID: 4, kind: .checkpoint, step: 5, sha256: sha, size: 10, path: "aa/x"))
        #expect(acks(a).isEmpty)
        #expect(commits(a) == [[.registerBlob(workerID: 11, ref: ref(0), kind: .checkpoint, step: 5, sha256: sha, size: 10, path: "aa/x")]])
        let c = h.feed(.committed([.blobRegistered(accepted: true)]))
        #expect(acks(c) == [Ack(ref: ref(0), kind: .chunk, sequence: 4, offset: 10, accepted: true)])
        // From a peer that does not hold the lease: refused at once.
        let f = h.feed(.blobStored(w2, ref: ref(0), transferID: 1, kind: .checkpoint, step: 5, sha256: sha, size: 10, path: "aa/x"))
        #expect(acks(f).map(\.accepted) == [false])
        #expect(commits(f).isEmpty)
    }

    @Test("Prefetch: shards leased ahead go out the moment a slot frees, never beyond credits; a draining worker's go back")
    func prefetch() {
        var h = Harness { $0.prefetch = 64 }
        let a = h.register(w1, name: "w1", slots: 2, workerID: 11)
        // Two slots, then (a second round, after every worker's free slots) up to two more leased ahead: prefetch is
        // capped at the slot count.
        #expect(commits(a) == [[
            .claimShards(workerID: 11, limit: 2, capabilities: ["rl/noop"]),
            .claimShards(workerID: 11, limit: 2, capabilities: ["rl/noop"]),
        ]])
        let c = h.feed(.committed([claimed([ref(0), ref(1)]), claimed([ref(2), ref(3)])]))
        let dispatched = sends(c, to: w1).compactMap { if case .dispatch(let d) = $0 { d.ref } else { nil } }
        #expect(dispatched == [ref(0), ref(1)])
        // DONE frees a slot: shard 2 goes out in the same step, before any commit.
        let done = h.receive(w1, .shardDone(ShardDone(ref: ref(0), summary: Array("{}".utf8))))
        #expect(sends(done, to: w1).compactMap { if case .dispatch(let d) = $0 { d.ref } else { nil } } == [ref(2)])
        #expect(commits(done) == [[
            .completeShard(workerID: 11, ref: ref(0), summary: "{}", resultSHA256: nil),
            .claimShards(workerID: 11, limit: 1, capabilities: ["rl/noop"]),
        ]])
        _ = h.feed(.committed([.shardCompleted(accepted: true, jobComplete: false), claimed([])]))
        // Ticks renew the leased-ahead shard with the running ones.
        h.advance(.seconds(1))
        let t = h.feed(.tick)
        #expect(commits(t).first?.first == .renewLeases([LeaseRenewal(workerID: 11, progress: [ShardProgressStep(ref: ref(3), step: 0)])]))
        // The last claim came back short and nothing was rescued: the tick asks for nothing.
        #expect(commits(t).first?.last == .requeueExpiredLeases)
        _ = h.feed(.committed([.leasesRenewed(stale: []), .expiredLeasesRequeued(count: 0)]))
        // The worker starts draining: no credit though one slot is idle. Shard 3 was never sent: it goes back.
        let d = h.receive(w1, .heartbeat(Heartbeat(credits: 0, progress: [ShardProgress(ref: ref(1), step: 0, total: 1)])))
        #expect(commits(d) == [[.unleaseShard(workerID: 11, ref: ref(3))]])
        #expect(sends(d, to: w1).isEmpty)
    }

    @Test("Prefetch never starves an idle worker: free slots are claimed first, and a dry queue takes back what is leased ahead")
    func prefetchIsFair() {
        var h = Harness { $0.prefetch = 64 }
        _ = h.register(w1, name: "w1", slots: 1, workerID: 11)
        // w1's free slot and its prefetch are claimed; w2 registers while that commits.
        _ = h.receive(w2, .ready(Ready(workerName: "w2", host: "h", slots: 1, capabilities: ["rl/noop"], running: [])))
        let first = h.feed(.committed([claimed([ref(0)]), claimed([ref(1)])]))
        // w2's registration, then its free slot; w1 already has one leased ahead.
        #expect(commits(first) == [[.registerWorker(name: "w2", host: "h", slots: 1, capabilities: ["rl/noop"], running: [])]])
        let reg = h.feed(.committed([.workerRegistered(workerID: 12, adopted: [])]))
        #expect(commits(reg) == [[
            .claimShards(workerID: 12, limit: 1, capabilities: ["rl/noop"]),
            .claimShards(workerID: 12, limit: 1, capabilities: ["rl/noop"]),
        ]])
        // The queue is dry: w2 idles while shard 1 waits on w1 behind shard 0. It is handed back for w2 to claim.
        let dry = h.feed(.committed([claimed([]), claimed([])]))
        #expect(commits(dry) == [[.unleaseShard(workerID: 11, ref: ref(1))]])
        let back = h.feed(.committed([.shardFailed(.requeued, stop: [])]))
        // w2's free slot first; only then the shards leased ahead for each.
        #expect(commits(back) == [[
            .claimShards(workerID: 12, limit: 1, capabilities: ["rl/noop"]),
            .claimShards(workerID: 11, limit: 1, capabilities: ["rl/noop"]),
            .claimShards(workerID: 12, limit: 1, capabilities: ["rl/noop"]),
        ]])
    }

    @Test("Claims are tracked per capability set: idle workers that can run nothing queued are not asked again until the queue changes")
    func dryCapabilitySets() {
        var h = Self.withTwoLeases()  // w1 (rl/noop) holds shards 0 and 1
        // Three workers that can run only sampling/ddim register; each registration's batch claims for it alone.
        for (i, peer) in [[UInt8]([21]), [22], [23]].enumerated() {
            let a = h.register(peer, name: "s\(i)", slots: 4, workerID: Int64(21 + i), capabilities: ["sampling/ddim"])
            #expect(commits(a) == [[.claimShards(workerID: Int64(21 + i), limit: 4, capabilities: ["sampling/ddim"])]])
            #expect(commits(h.feed(.committed([claimed([])]))).isEmpty)
        }
        // w1 finishes a shard: its completion and a claim for w1 alone go out; the dry sampling workers are skipped.
        let done = h.receive(w1, .shardDone(ShardDone(ref: ref(0), summary: Array("{}".utf8))))
        #expect(commits(done) == [[
            .completeShard(workerID: 11, ref: ref(0), summary: "{}", resultSHA256: nil),
            .claimShards(workerID: 11, limit: 1, capabilities: ["rl/noop"]),
        ]])
        // w1's claim was full (its set may have more), the batch released nothing: still nobody else is asked.
        let full = h.feed(.committed([.shardCompleted(accepted: true, jobComplete: false), claimed([ref(2)])]))
        #expect(commits(full).isEmpty)
        // A submission may have brought anything: every idle worker is asked again, in worker-id order.
        #expect(commits(h.feed(.queueChanged)) == [[
            .claimShards(workerID: 21, limit: 4, capabilities: ["sampling/ddim"]),
            .claimShards(workerID: 22, limit: 4, capabilities: ["sampling/ddim"]),
            .claimShards(workerID: 23, limit: 4, capabilities: ["sampling/ddim"]),
        ]])
    }

    @Test("Idle workers: liveness rows written every idleRenewalInterval, leases every tick; dry claims retried every reclaimTicks or when a rescue requeued")
    func idleWorkersCostLittlePerTick() {
        var h = Self.withTwoLeases()  // w1 holds shards 0 and 1
        _ = h.register(w2, name: "w2", slots: 1, workerID: 12)
        _ = h.feed(.committed([claimed([])]))  // w2's claim: nothing queued
        func tick() -> [StoreCommand] {
            h.advance(.seconds(1))
            _ = h.receive(w1, .heartbeat(Heartbeat(credits: 0, progress: [ShardProgress(ref: ref(0), step: 1, total: 9)])))
            _ = h.receive(w2, .heartbeat(Heartbeat(credits: 1, progress: [])))
            let batch = commits(h.feed(.tick)).first ?? []
            var outcomes: [StoreOutcome] = []
            for c in batch {
                switch c {
                case .renewLeases: outcomes.append(.leasesRenewed(stale: []))
                case .requeueExpiredLeases: outcomes.append(.expiredLeasesRequeued(count: 0))
                case .claimShards: outcomes.append(claimed([]))
                default: Issue.record("unexpected \(c)")
                }
            }
            _ = h.feed(.committed(outcomes))
            return batch
        }
        let renewed = { (batch: [StoreCommand]) -> [Int64] in
            batch.compactMap { if case .renewLeases(let r) = $0 { r.map(\.workerID) } else { nil } }.flatMap { $0 }
        }
        let claims = { (batch: [StoreCommand]) -> Int in batch.count { if case .claimShards = $0 { true } else { false } } }
        var batches = (1...10).map { _ in tick() }
        // w1 runs shards: renewed every tick. w2 is idle: on the first tick, then 5 s later.
        #expect(batches.map { renewed($0).contains(11) } == Array(repeating: true, count: 10))
        #expect(batches.map { renewed($0).contains(12) } == [true, false, false, false, false, true, false, false, false, false])
        // w2's capability set found nothing: asked again on every 5th tick only.
        #expect(batches.map(claims) == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1])
        // A rescue that requeued something makes everyone ask at once.
        h.advance(.seconds(1))
        let t = commits(h.feed(.tick)).first ?? []
        let after = h.feed(.committed(t.map {
            if case .requeueExpiredLeases = $0 { .expiredLeasesRequeued(count: 1) } else { .leasesRenewed(stale: []) }
        }))
        #expect(commits(after) == [[.claimShards(workerID: 12, limit: 1, capabilities: ["rl/noop"])]])
        batches.removeAll()
    }
}
