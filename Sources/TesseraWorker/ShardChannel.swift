// The bridge between one compute thread and the worker's loop thread.
//
// The compute thread calls the `ShardSink` methods (metric, progress, blob, fetchBlob, shouldStop) and, before a
// shard with dependencies runs, `fetchInputs` (ShardInputs.swift); they only touch a mutex-protected outbox, so
// compute never blocks on the network. The loop thread drains the outbox on
// every iteration; anything a compute thread puts in an empty outbox wakes the loop through `wakeup`, so a shard's
// output leaves at once instead of at the next poll. Back-pressure: output the worker's state machine cannot take yet
// (the coordinator is slow or away) goes to the shard's spool (Spool.swift: memory, then a file); only when the spool
// is at its disk cap does the loop leave output here, and when the outbox holds too much, producers wait.

import Crypto
import Foundation
import Logging
import Synchronization
import TesseraCore
import TesseraProtocol
import TesseraWorkerCore
import ZeroMQ

final class ShardChannel: ShardSink, @unchecked Sendable {
    // @unchecked: every mutable field is inside `state` (a Mutex) or guarded by `condition`.

    typealias Outcome = WorkerStateMachine.Outcome

    private struct State {
        /// What the loop has not taken yet (its `step` is filled in by `drain`).
        var out = WorkerStateMachine.ComputeOutput(step: 0)
        var pendingBytes = 0
        var stopReason: String?
        var fetchReply: FetchReply?
        var reply: ClientReply?
        var step: Int64 = 0
        /// Log lines dropped because the outbox held `maxPendingLogLines` (logs never make compute wait).
        var droppedLogs = 0
    }

    private let state = Mutex(State())
    private let condition = NSCondition()
    let totalSteps: Int64
    private let wakeup: Wakeup

    /// Outbox limits before producers wait.
    static let maxPendingPoints = 200_000
    static let maxPendingBytes = 512 << 20
    static let maxPendingLogLines = 1024

    init(totalSteps: Int64, wakeup: Wakeup) {
        self.totalSteps = totalSteps
        self.wakeup = wakeup
    }

    /// Runs `change` on the outbox and wakes the loop if the outbox was empty (it has been drained since).
    private func post(_ change: (inout State) -> Void) {
        let wasEmpty = state.withLock { s -> Bool in
            let empty = s.out.isEmpty
            change(&s)
            return empty
        }
        if wasEmpty { wakeup.signal() }
    }

    // MARK: Loop side

    var step: Int64 { state.withLock { $0.step } }

    /// Takes what the compute thread posted, with its current step. Without `data` (the shard's spool is at its disk
    /// cap) the output — metric points, blobs, digests and the outcome, which must follow them — stays here and only
    /// the step and any fetch or request are taken; the compute thread waits once `maxPendingPoints` points or
    /// `maxPendingBytes` of blobs are pending.
    func drain(data: Bool = true) -> WorkerStateMachine.ComputeOutput {
        let d = state.withLock { s -> WorkerStateMachine.ComputeOutput in
            var d = s.out
            d.step = s.step
            if data {
                s.out = WorkerStateMachine.ComputeOutput(step: 0)
                s.pendingBytes = 0
            } else {
                d = WorkerStateMachine.ComputeOutput(step: s.step)
                d.fetch = s.out.fetch
                d.request = s.out.request
                d.logs = s.out.logs
                s.out.fetch = nil
                s.out.request = nil
                s.out.logs = []
            }
            if s.droppedLogs > 0 {
                d.logs.append(LogLine(time: Date().timeIntervalSince1970, level: .warning,
                    message: "\(s.droppedLogs) log lines dropped (the shard wrote faster than the worker could take them)"))
                s.droppedLogs = 0
            }
            return d
        }
        if !d.points.isEmpty || !d.blobs.isEmpty {
            condition.lock()
            condition.broadcast()
            condition.unlock()
        }
        return d
    }

    func requestStop(reason: String) {
        state.withLock { if $0.stopReason == nil { $0.stopReason = reason } }
        condition.lock()
        condition.broadcast()
        condition.unlock()
    }

    func deliverReply(_ r: ClientReply) {
        state.withLock { $0.reply = r }
        condition.lock()
        condition.broadcast()
        condition.unlock()
    }

    func deliverFetch(_ r: FetchReply) {
        state.withLock { $0.fetchReply = r }
        condition.lock()
        condition.broadcast()
        condition.unlock()
    }

    // MARK: ShardSink (compute side)

    var shouldStop: Bool { state.withLock { $0.stopReason != nil } }

    func metric(_ name: String, step: Int64, value: Double) {
        waitForRoom { $0.out.points.count < Self.maxPendingPoints }
        post { $0.out.points.append(MetricPoint(name: name, step: step, value: value)) }
    }

    /// A line of the shard's log (`tessera logs`): stamped now, handed to the loop with the next output, never waited
    /// for. Past `maxPendingLogLines` untaken lines it is dropped and counted (the count is logged instead).
    func log(_ message: String, level: ShardLogLevel) {
        let line = LogLine(time: Date().timeIntervalSince1970, level: LogLevel(level), message: LogLine.clip(message))
        post { s in
            if s.out.logs.count < Self.maxPendingLogLines { s.out.logs.append(line) } else { s.droppedLogs += 1 }
        }
    }

    func progress(step: Int64) {
        state.withLock { $0.step = max($0.step, step) }
    }

    func blob(_ kind: ShardBlobKind, step: Int64, bytes: [UInt8]) throws {
        try enqueueBlob(kind == .checkpoint ? .checkpoint : .samples, step: step, bytes: bytes)
    }

    func enqueueBlob(_ kind: BlobKind, step: Int64, bytes: [UInt8]) throws {
        waitForRoom { $0.pendingBytes < Self.maxPendingBytes }
        if shouldStop { throw ShardStopped() }
        // Handed over first and hashed after, here on the compute thread (the loop thread never spends time on it):
        // the loop sends the chunks while this thread hashes, and only the last chunk waits for the digest.
        let blob = WorkerStateMachine.Blob(kind: kind, step: step, bytes: bytes, sha256: "")
        post {
            $0.out.blobs.append(blob)
            $0.pendingBytes += bytes.count
        }
        let digest = BlobHash.sha256Hex(bytes)
        post { $0.out.digests.append(digest) }
    }

    func fetchBlob(sha256: String) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var total: UInt64?
        while total == nil || UInt64(bytes.count) < total! {
            post {
                $0.fetchReply = nil
                $0.out.fetch = WorkerStateMachine.BlobRead(sha256: sha256, offset: UInt64(bytes.count), length: 1 << 20)
            }
            let deadline = Date().addingTimeInterval(120)
            var reply: FetchReply?
            condition.lock()
            while reply == nil {
                reply = state.withLock { $0.fetchReply }
                if reply != nil || shouldStop { break }
                if !condition.wait(until: deadline) { break }
            }
            condition.unlock()
            if shouldStop { throw ShardStopped() }
            guard let r = reply else { throw FetchFailure("timed out fetching blob \(sha256)") }
            guard r.error.isEmpty else { throw FetchFailure("cannot fetch blob \(sha256): \(r.error)") }
            guard r.offset == UInt64(bytes.count) else { throw FetchFailure("fetch reply at a wrong offset") }
            total = r.totalSize
            if r.data.isEmpty && UInt64(bytes.count) < r.totalSize { throw FetchFailure("empty fetch reply") }
            bytes += r.data
        }
        guard BlobHash.sha256Hex(bytes) == sha256 else { throw FetchFailure("blob \(sha256) failed its checksum") }
        return bytes
    }

    /// Sends a REQUEST on the shard's behalf and waits (up to 120 s, like FETCH) for its REPLY. `what` names the
    /// request in the timeout error, which is an infrastructure failure (`FetchFailure`: the shard is re-queued).
    func request(_ method: String, body: JSONObject, what: String) throws -> ClientReply {
        post {
            $0.reply = nil
            $0.out.request = WorkerStateMachine.PendingRequest(method: method, body: JSONValue.object(body).utf8Bytes)
        }
        let deadline = Date().addingTimeInterval(120)
        var reply: ClientReply?
        condition.lock()
        while reply == nil {
            reply = state.withLock { $0.reply }
            if reply != nil || shouldStop { break }
            if !condition.wait(until: deadline) { break }
        }
        condition.unlock()
        if shouldStop { throw ShardStopped() }
        guard let r = reply else { throw FetchFailure("timed out asking for \(what)") }
        return r
    }

    func fetchJobBlob(jobID: Int64, shard: Int, kind: ShardBlobKind, step: Int64?) throws -> (step: Int64, sha256: String, bytes: [UInt8]) {
        var body: JSONObject = ["job": .number(Double(jobID)), "shard": .int(shard), "kind": .string(kind.rawValue)]
        if let step { body["step"] = .number(Double(step)) }
        let r = try request("blob.info", body: body, what: "job \(jobID)'s \(kind.rawValue)")
        let info = (try? JSONValue.parse(r.body)) ?? .null
        guard r.status == 0, let sha = info["sha256"]?.stringValue, let s = info["step"]?.intValue else {
            // Not retryable by waiting: the other job has no such blob.
            throw ShardError(
                "job \(jobID) shard \(shard) has no \(kind.rawValue): \(info["error"]?.stringValue ?? "status \(r.status)")",
                permanent: r.status == WireStatus.notFound)
        }
        return (Int64(s), sha, try fetchBlob(sha256: sha))  // fetchBlob verifies the bytes against sha
    }

    private func waitForRoom(_ ok: (State) -> Bool) {
        condition.lock()
        while !state.withLock({ ok($0) || $0.stopReason != nil }) {
            _ = condition.wait(until: Date().addingTimeInterval(0.5))
        }
        condition.unlock()
    }

    private func finish(_ o: Outcome) {
        post { $0.out.outcome = o }
    }

    // MARK: Running the shard (compute thread)

    func runCompute(dispatch d: Dispatch, catalogue: AlgorithmCatalogue, logger: Logger) {
        do {
            // Parsed and configured once per job, not once per shard (AlgorithmCatalogue.prepared).
            // The job's files (`files:`) are fetched by sha256 (verified) then, once per job too.
            let (spec, algorithm) = try catalogue.prepared(
                storedSpec: d.spec,
                loadFile: { f in
                    log("fetching files.\(f.name) (\(f.path), \(f.size ?? 0) bytes)", level: .info)
                    return try fetchBlob(sha256: f.sha256 ?? "")
                }, sha256: BlobHash.sha256Hex)
            var resume: (Int64, [UInt8])?
            if let r = d.resume {
                log("fetching the checkpoint of step \(r.step) (\(r.size) bytes) to resume from", level: .info)
                resume = (r.step, try fetchBlob(sha256: r.sha256))
                progress(step: r.step)
            }
            // A slice naming dependencies (`depends_on`, SPEC §11.2) gets their outputs; the algorithm sees its own
            // slice, without the reserved key.
            let slice = try ShardSlice(stored: try JSONValue.parse(d.slice), totalSteps: d.totalSteps)
            let task = ShardTask(
                spec: spec, shardIndex: Int(d.ref.shardIndex), attempt: Int(d.ref.attempt),
                slice: slice.slice, totalSteps: d.totalSteps, resume: resume,
                inputs: try fetchInputs(of: d.ref, dependsOn: slice.dependsOn)
            )
            let output = try algorithm.run(task, sink: self)
            if let result = output.result {
                log("result: \(result.count) bytes", level: .debug)
                try enqueueBlob(.result, step: d.totalSteps, bytes: result)
            }
            progress(step: d.totalSteps)
            finish(.done(summary: output.summary.utf8Bytes))
        } catch is ShardStopped {
            finish(.failed(reason: state.withLock { $0.stopReason } ?? "stopped", failure: .infrastructure))
        } catch let e as FetchFailure {
            logger.info("shard handed back", metadata: ["shard": "\(d.ref)", "error": "\(e.message)"])
            finish(.failed(reason: e.message, failure: .infrastructure))
        } catch {
            let permanent = error is SpecError || (error as? ShardError)?.permanent == true
            logger.info("shard failed", metadata: ["shard": "\(d.ref)", "error": "\(error)", "retry": "\(!permanent)"])
            finish(.failed(reason: "\(error)", failure: permanent ? .permanent : .shardError))
        }
    }
}

struct FetchFailure: Error {
    var message: String
    init(_ m: String) { message = m }
}

enum BlobHash {
    static func sha256Hex(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }
}

extension LogLevel {
    init(_ level: ShardLogLevel) {
        switch level {
        case .debug: self = .debug
        case .info: self = .info
        case .notice: self = .notice
        case .warning: self = .warning
        case .error: self = .error
        }
    }
}
