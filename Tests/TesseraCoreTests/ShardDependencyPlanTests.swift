// Shard dependencies within a job (ShardSlice.dependsOn): a plan may only make a shard wait on earlier shards of the
// same job, each once, so dependencies can never form a cycle; a bad plan is a submit error naming the spec, and the
// stored slice carries the dependencies under the reserved `depends_on` key without changing anything else.

import TesseraCore
import Testing

/// An algorithm whose plan is whatever the test gives it.
private struct Planned: Algorithm {
    let slices: [ShardSlice]
    var kind: JobKind { .sampling }
    var name: String { "planned" }
    var summary: String { "test plan" }
    func plan(_ spec: JobSpec) throws -> [ShardSlice] { slices }
    func run(_ task: ShardTask, sink: any ShardSink) throws -> ShardOutput { ShardOutput(summary: .object([:]), result: nil) }
    func makeReducer(_ spec: JobSpec) throws -> any ShardReducer { SummaryReducer<JSONValue> { _ in .null } }
}

@Suite struct ShardDependencyPlanTests {
    static let spec = "name: p\nkind: sampling\nalgorithm: planned\nseed: 1\nshards: 4\n"

    static func validate(_ deps: [[Int]], slice: (Int) -> JSONValue = { .object(["i": .int($0)]) }) throws {
        let slices = deps.enumerated().map { ShardSlice(slice: slice($0), totalSteps: 1, dependsOn: $1) }
        _ = try AlgorithmCatalogue([Planned(slices: slices)]).validate(try JobSpec.parse(Self.spec, file: "p.yaml"))
    }

    @Test("Dependencies on earlier shards, in any order, are a valid plan")
    func validPlans() throws {
        try Self.validate([[], [0], [1, 0], [0, 2]])
        try Self.validate([[], [], [], []])
    }

    @Test("A forward, self, negative or repeated dependency is a submit error at the spec's shards line")
    func invalidPlans() throws {
        for (deps, words) in [
            ([[], [2], [], []], "depends on shard 2, which is not an earlier shard"),
            ([[], [1], [], []], "depends on shard 1, which is not an earlier shard"),
            ([[], [], [-1], []], "depends on shard -1"),
            ([[], [], [0, 1, 0], []], "depends on shard 0 twice"),
        ] as [([[Int]], String)] {
            let e = #expect(throws: SpecError.self) { try Self.validate(deps) }
            #expect(e?.message.contains(words) == true, "\(deps): \(e?.message ?? "no error")")
            #expect(e?.message.contains("sampling/planned planned an invalid job") == true)
            #expect(e?.line == 5, "points at `shards:`")
        }
    }

    @Test("A slice may not use the reserved key, and a shard with dependencies needs an object slice")
    func reservedKey() throws {
        let reserved = #expect(throws: SpecError.self) {
            try Self.validate([[], []], slice: { .object(["depends_on": .int($0)]) })
        }
        #expect(reserved?.message.contains("reserved key 'depends_on'") == true)
        let scalar = #expect(throws: SpecError.self) { try Self.validate([[], [0]], slice: { .int($0) }) }
        #expect(scalar?.message.contains("not an object") == true)
        // Without dependencies any slice is stored as planned.
        try Self.validate([[], []], slice: { .int($0) })
    }

    @Test("The stored slice adds depends_on only when there are dependencies, and reads back to the plan")
    func storedForm() throws {
        let plain = ShardSlice(slice: .object(["index": .int(3)]), totalSteps: 2)
        #expect(plain.stored == .object(["index": .int(3)]))
        #expect(try ShardSlice(stored: plain.stored, totalSteps: 2) == plain)

        let waiting = ShardSlice(slice: .object(["index": .int(3)]), totalSteps: 2, dependsOn: [2, 0])
        #expect(waiting.stored == .object(["index": .int(3), "depends_on": .array([.int(2), .int(0)])]))
        #expect(try ShardSlice(stored: waiting.stored, totalSteps: 2) == waiting)
        // As the worker gets it: jsonb reorders keys; the dependencies keep their order.
        let dispatched = try JSONValue.parse(Array("{\"index\": 3, \"depends_on\": [2, 0]}".utf8))
        #expect(try ShardSlice(stored: dispatched, totalSteps: 2).dependsOn == [2, 0])

        #expect(throws: ShardError.self) {
            try ShardSlice(stored: .object(["depends_on": .string("0")]), totalSteps: 1)
        }
        #expect(throws: ShardError.self) {
            try ShardSlice(stored: .object(["depends_on": .array([.number(1.5)])]), totalSteps: 1)
        }
    }
}
