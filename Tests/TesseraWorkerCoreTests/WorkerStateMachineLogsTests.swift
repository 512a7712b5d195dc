// LOGS (protocol/SPEC.md §5, §6.4): a shard attempt's log lines, batched, windowed, bounded, acknowledged and
// replayed like metrics, fenced like every shard message, and never a reason for a shard's computation to wait.

import TesseraModel
import TesseraProtocol
import TesseraWorkerCore
import Testing

func logBatches(_ actions: [WSM.Action]) -> [LogBatch] {
    sent(actions).compactMap { if case .logs(let b) = $0 { b } else { nil } }
}

func lines(_ texts: [String]) -> [LogLine] { texts.map { LogLine(time: 1, level: .info, message: $0) } }

/// Logs on, and every line due at once (the tests of batching, bounds and fencing do not wait for the flush delay).
func withLogs(_ c: inout WSM.Configuration) {
    c.shardLogs = true
    c.logsFlushDelay = .zero
}

func logAck(_ ref: ShardRef, _ sequence: UInt64, accepted: Bool = true) -> Message {
    .ack(Ack(ref: ref, kind: .logs, sequence: sequence, accepted: accepted))
}

@Suite("Worker state machine: shard logs (SPEC §5 LOGS, §6.4)")
struct WorkerStateMachineLogsTests {
    @Test("LOGS: the lease line and the computation's lines go in batches from sequence 0; DONE follows them unacknowledged")
    func batchesAndDone() throws {
        var h = WorkerHarness(configure: withLogs)
        _ = h.feed(.start)
        _ = h.machine.handle(.received(.dispatch(dispatch(wref(0)))), now: h.now, wallTime: 1234.5)
        var out = WSM.ComputeOutput(step: 1)
        out.logs = lines(["resumed", "phase 2"])
        let first = logBatches(h.feed(.computed(wref(0), out)))
        #expect(first.map(\.sequence) == [0])
        let b0 = try #require(first.first)
        #expect(b0.ref == wref(0))
        #expect(b0.lines.count == 3)
        #expect(b0.lines[0].message == "leased by w1: attempt 1 of rl/noop, from step 0 of 10")
        #expect(b0.lines[0].time == 1234.5 && b0.lines[0].level == .info)
        #expect(Array(b0.lines[1...]) == lines(["resumed", "phase 2"]))

        let done = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 10, outcome: .done(summary: Array("{}".utf8)))))
        let b1 = logBatches(done)
        #expect(b1.map(\.sequence) == [1])
        #expect(b1.first?.lines.map(\.message) == ["computation finished at step 10; sending its outputs"])
        // DONE goes at once, after the LOGS on the same connection (the coordinator stores them no later than it).
        #expect(finals(done) == [.shardDone(ShardDone(ref: wref(0), summary: Array("{}".utf8)))])
        let order = sent(done).map { if case .logs = $0 { "logs" } else if case .shardDone = $0 { "done" } else { "other" } }
        #expect(order.filter { $0 != "other" } == ["logs", "done"])
        // Lost before their ACKs: after a reconnect the unacknowledged LOGS go again, then the DONE.
        _ = h.advance(.seconds(3.5))
        let replay = h.advance(.seconds(1))
        let kinds = sent(replay).map { if case .logs(let b) = $0 { "logs \(b.sequence)" } else if case .shardDone = $0 { "done" } else { "other" } }
        #expect(kinds.filter { $0 != "other" } == ["logs 0", "logs 1", "done"], "\(kinds)")
    }

    @Test("Lines wait up to the flush delay to fill a batch: a short shard's lease and end lines go in one LOGS")
    func flushDelay() throws {
        var h = WorkerHarness(configure: { $0.shardLogs = true; $0.logsFlushDelay = .milliseconds(500) })
        _ = h.feed(.start)
        let lease = h.machine.handle(.received(.dispatch(dispatch(wref(0)))), now: h.now, wallTime: 1)
        #expect(logBatches(lease).isEmpty)  // the lease line waits
        let done = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 10, outcome: .done(summary: []))))
        let batches = logBatches(done)
        #expect(batches.count == 1 && batches[0].lines.count == 2, "\(batches)")
        #expect(finals(done) == [.shardDone(ShardDone(ref: wref(0), summary: []))])

        // A running shard's line goes once it waited the delay (at a tick), not before.
        _ = h.machine.handle(.received(.dispatch(dispatch(wref(1)))), now: h.now, wallTime: 2)
        #expect(logBatches(h.advance(.milliseconds(300))).isEmpty)
        let late = logBatches(h.advance(.milliseconds(300)))
        #expect(late.count == 1 && late[0].ref == wref(1) && late[0].lines.count == 1)
    }

    @Test("DONE waits only while log lines cannot be sent (the window is full), not for ACKs")
    func doneWaitsForAFullWindowOnly() throws {
        var h = WorkerHarness(configure: { withLogs(&$0); $0.logsWindow = 1; $0.logsBatchSize = 2 })
        _ = h.feed(.start)
        _ = h.machine.handle(.received(.dispatch(dispatch(wref(0)))), now: h.now, wallTime: 1)
        var out = WSM.ComputeOutput(step: 10, outcome: .done(summary: []))
        out.logs = lines(["a", "b", "c"])
        let done = h.feed(.computed(wref(0), out))
        #expect(logBatches(done).map(\.sequence) == [0])
        #expect(finals(done).isEmpty)  // lines are still waiting behind the window
        let next = h.receive(logAck(wref(0), 0))
        #expect(logBatches(next).map(\.sequence) == [1])
        #expect(finals(next).isEmpty)
        let last = h.receive(logAck(wref(0), 1))
        #expect(logBatches(last).map(\.sequence) == [2])
        #expect(finals(last) == [.shardDone(ShardDone(ref: wref(0), summary: []))])
    }

    @Test("LOGS bounds: at most `logsWindow` batches in flight; past `logsHeld` lines are dropped, counted, then announced; compute never waits")
    func windowAndBound() {
        var h = WorkerHarness.running([wref(0)]) {
            $0.shardLogs = true
            $0.logsBatchSize = 2
            $0.logsWindow = 2
            $0.logsHeld = 6
            $0.logsFlushDelay = .zero
        }
        var out = WSM.ComputeOutput(step: 1)
        out.logs = lines((1...10).map { "l\($0)" })
        var all: [LogBatch] = logBatches(h.feed(.computed(wref(0), out)))
        #expect(all.map(\.sequence) == [0, 1])  // the window
        #expect(h.machine.logLinesDropped == 5)  // lease + l1…l5 held, l6…l10 dropped
        #expect(h.machine.acceptsMetrics(wref(0)))  // logs never hold a shard back
        all += logBatches(h.receive(logAck(wref(0), 0)))
        #expect(all.map(\.sequence) == [0, 1, 2])
        all += logBatches(h.receive(logAck(wref(0), 1)))
        all += logBatches(h.receive(logAck(wref(0), 2)))
        #expect(all.map(\.sequence) == [0, 1, 2, 3])
        let messages = all.flatMap(\.lines).map(\.message)
        #expect(Array(messages.dropFirst().prefix(5)) == ["l1", "l2", "l3", "l4", "l5"])
        #expect(messages.last == "5 log lines dropped (the worker's log buffer for this shard was full)")
        #expect(all.flatMap(\.lines).last?.level == .warning)
        #expect(all.allSatisfy { $0.lines.count <= 2 })
    }

    @Test("LOGS fencing: a refused LOGS ACK stops the shard; its output is dropped and nothing final is sent")
    func fenced() {
        var h = WorkerHarness.running([wref(0)], configure: withLogs)
        var out = WSM.ComputeOutput(step: 1)
        out.logs = lines(["a"])
        #expect(logBatches(h.feed(.computed(wref(0), out))).count == 1)
        let refused = h.receive(logAck(wref(0), 0, accepted: false))
        #expect(refused.contains(.stopShard(wref(0), reason: "fenced: attempt superseded")))
        let end = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 2, outcome: .failed(reason: "stopped", failure: .infrastructure))))
        #expect(finals(end).isEmpty)
        #expect(logBatches(end).isEmpty)
        #expect(end.contains(.forget(wref(0))))
    }

    @Test("LOGS replay: after a reconnect the unacknowledged batches go again with their sequence; a CANCEL drops them")
    func replayAndCancel() {
        var h = WorkerHarness.running([wref(0)], configure: withLogs)
        var out = WSM.ComputeOutput(step: 1)
        out.logs = lines(["a", "b"])
        let before = logBatches(h.feed(.computed(wref(0), out)))
        #expect(before.map(\.sequence) == [0])
        // The coordinator falls silent: reconnect after the backoff, READY, then the same batch again.
        _ = h.advance(.seconds(3.5))
        let again = logBatches(h.advance(.seconds(1)))
        #expect(again == before)
        // A CANCEL voids the attempt's output: SHARD_FAILED goes without waiting for the log's ACK.
        _ = h.receive(.cancel(Cancel(ref: wref(0), reason: "job cancelled")))
        let end = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 2, outcome: .failed(reason: "stopped", failure: .infrastructure))))
        #expect(finals(end) == [.shardFailed(ShardFailed(ref: wref(0), reason: "cancelled: job cancelled", failure: .infrastructure))])
        #expect(logBatches(end).isEmpty)
    }

    @Test("LOGS to a coordinator that predates them: ERROR unknownType drops the held lines, DONE does not wait; the next connection offers logs again")
    func oldCoordinator() {
        var h = WorkerHarness.running([wref(0)], configure: withLogs)
        var out = WSM.ComputeOutput(step: 1)
        out.logs = lines(["a"])
        #expect(logBatches(h.feed(.computed(wref(0), out))).count == 1)
        _ = h.receive(.error(ErrorMessage(code: ProtocolError.Code.unknownType.wireCode, message: "unknown message type 0x25")))
        #expect(!h.machine.coordinatorTakesLogs)
        let done = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 10, outcome: .done(summary: []))))
        #expect(logBatches(done).isEmpty)
        #expect(finals(done) == [.shardDone(ShardDone(ref: wref(0), summary: []))])
        #expect(h.machine.logLinesDropped == 3)  // the lease line and "a" held, then the "finished" line
        _ = h.advance(.seconds(3.5))
        _ = h.advance(.seconds(1))
        #expect(h.machine.coordinatorTakesLogs)
    }

    @Test("No shard log: a worker configured without it sends no LOGS and its DONE waits for nothing")
    func disabled() {
        var h = WorkerHarness.running([wref(0)]) { $0.shardLogs = false }
        var out = WSM.ComputeOutput(step: 1)
        out.logs = lines(["a"])
        #expect(logBatches(h.feed(.computed(wref(0), out))).isEmpty)
        let done = h.feed(.computed(wref(0), WSM.ComputeOutput(step: 10, outcome: .done(summary: []))))
        #expect(finals(done) == [.shardDone(ShardDone(ref: wref(0), summary: []))])
    }
}
