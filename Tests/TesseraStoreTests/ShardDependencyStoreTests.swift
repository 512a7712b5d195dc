// Shards that wait on other shards of their job (migrations/0003, protocol/SPEC.md §6.9), on a real PostgreSQL: a
// waiting shard is never claimed, the SHARD_DONE of its last dependency releases it in the same transaction, and the
// dependents of a shard that failed for good never become claimable.

import LibPQ
import TesseraCore
import TesseraModel
import TesseraStore
import TesseraTesting
import Testing

@Suite(.enabled(if: PostgresTestDatabase.isAvailable), .serialized)
struct ShardDependencyStoreTests {
    static let capabilities = ["sampling/ddim"]

    /// A migrated database with one job of four shards: 0 and 1 free, 2 waiting on both, 3 waiting on 2.
    struct Bundle {
        let tdb: PostgresTestDatabase
        let db: PGConnection
        let store: PostgresJobStore
        let job: Int64
        let worker: Int64

        func close() {
            db.close()
            tdb.drop()
        }

        func claim(_ limit: Int = 10) throws -> [ShardRef] {
            try store.claimShards(workerID: worker, limit: limit, capabilities: ShardDependencyStoreTests.capabilities).map(\.ref)
        }

        func shards() throws -> [(state: String, waiting: Int64)] {
            let r = try db.execute(
                "SELECT state::text AS s, waiting_on FROM tessera_shards WHERE job_id = $1 ORDER BY idx", [.int(job)])
            return (0..<r.rowCount).map { (r[$0, "s"]!, r.int($0, "waiting_on")!) }
        }

        func complete(_ ref: ShardRef, summary: String = "{}", sha: String? = nil) throws -> (accepted: Bool, jobComplete: Bool, released: Int) {
            try store.completeShards([(ref, worker, summary, sha)])[0]
        }
    }

    static let deps: [[Int]] = [[], [], [0, 1], [2]]

    static func setUp(maxAttempts: Int = 3) throws -> Bundle {
        let tdb = try PostgresTestDatabase.create(migrate: true)
        let db = try tdb.connect()
        let store = PostgresJobStore(db: db)
        let spec = try JobSpec.parse(
            "name: deps\nkind: sampling\nalgorithm: ddim\nseed: 1\nshards: 4\nmax_attempts: \(maxAttempts)\n", file: "deps.yaml")
        let slices = deps.enumerated().map { ShardSlice(slice: .object(["start": .int($0)]), totalSteps: 10, dependsOn: $1) }
        let job = try store.submitJob(spec: spec, sourceText: "", slices: slices)
        let worker = try store.registerWorker(name: "w", host: "h", slots: 8, capabilities: capabilities)
        return Bundle(tdb: tdb, db: db, store: store, job: job, worker: worker)
    }

    @Test("Submit stores the dependency rows, the waiting counts and depends_on in the slice; only free shards are claimed")
    func waitingShardsAreNotClaimed() throws {
        let b = try Self.setUp()
        defer { b.close() }
        #expect(try b.shards().map(\.waiting) == [0, 0, 2, 1])
        let edges = try b.db.execute(
            "SELECT shard_idx, depends_on FROM tessera_shard_dependencies WHERE job_id = $1 ORDER BY 1, 2", [.int(b.job)])
        #expect((0..<edges.rowCount).map { [edges.int($0, "shard_idx")!, edges.int($0, "depends_on")!] } == [[2, 0], [2, 1], [3, 2]])
        let slices = try b.db.execute("SELECT slice::text AS s FROM tessera_shards WHERE job_id = $1 ORDER BY idx", [.int(b.job)])
        #expect(slices[0, "s"] == "{\"start\": 0}")
        #expect(slices[2, "s"] == "{\"start\": 2, \"depends_on\": [0, 1]}")

        let status = try JSONValue.parse(try #require(try b.store.jobStatusJSON(b.job, events: false)))
        #expect(status["shards"]?.arrayValue?.map { $0["waiting_on"]?.intValue } == [0, 0, 2, 1])

        let claimed = try b.claim()
        #expect(claimed.map(\.shardIndex) == [0, 1])
        #expect(try b.claim().isEmpty)
        // Handing the free shards back (lost worker) does not release the waiting ones.
        #expect(try b.store.requeueShards(ofWorker: b.worker, reason: "lost").count == 2)
        #expect(try b.claim().map(\.shardIndex) == [0, 1])
        #expect(try b.claim().isEmpty)
        // A READY cannot adopt a waiting shard either (attempt 0 is "never leased").
        #expect(try b.store.adoptShards(workerID: b.worker, keys: [ShardRef(jobID: b.job, shardIndex: 2, attempt: 0)]).isEmpty)
        #expect(try b.shards().map(\.state) == ["leased", "leased", "queued", "queued"])
    }

    @Test("The last dependency's SHARD_DONE releases the shard in the same transaction; rolled back, it still waits")
    func completionReleasesDependents() throws {
        let b = try Self.setUp()
        defer { b.close() }
        let claimed = try b.claim()
        let first = try b.complete(claimed[0])
        #expect(first.accepted && !first.jobComplete && first.released == 0)
        #expect(try b.shards().map(\.waiting) == [0, 0, 1, 1])
        #expect(try b.claim().isEmpty, "shard 2 still waits on shard 1")

        // Completed and rolled back: nothing changed, shard 2 still waits.
        struct Rollback: Error {}
        #expect(throws: Rollback.self) {
            try b.db.transaction {
                #expect(try b.complete(claimed[1]).released == 1)
                throw Rollback()
            }
        }
        #expect(try b.shards().map(\.state) == ["succeeded", "leased", "queued", "queued"])
        #expect(try b.shards().map(\.waiting) == [0, 0, 1, 1])

        // As the writer does it: the completion and the next claim in one transaction.
        let next = try b.db.transaction { () -> [ShardRef] in
            #expect(try b.complete(claimed[1]).released == 1)
            return try b.claim()
        }
        #expect(next.map(\.shardIndex) == [2])
        #expect(try b.shards().map(\.waiting) == [0, 0, 0, 1])
        // A repeated SHARD_DONE of a dependency is fenced and does not decrement twice.
        #expect(try b.complete(claimed[1]).accepted == false)
        #expect(try b.shards().map(\.waiting) == [0, 0, 0, 1])

        #expect(try b.complete(next[0]).released == 1)
        let last = try b.claim()
        #expect(last.map(\.shardIndex) == [3])
        #expect(try b.complete(last[0]) == (true, true, 0))
    }

    @Test("Several dependencies done in one statement release their shared dependent once")
    func batchedCompletion() throws {
        let b = try Self.setUp()
        defer { b.close() }
        let claimed = try b.claim()
        let r = try b.store.completeShards(claimed.map { ($0, b.worker, "{}", nil) })
        #expect(r.map(\.accepted) == [true, true])
        #expect(r.allSatisfy { $0.released == 1 }, "each reports its dependent as released: \(r)")
        #expect(try b.shards().map(\.waiting) == [0, 0, 0, 1])
        #expect(try b.claim().map(\.shardIndex) == [2])
    }

    @Test("A dependency that fails for good fails the job: its dependents are cancelled and never claimable")
    func failedDependency() throws {
        let b = try Self.setUp(maxAttempts: 2)
        defer { b.close() }
        let claimed = try b.claim()
        #expect(try b.complete(claimed[1]).accepted)
        // A charged failure that leaves attempts re-queues the dependency; its dependents keep waiting.
        #expect(try b.store.failShard(claimed[0], workerID: b.worker, reason: "boom", failure: .shardError).0 == .requeued)
        #expect(try b.shards().map(\.state) == ["queued", "succeeded", "queued", "queued"])
        let again = try b.claim()
        #expect(again.map(\.shardIndex) == [0])
        let (outcome, _) = try b.store.failShard(again[0], workerID: b.worker, reason: "boom", failure: .shardError)
        #expect(outcome == .jobFailed)
        #expect(try b.shards().map(\.state) == ["failed", "succeeded", "cancelled", "cancelled"])
        #expect(try b.claim().isEmpty)
        let job = try b.db.execute("SELECT state::text AS s, error FROM tessera_jobs WHERE id = $1", [.int(b.job)])
        #expect(job[0, "s"] == "failed")
        #expect(job[0, "error"]?.contains("shard 0 failed after 2 attempts") == true)
    }

    @Test("Cancelling a job cancels its waiting shards too")
    func cancelledJob() throws {
        let b = try Self.setUp()
        defer { b.close() }
        _ = try b.claim()
        let cancelled = try #require(try b.store.cancelJob(b.job))
        #expect(cancelled.leased.map(\.ref.shardIndex) == [0, 1])
        #expect(try b.shards().map(\.state) == ["cancelled", "cancelled", "cancelled", "cancelled"])
        #expect(try b.claim().isEmpty)
    }

    @Test("shard.inputs reads the dependencies' summaries and registered result blobs, in dependency order")
    func inputs() throws {
        let b = try Self.setUp()
        defer { b.close() }
        let claimed = try b.claim()
        let sha = String(repeating: "cd", count: 32)
        #expect(try b.store.registerBlob(claimed[1], workerID: b.worker, kind: "result", step: 10, sha256: sha, size: 3, path: "cd/x"))
        _ = try b.complete(claimed[0], summary: "{\"value\": 1}", sha: String(repeating: "ef", count: 32))
        _ = try b.complete(claimed[1], summary: "{\"value\": 2}", sha: sha)
        let inputs = try #require(try b.store.shardInputs(jobID: b.job, shard: 2))
        #expect(inputs.map(\.shardIndex) == [0, 1])
        #expect(inputs.map(\.state) == ["succeeded", "succeeded"])
        #expect(inputs.map(\.summary) == ["{\"value\": 1}", "{\"value\": 2}"])
        // Shard 0 named a sha256 it never transferred: no result, as the merge would see it.
        #expect(inputs.map(\.resultSHA256) == [nil, sha])
        #expect(try b.store.shardInputs(jobID: b.job, shard: 0) == [])
        #expect(try b.store.shardInputs(jobID: b.job, shard: 3)?.map(\.state) == ["queued"])
        #expect(try b.store.shardInputs(jobID: b.job, shard: 9) == nil)
        #expect(try b.store.shardInputs(jobID: b.job + 1, shard: 0) == nil)
    }

    @Test("The schema refuses a dependency on a later shard even if a plan skipped validation; nothing is stored")
    func schemaRefusesForwardDependencies() throws {
        let b = try Self.setUp()
        defer { b.close() }
        let spec = try JobSpec.parse("name: bad\nkind: sampling\nalgorithm: ddim\nseed: 1\nshards: 2\n", file: "bad.yaml")
        let slices = [ShardSlice(slice: .object([:]), totalSteps: 1, dependsOn: [1]), ShardSlice(slice: .object([:]), totalSteps: 1)]
        #expect(throws: PGError.self) { try b.store.submitJob(spec: spec, sourceText: "", slices: slices) }
        #expect(try b.db.execute("SELECT count(*) AS n FROM tessera_jobs").int(0, "n") == 1)
        // The claim's index holds only shards with nothing to wait for.
        let index = try b.db.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'tessera_shards_queued_idx'")
        #expect(index[0, "indexdef"]?.contains("waiting_on = 0") == true)
    }
}
