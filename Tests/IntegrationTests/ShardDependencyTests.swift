// Shards that wait on other shards of their job, end to end: real PostgreSQL, a coordinator and workers as
// processes. A multi-round noop job (params.rounds) must produce the closed-form values, which only come out if each
// shard received exactly its inputs (summaries by `shard.inputs`, result blobs by FETCH), and no shard of a round may
// be leased before every shard of the round before it succeeded, although the workers have slots to spare.

import Foundation
import LibPQ
import Testing

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct ShardDependencyTests {
    @Test func roundsRunInOrderAndEachShardGetsThePreviousRoundsOutputs() throws {
        let (rounds, width) = (3, 3)
        // 6 slots for 9 shards: without the dependency rule, rounds 0 and 1 would start together.
        let c = try Cluster(workers: 2, slots: 3)
        defer { c.shutdown() }
        let job = try c.submit(text: """
            name: rounds
            kind: rl
            algorithm: noop
            seed: 1
            shards: \(rounds * width)
            params: {rounds: \(rounds), sleep_ms: 300, result_bytes: 5000}
            """, name: "rounds.yaml")
        let wait = try c.cli(["wait", String(job), "--timeout", "120"])
        #expect(wait.status == 0, "wait: \(wait.stdout) \(wait.stderr)\n\(c.log("coordinator"))\n\(c.log("w1"))")

        // v(0) = 1, v(r) = 1 + W v(r - 1), computed here.
        var expected: [Double] = [1]
        for _ in 1..<rounds { expected.append(1 + Double(width) * expected.last!) }
        let result = try #require(try c.json(["result", String(job)]) as? [String: Any])
        let values = try #require(result["round_values"] as? [Double], "\(result)")
        #expect(values == expected)
        #expect(result["results_verified"] as? Int == rounds * width)

        // Every lease of a round-r shard (retries too) comes after the last SHARD_DONE of round r - 1: later in the
        // event log (one writer appends them in commit order) and not earlier in time.
        let events = try c.query(
            """
            SELECT shard_idx / $2 AS round, kind,
                   min(id) AS first_id, max(id) AS last_id,
                   extract(epoch FROM min(at))::float8 AS first_at, extract(epoch FROM max(at))::float8 AS last_at,
                   count(*) AS n
            FROM tessera_events
            WHERE job_id = $1 AND kind IN ('shard.leased', 'shard.succeeded')
            GROUP BY 1, 2 ORDER BY 1, 2
            """,
            [.int(Int64(job)), .int(Int64(width))])
        var leased: [Int: (id: Int64, at: Double)] = [:], succeeded: [Int: (id: Int64, at: Double)] = [:]
        for i in 0..<events.rowCount {
            let round = Int(events.int(i, "round")!)
            if events[i, "kind"] == "shard.leased" {
                leased[round] = (events.int(i, "first_id")!, Double(events[i, "first_at"]!)!)
            } else {
                #expect(events.int(i, "n") == Int64(width), "round \(round): one SHARD_DONE per shard")
                succeeded[round] = (events.int(i, "last_id")!, Double(events[i, "last_at"]!)!)
            }
        }
        #expect(leased.count == rounds && succeeded.count == rounds, "\(leased) \(succeeded)")
        for r in 1..<rounds {
            let (start, previous) = (try #require(leased[r]), try #require(succeeded[r - 1]))
            #expect(start.id > previous.id, "round \(r) leased (event \(start.id)) before round \(r - 1) finished (\(previous.id))")
            #expect(start.at >= previous.at, "round \(r) leased at \(start.at), round \(r - 1) finished at \(previous.at)")
        }
        // Round 0 ran in parallel (the slots were used), and no shard failed along the way.
        let failures = try c.query("SELECT sum(failures) AS n FROM tessera_shards WHERE job_id = $1", [.int(Int64(job))])
        #expect(failures.int(0, "n") == 0)
        let waiting = try c.query("SELECT sum(waiting_on) AS n FROM tessera_shards WHERE job_id = $1", [.int(Int64(job))])
        #expect(waiting.int(0, "n") == 0)
    }

    @Test func storedSlicesNameTheDependenciesAndSummariesCarryTheValues() throws {
        let c = try Cluster(workers: 1, slots: 2)
        defer { c.shutdown() }
        let job = try c.submit(text: """
            name: two-rounds
            kind: sampling
            algorithm: noop
            seed: 1
            shards: 4
            params: {rounds: 2}
            """, name: "two.yaml")
        let wait = try c.cli(["wait", String(job), "--timeout", "60"])
        #expect(wait.status == 0, "\(wait.stderr)\n\(c.log("coordinator"))")
        // The stored slice of a waiting shard names its dependencies under the reserved key.
        let slices = try c.query("SELECT slice::text AS s FROM tessera_shards WHERE job_id = $1 ORDER BY idx", [.int(Int64(job))])
        #expect(slices[0, "s"] == "{\"index\": 0}")
        #expect(slices[3, "s"] == "{\"index\": 3, \"depends_on\": [0, 1]}")
        let status = try #require(try c.json(["status", String(job)]) as? [String: Any])
        let shards = try #require(status["shards"] as? [[String: Any]])
        #expect(shards.compactMap { ($0["summary"] as? [String: Any])?["value"] as? Double } == [1, 1, 3, 3])
    }
}
