// `noop`: a shard that does (almost) nothing, for benchmarks of the job system itself and for tests of its data
// paths. It exists under every kind (`sampling/noop`, `rl/noop`, `preference/noop`), so a cluster's plumbing can be
// exercised with the capability set a real job of that kind needs.
//
// params (all optional):
//   sleep_ms      0     milliseconds the shard waits before finishing (checking for cancellation every 10 ms)
//   metrics       0     metric points the shard emits: `noop/value` at steps 1...metrics, value = step + index/1e6
//   result_bytes  0     size of the shard's result blob (at most 64 MiB, the blob limit): byte k of shard i is (k + 31 i) mod 251, verified by merge
// Slice: {"index": i}. Summary: {"index": i, "metrics": n, "result_bytes": b}. Merged result:
// {"shards": S, "metric_points": total, "result_bytes": total, "results_verified": S}.

import TesseraCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct Noop: Algorithm {
    public let kind: JobKind
    public var name: String { "noop" }
    public var summary: String { "does nothing: a benchmark and test shard (sleep, metric points, result bytes)" }

    public init(kind: JobKind) { self.kind = kind }

    struct Params: Equatable {
        var sleepMilliseconds: Int
        var metrics: Int
        var resultBytes: Int

        init(_ spec: JobSpec) throws {
            let p = spec.paramsReader
            try p.rejectUnknown(["sleep_ms", "metrics", "result_bytes"])
            sleepMilliseconds = try p.int("sleep_ms", default: 0, range: 0...3_600_000)
            metrics = try p.int("metrics", default: 0, range: 0...10_000_000)
            // A result travels as one blob, and blobs are capped at 64 MiB (protocol/SPEC.md §3): a larger one could
            // never be stored, and the shard would be handed back forever.
            resultBytes = try p.int("result_bytes", default: 0, range: 0...(64 << 20))
        }
    }

    public func plan(_ spec: JobSpec) throws -> [ShardSlice] {
        let params = try Params(spec)
        return (0..<spec.shards).map {
            ShardSlice(slice: .object(["index": .int($0)]), totalSteps: Int64(max(params.metrics, 1)))
        }
    }

    /// Byte `k` of shard `index`'s result.
    static func resultByte(index: Int, at k: Int) -> UInt8 { UInt8((k + 31 * index) % 251) }

    public func run(_ task: ShardTask, sink: any ShardSink) throws -> ShardOutput {
        let params = try Params(task.spec)
        let index = task.slice.objectValue?["index"]?.intValue ?? task.shardIndex
        for step in 0..<params.metrics {
            if step % 4096 == 0, sink.shouldStop { throw ShardStopped() }
            sink.metric("noop/value", step: Int64(step + 1), value: Double(step + 1) + Double(index) / 1e6)
        }
        var slept = 0
        while slept < params.sleepMilliseconds {
            if sink.shouldStop { throw ShardStopped() }
            let chunk = min(10, params.sleepMilliseconds - slept)
            usleep(UInt32(chunk * 1000))
            slept += chunk
        }
        sink.progress(step: Int64(max(params.metrics, 1)))
        let result: [UInt8]? =
            params.resultBytes > 0 ? (0..<params.resultBytes).map { Self.resultByte(index: index, at: $0) } : nil
        return ShardOutput(
            summary: .object([
                "index": .int(index), "metrics": .int(params.metrics), "result_bytes": .int(params.resultBytes),
            ]),
            result: result)
    }

    public func makeReducer(_ spec: JobSpec) throws -> any ShardReducer { Reducer(params: try Params(spec)) }

    /// Verifies each shard's summary and result bytes as they come, keeping only counts.
    struct Reducer: ShardReducer {
        let params: Params
        var shards = 0

        mutating func add(_ output: ShardOutput) throws {
            let i = shards
            guard output.summary.objectValue?["index"]?.intValue == i else {
                throw ShardError("noop: shard \(i)'s summary names another index: \(output.summary.render())")
            }
            if params.resultBytes > 0 {
                guard let bytes = output.result, bytes.count == params.resultBytes else {
                    throw ShardError("noop: shard \(i)'s result has \(output.result?.count ?? 0) bytes, expected \(params.resultBytes)")
                }
                for k in 0..<bytes.count where bytes[k] != Noop.resultByte(index: i, at: k) {
                    throw ShardError("noop: shard \(i)'s result differs at byte \(k)")
                }
            }
            shards += 1
        }

        func finish() throws -> JSONValue {
            .object([
                "shards": .int(shards), "metric_points": .int(shards * params.metrics),
                "result_bytes": .int(shards * params.resultBytes), "results_verified": .int(shards),
            ])
        }
    }
}
