// Preference-data shards feeding training shards (issue 13, `data.generation_shards`) through the real coordinator,
// PostgreSQL and worker processes: a β sweep whose annotator pairs are labelled by data shards, once for all points,
// merges to the same result as the same sweep whose training shards draw their pairs themselves.

import Foundation
import LibPQ
import Testing

@Suite(
    .serialized,
    .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct PreferenceDataShardsTests {
    @Test func dataShardsFeedTheSweepAndChangeNothingOfItsResult() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let example = try String(contentsOfFile: IntegrationEnv.example("pref-dpo-data-shards.yaml"), encoding: .utf8)
        let sharded = try c.submit(IntegrationEnv.example("pref-dpo-data-shards.yaml"))
        let plain = try c.submit(
            text: example.replacingOccurrences(of: ", generation_shards: 4", with: "")
                .replacingOccurrences(of: "name: dpo-data-shards", with: "name: dpo-own-pairs"),
            name: "plain.yaml")
        for job in [sharded, plain] {
            let wait = try c.cli(["wait", String(job), "--timeout", "600"])
            #expect(wait.status == 0, "\(wait.stderr)\n\(c.log("coordinator"))")
        }
        let shards = try c.query(
            "SELECT count(*) AS n, count(*) FILTER (WHERE slice->>'role' = 'data' AND result_sha256 <> '') AS data FROM tessera_shards WHERE job_id = $1",
            [.int(Int64(sharded))])
        #expect(shards.int(0, "n") == 4 + 3 && shards.int(0, "data") == 4, "4 data shards, then one training shard per beta")
        let a = try #require(try c.json(["result", String(sharded), "--json"]) as? [String: Any])
        let b = try #require(try c.json(["result", String(plain), "--json"]) as? [String: Any])
        #expect(NSDictionary(dictionary: a).isEqual(to: b), "the same merged result, bit for bit")
        let distance = try #require(a["max_frontier_distance"] as? Double)
        print("dpo beta sweep on data shards: max frontier distance \(distance)")
    }
}
