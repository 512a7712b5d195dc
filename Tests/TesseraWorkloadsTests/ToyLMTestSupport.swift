// Shared fixtures of the toy-LM, RLOO and DPO tests: a recording `ShardSink` and whole-shard runs in one process.

import Foundation
import Synchronization
import TesseraCompute
import TesseraCore
import TesseraWorkloads

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

    /// Runs every shard and merges.
    static func runJob(_ spec: JobSpec) throws -> (result: JSONValue, outputs: [ShardOutput]) {
        let algorithm = try Workloads.catalogue.resolve(spec)
        let count = try algorithm.plan(spec).count
        let outputs = try (0..<count).map { try runShard(spec, index: $0).output! }
        return (try algorithm.merge(spec, outputs: outputs), outputs)
    }
}
