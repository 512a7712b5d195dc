// The typed form of the plug-in (docs/extending.md): an algorithm states its validated params (`Config`), its shard
// slice and its shard summary as Swift types, and the untyped `Algorithm` requirements, which the coordinator and the
// worker call, are implemented once here. Each slice and summary is encoded once where it is made and decoded once
// where it is read, with the TesseraJSON Codable bridge, so no algorithm digs values out of JSON by hand, and the
// params are read and checked in one place (`configure`), once per job on a worker (`prepare`).
//
// The JSON stays what it is: a type's `encode(to:)` fixes its keys and their order, so the stored and dispatched
// slices and summaries are byte for byte those the hand-written code produced.

import Synchronization

/// What a typed shard's `run` returns: its summary and optional exact binary result.
public struct TypedShardOutput<Summary: Sendable>: Sendable {
    public var summary: Summary
    public var result: [UInt8]?

    public init(summary: Summary, result: [UInt8]? = nil) {
        self.summary = summary
        self.result = result
    }
}

/// One planned shard with its typed slice (see `ShardSlice`).
public struct TypedShardSlice<Slice: Sendable>: Sendable {
    public var slice: Slice
    public var totalSteps: Int64
    public var dependsOn: [Int]

    public init(_ slice: Slice, totalSteps: Int64, dependsOn: [Int] = []) {
        self.slice = slice
        self.totalSteps = totalSteps
        self.dependsOn = dependsOn
    }
}

/// A `ShardReducer` fed decoded summaries (see `ShardReducer` for the order and memory contract).
public protocol TypedShardReducer<Summary> {
    associatedtype Summary
    /// Adds the next shard's summary and result blob.
    mutating func add(_ summary: Summary, result: [UInt8]?) throws
    /// The job result, once every shard was added.
    func finish() throws -> JSONValue
}

/// An `Algorithm` with typed params, slices and summaries.
public protocol TypedAlgorithm: Algorithm {
    /// The validated `spec.params` (and whatever else of the spec the algorithm needs), built once per job.
    associatedtype Config: Sendable
    /// One shard's slice. Its JSON is stored as JSONB and sent in DISPATCH; it must not use the key `depends_on`.
    associatedtype Slice: Codable & Sendable & Hashable
    /// One shard's summary, stored as JSONB, shown by `status`, read by the reducer and by dependent shards.
    associatedtype Summary: Codable & Sendable
    associatedtype Reducer: TypedShardReducer<Summary>

    /// Reads and validates `spec.params`; errors are `SpecError`s at the key's line (`spec.paramsReader`).
    func configure(_ spec: JobSpec) throws -> Config
    /// Plans the shards of a configured job.
    func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<Slice>]
    /// Runs one shard on the calling (compute) thread. `task.slice` is the JSON form of `slice`.
    func run(_ slice: Slice, config: Config, task: ShardTask, sink: any ShardSink) throws -> TypedShardOutput<Summary>
    /// A reducer for the shard summaries (and result blobs) of a configured job.
    func makeReducer(_ spec: JobSpec, config: Config) throws -> Reducer
}

/// The codecs of the typed layer and its error wording, shared by every typed algorithm.
public enum TypedCoding {
    /// Encodes a slice or summary; a type whose encoding fails is a bug in the algorithm, not bad input.
    public static func encode(_ value: some Encodable, _ what: String) throws -> JSONValue {
        do { return try JSONValueEncoder().encode(value) } catch {
            throw ShardError("\(what): cannot encode: \(JSONValueDecoder.message(for: error))")
        }
    }

    /// Decodes `value` as `T`; a failure is a `ShardError` that says what was read and names the field
    /// ("slice: start: expected a whole number, found \"a\"").
    public static func decode<T: Decodable>(_ type: T.Type, from value: JSONValue, _ what: String) throws -> T {
        let decoded: T
        do { decoded = try JSONValueDecoder().decode(T.self, from: value) } catch {
            throw ShardError("\(what): \(JSONValueDecoder.message(for: error))")
        }
        return decoded
    }

    /// Decodes `value` as `T` and refuses keys of `value` that `T` does not use: a slice or summary with a key its
    /// type does not know was written by another version or by hand, and would otherwise be ignored in silence.
    public static func decodeExactly<T: Codable>(_ type: T.Type, from value: JSONValue, _ what: String) throws -> T {
        let decoded = try decode(T.self, from: value, what)
        if case .object(let given) = value, case .object(let used) = try encode(decoded, what) {
            for (key, v) in given.pairs where used[key] == nil && !v.isNull {
                throw ShardError("\(what): unknown key '\(key)' in \(value.render())")
            }
        }
        return decoded
    }
}

extension TypedAlgorithm {
    public func plan(_ spec: JobSpec) throws -> [ShardSlice] {
        try plan(spec, config: try configure(spec)).map {
            ShardSlice(slice: try TypedCoding.encode($0.slice, "slice"), totalSteps: $0.totalSteps, dependsOn: $0.dependsOn)
        }
    }

    public func run(_ task: ShardTask, sink: any ShardSink) throws -> ShardOutput {
        try run(task, config: try configure(task.spec), sink: sink)
    }

    /// `run` with the job's config already built: decodes the slice, runs, encodes the summary.
    func run(_ task: ShardTask, config: Config, sink: any ShardSink) throws -> ShardOutput {
        let slice: Slice
        do { slice = try TypedCoding.decodeExactly(Slice.self, from: task.slice, "slice") } catch let e as ShardError {
            throw ShardError(e.message, permanent: true)  // the same slice is dispatched on every attempt
        }
        let output = try run(slice, config: config, task: task, sink: sink)
        return ShardOutput(summary: try TypedCoding.encode(output.summary, "summary"), result: output.result)
    }

    public func makeReducer(_ spec: JobSpec) throws -> any ShardReducer {
        DecodingReducer<Self>(reducer: try makeReducer(spec, config: try configure(spec)))
    }

    public func prepare(_ spec: JobSpec) throws -> any PreparedAlgorithm {
        PreparedTypedAlgorithm(algorithm: self, config: try configure(spec))
    }

    /// The summary of a shard this one depends on, decoded.
    public func summary(of input: ShardInput) throws -> Summary {
        try TypedCoding.decode(Summary.self, from: input.summary, "the summary of input shard \(input.shardIndex)")
    }
}

/// Decodes each stored summary once and hands it to the typed reducer.
private struct DecodingReducer<A: TypedAlgorithm>: ShardReducer {
    var reducer: A.Reducer
    private var shards = 0

    init(reducer: A.Reducer) { self.reducer = reducer }

    mutating func add(_ output: ShardOutput) throws {
        let summary = try TypedCoding.decode(A.Summary.self, from: output.summary, "shard \(shards)'s summary")
        try reducer.add(summary, result: output.result)
        shards += 1
    }

    func finish() throws -> JSONValue { try reducer.finish() }
}

// MARK: - Preparing once per job

/// An algorithm configured for one job: what a worker runs that job's shards with, however many it gets.
public protocol PreparedAlgorithm: Sendable {
    /// Runs one shard of the job the algorithm was prepared for (`task.spec` is that job's spec).
    func run(_ task: ShardTask, sink: any ShardSink) throws -> ShardOutput
}

extension Algorithm {
    /// An untyped algorithm reads its params in `run`: prepared, it is just itself.
    public func prepare(_ spec: JobSpec) throws -> any PreparedAlgorithm { UnpreparedAlgorithm(algorithm: self) }
}

private struct UnpreparedAlgorithm: PreparedAlgorithm {
    let algorithm: any Algorithm
    func run(_ task: ShardTask, sink: any ShardSink) throws -> ShardOutput { try algorithm.run(task, sink: sink) }
}

private struct PreparedTypedAlgorithm<A: TypedAlgorithm>: PreparedAlgorithm {
    let algorithm: A
    let config: A.Config
    func run(_ task: ShardTask, sink: any ShardSink) throws -> ShardOutput {
        try algorithm.run(task, config: config, sink: sink)
    }
}

/// The jobs a worker has prepared lately, keyed by the stored spec's bytes (its canonical JSON, as DISPATCH carries
/// it): the spec is parsed, resolved and configured once per job rather than once per shard. Bounded, because a
/// worker meets an unbounded number of jobs over its life; the oldest entry goes first.
final class PreparedJobs: Sendable {
    private struct Entry {
        var spec: JobSpec
        var algorithm: any PreparedAlgorithm
    }
    private let entries = Mutex<[(key: [UInt8], entry: Entry)]>([])
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func prepared(_ stored: [UInt8], make: () throws -> (JobSpec, any PreparedAlgorithm)) throws
        -> (JobSpec, any PreparedAlgorithm)
    {
        if let hit = entries.withLock({ list in list.first(where: { $0.key == stored })?.entry }) {
            return (hit.spec, hit.algorithm)
        }
        // Configured outside the lock (it can take a while); two shards of a new job may both configure it, once each.
        let (spec, algorithm) = try make()
        entries.withLock { list in
            if !list.contains(where: { $0.key == stored }) {
                list.append((stored, Entry(spec: spec, algorithm: algorithm)))
                if list.count > capacity { list.removeFirst(list.count - capacity) }
            }
        }
        return (spec, algorithm)
    }
}
