// Sweeps over any key (Sweep.swift): the points' order, the stored form, a swept job computing at every point exactly
// what the unswept spec computes (shard indices, dependencies and inputs translated), the table, and the errors.

import Foundation
import TesseraCore
import TesseraWorkloads
import Testing

@Suite struct SweepTests {
    static let catalogue = Workloads.catalogue

    static func noop(_ extra: String, seed: Int = 1, shards: Int = 1, params: String = "{}") throws -> JobSpec {
        try JobSpec.parse(
            "name: s\nkind: sampling\nalgorithm: noop\nseed: \(seed)\nshards: \(shards)\nparams: \(params)\n\(extra)", file: "s.yaml")
    }

    /// Runs every planned shard of `spec` in order through the catalogue, as a worker would (the stored spec, inputs
    /// from the shards each depends on), and returns the outputs.
    static func runAll(_ spec: JobSpec) throws -> [ShardOutput] {
        let (_, slices) = try catalogue.validate(spec)
        let stored = Array(spec.json.render().utf8)
        let (parsed, prepared) = try catalogue.prepared(storedSpec: stored)
        var outputs: [ShardOutput] = []
        for (i, s) in slices.enumerated() {
            // As dispatched: the stored slice, read back the way the worker reads it.
            let read = try ShardSlice(stored: try JSONValue.parse(Array(s.stored.render().utf8)), totalSteps: s.totalSteps)
            let inputs = read.dependsOn.map { ShardInput(shardIndex: $0, summary: outputs[$0].summary, result: outputs[$0].result) }
            let task = ShardTask(
                spec: parsed, shardIndex: i, attempt: 1, slice: read.slice, totalSteps: read.totalSteps, resume: nil,
                inputs: inputs)
            outputs.append(try prepared.run(task, sink: NullSink()))
        }
        return outputs
    }

    @Test("Points: every combination, the first key varying slowest")
    func pointOrder() throws {
        let spec = try Self.noop("sweep:\n  params.metrics: [3, 1, 2]\n  seed: 5..6\n")
        #expect(spec.sweep.pointCount == 6)
        var expected: [[JSONValue]] = []
        for m in [3, 1, 2] { for seed in [5, 6] { expected.append([.int(m), .int(seed)]) } }
        #expect((0..<6).map { spec.sweep.values(ofPoint: $0) } == expected)
        let p3 = try spec.pointSpec(3)
        #expect(p3.seed == 6 && p3.params["metrics"] == .int(1) && p3.sweep.isEmpty)
        #expect(spec.sweep.label(ofPoint: 3) == "params.metrics=1 seed=6")
    }

    @Test("The stored form keeps the keys' order whatever the store does to object keys (JSONB sorts them by length)")
    func storedOrder() throws {
        let spec = try Self.noop("sweep:\n  params.metrics: [1, 2]\n  seed: [7, 8, 9]\n")
        guard case .object(let top) = spec.json else { Issue.record("not an object"); return }
        // JSONB's order: shorter keys first.
        let reordered = JSONValue.object(JSONObject(top.pairs.sorted { ($0.key.count, $0.key) < ($1.key.count, $1.key) }.map { ($0.key, $0.value) }))
        let back = try JobSpec.fromStored(Array(reordered.render().utf8))
        #expect(back.sweep == spec.sweep)
        #expect(back.json == spec.json)
        #expect((0..<6).map { back.sweep.values(ofPoint: $0) } == (0..<6).map { spec.sweep.values(ofPoint: $0) })
    }

    @Test("Each point's shards compute exactly what the unswept spec with the point's values computes")
    func pointsEqualStandaloneJobs() throws {
        // Two rounds of two shards per point: dependencies and inputs are those of a point's own job.
        let spec = try Self.noop("sweep:\n  params.metrics: [0, 3]\n  seed: [1, 2]\n", shards: 4, params: "{rounds: 2, result_bytes: 5}")
        let (_, slices) = try Self.catalogue.validate(spec)
        #expect(slices.count == 16)
        #expect(slices[4].dependsOn.isEmpty && slices[6].dependsOn == [4, 5] && slices[15].dependsOn == [12, 13])
        #expect(slices[6].slice["point"] == .int(1) && slices[6].slice["index"] == .int(2) && slices[6].slice["seed"] == .int(2))
        let outputs = try Self.runAll(spec)
        let merged = try Self.catalogue.resolve(spec).merge(spec, outputs: outputs)

        #expect(merged["columns"]?.arrayValue?.prefix(3) == [.string("point"), .string("params.metrics"), .string("seed")][...])
        let columns = merged["columns"]?.arrayValue?.compactMap(\.stringValue) ?? []
        let rows = merged["rows"]?.arrayValue ?? []
        #expect(rows.count == 4 && merged["points"] == .int(4) && merged["shards_per_point"] == .int(4))
        for p in 0..<4 {
            // The same spec with the point's values set by hand, without a sweep.
            let values = spec.sweep.values(ofPoint: p)
            let standalone = try Self.noop(
                "", seed: values[1].intValue!, shards: 4, params: "{rounds: 2, result_bytes: 5, metrics: \(values[0].intValue!)}")
            let own = try Self.runAll(standalone)
            for k in 0..<4 {
                let swept = outputs[4 * p + k]
                #expect(swept.summary["point"] == .int(p) && swept.summary["index"] == .int(k) && swept.summary["of"] == .int(4))
                #expect(swept.summary["summary"] == own[k].summary)
                #expect(swept.result == own[k].result)
            }
            let ownResult = try Self.catalogue.resolve(standalone).merge(standalone, outputs: own)
            let row = rows[p].arrayValue ?? []
            #expect(row.prefix(3) == [.int(p), values[0], values[1]][...])
            for (name, value) in zip(columns, row).dropFirst(3) {
                // Figures are the point result's numbers by name; round_values is a short list.
                let expected: JSONValue? =
                    name.hasPrefix("round_values[") ? ownResult["round_values"]?.arrayValue?[Int(name.dropFirst(13).dropLast())!] : ownResult[name]
                #expect(value == expected, "point \(p) \(name)")
            }
        }
    }

    @Test("Errors name the sweep, the point and the line")
    func errors() throws {
        func message(_ extra: String) -> String {
            do {
                _ = try Self.catalogue.validate(try Self.noop(extra))
                return "accepted"
            } catch let e as SpecError { return e.description } catch { return "\(error)" }
        }
        #expect(message("sweep:\n  shards: [1, 2]\n").contains("'shards' cannot be swept"))
        #expect(message("sweep:\n  params.metrics: []\n") == "s.yaml:8: sweep.params.metrics has no values")
        #expect(message("sweep:\n  params.metrics: \"3..1\"\n").contains("integer range like 1..8"))
        #expect(message("sweep:\n  seed: 1..1000\n  params.metrics: 0..100\n").contains("more than 100000 points (1000 × 101)"))
        #expect(message("sweep:\n  params.metrics: [1, -2]\n") == "s.yaml:8: sweep point 1 (params.metrics=-2): params.metrics must be between 0 and 10000000, not -2")
        #expect(message("sweep: [1, 2]\n").contains("sweep[0] must be {key: PATH, values: [...]}"))
        #expect(message("sweep: {}\n").contains("sweep has no keys"))
    }

    @Test("--sweep PATH=VALUES: commas, a range, a YAML list; added to the spec's own sweep; errors name the option")
    func option() throws {
        #expect(try SweepAxis.parseOption("params.eta=0, 0.5,1", file: "f").value == .array([.number(0), .number(0.5), .int(1)]))
        #expect(try SweepAxis.parseOption("seed=1..3", file: "f").value == .string("1..3"))
        #expect(try SweepAxis.parseOption("params.target.type=[gmm, ring]", file: "f").value == .array([.string("gmm"), .string("ring")]))
        #expect(throws: SpecError.self) { try SweepAxis.parseOption("params.eta", file: "f") }
        #expect(throws: SpecError.self) { try SweepAxis.parseOption("params.eta=1,,2", file: "f") }
        let text = "name: s\nkind: sampling\nalgorithm: noop\nseed: 1\nsweep:\n  params.metrics: [1, 2]\n"
        let spec = try JobSpec.parse(text, file: "s.yaml", overrides: [], sweeps: ["seed=3..5"])
        #expect(spec.sweep.axes.map(\.path) == ["params.metrics", "seed"] && spec.sweep.pointCount == 6)
        do {
            _ = try Self.catalogue.validate(try JobSpec.parse(text, file: "s.yaml", overrides: [], sweeps: ["params.metrics=4,-1"]))
            Issue.record("accepted")
        } catch let e as SpecError {
            #expect(e.description == "s.yaml: sweep point 1 (params.metrics=-1): --sweep params.metrics: params.metrics must be between 0 and 10000000, not -1")
        }
    }

    /// One shard whose result is {"square": seed², "scaled": scale·seed, "flag": true}: figures that vary with the seed.
    private struct SeedFigures: TypedAlgorithm {
        var kind: JobKind { .rl }
        var name: String { "seed-figures" }
        var summary: String { "a result made of the seed" }
        struct Slice: Codable, Sendable, Hashable { var seed: Int }
        struct Summary: Codable, Sendable { var seed: Int; var scale: Double }
        func configure(_ spec: JobSpec) throws -> Double { try spec.paramsReader.double("scale", default: 1) }
        func plan(_ spec: JobSpec, config: Double) throws -> [TypedShardSlice<Slice>] {
            [TypedShardSlice(Slice(seed: Int(spec.seed)), totalSteps: 1)]
        }
        func run(_ slice: Slice, config: Double, task: ShardTask, sink: any ShardSink) throws -> TypedShardOutput<Summary> {
            TypedShardOutput(summary: Summary(seed: slice.seed, scale: config))
        }
        func makeReducer(_ spec: JobSpec, config: Double) throws -> SummaryReducer<Summary> {
            SummaryReducer { s in
                .object(["square": .number(Double(s[0].seed * s[0].seed)), "scaled": .number(s[0].scale * Double(s[0].seed)), "flag": .bool(true)])
            }
        }
    }

    @Test("With a swept seed, each figure's mean and Student-t 95% interval over the seeds of every other combination")
    func acrossSeeds() throws {
        let catalogue = AlgorithmCatalogue([SeedFigures()])
        let spec = try JobSpec.parse(
            "name: s\nkind: rl\nalgorithm: seed-figures\nseed: 1\nparams: {}\nsweep:\n  params.scale: [1, 10]\n  seed: [1, 2, 3, 4]\n",
            file: "s.yaml")
        let (_, slices) = try catalogue.validate(spec)
        let (parsed, prepared) = try catalogue.prepared(storedSpec: spec.json.utf8Bytes)
        var outputs: [ShardOutput] = []
        for (i, s) in slices.enumerated() {
            let task = ShardTask(spec: parsed, shardIndex: i, attempt: 1, slice: s.slice, totalSteps: s.totalSteps, resume: nil)
            outputs.append(try prepared.run(task, sink: NullSink()))
        }
        let merged = try catalogue.resolve(spec).merge(spec, outputs: outputs)
        let seeds = try #require(merged["across_seeds"])
        #expect(seeds["by"] == .array([.string("params.scale")]))
        #expect(seeds["columns"] == .array(["params.scale", "seeds", "square", "scaled", "flag"].map { .string($0) }))
        let rows = try #require(seeds["rows"]?.arrayValue)
        #expect(rows.count == 2)
        func check(_ cell: JSONValue?, _ values: [Double], _ what: String) {
            let n = Double(values.count), mean = values.reduce(0, +) / n
            let sd = (values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / (n - 1)).squareRoot()
            let half = 3.1824 * sd / n.squareRoot()  // t_{0.975, 3}, from the published table
            #expect(cell?["n"] == .int(values.count), "\(what)")
            #expect(abs((cell?["mean"]?.doubleValue ?? .nan) - mean) < 1e-12, "\(what)")
            #expect(abs((cell?["std"]?.doubleValue ?? .nan) - sd) < 1e-12, "\(what)")
            let ci = cell?["ci95"]?.arrayValue?.compactMap(\.doubleValue) ?? []
            #expect(ci.count == 2 && abs(ci[0] - (mean - half)) < 1e-9 && abs(ci[1] - (mean + half)) < 1e-9, "\(what): \(ci)")
        }
        for (r, scale) in [(0, 1.0), (1, 10.0)] {
            let row = rows[r].arrayValue ?? []
            #expect(row.count == 5 && row[0].doubleValue == scale && row[1] == .int(4))
            check(row[2], [1, 4, 9, 16], "square, scale \(scale)")
            check(row[3], [1, 2, 3, 4].map { $0 * scale }, "scaled, scale \(scale)")
            #expect(row[4]["mean"] == .number(1) && row[4]["std"] == .number(0))
        }
        // No swept seed, or a single one: no such table.
        for sweep in ["  params.scale: [1, 10]\n", "  params.scale: [1, 10]\n  seed: [3]\n"] {
            let one = try JobSpec.parse("name: s\nkind: rl\nalgorithm: seed-figures\nseed: 1\nparams: {}\nsweep:\n" + sweep, file: "s.yaml")
            let (_, sl) = try catalogue.validate(one)
            let (p1, prep1) = try catalogue.prepared(storedSpec: one.json.utf8Bytes)
            let outs = try sl.enumerated().map { i, s in
                try prep1.run(ShardTask(spec: p1, shardIndex: i, attempt: 1, slice: s.slice, totalSteps: s.totalSteps, resume: nil), sink: NullSink())
            }
            #expect(try catalogue.resolve(one).merge(one, outputs: outs)["across_seeds"] == nil)
        }
    }

    @Test("The reducer takes the points' shards in order only")
    func reducerOrder() throws {
        let spec = try Self.noop("sweep:\n  params.metrics: [1, 2]\n", shards: 2)
        let outputs = try Self.runAll(spec)
        var reducer = try Self.catalogue.resolve(spec).makeReducer(spec)
        try reducer.add(outputs[0])
        #expect(throws: ShardError.self) { try reducer.add(outputs[2]) }
        var short = try Self.catalogue.resolve(spec).makeReducer(spec)
        for o in outputs.prefix(3) { try short.add(o) }
        #expect(throws: ShardError.self) { try short.finish() }
    }

    @Test("A slice whose values are not its point's is refused for good")
    func mismatchedSlice() throws {
        let spec = try Self.noop("sweep:\n  params.metrics: [1, 2]\n")
        let (_, prepared) = try Self.catalogue.prepared(storedSpec: Array(spec.json.render().utf8))
        let slice: JSONValue = .object(["point": .int(0), "params.metrics": .int(2), "shard": .object(["index": .int(0)])])
        let task = ShardTask(spec: spec, shardIndex: 0, attempt: 1, slice: slice, totalSteps: 1, resume: nil)
        #expect { try prepared.run(task, sink: NullSink()) } throws: { ($0 as? ShardError)?.permanent == true }
    }
}
