// How an algorithm plugs in (ARCHITECTURE.md §How an algorithm plugs in).
//
// Every algorithm of every kind is one `Algorithm` value:
//  - `plan` (coordinator, pure): spec → shard slices; errors point at the spec's line.
//  - `run` (worker, compute thread): slice + optional checkpoint → metrics, checkpoints, a shard output.
//    Given the same slice and checkpoint it produces the same bytes.
//  - `makeReducer` (coordinator, pure, no BLAS): a `ShardReducer` that is fed the shard outputs one at a time in
//    shard order and then finishes into the job result, identical whatever the shard count. It keeps only what the
//    result needs, so a merge holds one shard result plus the reducer's state, whatever the shard count.
// The coordinator and worker never need to know which kind they run. Algorithms implement these through
// `TypedAlgorithm` (TypedAlgorithm.swift, docs/extending.md), which gives slices and summaries Swift types.

/// One shard's slice of the work, as planned.
// The domain vocabulary (JobState, ShardState, ShardRef, …) lives in TesseraModel; every TesseraCore user sees it.
@_exported import TesseraModel

public struct ShardSlice: Sendable, Hashable {
    /// Algorithm-defined description (sample range, sweep point, …), stored as JSONB and sent with the dispatch.
    public var slice: JSONValue
    /// Progress denominator (sampling steps, training steps, …).
    public var totalSteps: Int64
    /// Indices of earlier shards of the same job this shard waits on: it is leased only once every one of them has
    /// succeeded, and its task receives their outputs (`ShardTask.inputs`, in this order). Each index is below the
    /// shard's own and appears once, so the dependencies of a plan can never form a cycle.
    public var dependsOn: [Int]

    public init(slice: JSONValue, totalSteps: Int64, dependsOn: [Int] = []) {
        self.slice = slice
        self.totalSteps = totalSteps
        self.dependsOn = dependsOn
    }

    /// The key of the stored (and dispatched) slice object that carries `dependsOn` (protocol/SPEC.md §11.2). Reserved:
    /// an algorithm's own slice must not use it.
    public static let dependsOnKey = "depends_on"

    /// The slice as stored and sent in DISPATCH: the algorithm's slice, plus `"depends_on": [indices]` when the shard
    /// has dependencies (so the wire layout stays as it is, and shards without dependencies are unchanged).
    public var stored: JSONValue {
        guard !dependsOn.isEmpty, case .object(var o) = slice else { return slice }
        o[Self.dependsOnKey] = .array(dependsOn.map { .int($0) })
        return .object(o)
    }

    /// The inverse of `stored`: the algorithm's slice and the dependencies a stored slice names. A `depends_on` that
    /// is not an array of non-negative integers is an error.
    public init(stored: JSONValue, totalSteps: Int64) throws {
        guard case .object(var o) = stored, let deps = o[Self.dependsOnKey] else {
            self.init(slice: stored, totalSteps: totalSteps)
            return
        }
        o[Self.dependsOnKey] = nil
        guard let list = deps.arrayValue else {
            throw ShardError("slice: depends_on is not an array: \(deps.render())", permanent: true)
        }
        var indices: [Int] = []
        for d in list {
            guard let i = d.intValue, i >= 0 else {
                throw ShardError("slice: depends_on holds \(d.render()), not a shard index", permanent: true)
            }
            indices.append(i)
        }
        self.init(slice: .object(o), totalSteps: totalSteps, dependsOn: indices)
    }

    /// Why shard `index` of a plan cannot be stored, or nil: its dependencies must be earlier shards of the job, each
    /// named once, and a shard with dependencies needs an object slice without the reserved key.
    public func planError(index: Int) -> String? {
        if slice.objectValue?[Self.dependsOnKey] != nil {
            return "the slice of shard \(index) uses the reserved key '\(Self.dependsOnKey)'"
        }
        guard !dependsOn.isEmpty else { return nil }
        guard slice.objectValue != nil else {
            return "shard \(index) has dependencies but its slice is not an object: \(slice.render())"
        }
        var seen = Set<Int>()
        for d in dependsOn {
            guard d >= 0, d < index else {
                return "shard \(index) depends on shard \(d), which is not an earlier shard of the job (0..<\(index))"
            }
            guard seen.insert(d).inserted else { return "shard \(index) depends on shard \(d) twice" }
        }
        return nil
    }
}

/// The output of a shard this one depends on, as its task receives it.
public struct ShardInput: Sendable, Hashable {
    /// The dependency's shard index (one of the slice's `dependsOn`).
    public var shardIndex: Int
    /// Its stored summary.
    public var summary: JSONValue
    /// Its result blob's bytes, when it has one.
    public var result: [UInt8]?

    public init(shardIndex: Int, summary: JSONValue, result: [UInt8]?) {
        self.shardIndex = shardIndex
        self.summary = summary
        self.result = result
    }
}

/// What a worker gives an algorithm to run one shard attempt.
public struct ShardTask: Sendable {
    public var spec: JobSpec
    public var shardIndex: Int
    public var attempt: Int
    public var slice: JSONValue
    public var totalSteps: Int64
    /// The checkpoint to resume from (its bytes), if the shard has one.
    public var resume: (step: Int64, bytes: [UInt8])?
    /// The outputs of the shards this one depends on (`ShardSlice.dependsOn`), in that order; empty without
    /// dependencies.
    public var inputs: [ShardInput]

    public init(
        spec: JobSpec, shardIndex: Int, attempt: Int, slice: JSONValue, totalSteps: Int64,
        resume: (step: Int64, bytes: [UInt8])?, inputs: [ShardInput] = []
    ) {
        self.spec = spec
        self.shardIndex = shardIndex
        self.attempt = attempt
        self.slice = slice
        self.totalSteps = totalSteps
        self.resume = resume
        self.inputs = inputs
    }
}

/// Kinds of blobs a shard can emit while it runs.
public enum ShardBlobKind: String, Sendable {
    case checkpoint, samples
}

/// The worker side of a running shard: where metrics, progress and blobs go. Calls block only as long as it takes
/// to hand data to the worker's bounded outbox (back-pressure), never on the network.
public protocol ShardSink: AnyObject, Sendable {
    func metric(_ name: String, step: Int64, value: Double)
    func progress(step: Int64)
    /// Stores a blob durably (streamed to the coordinator); returns once the worker has it queued.
    func blob(_ kind: ShardBlobKind, step: Int64, bytes: [UInt8]) throws
    /// True once the shard should stop (cancelled, drained, or fenced).
    var shouldStop: Bool { get }
    /// Reads a stored blob by SHA-256 (e.g. a model trained by another job).
    func fetchBlob(sha256: String) throws -> [UInt8]
    /// Reads another job's stored blob: `kind` "checkpoint" or "samples" of `shard`, at `step` or the newest, with its
    /// SHA-256 (already verified against the bytes). This is how a sampler uses a network trained by the job it
    /// `depends_on` (`params.model.from_job`).
    func fetchJobBlob(jobID: Int64, shard: Int, kind: ShardBlobKind, step: Int64?) throws -> (step: Int64, sha256: String, bytes: [UInt8])
    /// A line of the shard attempt's log, stored by the coordinator and shown by `tessera logs`: for milestones
    /// (resumed from a checkpoint, a phase begins, an evaluation), not for every step. Never blocks; lines written
    /// faster than the worker forwards them are dropped and counted. Default: discarded.
    func log(_ message: String, level: ShardLogLevel)
}

/// How severe a shard log line is (a subset of swift-log's levels, which the wire carries).
public enum ShardLogLevel: String, Sendable, CaseIterable {
    case debug, info, notice, warning, error
}

extension ShardSink {
    public func log(_ message: String, level: ShardLogLevel) {}
    /// A milestone at level `info`.
    public func log(_ message: String) { log(message, level: .info) }
}

/// A shard's final output: a small JSON summary (stored as JSONB, shown by `status`) and an optional exact binary
/// result (stored in the content-addressed store) that the algorithm's `ShardReducer` reads.
public struct ShardOutput: Sendable, Hashable {
    public var summary: JSONValue
    public var result: [UInt8]?

    public init(summary: JSONValue, result: [UInt8]?) {
        self.summary = summary
        self.result = result
    }
}

/// Thrown by `run` when `shouldStop` became true; the worker reports the shard as handed back, not failed.
public struct ShardStopped: Error, Sendable {
    public init() {}
}

/// A shard's own, non-infrastructure error (bad numerics, invalid input discovered late). Consumes an attempt.
/// `permanent`: no retry can fix it (the slice does not decode, an input the spec names does not exist); the worker
/// reports it as such (SPEC §5 SHARD_FAILED `failure = 2`) and the job fails at once instead of spending its
/// remaining attempts. A `SpecError` thrown while a shard runs is permanent too (the spec is the same on every try).
public struct ShardError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var permanent: Bool
    public init(_ message: String, permanent: Bool = false) {
        self.message = message
        self.permanent = permanent
    }
    public var description: String { message }
}

public protocol Algorithm: Sendable {
    var kind: JobKind { get }
    /// Stable snake/kebab-case name, e.g. "ddim".
    var name: String { get }
    /// One-line description for `--help` and docs.
    var summary: String { get }
    /// Validates `spec.params` (errors via `spec.paramsReader`, which carry lines) and plans the shards.
    func plan(_ spec: JobSpec) throws -> [ShardSlice]
    /// Runs one shard on the calling (compute) thread.
    func run(_ task: ShardTask, sink: any ShardSink) throws -> ShardOutput
    /// A reducer for the shard outputs of a job with this spec (see `ShardReducer`).
    func makeReducer(_ spec: JobSpec) throws -> any ShardReducer
    /// The algorithm configured for one job, to run its shards without reading the params again. A
    /// `TypedAlgorithm` configures here; any other algorithm is returned as it is (its `run` reads the params).
    func prepare(_ spec: JobSpec) throws -> any PreparedAlgorithm
    /// Other jobs whose outputs this job reads (each also in `depends_on`), with what they must be. The coordinator
    /// checks them against the stored jobs at submit, so a reference to a missing job, or to a job that cannot have
    /// the output, is refused then rather than failing every shard later. Default: none.
    func jobInputs(_ spec: JobSpec) throws -> [JobInput]
}

extension Algorithm {
    public func jobInputs(_ spec: JobSpec) throws -> [JobInput] { [] }
}

/// A job a spec reads the output of (`params.model.from_job`), as `Algorithm.jobInputs` declares it.
public struct JobInput: Sendable, Equatable {
    public var jobID: Int64
    /// The spec's key path that names it, for the error ("params.model.from_job").
    public var path: String
    /// The capabilities ("kind/algorithm") the referenced job may have, e.g. ["sampling/ddpm-train"].
    public var algorithms: [String]

    public init(jobID: Int64, path: String, algorithms: [String]) {
        self.jobID = jobID
        self.path = path
        self.algorithms = algorithms
    }
}

/// Turns a job's shard outputs into its result, one output at a time. The coordinator calls `add` once per shard in
/// shard-index order (the k-th call gets shard k - 1), drops each output when `add` returns, and calls `finish` once
/// after the last. A reducer keeps only what the result needs (running sums, a bounded set of partial results, small
/// summaries), never the result blobs, so a merge needs memory for one shard result plus the reducer's state.
public protocol ShardReducer {
    /// Adds the next shard's output; throws when it is malformed or does not fit the shards before it.
    mutating func add(_ output: ShardOutput) throws
    /// The job result, once every shard's output was added; throws when shards are missing.
    func finish() throws -> JSONValue
}

extension Algorithm {
    /// Feeds `outputs` (in shard-index order) through a fresh reducer: for tests and local tools that already hold
    /// every output. The coordinator streams them from the blob store instead (`Merger`).
    public func merge(_ spec: JobSpec, outputs: some Sequence<ShardOutput>) throws -> JSONValue {
        var reducer = try makeReducer(spec)
        for output in outputs { try reducer.add(output) }
        return try reducer.finish()
    }
}

/// A reducer for algorithms whose result comes from the shard summaries alone (small values): it keeps the
/// summaries in shard order, ignores result blobs, and hands the summaries to `merge` at the end. Typed
/// (`TypedShardReducer`) for a `TypedAlgorithm`'s summaries; with `Summary == JSONValue`, a `ShardReducer` for any
/// other algorithm.
public struct SummaryReducer<Summary>: TypedShardReducer {
    private var summaries: [Summary] = []
    private let merge: ([Summary]) throws -> JSONValue

    public init(_ merge: @escaping ([Summary]) throws -> JSONValue) {
        self.merge = merge
    }

    public mutating func add(_ summary: Summary, result: [UInt8]?) throws { summaries.append(summary) }

    public func finish() throws -> JSONValue { try merge(summaries) }
}

extension SummaryReducer: ShardReducer where Summary == JSONValue {
    public mutating func add(_ output: ShardOutput) throws { summaries.append(output.summary) }
}

/// The set of algorithms a process knows.
public struct AlgorithmCatalogue: Sendable {
    public let algorithms: [any Algorithm]
    /// Jobs whose shards this process ran lately, configured (`prepared(storedSpec:)`).
    private let preparedJobs = PreparedJobs(capacity: 64)

    public init(_ algorithms: [any Algorithm]) {
        self.algorithms = algorithms
    }

    /// The spec a DISPATCH carries (its stored, canonical JSON), parsed, and its algorithm prepared for the job:
    /// done once per job, then reused for every further shard of it.
    ///
    /// A job that brings files (`files:`) gets their contents from `loadFile` first (a worker fetches them from the
    /// coordinator by sha256), once per job like the rest.
    public func prepared(
        storedSpec: [UInt8], loadFile: (JobFile) throws -> [UInt8] = { f in throw ShardError("files.\(f.name): no way to load job files here", permanent: true) },
        sha256: ([UInt8]) -> String = { _ in "" }
    ) throws -> (JobSpec, any PreparedAlgorithm) {
        try preparedJobs.prepared(storedSpec) {
            var spec = try JobSpec.fromStored(storedSpec)
            if !spec.files.isEmpty { spec = try spec.loadingFiles(loadFile, sha256: sha256) }
            guard let found = find(kind: spec.kind, name: spec.algorithm) else {
                throw ShardError("this worker cannot run \(spec.kind.rawValue)/\(spec.algorithm)")
            }
            let algorithm: any Algorithm = spec.sweep.isEmpty ? found : SweptAlgorithm(found)
            return (spec, try algorithm.prepare(spec))
        }
    }

    public func find(kind: JobKind, name: String) -> (any Algorithm)? {
        algorithms.first { $0.kind == kind && $0.name == name }
    }

    /// Capability names advertised by workers: "kind/name".
    public var capabilities: [String] { algorithms.map { "\($0.kind.rawValue)/\($0.name)" } }

    /// Resolves a spec's algorithm or throws a located error listing what exists. A spec with a sweep gets the
    /// algorithm wrapped to run once per point (`SweptAlgorithm`).
    public func resolve(_ spec: JobSpec) throws -> any Algorithm {
        if let a = find(kind: spec.kind, name: spec.algorithm) { return spec.sweep.isEmpty ? a : SweptAlgorithm(a) }
        let known = algorithms.filter { $0.kind == spec.kind }.map(\.name)
        throw spec.source.error(
            "algorithm",
            "unknown \(spec.kind.rawValue) algorithm '\(spec.algorithm)'; known: \(known.isEmpty ? "none yet" : known.joined(separator: ", "))"
        )
    }

    /// Parses, resolves and plans: everything `tessera submit` checks before storing anything.
    public func validate(_ spec: JobSpec) throws -> (any Algorithm, [ShardSlice]) {
        let algorithm = try resolve(spec)
        let slices = try algorithm.plan(spec)
        guard !slices.isEmpty else { throw spec.source.error("shards", "the plan produced no shards") }
        for (i, slice) in slices.enumerated() {
            if let problem = slice.planError(index: i) {
                throw spec.source.error("shards", "\(spec.kind.rawValue)/\(spec.algorithm) planned an invalid job: \(problem)")
            }
        }
        return (algorithm, slices)
    }
}

