// `noop` (Noop.swift): the benchmark shard must still do exactly what its params say, and its merge must catch a
// result that did not come through intact — otherwise a benchmark could "pass" while losing data.

import TesseraCore
import TesseraWorkloads
import Testing

@Suite("noop: the benchmark and test shard")
struct NoopTests {
    static func spec(_ params: String, shards: Int = 3, kind: String = "rl") throws -> JobSpec {
        try JobSpec.parse(
            "name: n\nkind: \(kind)\nalgorithm: noop\nseed: 1\nshards: \(shards)\nparams: {\(params)}\n", file: "n.yaml")
    }

    static func run(_ spec: JobSpec, _ i: Int, inputs: [ShardInput] = []) throws -> (ShardOutput, RecordingSink) {
        let slices = try Noop(kind: spec.kind).plan(spec)
        let sink = RecordingSink()
        let task = ShardTask(
            spec: spec, shardIndex: i, attempt: 1, slice: slices[i].slice, totalSteps: slices[i].totalSteps, resume: nil,
            inputs: inputs)
        return (try Noop(kind: spec.kind).run(task, sink: sink), sink)
    }

    /// Runs every shard in index order, handing each the outputs of the shards its plan says it depends on.
    static func runJob(_ spec: JobSpec) throws -> [ShardOutput] {
        let slices = try Noop(kind: spec.kind).plan(spec)
        var outputs: [ShardOutput] = []
        for i in slices.indices {
            let inputs = slices[i].dependsOn.map {
                ShardInput(shardIndex: $0, summary: outputs[$0].summary, result: outputs[$0].result)
            }
            outputs.append(try Self.run(spec, i, inputs: inputs).0)
        }
        return outputs
    }

    @Test("Every kind has it; unknown and out-of-range params are errors with the spec's line")
    func catalogueAndValidation() throws {
        for kind in JobKind.allCases {
            #expect(Workloads.catalogue.capabilities.contains("\(kind.rawValue)/noop"))
        }
        let bad = #expect(throws: SpecError.self) { try Workloads.catalogue.validate(try Self.spec("slep_ms: 1")) }
        #expect(bad?.line == 6)
        #expect(bad?.message.contains("slep_ms") == true)
        #expect(throws: SpecError.self) { try Workloads.catalogue.validate(try Self.spec("metrics: -1")) }
        let (_, slices) = try Workloads.catalogue.validate(try Self.spec("metrics: 5", shards: 4))
        #expect(slices.map(\.slice) == (0..<4).map { .object(["index": .int($0)]) })
        #expect(slices.allSatisfy { $0.totalSteps == 5 })
    }

    @Test("A shard emits exactly `metrics` points and `result_bytes` bytes; merge verifies every byte")
    func runAndMerge() throws {
        let spec = try Self.spec("metrics: 7, result_bytes: 1000")
        var outputs: [ShardOutput] = []
        for i in 0..<3 {
            let (out, sink) = try Self.run(spec, i)
            #expect(sink.rows.map(\.step) == Array(1...7))
            #expect(sink.rows.allSatisfy { $0.name == "noop/value" })
            #expect(sink.rows.last?.value == 7 + Double(i) / 1e6)
            #expect(sink.progressStep == 7)
            // The documented pattern, written out here: byte k of shard i is (k + 31 i) mod 251.
            #expect(out.result == (0..<1000).map { UInt8(($0 + 31 * i) % 251) })
            outputs.append(out)
        }
        let merged = try Noop(kind: .rl).merge(spec, outputs: outputs)
        #expect(merged == .object([
            "shards": .int(3), "metric_points": .int(21), "result_bytes": .int(3000), "results_verified": .int(3),
        ]))
        // One flipped byte, a truncated result, or outputs out of order: the merge refuses.
        var flipped = outputs
        flipped[1].result![500] ^= 1
        #expect(throws: ShardError.self) { try Noop(kind: .rl).merge(spec, outputs: flipped) }
        var short = outputs
        short[2].result!.removeLast()
        #expect(throws: ShardError.self) { try Noop(kind: .rl).merge(spec, outputs: short) }
        #expect(throws: ShardError.self) { try Noop(kind: .rl).merge(spec, outputs: outputs.reversed()) }
    }

    @Test("Defaults: no metrics, no result, one step of progress")
    func defaults() throws {
        let (out, sink) = try Self.run(try Self.spec(""), 0)
        #expect(out.result == nil)
        #expect(sink.rows.isEmpty)
        #expect(sink.progressStep == 1)
    }

    @Test("rounds: 1 plans exactly what noop planned before it existed")
    func oneRoundIsTheOldPlan() throws {
        let old = (0..<4).map { ShardSlice(slice: .object(["index": .int($0)]), totalSteps: 5) }
        #expect(try Workloads.catalogue.validate(try Self.spec("metrics: 5", shards: 4)).1 == old)
        #expect(try Workloads.catalogue.validate(try Self.spec("metrics: 5, rounds: 1", shards: 4)).1 == old)
        let one = try Self.spec("rounds: 1", shards: 2)
        let outputs = try Self.runJob(one)
        #expect(outputs[1].summary == .object(["index": .int(1), "metrics": .int(0), "result_bytes": .int(0)]))
        #expect(try Noop(kind: .rl).merge(one, outputs: outputs) == .object([
            "shards": .int(2), "metric_points": .int(0), "result_bytes": .int(0), "results_verified": .int(2),
        ]))
    }

    @Test("rounds: R makes every shard of round r depend on all of round r - 1; R must divide the shards")
    func roundsPlan() throws {
        let slices = try Workloads.catalogue.validate(try Self.spec("rounds: 3", shards: 6)).1
        #expect(slices.map(\.dependsOn) == [[], [], [0, 1], [0, 1], [2, 3], [2, 3]])
        #expect(slices.map(\.slice) == (0..<6).map { .object(["index": .int($0)]) })
        #expect(slices[4].stored == .object(["index": .int(4), "depends_on": .array([.int(2), .int(3)])]))
        let e = #expect(throws: SpecError.self) { try Workloads.catalogue.validate(try Self.spec("rounds: 4", shards: 6)) }
        #expect(e?.message.contains("do not divide") == true)
        #expect(e?.line == 6)
        #expect(throws: SpecError.self) { try Workloads.catalogue.validate(try Self.spec("rounds: 7", shards: 6)) }
        #expect(throws: SpecError.self) { try Workloads.catalogue.validate(try Self.spec("rounds: 0", shards: 6)) }
    }

    @Test("Each shard's value is 1 + its inputs' values: round r has 1 + W v(r-1), and the merge reports them")
    func roundValues() throws {
        let spec = try Self.spec("rounds: 4, result_bytes: 64", shards: 12)
        let outputs = try Self.runJob(spec)
        // W = 3: v = 1, 4, 13, 40, computed here from the closed form, not by the algorithm.
        var expected: [Double] = [1]
        for _ in 1..<4 { expected.append(1 + 3 * expected.last!) }
        #expect(expected == [1, 4, 13, 40])
        for (i, o) in outputs.enumerated() {
            #expect(o.summary["round"]?.intValue == i / 3)
            #expect(o.summary["value"]?.doubleValue == expected[i / 3])
        }
        let merged = try Noop(kind: .rl).merge(spec, outputs: outputs)
        #expect(merged["rounds"]?.intValue == 4)
        #expect(merged["round_values"] == .array(expected.map { .number($0) }))
        #expect(merged["results_verified"]?.intValue == 12)
        // Two shards of one round that disagree: the merge refuses.
        var split = outputs
        split[7].summary = .object(["index": .int(7), "metrics": .int(0), "result_bytes": .int(64), "round": .int(2), "value": .number(12)])
        #expect(throws: ShardError.self) { try Noop(kind: .rl).merge(spec, outputs: split) }
    }

    @Test("A shard given missing, reordered or corrupted inputs fails instead of computing a value")
    func wrongInputs() throws {
        let spec = try Self.spec("rounds: 2, result_bytes: 16", shards: 4)
        let outputs = try Self.runJob(spec)
        let inputs = (0..<2).map { ShardInput(shardIndex: $0, summary: outputs[$0].summary, result: outputs[$0].result) }
        #expect(try Self.run(spec, 2, inputs: inputs).0.summary["value"]?.doubleValue == 3)
        #expect(throws: ShardError.self) { try Self.run(spec, 2, inputs: []) }
        #expect(throws: ShardError.self) { try Self.run(spec, 2, inputs: [inputs[0]]) }
        #expect(throws: ShardError.self) { try Self.run(spec, 2, inputs: inputs.reversed()) }
        var corrupt = inputs
        corrupt[1].result![3] ^= 1
        #expect(throws: ShardError.self) { try Self.run(spec, 2, inputs: corrupt) }
        var noResult = inputs
        noResult[0].result = nil
        #expect(throws: ShardError.self) { try Self.run(spec, 3, inputs: noResult) }
        // Round 0 takes no inputs.
        #expect(throws: ShardError.self) { try Self.run(spec, 0, inputs: inputs) }
    }
}
