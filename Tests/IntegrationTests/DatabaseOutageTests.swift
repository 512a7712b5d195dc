// A PostgreSQL outage while a job runs (docs/operations.md, "PostgreSQL away"): the coordinator's connections are
// killed and new ones refused for 5 s — longer than a worker's liveness (3 s) — while shards stream metrics and
// finish. The writer must retry with backoff on new connections, the coordinator must keep its sessions (no worker
// lost, no shard re-run) and nothing acknowledged may be lost: every metric point and both shards' results land.
//
// The outage is made on this test's own database only (ALLOW_CONNECTIONS false + pg_terminate_backend), so the
// shared test cluster keeps serving everyone else.

import Foundation
import LibPQ
import TesseraTesting
import Testing

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct DatabaseOutageTests {
    @Test func coordinatorRidesOutADatabaseOutageAndLosesNothing() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let points = 50_000
        let job = try c.submit(
            text: """
                name: outage
                kind: rl
                algorithm: noop
                seed: 1
                shards: 2
                params: {metrics: \(points), sleep_ms: 2500}
                """, name: "outage.yaml")
        // Both shards leased (their metrics are streaming), then the database goes away.
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let r = try c.query("SELECT count(*) AS n FROM tessera_shards WHERE job_id = $1 AND state = 'leased'", [.int(Int64(job))])
            if r.int(0, "n") == 2 { break }
            Thread.sleep(forTimeInterval: 0.01)
        }
        let admin = try PGConnection(PostgresTestDatabase.adminURL!)
        defer { admin.close() }
        let name = try admin.quoteIdentifier(c.db.name)
        try admin.execute("ALTER DATABASE \(name) ALLOW_CONNECTIONS false")
        let killed = try admin.execute(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            [.text(c.db.name)])
        #expect((killed.int(0, "n") ?? 0) >= 1, "the coordinator's connections were cut")
        Thread.sleep(forTimeInterval: 5)
        // Meanwhile the shards finished; their DONEs wait in the coordinator, their unacknowledged metrics in the workers.
        try admin.execute("ALTER DATABASE \(name) ALLOW_CONNECTIONS true")

        let wait = try c.cli(["wait", String(job), "--timeout", "120"])
        #expect(wait.status == 0, "\(wait.stdout)\n\(wait.stderr)\n\(c.log("coordinator"))")
        let shards = try c.query(
            "SELECT count(*) AS n, max(attempt) AS a, sum(failures) AS f FROM tessera_shards WHERE job_id = $1 AND state = 'succeeded'",
            [.int(Int64(job))])
        #expect(shards.int(0, "n") == 2)
        #expect(shards.int(0, "a") == 1, "no shard was re-run: the sessions survived the outage")
        #expect(shards.int(0, "f") == 0)
        let metrics = try c.query(
            "SELECT count(*) AS n, count(DISTINCT (shard_idx, step)) AS d FROM tessera_metrics WHERE job_id = $1", [.int(Int64(job))])
        #expect(metrics.int(0, "n") == Int64(2 * points) && metrics.int(0, "d") == Int64(2 * points), "every metric point landed once")
        let lost = try c.query("SELECT count(*) AS n FROM tessera_events WHERE kind = 'worker.lost'")
        #expect(lost.int(0, "n") == 0, "no worker was declared lost")
        let alive = try c.json(["workers"]) as? [String: Any]
        let states = ((alive?["workers"] as? [[String: Any]]) ?? []).compactMap { $0["state"] as? String }
        #expect(states == ["alive", "alive"], "\(states)")
    }
}
