// `noop`: a shard that does (almost) nothing, for benchmarks of the job system itself and for tests of its data
// paths. It exists under every kind (`sampling/noop`, `rl/noop`, `preference/noop`), so a cluster's plumbing can be
// exercised with the capability set a real job of that kind needs.
//
// params (all optional):
//   sleep_ms      0     milliseconds the shard waits before finishing (checking for cancellation every 10 ms)
//   metrics       0     metric points the shard emits: `noop/value` at steps 1...metrics, value = step + index/1e6
//   result_bytes  0     size of the shard's result blob (at most 64 MiB, the blob limit): byte k of shard i is (k + 31 i) mod 251, verified by merge
//   rounds        1     R: the S shards form R rounds of W = S / R (R must divide S); every shard of round r > 0 depends on
//                       every shard of round r − 1 (ShardSlice.dependsOn), so it runs only once they all succeeded
// Slice: {"index": i}. Summary: {"index": i, "metrics": n, "result_bytes": b}. Merged result:
// {"shards": S, "metric_points": total, "result_bytes": total, "results_verified": S}.
// With rounds > 1 each shard also checks its inputs (the shards of the previous round, in order, their result bytes
// when result_bytes > 0) and its summary adds "round": r and "value": 1 + the sum of its inputs' values (1 in round 0),
// so every shard of round r has value v(r) = 1 + W·v(r − 1). The merged result adds "rounds": R and "round_values":
// [v(0), …, v(R − 1)], the value all shards of a round agree on (the merge fails if they do not). With rounds = 1
// plan, summaries and result are those of a noop without the key.

import TesseraCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct Noop: TypedAlgorithm {
    public let kind: JobKind
    public var name: String { "noop" }
    public var summary: String { "does nothing: a benchmark and test shard (sleep, metric points, result bytes)" }

    public init(kind: JobKind) { self.kind = kind }

    public struct Params: Equatable, Sendable {
        var sleepMilliseconds: Int
        var metrics: Int
        var resultBytes: Int
        var rounds: Int
        /// Shards per round.
        var width: Int

        init(_ spec: JobSpec) throws {
            let p = spec.paramsReader
            try p.rejectUnknown(["sleep_ms", "metrics", "result_bytes", "rounds"])
            sleepMilliseconds = try p.int("sleep_ms", default: 0, range: 0...3_600_000)
            metrics = try p.int("metrics", default: 0, range: 0...10_000_000)
            // A result travels as one blob, and blobs are capped at 64 MiB (protocol/SPEC.md §3): a larger one could
            // never be stored, and the shard would be handed back forever.
            resultBytes = try p.int("result_bytes", default: 0, range: 0...(64 << 20))
            rounds = try p.int("rounds", default: 1, range: 1...max(1, spec.shards))
            guard spec.shards % rounds == 0 else {
                throw p.error("rounds", "\(rounds) rounds do not divide the job's \(spec.shards) shards")
            }
            width = spec.shards / rounds
        }

        func round(of index: Int) -> Int { index / width }

        /// The shards shard `index` depends on: every shard of the round before its own.
        func dependencies(of index: Int) -> [Int] {
            let r = round(of: index)
            return r == 0 ? [] : Array((r - 1) * width..<r * width)
        }
    }

    /// `{"index": i}`.
    public struct Slice: Codable, Sendable, Hashable {
        public var index: Int
    }

    /// `{"index", "metrics", "result_bytes"}`, plus `"round"` and `"value"` when the job has rounds.
    public struct Summary: Codable, Sendable, Equatable {
        public var index: Int
        public var metrics: Int
        public var resultBytes: Int
        public var round: Int?
        public var value: Double?

        enum CodingKeys: String, CodingKey {
            case index, metrics, resultBytes = "result_bytes", round, value
        }
    }

    public func configure(_ spec: JobSpec) throws -> Params { try Params(spec) }

    public func plan(_ spec: JobSpec, config params: Params) throws -> [TypedShardSlice<Slice>] {
        (0..<spec.shards).map {
            TypedShardSlice(
                Slice(index: $0), totalSteps: Int64(max(params.metrics, 1)), dependsOn: params.dependencies(of: $0))
        }
    }

    /// Byte `k` of shard `index`'s result.
    static func resultByte(index: Int, at k: Int) -> UInt8 { UInt8((k + 31 * index) % 251) }

    public func run(_ slice: Slice, config params: Params, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<Summary>
    {
        let index = slice.index
        // Checked before any work, so a shard given the wrong inputs fails at once.
        let value = try value(index: index, inputs: task.inputs, params: params)
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
        let rounds = params.rounds > 1
        return TypedShardOutput(
            summary: Summary(
                index: index, metrics: params.metrics, resultBytes: params.resultBytes,
                round: rounds ? params.round(of: index) : nil, value: rounds ? value : nil),
            result: result)
    }

    /// Shard `index`'s value: 1 + the sum of its inputs' values, in input order, after checking that the inputs are
    /// exactly the previous round's shards, in order, each with its documented result bytes.
    func value(index: Int, inputs: [ShardInput], params: Params) throws -> Double {
        let expected = params.dependencies(of: index)
        guard inputs.map(\.shardIndex) == expected else {
            throw ShardError("noop: shard \(index) got the inputs of shards \(inputs.map(\.shardIndex)), expected \(expected)")
        }
        var value = 1.0
        for input in inputs {
            let j = input.shardIndex
            let summary = try summary(of: input)
            guard summary.index == j, let v = summary.value else {
                throw ShardError("noop: shard \(index)'s input \(j) has no index and value: \(input.summary.render())")
            }
            if params.resultBytes > 0 {
                guard let bytes = input.result, bytes.count == params.resultBytes,
                    bytes.indices.allSatisfy({ bytes[$0] == Self.resultByte(index: j, at: $0) })
                else { throw ShardError("noop: shard \(index)'s input \(j) does not carry shard \(j)'s result bytes") }
            } else if input.result != nil {
                throw ShardError("noop: shard \(index)'s input \(j) has a result, but result_bytes is 0")
            }
            value += v
        }
        return value
    }

    public func makeReducer(_ spec: JobSpec, config params: Params) throws -> Reducer { Reducer(params: params) }

    /// Verifies each shard's summary and result bytes as they come, keeping only counts and one value per round.
    public struct Reducer: TypedShardReducer {
        let params: Params
        var shards = 0
        var roundValues: [Double] = []

        public mutating func add(_ summary: Summary, result: [UInt8]?) throws {
            let i = shards
            guard summary.index == i else {
                throw ShardError("noop: shard \(i)'s summary names shard \(summary.index)")
            }
            if params.rounds > 1 {
                let r = params.round(of: i)
                guard summary.round == r, let v = summary.value else {
                    throw ShardError("noop: shard \(i)'s summary lacks round \(r) and its value")
                }
                if r == roundValues.count {
                    roundValues.append(v)
                } else if roundValues[r] != v {
                    throw ShardError("noop: shard \(i) has value \(v), another shard of round \(r) has \(roundValues[r])")
                }
            }
            if params.resultBytes > 0 {
                guard let bytes = result, bytes.count == params.resultBytes else {
                    throw ShardError("noop: shard \(i)'s result has \(result?.count ?? 0) bytes, expected \(params.resultBytes)")
                }
                for k in 0..<bytes.count where bytes[k] != Noop.resultByte(index: i, at: k) {
                    throw ShardError("noop: shard \(i)'s result differs at byte \(k)")
                }
            }
            shards += 1
        }

        public func finish() throws -> JSONValue {
            var merged: JSONObject = [
                "shards": .int(shards), "metric_points": .int(shards * params.metrics),
                "result_bytes": .int(shards * params.resultBytes), "results_verified": .int(shards),
            ]
            if params.rounds > 1 {
                merged["rounds"] = .int(params.rounds)
                merged["round_values"] = .array(roundValues.map { .number($0) })
            }
            return .object(merged)
        }
    }
}
