// The store's fencing (SPEC §6.3): a message about a shard is applied only when it names the shard's current
// attempt AND comes from the leaseholder. Before this check a second registered worker could complete, fail or
// write metrics for another worker's live attempt. Also the job's succeeded-shard counter, which replaced a count
// over all of the job's shards after every SHARD_DONE.

import LibPQ
import TesseraCore
import TesseraModel
import TesseraStore
import TesseraTesting
import Testing

@Suite(.enabled(if: PostgresTestDatabase.isAvailable), .serialized)
struct JobStoreFencingTests {
    /// A migrated database with one two-shard job (no algorithm needed: the store takes planned slices) and two
    /// registered workers; `holder` leases both shards.
    struct Bundle {
        let tdb: PostgresTestDatabase
        let db: PGConnection
        let store: PostgresJobStore
        let job: Int64
        let holder: Int64
        let other: Int64
        let leased: [ShardRef]

        func close() {
            db.close()
            tdb.drop()
        }
    }

    static func setUp(shards: Int = 2) throws -> Bundle {
        let tdb = try PostgresTestDatabase.create(migrate: true)
        let db = try tdb.connect()
        let store = PostgresJobStore(db: db)
        let spec = try JobSpec.parse(
            "name: fence\nkind: sampling\nalgorithm: ddim\nseed: 1\nshards: \(shards)\n", file: "fence.yaml")
        let slices = (0..<shards).map { ShardSlice(slice: .object(["start": .int($0)]), totalSteps: 10) }
        let job = try store.submitJob(spec: spec, sourceText: "", slices: slices)
        let holder = try store.registerWorker(name: "holder", host: "h", slots: 4, capabilities: ["sampling/ddim"])
        let other = try store.registerWorker(name: "other", host: "h", slots: 4, capabilities: ["sampling/ddim"])
        let claimed = try store.claimShards(workerID: holder, limit: shards, capabilities: ["sampling/ddim"])
        return Bundle(tdb: tdb, db: db, store: store, job: job, holder: holder, other: other, leased: claimed.map(\.ref))
    }

    @Test("SHARD_DONE from anyone but the leaseholder changes nothing; the holder's DONE is then accepted")
    func foreignDoneFenced() throws {
        let b = try Self.setUp()
        defer { b.close() }
        let key = b.leased[0]
        #expect(try b.store.completeShard(key, workerID: b.other, summary: "{}", resultSHA256: nil) == nil)
        let state = try b.db.execute(
            "SELECT state::text AS s, worker_id FROM tessera_shards WHERE job_id = $1 AND idx = $2",
            [.int(key.jobID), .int(Int64(key.shardIndex))])
        #expect(state[0, "s"] == "leased")
        #expect(state.int(0, "worker_id") == b.holder)
        #expect(try b.store.completeShard(key, workerID: b.holder, summary: "{}", resultSHA256: nil) == false)
        // A stale attempt, even from the holder, is fenced too.
        var stale = b.leased[1]
        stale.attempt -= 1
        #expect(try b.store.completeShard(stale, workerID: b.holder, summary: "{}", resultSHA256: nil) == nil)
    }

    @Test("SHARD_FAILED from a non-holder is rejected and consumes no attempt")
    func foreignFailureFenced() throws {
        let b = try Self.setUp()
        defer { b.close() }
        let key = b.leased[0]
        let (outcome, cancelled) = try b.store.failShard(key, workerID: b.other, reason: "boom", failure: .shardError)
        #expect(outcome == .rejected)
        #expect(cancelled.isEmpty)
        let row = try b.db.execute(
            "SELECT state::text AS s, failures FROM tessera_shards WHERE job_id = $1 AND idx = $2",
            [.int(key.jobID), .int(Int64(key.shardIndex))])
        #expect(row[0, "s"] == "leased")
        #expect(row.int(0, "failures") == 0)
        #expect(try b.store.failShard(key, workerID: b.holder, reason: "boom", failure: .shardError).0 == .requeued)
    }

    @Test("METRICS batches are accepted per sender: the holder's rows land, a foreign batch in the same commit does not")
    func foreignMetricsFenced() throws {
        let b = try Self.setUp()
        defer { b.close() }
        let key = b.leased[0]
        let accepted = try b.store.ingestMetrics([
            (key: key, workerID: b.other, rows: [MetricPoint(name: "loss", step: 1, value: 99)]),
            (key: key, workerID: b.holder, rows: [MetricPoint(name: "loss", step: 2, value: 0.5)]),
        ])
        #expect(accepted == [false, true])
        let rows = try b.db.execute(
            "SELECT step, value FROM tessera_metrics WHERE job_id = $1 AND shard_idx = $2 ORDER BY step",
            [.int(key.jobID), .int(Int64(key.shardIndex))])
        #expect(rows.rowCount == 1)
        #expect(rows.int(0, "step") == 2)
    }

    @Test("A blob is registered only for the leaseholder")
    func foreignBlobFenced() throws {
        let b = try Self.setUp()
        defer { b.close() }
        let sha = String(repeating: "ab", count: 32)
        let key = b.leased[0]
        #expect(!(try b.store.registerBlob(
            key, workerID: b.other, kind: "checkpoint", step: 5, sha256: sha, size: 1, path: "ab/x")))
        #expect(try b.store.registerBlob(
            key, workerID: b.holder, kind: "checkpoint", step: 5, sha256: sha, size: 1, path: "ab/x"))
        let row = try b.db.execute(
            "SELECT checkpoint_step FROM tessera_shards WHERE job_id = $1 AND idx = $2",
            [.int(key.jobID), .int(Int64(key.shardIndex))])
        #expect(row.int(0, "checkpoint_step") == 5)
    }

    @Test("The job's succeeded counter says when the last shard is done; a repeated DONE does not count twice")
    func completionCounter() throws {
        let b = try Self.setUp(shards: 3)
        defer { b.close() }
        #expect(try b.store.completeShard(b.leased[0], workerID: b.holder, summary: "{}", resultSHA256: nil) == false)
        #expect(try b.store.completeShard(b.leased[0], workerID: b.holder, summary: "{}", resultSHA256: nil) == nil)
        #expect(try b.store.jobsAwaitingMerge().isEmpty)
        #expect(try b.store.completeShard(b.leased[1], workerID: b.holder, summary: "{}", resultSHA256: nil) == false)
        #expect(try b.store.completeShard(b.leased[2], workerID: b.holder, summary: "{}", resultSHA256: nil) == true)
        #expect(try b.store.jobsAwaitingMerge() == [b.job])
        let counted = try b.db.execute(
            """
            SELECT j.shards_succeeded,
                   (SELECT count(*) FROM tessera_shards s WHERE s.job_id = j.id AND s.state = 'succeeded') AS n
            FROM tessera_jobs j WHERE j.id = $1
            """, [.int(b.job)])
        #expect(counted.int(0, "shards_succeeded") == 3)
        #expect(counted.int(0, "n") == 3)
    }
}
