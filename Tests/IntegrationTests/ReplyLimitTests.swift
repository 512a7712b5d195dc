// SPEC §3 and §8: a reply that would exceed the 16 MiB body limit is answered with status 205 `tooLarge` and a hint
// to narrow the request, instead of a frame the client must reject; a narrowed request is then answered.

import Foundation
import LibPQ
import Testing

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct ReplyLimitTests {
    @Test func oversizeMetricsReplyIsTooLargeAndALimitedOneIsServed() throws {
        let c = try Cluster(workers: 1)
        defer { c.shutdown() }
        let job = try c.submit(text: ringSpec(shards: 1, samples: 4096, keep: false))
        #expect(try c.cli(["wait", String(job), "--timeout", "120"]).status == 0)
        // 400,000 points (~25 MiB of JSON): more than one reply may carry.
        _ = try c.query(
            """
            INSERT INTO tessera_metrics (job_id, shard_idx, attempt, name, step, value)
            SELECT $1, 0, 1, 'flood', g, g * 0.5 FROM generate_series(1, 400000) AS g
            """, [.int(Int64(job))])
        let big = try c.cli(["metrics", String(job), "--json"])
        #expect(big.status != 0)
        #expect(big.stderr.contains("narrow the request"), "stderr: \(big.stderr)")
        let small = try c.cli(["metrics", String(job), "--name", "flood", "--limit", "1000", "--json"])
        #expect(small.status == 0, "stderr: \(small.stderr)")
        let parsed = try JSONSerialization.jsonObject(with: Data(small.stdout.utf8)) as? [String: Any]
        #expect((parsed?["metrics"] as? [Any])?.count == 1000)
        // A filter that matches nothing says what there is instead of printing an empty table.
        let names = try c.query(
            "SELECT DISTINCT jsonb_object_keys(last_metrics) AS k FROM tessera_shards WHERE job_id = $1 ORDER BY k",
            [.int(Int64(job))])
        #expect(names.rowCount > 0)
        let typo = try c.cli(["metrics", String(job), "--name", "no-such-metric"])
        #expect(typo.status != 0, "stdout: \(typo.stdout)")
        #expect(typo.stderr.contains("has no metric 'no-such-metric'; its metrics: \((0..<names.rowCount).map { names[$0, "k"]! }.joined(separator: ", "))"), "stderr: \(typo.stderr)")
        let shard = try c.cli(["metrics", String(job), "--shard", "5"])
        #expect(shard.status != 0 && shard.stderr.contains("has no shard 5; its shards are 0 to 0"), "stderr: \(shard.stderr)")
        // A shard index no Int32 holds is a bad request, not a trap that takes the coordinator down (it did).
        for args in [["metrics", String(job)], ["metrics", String(job), "--list"], ["logs", String(job)],
                     ["checkpoint", "list", String(job)], ["checkpoint", "pull", String(job), "-o", "/dev/null"]] {
            for bad in ["4294967296", "-1"] {
                let r = try c.cli(args + ["--shard=\(bad)"])
                #expect(r.status != 0 && r.stderr.contains("must be a shard index"), "\(args) --shard \(bad): \(r.stderr)")
            }
        }
        #expect(try c.cli(["status", String(job)]).status == 0, "the coordinator still serves")
        // --list: one row per series, however many points, with the counts the rows have.
        let list = try c.cli(["metrics", String(job), "--list"])
        #expect(list.status == 0, "stderr: \(list.stderr)")
        #expect(list.stdout.split(separator: "\n").first?.hasPrefix("NAME") == true)
        #expect(list.stdout.contains("flood   1       400000  1–400000") || list.stdout.range(of: #"flood\s+1\s+400000\s+1–400000"#, options: .regularExpression) != nil, "\(list.stdout)")
        let listJSON = try #require(try c.json(["metrics", String(job), "--list"]) as? [String: Any])
        let series = try #require(listJSON["series"] as? [[String: Any]])
        let expected = try c.query(
            "SELECT count(DISTINCT name)::int8 AS n, count(*)::int8 AS p FROM tessera_metrics WHERE job_id = $1", [.int(Int64(job))])
        #expect(Int64(series.count) == expected.int(0, "n"))
        #expect(Int64(series.reduce(0) { $0 + ($1["points"] as? Int ?? 0) }) == expected.int(0, "p"))
        #expect(try c.cli(["metrics", String(job), "--list", "--csv"]).status == 64)
        // --jsonl: one object per point, the same values as --json.
        let jsonl = try c.cli(["metrics", String(job), "--name", "flood", "--limit", "3", "--jsonl"])
        #expect(jsonl.status == 0, "\(jsonl.stderr)")
        let objects = jsonl.stdout.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }
        #expect(objects.count == 3 && objects.map { $0["step"] as? Int } == [1, 2, 3])
        #expect(objects.map { $0["value"] as? Double } == [0.5, 1, 1.5] && objects.allSatisfy { $0["name"] as? String == "flood" })
        #expect(try c.cli(["metrics", String(job), "--csv", "--jsonl"]).status == 64)
        // The coordinator is still serving and counted the refusal.
        let w = try #require(try c.json(["workers"]) as? [String: Any])
        let counters = try #require(w["coordinator"] as? [String: Any])
        #expect(counters["replies_too_large"] as? Int == 1)
    }
}
