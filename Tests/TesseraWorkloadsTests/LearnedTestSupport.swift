import Crypto
import Foundation
import TesseraCore
import TesseraWorkloads

/// A `ShardSink` in memory: records metrics, progress and blobs; serves `fetchJobBlob` from a dictionary of other
/// jobs' checkpoints; `stopAfterCheckpoint` makes `shouldStop` true once a checkpoint of that step was stored.
final class MemorySink: ShardSink, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var metrics: [String: Double] = [:]  // "name@step"
    private(set) var blobs: [(kind: ShardBlobKind, step: Int64, bytes: [UInt8])] = []
    private(set) var lastProgress: Int64 = 0
    var jobCheckpoints: [Int64: [(step: Int64, bytes: [UInt8])]] = [:]
    var stopAfterCheckpoint: Int64?
    private var stopped = false

    func metric(_ name: String, step: Int64, value: Double) {
        lock.withLock { metrics["\(name)@\(step)"] = value }
    }

    func progress(step: Int64) { lock.withLock { lastProgress = step } }

    func blob(_ kind: ShardBlobKind, step: Int64, bytes: [UInt8]) throws {
        lock.withLock {
            blobs.append((kind, step, bytes))
            if kind == .checkpoint, step == stopAfterCheckpoint { stopped = true }
        }
    }

    var shouldStop: Bool { lock.withLock { stopped } }

    func fetchBlob(sha256: String) throws -> [UInt8] { throw ShardError("no blob store in tests") }

    func fetchJobBlob(jobID: Int64, shard: Int, kind: ShardBlobKind, step: Int64?) throws -> (step: Int64, sha256: String, bytes: [UInt8]) {
        guard kind == .checkpoint, shard == 0, let list = jobCheckpoints[jobID], !list.isEmpty else {
            throw ShardError("job \(jobID) has no checkpoint")
        }
        let hit: (step: Int64, bytes: [UInt8])
        if let step {
            guard let h = list.first(where: { $0.step == step }) else { throw ShardError("no checkpoint at \(step)") }
            hit = h
        } else {
            hit = list.max(by: { $0.step < $1.step })!
        }
        // As the worker does: the digest the store names the blob by.
        let sha = SHA256.hash(data: hit.bytes).map { String(format: "%02x", $0) }.joined()
        return (hit.step, sha, hit.bytes)
    }

    var checkpoints: [(step: Int64, bytes: [UInt8])] { blobs.filter { $0.kind == .checkpoint }.map { ($0.step, $0.bytes) } }
}

enum LearnedFixtures {
    /// Four modes on a circle of radius 2, s = 0.5, unequal weights: a target small enough to learn in a debug-build
    /// test, with weights a sampler must get right (a weight-blind sampler gives 0.25 each).
    static let fourModeTarget = """
        {type: gmm, means: [[2, 0], [0, 2], [-2, 0], [0, -2]], stds: [0.5, 0.5, 0.5, 0.5], weights: [0.4, 0.3, 0.2, 0.1]}
        """

    static let ringTarget = """
        {type: gmm, means: [[2,0],[1.414,1.414],[0,2],[-1.414,1.414],[-2,0],[-1.414,-1.414],[0,-2],[1.414,-1.414]], stds: [0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2]}
        """

    static func trainSpec(
        target: String = fourModeTarget, steps: Int, batch: Int, hidden: String, lr: Double, lrMin: Double,
        evalSamples: Int, evalEvery: Int = 500, logEvery: Int = 10, checkpointEvery: Int? = nil, seed: Int = 11
    ) throws -> JobSpec {
        try JobSpec.parse(
            """
            name: train
            kind: sampling
            algorithm: ddpm-train
            seed: \(seed)
            \(checkpointEvery.map { "checkpoint_every: \($0)" } ?? "")
            params:
              target: \(target)
              network: {hidden: \(hidden)}
              steps: \(steps)
              batch: \(batch)
              lr: \(lr)
              lr_min: \(lrMin)
              eval_samples: \(evalSamples)
              eval_every: \(evalEvery)
              log_every: \(logEvery)
            """, file: "train.yaml")
    }

    static func sampleSpec(
        target: String = fourModeTarget, fromJob: Int, samples: Int, shards: Int = 1, algorithm: String = "ddim",
        steps: Int = 50
    ) throws -> JobSpec {
        try JobSpec.parse(
            """
            name: learned
            kind: sampling
            algorithm: \(algorithm)
            seed: 7
            shards: \(shards)
            depends_on: [\(fromJob)]
            params:
              target: \(target)
              sampling_steps: \(steps)
              samples: \(samples)
              model: {from_job: \(fromJob)}
            """, file: "sample.yaml")
    }

    /// Runs a spec's every shard with `sink` and merges.
    static func runJob(_ spec: JobSpec, sink: MemorySink) throws -> JSONValue {
        let (algorithm, slices) = try Workloads.catalogue.validate(spec)
        let outputs = try slices.enumerated().map { i, s in
            try algorithm.run(
                ShardTask(spec: spec, shardIndex: i, attempt: 1, slice: s.slice, totalSteps: s.totalSteps, resume: nil),
                sink: sink)
        }
        return try algorithm.merge(spec, outputs: outputs)
    }
}
