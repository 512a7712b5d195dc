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

    static func run(_ spec: JobSpec, _ i: Int) throws -> (ShardOutput, RecordingSink) {
        let slices = try Noop(kind: spec.kind).plan(spec)
        let sink = RecordingSink()
        let task = ShardTask(
            spec: spec, shardIndex: i, attempt: 1, slice: slices[i].slice, totalSteps: slices[i].totalSteps, resume: nil)
        return (try Noop(kind: spec.kind).run(task, sink: sink), sink)
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
}
