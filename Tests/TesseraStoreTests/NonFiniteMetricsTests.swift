// Non-finite metric values are spelled the same in `metrics` rows (PostgreSQL's float8 JSON) and in a shard's
// `last_metrics` (written by the store): "NaN", "Infinity", "-Infinity" (protocol/SPEC.md §7).

import LibPQ
import TesseraModel
import TesseraStore
import TesseraTesting
import Testing

@Suite(.enabled(if: PostgresTestDatabase.isAvailable), .serialized)
struct NonFiniteMetricsTests {
    @Test("NaN, +inf and -inf: one spelling in metrics rows and in last_metrics")
    func oneSpelling() throws {
        let b = try JobStoreFencingTests.setUp(shards: 1)
        defer { b.close() }
        let key = b.leased[0]
        let signallingNegativeNaN = Double(bitPattern: 0xfff4_0000_0000_0001)
        let points = [
            MetricPoint(name: "a", step: 1, value: .nan), MetricPoint(name: "b", step: 1, value: .infinity),
            MetricPoint(name: "c", step: 1, value: -.infinity), MetricPoint(name: "d", step: 1, value: signallingNegativeNaN),
        ]
        #expect(try b.store.ingestMetrics([(key, b.holder, points)]) == [true])
        let last = try b.db.execute(
            """
            SELECT last_metrics->'a'->>'value' AS a, last_metrics->'b'->>'value' AS b, last_metrics->'c'->>'value' AS c,
                   last_metrics->'d'->>'value' AS d
            FROM tessera_shards WHERE job_id = $1 AND idx = $2
            """, [.int(key.jobID), .int(Int64(key.shardIndex))])
        let rows = try b.db.execute(
            """
            SELECT json_build_object('v', value)->>'v' AS v FROM tessera_metrics
            WHERE job_id = $1 AND shard_idx = $2 ORDER BY name
            """, [.int(key.jobID), .int(Int64(key.shardIndex))])
        let fromRows = (0..<rows.rowCount).map { rows[$0, "v"] }
        #expect(fromRows == ["NaN", "Infinity", "-Infinity", "NaN"])
        #expect([last[0, "a"], last[0, "b"], last[0, "c"], last[0, "d"]] == fromRows)
    }
}
