// The typed plug-in layer (TypedAlgorithm.swift): the untyped requirements configure once per call and encode and
// decode once at the boundary, and a worker's catalogue configures a job once however many of its shards it runs.

import Synchronization
import TesseraCore
import Testing

/// Counts `configure` calls, so the tests can see how often the params are read.
private final class Counter: Sendable {
    let value = Mutex(0)
    func increment() { value.withLock { $0 += 1 } }
    var count: Int { value.withLock { $0 } }
}

private struct Counted: TypedAlgorithm {
    let configures: Counter
    var kind: JobKind { .rl }
    var name: String { "counted" }
    var summary: String { "counts configure calls" }

    struct Slice: Codable, Sendable, Hashable {
        var first: Int
        var count: Int
    }

    struct Summary: Codable, Sendable {
        var first: Int
        var total: Int
    }

    func configure(_ spec: JobSpec) throws -> Int {
        configures.increment()
        return try spec.paramsReader.int("size", range: 1...1000)
    }

    func plan(_ spec: JobSpec, config size: Int) throws -> [TypedShardSlice<Slice>] {
        (0..<spec.shards).map { TypedShardSlice(Slice(first: $0 * size, count: size), totalSteps: 1) }
    }

    func run(_ slice: Slice, config: Int, task: ShardTask, sink: any ShardSink) throws -> TypedShardOutput<Summary> {
        TypedShardOutput(summary: Summary(first: slice.first, total: (slice.first..<slice.first + slice.count).reduce(0, +)))
    }

    func makeReducer(_ spec: JobSpec, config: Int) throws -> SummaryReducer<Summary> {
        SummaryReducer { summaries in .int(summaries.map(\.total).reduce(0, +)) }
    }
}

/// A sink that drops everything (shared by this target's tests).
final class NullSink: ShardSink, Sendable {
    func metric(_ name: String, step: Int64, value: Double) {}
    func progress(step: Int64) {}
    func blob(_ kind: ShardBlobKind, step: Int64, bytes: [UInt8]) throws {}
    var shouldStop: Bool { false }
    func fetchBlob(sha256: String) throws -> [UInt8] { throw ShardError("no blobs") }
    func fetchJobBlob(jobID: Int64, shard: Int, kind: ShardBlobKind, step: Int64?) throws
        -> (step: Int64, sha256: String, bytes: [UInt8])
    { throw ShardError("no blobs") }
}

@Suite struct TypedAlgorithmTests {
    static func spec(size: Int, shards: Int = 3) throws -> JobSpec {
        try JobSpec.parse(
            "name: c\nkind: rl\nalgorithm: counted\nseed: 1\nshards: \(shards)\nparams: {size: \(size)}\n", file: "c.yaml")
    }

    @Test func aWorkerConfiguresEachJobOnce() throws {
        let counter = Counter()
        let catalogue = AlgorithmCatalogue([Counted(configures: counter)])
        let spec = try Self.spec(size: 4)
        let (_, slices) = try catalogue.validate(spec)
        #expect(counter.count == 1)  // the plan configured once
        #expect(slices.map(\.slice) == (0..<3).map { .object(["first": .int(4 * $0), "count": .int(4)]) })

        var outputs: [ShardOutput] = []
        for (i, slice) in slices.enumerated() {
            let (parsed, prepared) = try catalogue.prepared(storedSpec: spec.json.utf8Bytes)
            #expect(parsed == spec)
            outputs.append(
                try prepared.run(
                    ShardTask(spec: parsed, shardIndex: i, attempt: 1, slice: slice.slice, totalSteps: 1, resume: nil),
                    sink: NullSink()))
        }
        #expect(counter.count == 2)  // three shards, one configure
        #expect(outputs[1].summary == .object(["first": .int(4), "total": .int(4 + 5 + 6 + 7)]))

        // Another job is configured on its own; the first stays prepared.
        _ = try catalogue.prepared(storedSpec: try Self.spec(size: 2).json.utf8Bytes)
        _ = try catalogue.prepared(storedSpec: spec.json.utf8Bytes)
        #expect(counter.count == 3)

        // The untyped entry points configure once per call and decode each summary once.
        #expect(try Counted(configures: counter).merge(spec, outputs: outputs) == .int((0..<12).reduce(0, +)))
        #expect(counter.count == 4)
    }

    @Test func aSpecThatFailsToConfigureIsNotKept() throws {
        let counter = Counter()
        let catalogue = AlgorithmCatalogue([Counted(configures: counter)])
        let bad = try Self.spec(size: 0).json.utf8Bytes
        for _ in 0..<2 { #expect(throws: SpecError.self) { try catalogue.prepared(storedSpec: bad) } }
        #expect(counter.count == 2)
        #expect(throws: ShardError.self) {
            try AlgorithmCatalogue([]).prepared(storedSpec: try Self.spec(size: 1).json.utf8Bytes)
        }
    }

    @Test func malformedSliceAndSummaryNameTheField() throws {
        let counted = Counted(configures: Counter())
        let spec = try Self.spec(size: 4)
        let task = ShardTask(
            spec: spec, shardIndex: 0, attempt: 1, slice: .object(["first": .bool(true), "count": .int(1)]), totalSteps: 1,
            resume: nil)
        #expect {
            try counted.run(task, sink: NullSink())
        } throws: { ($0 as? ShardError)?.message == "slice: first: expected a whole number, found true" }
        var reducer = try counted.makeReducer(spec)
        #expect {
            try reducer.add(ShardOutput(summary: .object(["first": .int(0)]), result: nil))
        } throws: { ($0 as? ShardError)?.message == "shard 0's summary: total: missing" }
    }
}
