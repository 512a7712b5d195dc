// Shared fixtures of the toy-LM, RLOO and DPO tests: a recording `ShardSink` and whole-shard runs in one process.

import Foundation
import Synchronization
import TesseraCompute
import TesseraCore
import TesseraWorkloads
import Testing

/// A `ShardSink` that records everything a shard emits, and can ask the shard to stop once it reports a step.
final class RecordingSink: ShardSink, @unchecked Sendable {
    // @unchecked: every field is behind `lock`; a shard runs on one thread.
    struct Row: Equatable {
        var name: String
        var step: Int64
        var value: Double
    }

    private let lock = NSLock()
    private var _rows: [Row] = []
    private var _blobs: [(kind: ShardBlobKind, step: Int64, bytes: [UInt8])] = []
    private var _progress: Int64 = 0
    let stopAfter: Int64?

    init(stopAfter: Int64? = nil) { self.stopAfter = stopAfter }

    var rows: [Row] { lock.withLock { _rows } }
    var checkpoints: [(step: Int64, bytes: [UInt8])] {
        lock.withLock { _blobs.filter { $0.kind == .checkpoint }.map { ($0.step, $0.bytes) } }
    }
    var progressStep: Int64 { lock.withLock { _progress } }

    /// The last value of a metric (by step).
    func last(_ name: String) -> Double? { rows.filter { $0.name == name }.max { $0.step < $1.step }?.value }

    func metric(_ name: String, step: Int64, value: Double) {
        lock.withLock { _rows.append(Row(name: name, step: step, value: value)) }
    }
    func progress(step: Int64) { lock.withLock { _progress = max(_progress, step) } }
    func blob(_ kind: ShardBlobKind, step: Int64, bytes: [UInt8]) throws {
        lock.withLock { _blobs.append((kind, step, bytes)) }
    }
    var shouldStop: Bool { lock.withLock { stopAfter.map { _progress >= $0 } ?? false } }
    func fetchBlob(sha256: String) throws -> [UInt8] { throw ShardError("no blobs in unit tests") }
    func fetchJobBlob(jobID: Int64, shard: Int, kind: ShardBlobKind, step: Int64?) throws -> (
        step: Int64, sha256: String, bytes: [UInt8]
    ) { throw ShardError("no blobs in unit tests") }
}

enum ToyLMFixtures {
    static func spec(_ yaml: String, file: String = "test.yaml") throws -> JobSpec {
        try JobSpec.parse(yaml, file: file)
    }

    /// Plans a job and runs shard `index` to completion (or to `stopAfter`), optionally from a checkpoint.
    static func runShard(
        _ spec: JobSpec, index: Int = 0, resume: (step: Int64, bytes: [UInt8])? = nil, stopAfter: Int64? = nil
    ) throws -> (output: ShardOutput?, sink: RecordingSink) {
        let algorithm = try Workloads.catalogue.resolve(spec)
        let slices = try algorithm.plan(spec)
        let sink = RecordingSink(stopAfter: stopAfter)
        let task = ShardTask(
            spec: spec, shardIndex: index, attempt: 1, slice: slices[index].slice, totalSteps: slices[index].totalSteps,
            resume: resume)
        do {
            return (try algorithm.run(task, sink: sink), sink)
        } catch is ShardStopped {
            return (nil, sink)
        }
    }

    /// Plans `spec` and runs every shard in index order (dependencies first), each task given the outputs of the
    /// shards it depends on, as a worker receives them; a run of consecutive shards with the same dependencies (a
    /// round's rollouts, data shards) runs last first, since nothing may depend on their order. Returns the outputs and every sink.
    static func runWithDependencies(_ spec: JobSpec) throws -> (outputs: [ShardOutput], sinks: [RecordingSink], slices: [ShardSlice]) {
        let algorithm = try Workloads.catalogue.resolve(spec)
        let slices = try algorithm.plan(spec)
        var outputs = [ShardOutput?](repeating: nil, count: slices.count)
        var sinks = [RecordingSink?](repeating: nil, count: slices.count)
        // Reverse the order inside each run of independent rollouts (same dependencies, consecutive indices).
        var order: [Int] = []
        var i = 0
        while i < slices.count {
            var j = i
            while j + 1 < slices.count, slices[j + 1].dependsOn == slices[i].dependsOn { j += 1 }
            order += (i...j).reversed()
            i = j + 1
        }
        for index in order {
            let inputs = try slices[index].dependsOn.map { d in
                let o = try #require(outputs[d], "shard \(index) runs after its dependency \(d)")
                return ShardInput(shardIndex: d, summary: o.summary, result: o.result)
            }
            let sink = RecordingSink()
            let task = ShardTask(
                spec: spec, shardIndex: index, attempt: 1, slice: slices[index].slice, totalSteps: slices[index].totalSteps,
                resume: nil, inputs: inputs)
            outputs[index] = try algorithm.run(task, sink: sink)
            sinks[index] = sink
        }
        return (outputs.map { $0! }, sinks.map { $0! }, slices)
    }

    /// Runs every shard and merges.
    static func runJob(_ spec: JobSpec) throws -> (result: JSONValue, outputs: [ShardOutput]) {
        let algorithm = try Workloads.catalogue.resolve(spec)
        let count = try algorithm.plan(spec).count
        let outputs = try (0..<count).map { try runShard(spec, index: $0).output! }
        return (try algorithm.merge(spec, outputs: outputs), outputs)
    }
}

extension ToyLMFixtures {
    /// The error `Workloads.catalogue.validate` reports for a job spec, or nil if it validates.
    static func validationError(_ yaml: String, file: String) -> String? {
        do {
            _ = try Workloads.catalogue.validate(try JobSpec.parse(yaml, file: file))
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// An example spec of examples/, validated: its algorithm's name and its shard count.
    static func example(_ name: String) throws -> (algorithm: String, shards: Int) {
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { root.deleteLastPathComponent() }
        let path = root.appendingPathComponent("examples/\(name)").path
        let (algorithm, slices) = try Workloads.catalogue.validate(
            try JobSpec.parse(String(contentsOfFile: path, encoding: .utf8), file: path))
        return (algorithm.name, slices.count)
    }

    /// Runs a 150-step shard that checkpoints every 40 steps three ways -- uninterrupted, stopped after step 100,
    /// resumed from the stopped run's last checkpoint (step 80) -- and checks that the three agree bit for bit: the
    /// checkpoints, the metric rows and the summary. Returns the uninterrupted run and the resume checkpoint.
    static func expectBitwiseResume(
        _ spec: JobSpec, sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> (full: RecordingSink, resumeFrom: (step: Int64, bytes: [UInt8])) {
        let (fullOutput, full) = try runShard(spec)
        #expect(full.checkpoints.map(\.step) == [40, 80, 120, 150], sourceLocation: sourceLocation)
        let (stoppedOutput, stopped) = try runShard(spec, stopAfter: 100)
        #expect(stoppedOutput == nil, "the shard stops between steps", sourceLocation: sourceLocation)
        #expect(stopped.rows == full.rows.filter { $0.step <= 100 }, sourceLocation: sourceLocation)
        let resumeFrom = try #require(stopped.checkpoints.last, sourceLocation: sourceLocation)
        #expect(resumeFrom.step == 80 && resumeFrom.bytes == full.checkpoints[1].bytes, sourceLocation: sourceLocation)
        let (resumedOutput, resumed) = try runShard(spec, resume: resumeFrom)
        #expect(resumedOutput == fullOutput, sourceLocation: sourceLocation)
        #expect(
            resumed.checkpoints.map(\.bytes) == Array(full.checkpoints.suffix(2).map(\.bytes)),
            sourceLocation: sourceLocation)
        #expect(
            resumed.rows == full.rows.filter { $0.step > 80 }, "rows after the checkpoint repeat exactly",
            sourceLocation: sourceLocation)
        return (full, resumeFrom)
    }
}
