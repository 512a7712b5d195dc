// A sweep over any key through the real system (`tessera submit --sweep`, Sweep.swift): every point's row holds
// exactly the figures of the same spec submitted alone with the point's values, the shards are labelled with their
// point, `result --best` names the right point, and the stored spec keeps the sweep's order (JSONB reorders keys).

import Foundation
import LibPQ
import Testing

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct SweepIntegrationTests {
    @Test func aSweptJobEqualsItsPointsRunAlone() throws {
        let c = try Cluster(workers: 2, http: true)
        defer { c.shutdown() }
        let spec = "\(c.dir)/ring.yaml"
        try ringSpec(shards: 2, samples: 8192, steps: 20, keep: true).write(toFile: spec, atomically: true, encoding: .utf8)
        // params.eta varies slowest; its key is longer than seed's, so JSONB would put it second in a mapping.
        let sub = try c.cli(["submit", spec, "--sweep", "params.eta=0,1", "--sweep", "seed=3..4"])
        #expect(sub.status == 0, "\(sub.stderr)")
        let job = try #require(Int(sub.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        let wait = try c.cli(["wait", String(job), "--timeout", "300"])
        #expect(wait.status == 0, "\(wait.stdout)\(wait.stderr)")

        let result = try #require(try c.json(["result", String(job)]) as? [String: Any])
        let columns = try #require(result["columns"] as? [String])
        let rows = try #require(result["rows"] as? [[Any]])
        #expect(Array(columns.prefix(3)) == ["point", "params.eta", "seed"] && rows.count == 4)
        #expect(result["shards_per_point"] as? Int == 2)

        // Point 2 is (eta 1, seed 3): the same spec submitted alone gives the same figures, bit for bit.
        let alone = try c.submit(text: try String(contentsOfFile: spec, encoding: .utf8)
            .replacingOccurrences(of: "eta: 0.0", with: "eta: 1.0").replacingOccurrences(of: "seed: 7", with: "seed: 3"), name: "alone.yaml")
        #expect(try c.cli(["wait", String(alone), "--timeout", "300"]).status == 0)
        let own = try #require(try c.json(["result", String(alone)]) as? [String: Any])
        let row = rows[2]
        #expect(row[1] as? Double == 1 && row[2] as? Int == 3)
        for name in ["sw1", "mmd", "mode_weight_error"] {
            let i = try #require(columns.firstIndex(of: name))
            #expect(row[i] as? Double == own[name] as? Double, "\(name)")
        }
        let mean = own["mean"] as? [Double] ?? []
        #expect(row[try #require(columns.firstIndex(of: "mean[0]"))] as? Double == mean.first)

        // The shards say which point they are, in plan order.
        let status = try #require(try c.json(["status", String(job)]) as? [String: Any])
        let shards = try #require(status["shards"] as? [[String: Any]])
        #expect(shards.count == 8)
        let slice5 = try #require(shards[5]["slice"] as? [String: Any])
        #expect(slice5["point"] as? Int == 2 && slice5["index"] as? Int == 1 && slice5["seed"] as? Int == 3 && slice5["params.eta"] as? Double == 1)

        // --best: the lowest (or highest) sw1 among the rows, found here independently.
        let sw1 = try #require(columns.firstIndex(of: "sw1"))
        let values = rows.map { $0[sw1] as? Double ?? .infinity }
        let lowest = values.indices.min { values[$0] < values[$1] }!
        let highest = values.indices.max { values[$0] < values[$1] }!
        let best = try #require(try c.json(["result", String(job), "--best", "sw1"]) as? [String: Any])
        #expect(best["row"] as? Int == lowest && best["goal"] as? String == "lowest")
        let top = try #require(try c.json(["result", String(job), "--best", "sw1", "--maximize"]) as? [String: Any])
        #expect(top["row"] as? Int == highest)
        let text = try c.cli(["result", String(job), "--best", "sw1"])
        #expect(text.status == 0 && text.stdout.hasPrefix("best of 4 points by sw1 (lowest)"), "\(text.stdout)")
        // The dashboard's job page shows the table: a row per point, the swept keys as columns.
        let page = try httpGet("\(c.httpURL)/jobs/\(job)")
        #expect(page.status == 200 && page.body.contains("<h3>points (4)</h3>") && page.body.contains("<th>params.eta</th>"), "\(page.body.prefix(300))")
        // Every shard's samples file at once, each the same bytes as pulled alone.
        let dir = "\(c.dir)/pulled"
        let all = try c.cli(["checkpoint", "pull", String(job), "--all-shards", "--kind", "samples", "-o", dir])
        #expect(all.status == 0 && all.stderr.contains("wrote 8 of 8 shards to \(dir)/"), "\(all.stderr)")
        let one = try c.cli(["checkpoint", "pull", String(job), "--shard", "5", "--kind", "samples", "-o", "\(c.dir)/five.safetensors"])
        #expect(one.status == 0)
        #expect(FileManager.default.contents(atPath: "\(dir)/shard-5.safetensors") == FileManager.default.contents(atPath: "\(c.dir)/five.safetensors"))
        #expect((try FileManager.default.contentsOfDirectory(atPath: dir)).filter { $0.hasSuffix(".safetensors") }.count == 8)
        let none = try c.cli(["checkpoint", "pull", String(job), "--all-shards", "--kind", "checkpoint", "-o", "\(c.dir)/none"])
        #expect(none.status == 4 && none.stderr.contains("no shard of job \(job) has a checkpoint"), "\(none.stderr)")
        let both = try c.cli(["checkpoint", "pull", String(job), "--all-shards", "--shard", "1", "-o", dir])
        #expect(both.status == 64)
        let unknown = try c.cli(["result", String(job), "--best", "nope"])
        #expect(unknown.status != 0 && unknown.stderr.contains("no column 'nope'") && unknown.stderr.contains("sw1"), "\(unknown.stderr)")
    }

    @Test func aBadPointIsRefusedAtSubmitWithItsValues() throws {
        let c = try Cluster(workers: 0)
        defer { c.shutdown() }
        let spec = "\(c.dir)/noop.yaml"
        try "name: n\nkind: sampling\nalgorithm: noop\nseed: 1\n".write(toFile: spec, atomically: true, encoding: .utf8)
        let r = try c.cli(["submit", spec, "--sweep", "params.metrics=1,-5"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("sweep point 1 (params.metrics=-5): --sweep params.metrics: params.metrics must be between 0"), "\(r.stderr)")
        let jobs = try c.query("SELECT count(*)::int8 AS n FROM tessera_jobs")
        #expect(jobs.int(0, "n") == 0)
    }
}
