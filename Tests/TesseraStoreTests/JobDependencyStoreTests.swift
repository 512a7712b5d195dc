// Jobs that wait on other jobs (`depends_on`, docs/jobspec.md), on a real PostgreSQL: a job whose dependency failed
// or was cancelled fails at once with that reason (it used to wait in `queued` forever), through chains of
// dependents too; a submission naming a missing, failed or cancelled job, or an input job of the wrong algorithm
// (`params.model.from_job`), is refused with nothing stored.

import LibPQ
import TesseraCore
import TesseraModel
import TesseraStore
import TesseraTesting
import Testing

@Suite(.enabled(if: PostgresTestDatabase.isAvailable), .serialized)
struct JobDependencyStoreTests {
    struct Bundle {
        let tdb: PostgresTestDatabase
        let db: PGConnection
        let store: PostgresJobStore
        let worker: Int64

        func close() {
            db.close()
            tdb.drop()
        }

        /// Submits a one-shard job of `algorithm` (sampling kind) depending on `deps`.
        func submit(_ name: String, algorithm: String = "ddim", deps: [Int64] = [], maxAttempts: Int = 1, inputs: [JobInput] = []) throws -> Int64 {
            let depsLine = deps.isEmpty ? "" : "depends_on: [\(deps.map(String.init).joined(separator: ", "))]\n"
            let spec = try JobSpec.parse(
                "name: \(name)\nkind: sampling\nalgorithm: \(algorithm)\nseed: 1\nmax_attempts: \(maxAttempts)\n\(depsLine)",
                file: "\(name).yaml")
            return try store.submitJob(
                spec: spec, sourceText: "", slices: [ShardSlice(slice: .object(["i": .int(0)]), totalSteps: 1)], inputs: inputs)
        }

        func job(_ id: Int64) throws -> (state: String, error: String?, shards: [String]) {
            let j = try db.execute("SELECT state::text AS s, error FROM tessera_jobs WHERE id = $1", [.int(id)])
            let s = try db.execute("SELECT state::text AS s FROM tessera_shards WHERE job_id = $1 ORDER BY idx", [.int(id)])
            return (j[0, "s"]!, j[0, "error"], (0..<s.rowCount).map { s[$0, "s"]! })
        }

        func events(_ id: Int64) throws -> [String] {
            let r = try db.execute("SELECT kind FROM tessera_events WHERE job_id = $1 ORDER BY id", [.int(id)])
            return (0..<r.rowCount).map { r[$0, "kind"]! }
        }
    }

    static func setUp() throws -> Bundle {
        let tdb = try PostgresTestDatabase.create(migrate: true)
        let db = try tdb.connect()
        let store = PostgresJobStore(db: db)
        let worker = try store.registerWorker(
            name: "w", host: "h", slots: 8, capabilities: ["sampling/ddim", "sampling/ddpm-train"])
        return Bundle(tdb: tdb, db: db, store: store, worker: worker)
    }

    @Test("A job whose dependency fails fails at once with the reason, and so do the jobs that wait on it")
    func dependentsOfAFailedJobFail() throws {
        let b = try Self.setUp()
        defer { b.close() }
        let train = try b.submit("train", algorithm: "ddpm-train")
        let sample = try b.submit("sample", deps: [train])
        let chained = try b.submit("chained", deps: [sample])
        let both = try b.submit("both", deps: [train, sample])
        let unrelated = try b.submit("unrelated")

        let lease = try #require(try b.store.claimShards(workerID: b.worker, limit: 1, capabilities: ["sampling/ddpm-train"]).first)
        #expect(lease.ref.jobID == train)
        let (outcome, stop) = try b.store.failShard(lease.ref, workerID: b.worker, reason: "diverged", failure: .shardError)
        #expect(outcome == .jobFailed && stop.isEmpty)

        #expect(try b.job(train) == ("failed", "shard 0 failed after 1 attempts: diverged", ["failed"]))
        #expect(try b.job(sample) == ("failed", "depends_on job \(train) failed: shard 0 failed after 1 attempts: diverged", ["cancelled"]))
        #expect(try b.job(chained) == (
            "failed", "depends_on job \(sample) failed: depends_on job \(train) failed: shard 0 failed after 1 attempts: diverged",
            ["cancelled"]))
        // Two paths to the failure: the direct one is the reason given.
        #expect(try b.job(both).error == "depends_on job \(train) failed: shard 0 failed after 1 attempts: diverged")
        #expect(try b.events(sample) == ["job.submitted", "job.failed"])
        #expect(try b.job(unrelated) == ("queued", nil, ["queued"]))
        // Nothing of theirs is claimable; the unrelated job is.
        #expect(try b.store.claimShards(workerID: b.worker, limit: 10, capabilities: ["sampling/ddim"]).map(\.ref.jobID) == [unrelated])
    }

    @Test("Cancelling a job fails the jobs that depend on it; a merge failure does too")
    func dependentsOfACancelledJobFail() throws {
        let b = try Self.setUp()
        defer { b.close() }
        let first = try b.submit("first")
        let second = try b.submit("second", deps: [first])
        let (state, leased) = try #require(try b.store.cancelJob(first))
        #expect(state == .cancelled && leased.isEmpty)
        #expect(try b.job(second) == ("failed", "depends_on job \(first) was cancelled", ["cancelled"]))
        // Cancelling the (now failed) dependent changes nothing.
        #expect(try b.store.cancelJob(second)?.state == .failed)

        let third = try b.submit("third")
        let fourth = try b.submit("fourth", deps: [third])
        _ = try b.store.failJob(third, error: "merge failed: no result")
        #expect(try b.job(fourth).error == "depends_on job \(third) failed: merge failed: no result")
    }

    @Test("A submission naming a missing, failed or cancelled job, or the wrong kind of input job, stores nothing")
    func submitChecksWhatItDependsOn() throws {
        let b = try Self.setUp()
        defer { b.close() }
        func refusal(_ body: () throws -> Int64) -> String? {
            do {
                _ = try body()
                return nil
            } catch let e as SubmitRefused {
                return e.message
            } catch {
                return "not a SubmitRefused: \(error)"
            }
        }
        let jobsBefore = try b.db.execute("SELECT count(*) AS n FROM tessera_jobs").int(0, "n")
        #expect(refusal { try b.submit("x", deps: [42]) } == "depends_on: job 42 does not exist")

        let cancelled = try b.submit("cancelled")
        _ = try b.store.cancelJob(cancelled)
        #expect(refusal { try b.submit("x", deps: [cancelled]) } == "depends_on: job \(cancelled) was cancelled, so this job could never start")
        let failed = try b.submit("failed")
        _ = try b.store.failJob(failed, error: "boom")
        #expect(refusal { try b.submit("x", deps: [failed]) } == "depends_on: job \(failed) failed, so this job could never start: boom")

        let sampler = try b.submit("sampler")
        let train = try b.submit("train", algorithm: "ddpm-train")
        let input = { (id: Int64) in JobInput(jobID: id, path: "params.model.from_job", algorithms: ["sampling/ddpm-train"]) }
        #expect(refusal { try b.submit("x", deps: [99], inputs: [input(99)]) } == "params.model.from_job: job 99 does not exist")
        #expect(refusal { try b.submit("x", deps: [sampler], inputs: [input(sampler)]) }
            == "params.model.from_job: job \(sampler) is a sampling/ddim job; it must be sampling/ddpm-train")
        let jobsAfter = try b.db.execute("SELECT count(*) AS n FROM tessera_jobs").int(0, "n")
        #expect(jobsAfter == jobsBefore! + 4)  // only the four dependencies themselves

        // A queued or running training job is fine: the sampler waits for it.
        let ok = try b.submit("ok", deps: [train], inputs: [input(train)])
        #expect(try b.job(ok).state == "queued")
    }
}
