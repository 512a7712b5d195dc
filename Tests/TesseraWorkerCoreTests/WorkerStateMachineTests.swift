// The worker's rules (protocol/SPEC.md §6), step by step on the pure state machine: no sockets, no threads, time
// moved by hand. Each test feeds events and checks the exact actions.

import TesseraModel
import TesseraProtocol
import TesseraWorkerCore
import Testing

typealias WSM = WorkerStateMachine

struct WorkerHarness {
    var machine: WSM
    var now = ContinuousClock.now

    init(slots: Int = 2, configure: (inout WSM.Configuration) -> Void = { _ in }) {
        var c = WSM.Configuration(name: "w1", host: "h1", slots: slots, capabilities: ["rl/noop"])
        c.chunkSize = 4
        c.chunkWindow = 2
        c.metricsBatchSize = 3
        // The rules of LOGS are WorkerStateMachineLogsTests'; here a worker that writes no shard log.
        c.shardLogs = false
        configure(&c)
        machine = WSM(configuration: c)
    }

    mutating func feed(_ e: WSM.Event) -> [WSM.Action] { machine.handle(e, now: now) }
    mutating func receive(_ m: Message) -> [WSM.Action] { feed(.received(m)) }
    mutating func advance(_ d: Duration) -> [WSM.Action] {
        now += d
        return feed(.tick)
    }

    /// Started, connected, holding `refs` (dispatched in order).
    static func running(_ refs: [ShardRef], slots: Int = 2, configure: (inout WSM.Configuration) -> Void = { _ in }) -> WorkerHarness {
        var h = WorkerHarness(slots: slots, configure: configure)
        _ = h.feed(.start)
        for r in refs { _ = h.receive(.dispatch(dispatch(r))) }
        return h
    }
}

func dispatch(_ r: ShardRef, steps: Int64 = 10) -> Dispatch {
    Dispatch(ref: r, kind: "rl", algorithm: "noop", seed: 1, spec: Array("{}".utf8), slice: Array("{}".utf8), totalSteps: steps)
}

func wref(_ shard: Int32, attempt: Int32 = 1) -> ShardRef { ShardRef(jobID: 3, shardIndex: shard, attempt: attempt) }

func sent(_ actions: [WSM.Action]) -> [Message] {
    actions.compactMap { if case .send(let m) = $0 { m } else { nil } }
}

func points(_ n: Int) -> [MetricPoint] { (0..<n).map { MetricPoint(name: "loss", step: Int64($0), value: Double($0)) } }

func metricBatches(_ actions: [WSM.Action]) -> [MetricsBatch] {
    sent(actions).compactMap { if case .metrics(let b) = $0 { b } else { nil } }
}

func chunks(_ actions: [WSM.Action]) -> [BlobChunk] {
    sent(actions).compactMap { if case .chunk(let c) = $0 { c } else { nil } }
}

func finals(_ actions: [WSM.Action]) -> [Message] {
    sent(actions).filter {
        switch $0 {
        case .shardDone, .shardFailed: true
        default: false
        }
    }
}

let sha = String(repeating: "ab", count: 32)

@Suite("Worker state machine (SPEC §6)")
struct WorkerStateMachineTests {
    @Test("Start: connect, then READY with slots and capabilities")
    func start() {
        var h = WorkerHarness(slots: 4)
        let a = h.feed(.start)
        #expect(a == [.connect, .send(.ready(Ready(workerName: "w1", host: "h1", slots: 4, capabilities: ["rl/noop"], running: [])))])
        #expect(h.machine.isConnected && h.machine.credits == 4)
    }

    @Test("DISPATCH: starts a shard per free slot; over the slots it is refused retryably; a duplicate is ignored")
    func dispatchAndCredits() {
        var h = WorkerHarness(slots: 1)
        _ = h.feed(.start)
        #expect(h.receive(.dispatch(dispatch(wref(0)))) == [.startShard(dispatch(wref(0)))])
        #expect(h.machine.credits == 0)
        #expect(h.receive(.dispatch(dispatch(wref(0)))) == [])
        #expect(
            h.receive(.dispatch(dispatch(wref(1))))
                == [.send(.shardFailed(ShardFailed(ref: wref(1), reason: "no free slot", retryable: true)))])
    }

    @Test("METRICS: batched by size from sequence 0; DONE only once every batch is acknowledged; ACK done forgets")
    func metricsThenDone() {
        var h = WorkerHarness.running([wref(0)])
        let a = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 7, points: points(7), outcome: .done(summary: Array("{}".utf8)))))
        let batches = metricBatches(a)
        #expect(batches.map(\.sequence) == [0, 1, 2])
        #expect(batches.map(\.points.count) == [3, 3, 1])
        #expect(batches.flatMap(\.points) == points(7))
        #expect(finals(a).isEmpty, "DONE must wait for the metric ACKs")
        #expect(finals(h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 0)))).isEmpty)
        #expect(finals(h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 2)))).isEmpty)
        let done = h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 1)))
        #expect(finals(done) == [.shardDone(ShardDone(ref: wref(0), summary: Array("{}".utf8), resultSHA256: ""))])
        // Another ACK must not send DONE twice.
        #expect(finals(h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 1)))).isEmpty)
        let forget = h.receive(.ack(Ack(ref: wref(0), kind: .done)))
        #expect(forget.contains(.forget(wref(0))))
        #expect(h.machine.runningShards.isEmpty && h.machine.credits == 2)
    }

    @Test("METRICS window: at most `metricsWindow` batches unacknowledged per shard; past `metricsBacklog` the loop must hold points back")
    func metricsWindow() {
        var h = WorkerHarness.running([wref(0), wref(1)]) {
            $0.metricsWindow = 2
            $0.metricsBacklog = 4
        }
        // 5 batches of shard 0 (3 points each): two go out, three wait.
        let a = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, points: points(15))))
        #expect(metricBatches(a).map(\.sequence) == [0, 1])
        #expect(!h.machine.acceptsMetrics(wref(0)), "5 batches held > backlog 4")
        #expect(h.machine.acceptsMetrics(wref(1)), "the window and backlog are per shard")
        #expect(metricBatches(h.feed(.computed(wref(1), WSM.ComputeOutput(step: 1, points: points(3))))).map(\.ref) == [wref(1)])
        // Each ACK lets the oldest waiting batch go, in sequence order.
        #expect(metricBatches(h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 1)))).map(\.sequence) == [2])
        #expect(h.machine.acceptsMetrics(wref(0)), "4 held: at the backlog, not above it")
        #expect(metricBatches(h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 0)))).map(\.sequence) == [3])
        // The outcome waits for every batch; no more than the window is ever in flight on the way there.
        let o = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 2, outcome: .done(summary: []))))
        #expect(metricBatches(o).isEmpty && finals(o).isEmpty)
        #expect(metricBatches(h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 2)))).map(\.sequence) == [4])
        #expect(finals(h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 3)))).isEmpty)
        let done = h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 4)))
        #expect(finals(done) == [.shardDone(ShardDone(ref: wref(0), summary: [], resultSHA256: ""))])
    }

    @Test("CHUNK: a window of chunks in flight, more as ACKs come; the result's sha256 goes into DONE")
    func chunkWindow() {
        var h = WorkerHarness.running([wref(0)])
        let bytes: [UInt8] = Array(0..<11)
        let blob = WSM.Blob(kind: .result, step: 10, bytes: bytes, sha256: sha)
        let a = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 10, blobs: [blob], outcome: .done(summary: [0x7b, 0x7d]))))
        // Window: 2 chunks × 4 bytes unacknowledged.
        #expect(chunks(a).map(\.offset) == [0, 4])
        #expect(chunks(a).allSatisfy { $0.sha256.isEmpty && !$0.isLast && $0.totalSize == 11 && $0.transferID == 1 })
        let b = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 4)))
        #expect(chunks(b).map(\.offset) == [8])
        #expect(chunks(b).first?.isLast == true && chunks(b).first?.sha256 == sha && chunks(b).first?.data == [8, 9, 10])
        #expect(finals(b).isEmpty)
        #expect(finals(h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 8)))).isEmpty)
        let c = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 11)))
        #expect(finals(c) == [.shardDone(ShardDone(ref: wref(0), summary: [0x7b, 0x7d], resultSHA256: sha))])
    }

    @Test("CHUNK: a blob's last chunk waits until the metric batches emitted before it are acknowledged, not later ones")
    func lastChunkAfterEarlierMetrics() {
        var h = WorkerHarness.running([wref(0)]) { $0.metricsWindow = 2 }
        // Steps 0-8 (batches 0, 1, 2 of 3 points; the window sends 2), then the checkpoint at step 8 (two chunks).
        let ckpt = WSM.Blob(kind: .checkpoint, step: 8, bytes: Array(0..<6), sha256: sha)
        let a = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 8, points: points(9), blobs: [ckpt])))
        #expect(metricBatches(a).map(\.sequence) == [0, 1])
        #expect(chunks(a).map(\.offset) == [0])  // the first chunk goes; the last (in the window too) registers it: it waits
        let b = h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 0, offset: 0)))
        #expect(metricBatches(b).map(\.sequence) == [2] && chunks(b).isEmpty)
        #expect(chunks(h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 4)))).isEmpty)
        #expect(chunks(h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 2, offset: 0)))).isEmpty)  // 1 unacked
        let c = h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 1, offset: 0)))
        #expect(chunks(c).map(\.offset) == [4] && chunks(c).first?.isLast == true)
        // Points emitted after a blob do not hold it back: its last chunk waits for its digest, meanwhile batch 3 is
        // emitted and stays unacknowledged, and the digest sends the last chunk.
        let later = WSM.Blob(kind: .checkpoint, step: 9, bytes: Array(0..<6), sha256: "")
        #expect(chunks(h.feed(.computed(wref(0), WSM.ComputeOutput(step: 9, blobs: [later])))).map(\.offset) == [0])
        #expect(metricBatches(h.feed(.computed(wref(0), WSM.ComputeOutput(step: 10, points: points(3))))).map(\.sequence) == [3])
        let e = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 10, digests: [sha])))
        #expect(chunks(e).map(\.offset) == [4] && chunks(e).first?.isLast == true)
    }

    @Test("CHUNK: an empty blob is one final chunk; an ACK at offset 0 after progress restarts the transfer")
    func emptyBlobAndRestart() {
        var h = WorkerHarness.running([wref(0)])
        let empty = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, blobs: [WSM.Blob(kind: .checkpoint, step: 1, bytes: [], sha256: sha)])))
        #expect(chunks(empty).count == 1 && chunks(empty)[0].isLast && chunks(empty)[0].data.isEmpty)
        let big = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 2, blobs: [WSM.Blob(kind: .checkpoint, step: 2, bytes: Array(0..<9), sha256: sha)])))
        #expect(chunks(big).map(\.offset) == [0, 4])
        // The coordinator lost the transfer (e.g. it restarted): ACK at 0; the worker starts over from 0.
        let again = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 2, offset: 0)))
        #expect(chunks(again).map(\.offset) == [0, 4])
    }

    @Test("CHUNK: a blob handed over before its sha256 is sent at once; only its last chunk waits for the digest")
    func digestLater() {
        var h = WorkerHarness.running([wref(0)])
        let blob = WSM.Blob(kind: .result, step: 10, bytes: Array(0..<6), sha256: "")
        #expect(chunks(h.feed(.computed(wref(0), WSM.ComputeOutput(step: 10, blobs: [blob])))).map(\.offset) == [0])
        #expect(chunks(h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 4)))).isEmpty)
        let last = chunks(h.feed(.computed(wref(0), WSM.ComputeOutput(step: 10, digests: [sha]))))
        #expect(last.map(\.offset) == [4] && last.first?.isLast == true && last.first?.sha256 == sha)
        _ = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 6)))
        let done = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 10, outcome: .done(summary: []))))
        #expect(finals(done) == [.shardDone(ShardDone(ref: wref(0), summary: [], resultSHA256: sha))])
    }

    @Test("CHUNK: the ACKs at 0 of chunks sent before a restart do not restart it again; an ACK above 0 moves on")
    func restartOnce() {
        var h = WorkerHarness.running([wref(0)])
        let blob = WSM.Blob(kind: .checkpoint, step: 2, bytes: Array(0..<9), sha256: sha)
        #expect(chunks(h.feed(.computed(wref(0), WSM.ComputeOutput(step: 2, blobs: [blob])))).map(\.offset) == [0, 4])
        #expect(chunks(h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0)))).map(\.offset) == [0, 4])
        // The coordinator's answer to the old chunk at 4, also at 0: each such answer resending a window would
        // multiply the chunks in flight with every round.
        #expect(chunks(h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0)))).isEmpty)
        // The window counts from the restart: the new chunk at 0 written frees room for one chunk, the last.
        let next = chunks(h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 4))))
        #expect(next.map(\.offset) == [8] && next.first?.isLast == true)
        #expect(chunks(h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 9)))).isEmpty)
    }

    @Test("A rejected transfer sends no more chunks and fails the shard retryably once its computation ends")
    func rejectedTransfer() {
        var h = WorkerHarness.running([wref(0)])
        let blob = WSM.Blob(kind: .checkpoint, step: 1, bytes: Array(0..<9), sha256: sha)
        #expect(chunks(h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, blobs: [blob])))).map(\.offset) == [0, 4])
        let rejected = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, accepted: false)))
        #expect(finals(rejected).isEmpty && chunks(rejected).isEmpty)
        // The coordinator answers the chunk at 4 of a transfer it discarded at 0 (it knows none): still nothing.
        #expect(chunks(h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0)))).isEmpty)
        let a = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 3, outcome: .done(summary: []))))
        #expect(finals(a) == [.shardFailed(ShardFailed(ref: wref(0), reason: "coordinator rejected blob transfer 1", retryable: true))])
    }

    @Test("CHUNK deferred (coordinator out of space): one wait per deferral, resent from 0 after a doubling delay")
    func deferredTransfer() {
        var h = WorkerHarness.running([wref(0)]) { c in
            c.deferralDelay = .seconds(1)
            c.maxDeferralDelay = .seconds(3)
            c.deferralLimit = .seconds(100)
        }
        let blob = WSM.Blob(kind: .result, step: 1, bytes: Array(0..<9), sha256: sha)
        #expect(chunks(h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, blobs: [blob], outcome: .done(summary: []))))).map(\.offset) == [0, 4])
        let d = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0, status: .deferred)))
        #expect(chunks(d).isEmpty && finals(d).isEmpty)
        #expect(h.machine.deferrals == 1)
        // The chunk at 4 was in flight too and is answered deferred: no second wait, nothing sent.
        #expect(sent(h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0, status: .deferred)))).isEmpty)
        #expect(h.machine.deferrals == 1)
        #expect(h.machine.nextDeadline().map { $0 <= h.now + .seconds(1) } == true)
        #expect(chunks(h.advance(.milliseconds(500))).isEmpty)
        // After the delay the transfer starts over from 0 with a full window.
        #expect(chunks(h.advance(.milliseconds(500))).map(\.offset) == [0, 4])
        // Deferred again: the delay doubles (2 s), then is capped (3 s).
        _ = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0, status: .deferred)))
        #expect(chunks(h.advance(.milliseconds(1900))).isEmpty)
        #expect(chunks(h.advance(.milliseconds(100))).map(\.offset) == [0, 4])
        _ = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0, status: .deferred)))
        #expect(chunks(h.advance(.milliseconds(2900))).isEmpty)
        #expect(chunks(h.advance(.milliseconds(100))).map(\.offset) == [0, 4])
        #expect(h.machine.deferrals == 3)
        // Space is back: the transfer completes and the shard is DONE (never failed, no attempt spent).
        #expect(chunks(h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 4)))).map(\.offset) == [8])
        _ = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 8)))
        let done = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 9)))
        #expect(finals(done) == [.shardDone(ShardDone(ref: wref(0), summary: [], resultSHA256: sha))])
    }

    @Test("CHUNK deferred past the limit: the shard fails permanently with the reason, once its computation ended")
    func deferredTooLong() {
        var h = WorkerHarness.running([wref(0)]) { c in
            c.deferralDelay = .seconds(2)
            c.maxDeferralDelay = .seconds(2)
            c.deferralLimit = .seconds(5)
        }
        let blob = WSM.Blob(kind: .checkpoint, step: 1, bytes: Array(0..<9), sha256: sha)
        _ = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, blobs: [blob])))
        for _ in 0..<3 {
            _ = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0, status: .deferred)))
            #expect(chunks(h.advance(.seconds(2))).map(\.offset) == [0, 4])
        }
        // 6 s after the first deferral: over the 5 s limit.
        let f = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0, status: .deferred)))
        #expect(chunks(f).isEmpty && finals(f).isEmpty)
        #expect(chunks(h.advance(.seconds(1))).isEmpty)
        let end = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 3, outcome: .done(summary: []))))
        let failed = finals(end)
        #expect(failed.count == 1)
        if case .shardFailed(let m) = failed.first {
            #expect(m.failure == .permanent && m.ref == wref(0))
            #expect(m.reason.contains("out of space") && m.reason.contains("transfer 1"))
        } else {
            Issue.record("expected SHARD_FAILED, got \(failed)")
        }
    }

    @Test("A deferral run ends with an accepted chunk: the next deferral starts from the base delay and a fresh limit")
    func deferralResets() {
        var h = WorkerHarness.running([wref(0)]) { c in
            c.deferralDelay = .seconds(1)
            c.maxDeferralDelay = .seconds(8)
            c.deferralLimit = .seconds(4)
        }
        let blob = WSM.Blob(kind: .checkpoint, step: 1, bytes: Array(0..<12), sha256: sha)
        _ = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, blobs: [blob])))
        _ = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0, status: .deferred)))
        #expect(chunks(h.advance(.seconds(1))).map(\.offset) == [0, 4])
        _ = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0, status: .deferred)))
        #expect(chunks(h.advance(.seconds(2))).map(\.offset) == [0, 4])
        // Accepted above 0: the run of deferrals is over.
        _ = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 4)))
        h.now += .seconds(10)
        // Long after the first deferral, but a new run: waits the base delay, not a failure.
        let d = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0, status: .deferred)))
        #expect(finals(d).isEmpty)
        #expect(chunks(h.advance(.seconds(1))).map(\.offset) == [0, 4])
        let end = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 3, outcome: .done(summary: []))))
        #expect(finals(end).isEmpty)
    }

    @Test("Fencing: a refused METRICS ACK stops the shard; its output is dropped and nothing final is sent")
    func fencedByRefusedAck() {
        var h = WorkerHarness.running([wref(0)])
        _ = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, points: points(2))))
        let a = h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 0, accepted: false)))
        #expect(a == [.stopShard(wref(0), reason: "fenced: attempt superseded")])
        let more = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 2, points: points(5))))
        #expect(sent(more).isEmpty)
        let end = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 2, outcome: .failed(reason: "fenced", failure: .infrastructure))))
        #expect(end == [.forget(wref(0))])
        #expect(h.machine.runningShards.isEmpty)
    }

    @Test("CANCEL: a held shard is stopped; an unknown one is answered with a retryable SHARD_FAILED")
    func cancel() {
        var h = WorkerHarness.running([wref(0)])
        let a = h.receive(.cancel(Cancel(ref: wref(0), reason: "job cancelled")))
        #expect(a.contains(.stopShard(wref(0), reason: "job cancelled")))
        #expect(
            h.receive(.cancel(Cancel(ref: wref(5), reason: "superseded")))
                == [.send(.shardFailed(ShardFailed(ref: wref(5), reason: "cancelled: superseded", retryable: true)))])
        // A cancelled shard that then fails is reported (the coordinator ACKs it and frees the slot).
        let f = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, outcome: .failed(reason: "job cancelled", failure: .infrastructure))))
        #expect(finals(f) == [.shardFailed(ShardFailed(ref: wref(0), reason: "cancelled: job cancelled", retryable: true))])
    }

    // ops/chaos worker-sigstop, before the fix: a superseded shard with a blob transfer under way ignored the refusal
    // of its chunks, so the transfer never ended, no SHARD_FAILED went, and the coordinator cancelled it at every
    // heartbeat for good.
    @Test("CANCEL voids buffered output: SHARD_FAILED goes as soon as the computation stops, whatever was unacked")
    func cancelDropsOutput() {
        var h = WorkerHarness.running([wref(0)])
        let blob = WSM.Blob(kind: .samples, step: 1, bytes: Array(0..<20), sha256: sha)
        let before = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, points: points(4), blobs: [blob])))
        #expect(metricBatches(before).count == 2 && chunks(before).count == 2)
        let c = h.receive(.cancel(Cancel(ref: wref(0), reason: "superseded: the shard was re-leased")))
        #expect(c.contains(.stopShard(wref(0), reason: "superseded: the shard was re-leased")))
        #expect(sent(c).isEmpty)
        // The next CANCEL (the heartbeat still reports the attempt) neither logs nor stops it again.
        #expect(h.receive(.cancel(Cancel(ref: wref(0), reason: "lease lost: the shard was re-leased or cancelled"))).isEmpty)
        // Refusals of what was in flight change nothing and fence nothing.
        #expect(h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 0, accepted: false))).isEmpty)
        #expect(h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 0, accepted: false))).isEmpty)
        // Output the computation still hands over before it stops is dropped, and the spool may hand over more.
        let late = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 2, points: points(6), blobs: [blob])))
        #expect(sent(late).isEmpty)
        #expect(h.machine.acceptsMetrics(wref(0)) && h.machine.bufferedBlobBytes(wref(0)) == 0)
        #expect(h.machine.credits == 1)
        let end = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 2, outcome: .failed(reason: "superseded", failure: .infrastructure))))
        #expect(sent(end) == [.shardFailed(ShardFailed(ref: wref(0), reason: "cancelled: superseded: the shard was re-leased", retryable: true))])
        #expect(h.machine.credits == 2)
        // Its ACK (refused: the attempt is not current) forgets it, so the next heartbeat no longer reports it.
        #expect(h.receive(.ack(Ack(ref: wref(0), kind: .failed, accepted: false))).contains(.forget(wref(0))))
        #expect(h.machine.runningShards.isEmpty)
    }

    @Test("CANCEL of a shard whose computation already ended answers at once; a reconnect sends the answer again")
    func cancelAfterFinish() {
        var h = WorkerHarness.running([wref(0)])
        _ = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, points: points(2), outcome: .done(summary: [0x7b, 0x7d]))))
        let c = h.receive(.cancel(Cancel(ref: wref(0), reason: "job cancelled")))
        #expect(finals(c) == [.shardFailed(ShardFailed(ref: wref(0), reason: "cancelled: job cancelled", retryable: true))])
        _ = h.receive(.disconnect(Disconnect(reason: "restart")))
        let replay = h.advance(.seconds(1))  // the first backoff
        #expect(sent(replay).contains(.ready(Ready(workerName: "w1", host: "h1", slots: 2, capabilities: ["rl/noop"], running: [wref(0)]))))
        #expect(finals(replay) == [.shardFailed(ShardFailed(ref: wref(0), reason: "cancelled: job cancelled", retryable: true))])
        #expect(metricBatches(replay).isEmpty)
    }

    @Test("Heartbeats: every interval, with free credits and each shard's progress")
    func heartbeats() {
        var h = WorkerHarness.running([wref(0)])
        _ = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 4)))
        #expect(sent(h.advance(.milliseconds(999))).isEmpty)
        _ = h.receive(.heartbeat(Heartbeat()))
        #expect(
            sent(h.advance(.milliseconds(1)))
                == [.heartbeat(Heartbeat(credits: 1, progress: [ShardProgress(ref: wref(0), step: 4, total: 10)]))])
        #expect(h.machine.nextDeadline() == h.now + .seconds(1))
    }

    @Test("Paranoid Pirate: silence past liveness disconnects; reconnect after the backoff, which doubles and resets")
    func reconnectBackoff() {
        var h = WorkerHarness.running([])
        #expect(h.advance(.milliseconds(3000)).contains(.connect) == false)
        let lost = h.advance(.milliseconds(1))
        #expect(lost.contains(.disconnect) && !h.machine.isConnected)
        #expect(h.advance(.milliseconds(999)).isEmpty)
        let back = h.advance(.milliseconds(1))
        #expect(back.first == .connect)
        #expect(sent(back).first.map { if case .ready = $0 { true } else { false } } == true)
        // Silent again: this time the backoff is 2 s.
        _ = h.advance(.milliseconds(3001))
        #expect(!h.machine.isConnected && h.machine.currentReconnectDelay == .seconds(4))
        #expect(h.advance(.milliseconds(1999)).isEmpty)
        #expect(h.advance(.milliseconds(1)).first == .connect)
        // A frame resets the backoff.
        _ = h.receive(.heartbeat(Heartbeat()))
        #expect(h.machine.currentReconnectDelay == .seconds(1))
    }

    @Test("Replay: after a reconnect READY lists held shards, unacknowledged batches and transfers go again from 0")
    func replayAfterReconnect() {
        var h = WorkerHarness.running([wref(0)])
        _ = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 3, points: points(4), blobs: [WSM.Blob(kind: .result, step: 10, bytes: Array(0..<6), sha256: sha)])))
        _ = h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 0)))
        _ = h.receive(.ack(Ack(ref: wref(0), kind: .chunk, sequence: 1, offset: 4)))
        _ = h.advance(.milliseconds(3001))  // lost
        // Output while disconnected is kept, not sent.
        let offline = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 5, points: points(1), outcome: .done(summary: []))))
        #expect(sent(offline).isEmpty)
        let back = h.advance(.seconds(1))
        #expect(back.first == .connect)
        #expect(sent(back).first == .ready(Ready(workerName: "w1", host: "h1", slots: 2, capabilities: ["rl/noop"], running: [wref(0)])))
        #expect(metricBatches(back).map(\.sequence) == [1, 2], "batch 0 was acknowledged; 1 and 2 are replayed")
        #expect(chunks(back).map(\.offset) == [0], "the transfer restarts from 0; its last chunk waits for batch 1, emitted before it")
        #expect(finals(back).isEmpty)
        #expect(chunks(h.receive(.ack(Ack(ref: wref(0), kind: .metrics, sequence: 1)))).map(\.offset) == [4])
    }

    @Test("ERROR notReady: READY again on the same connection and replay; DISCONNECT: reconnect after the backoff")
    func reRegister() {
        var h = WorkerHarness.running([wref(0)])
        _ = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, points: points(1))))
        let a = h.receive(.error(ErrorMessage(code: WireStatus.notReady, message: "register first")))
        #expect(!a.contains(.connect))
        #expect(sent(a).first.map { if case .ready = $0 { true } else { false } } == true)
        #expect(metricBatches(a).map(\.sequence) == [0])
        let d = h.receive(.disconnect(Disconnect(reason: "unknown worker")))
        #expect(d.contains(.disconnect) && !h.machine.isConnected)
        #expect(h.advance(.seconds(1)).first == .connect)
    }

    @Test("No re-registration storm: the notReady answers to what was in flight before a READY ask for no second READY")
    func oneReadyPerOutage() {
        var h = WorkerHarness.running([wref(0)])
        _ = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 1, points: points(1))))
        // The coordinator restarted: every message in flight (heartbeat, metrics, ...) comes back as notReady.
        let notReady = Message.error(ErrorMessage(code: WireStatus.notReady, message: "unknown worker: send READY"))
        let first = h.receive(notReady)
        #expect(sent(first).filter { if case .ready = $0 { true } else { false } }.count == 1)
        for _ in 0..<20 {
            #expect(sent(h.receive(notReady)).isEmpty, "answers to messages sent before the READY: covered by it")
        }
        #expect(h.machine.ignoredNotReady == 20)
        // The coordinator took the READY (its HEARTBEAT): a later notReady (it forgot us again) asks for a new one.
        _ = h.receive(.heartbeat(Heartbeat()))
        let again = h.receive(notReady)
        #expect(sent(again).filter { if case .ready = $0 { true } else { false } }.count == 1)
        // And if no sign ever comes, a notReady a liveness period later asks again (it restarted once more).
        _ = h.advance(.milliseconds(2900))
        #expect(sent(h.receive(notReady)).isEmpty)
        _ = h.advance(.milliseconds(200))
        #expect(sent(h.receive(notReady)).contains { if case .ready = $0 { true } else { false } })
    }

    @Test("FETCH and REQUEST: sent with fresh ids, replies delivered to the asking shard, re-asked after a reconnect")
    func fetchesAndRequests() {
        var h = WorkerHarness.running([wref(0), wref(1)])
        var ask = WSM.ComputeOutput(step: 0)
        ask.fetch = WSM.BlobRead(sha256: sha, offset: 0, length: 1024)
        let a = h.feed(.computed(wref(1), ask))
        #expect(sent(a) == [.fetch(Fetch(requestID: 1, sha256: sha, offset: 0, length: 1024))])
        var req = WSM.ComputeOutput(step: 0)
        req.request = WSM.PendingRequest(method: "blob.info", body: [1])
        #expect(sent(h.feed(.computed(wref(0), req))) == [.request(ClientRequest(requestID: 2, method: "blob.info", body: [1]))])
        let reply = FetchReply(requestID: 1, sha256: sha, offset: 0, totalSize: 3, data: [1, 2, 3])
        #expect(h.receive(.fetchReply(reply)) == [.deliverFetch(wref(1), reply)])
        #expect(h.receive(.fetchReply(reply)) == [], "a reply is delivered once")
        // The request is still open across a reconnect: it is asked again.
        _ = h.advance(.milliseconds(3001))
        let back = h.advance(.seconds(1))
        #expect(sent(back).contains(.request(ClientRequest(requestID: 2, method: "blob.info", body: [1]))))
        let r = ClientReply(requestID: 2, status: 0, body: [])
        #expect(h.receive(.reply(r)) == [.deliverReply(wref(0), r)])
    }

    @Test("Drain: credits 0 at once, new DISPATCH refused, shards stopped at the deadline, DISCONNECT once all are acknowledged")
    func drain() {
        var h = WorkerHarness.running([wref(0)], configure: {
            $0.drainTimeout = .seconds(5)
            $0.liveness = 100
        })
        let a = h.feed(.drainRequested)
        #expect(sent(a) == [.heartbeat(Heartbeat(credits: 0, progress: [ShardProgress(ref: wref(0), step: 0, total: 10)]))])
        #expect(
            h.receive(.dispatch(dispatch(wref(1))))
                == [.send(.shardFailed(ShardFailed(ref: wref(1), reason: "worker draining", retryable: true)))])
        _ = h.receive(.heartbeat(Heartbeat()))
        let deadline = h.advance(.seconds(5))
        #expect(deadline.contains(.stopShard(wref(0), reason: "worker drained")))
        #expect(!h.machine.hasExited)
        _ = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 2, outcome: .failed(reason: "worker drained", failure: .infrastructure))))
        let end = h.receive(.ack(Ack(ref: wref(0), kind: .failed)))
        #expect(end.suffix(2) == [.send(.disconnect(Disconnect(reason: "drained"))), .exit])
        #expect(h.machine.hasExited)
        #expect(h.feed(.tick).isEmpty, "nothing happens after exit")
    }

    @Test("Drain: with nothing running the worker exits at once; with a stuck shard it exits after the grace period")
    func drainBounds() {
        var idle = WorkerHarness.running([])
        #expect(idle.feed(.drainRequested).suffix(2) == [.send(.disconnect(Disconnect(reason: "drained"))), .exit])
        var stuck = WorkerHarness.running([wref(0)], configure: {
            $0.drainTimeout = .seconds(2)
            $0.drainGrace = .seconds(3)
            $0.liveness = 100
        })
        _ = stuck.feed(.drainRequested)
        #expect(!stuck.advance(.milliseconds(4999)).contains(.exit))
        #expect(stuck.advance(.milliseconds(1)).contains(.exit))
    }

    @Test("Stop: exits at once")
    func stop() {
        var h = WorkerHarness.running([wref(0)])
        #expect(h.feed(.stopRequested) == [.exit])
        #expect(h.machine.hasExited)
    }
}
