// The `JobStore` contract, run against the PostgreSQL store and the in-memory one used by the state-machine
// simulations: the same scenario must give the same outcome, call for call. A difference here means a simulation
// in Tests/TesseraCoordinatorCoreTests would test rules the real store does not have.

import LibPQ
import TesseraCore
import TesseraModel
import TesseraStore
import TesseraTesting
import Testing

/// One store with a job submitted and two workers registered, plus a way to read a shard's state.
final class ContractFixture {
    let store: any JobStore
    let state: (Int64, Int32) -> (state: String, attempt: Int32)
    let close: () -> Void
    let job: Int64
    let w1: Int64
    let w2: Int64
    /// A shard's stored log lines, oldest first: (attempt, message).
    var logs: (Int64, Int32) -> [(attempt: Int32, message: String)] = { _, _ in [] }

    init(store: any JobStore, job: Int64, state: @escaping (Int64, Int32) -> (String, Int32), close: @escaping () -> Void) throws {
        self.store = store
        self.job = job
        self.state = state
        self.close = close
        w1 = try store.registerWorker(name: "w1", host: "h", slots: 4, capabilities: ["sampling/ddim"])
        w2 = try store.registerWorker(name: "w2", host: "h", slots: 4, capabilities: ["sampling/ddim"])
    }

    enum Backend: String, CaseIterable, CustomTestStringConvertible {
        case postgres, memory
        var testDescription: String { rawValue }
        static var available: [Backend] { PostgresTestDatabase.isAvailable ? [.postgres, .memory] : [.memory] }
    }

    static func make(_ backend: Backend, shards: Int, maxAttempts: Int = 2) throws -> ContractFixture {
        switch backend {
        case .memory:
            let m = InMemoryJobStore()
            let job = m.submitJob(
                kind: "sampling", algorithm: "ddim", slices: (0..<shards).map { ("{\"i\":\($0)}", 10) }, maxAttempts: maxAttempts)
            let f = try ContractFixture(
                store: m, job: job, state: { j, i in (m.shard(j, i)!.state, m.shard(j, i)!.attempt) }, close: {})
            f.logs = { j, i in m.logLines(job: j, shard: i).map { ($0.attempt, $0.line.message) } }
            return f
        case .postgres:
            let tdb = try PostgresTestDatabase.create(migrate: true)
            let db = try tdb.connect()
            let store = PostgresJobStore(db: db)
            let spec = try JobSpec.parse(
                "name: contract\nkind: sampling\nalgorithm: ddim\nseed: 1\nshards: \(shards)\nmax_attempts: \(maxAttempts)\n",
                file: "contract.yaml")
            let slices = (0..<shards).map { ShardSlice(slice: .object(["i": .int($0)]), totalSteps: 10) }
            let job = try store.submitJob(spec: spec, sourceText: "", slices: slices)
            let f = try ContractFixture(
                store: store, job: job,
                state: { j, i in
                    let r = try! db.execute(
                        "SELECT state::text AS s, attempt FROM tessera_shards WHERE job_id = $1 AND idx = $2",
                        [.int(j), .int(Int64(i))])
                    return (r[0, "s"]!, Int32(r.int(0, "attempt")!))
                },
                close: {
                    db.close()
                    tdb.drop()
                })
            f.logs = { j, i in
                let r = try! db.execute(
                    "SELECT attempt, message FROM tessera_shard_logs WHERE job_id = $1 AND shard_idx = $2 ORDER BY id",
                    [.int(j), .int(Int64(i))])
                return (0..<r.rowCount).map { (Int32(r.int($0, "attempt")!), r[$0, "message"]!) }
            }
            return f
        }
    }

    func ref(_ i: Int32, attempt: Int32 = 1) -> ShardRef { ShardRef(jobID: job, shardIndex: i, attempt: attempt) }
}

@Suite("JobStore contract (PostgreSQL and in-memory)", .serialized)
struct JobStoreContractTests {
    @Test("Claims: shard order, a new attempt each, only for capable workers, never past the limit", arguments: ContractFixture.Backend.available)
    func claims(_ backend: ContractFixture.Backend) throws {
        let f = try ContractFixture.make(backend, shards: 3)
        defer { f.close() }
        #expect(try f.store.claimShards(workerID: f.w1, limit: 5, capabilities: ["rl/rloo"]).isEmpty)
        let first = try f.store.claimShards(workerID: f.w1, limit: 2, capabilities: ["sampling/ddim"])
        #expect(first.map(\.ref) == [f.ref(0), f.ref(1)])
        #expect(first.map(\.totalSteps) == [10, 10] && first.allSatisfy { $0.kind == "sampling" && $0.algorithm == "ddim" })
        let rest = try f.store.claimShards(workerID: f.w2, limit: 5, capabilities: ["sampling/ddim"])
        #expect(rest.map(\.ref) == [f.ref(2)])
        #expect(try f.store.claimShards(workerID: f.w2, limit: 5, capabilities: ["sampling/ddim"]).isEmpty)
        #expect(f.state(f.job, 2) == ("leased", 1))
    }

    @Test("Claims of one batch, many workers at once: the outcome of running them one after another", arguments: ContractFixture.Backend.available)
    func bulkClaims(_ backend: ContractFixture.Backend) throws {
        let f = try ContractFixture.make(backend, shards: 7)
        defer { f.close() }
        let ddim = ["sampling/ddim"]
        let claimed = try f.store.claimShards([
            (f.w1, 2, ddim), (f.w2, 0, ddim), (f.w2, 3, ddim),  // one run of equal capabilities
            (f.w1, 4, ["rl/rloo"]),  // a run that can claim nothing
            (f.w1, 5, ddim), (f.w2, 5, ddim),  // the rest of the queue, then nothing
        ])
        #expect(claimed.map { $0.map(\.ref.shardIndex) } == [[0, 1], [], [2, 3, 4], [], [5, 6], []])
        #expect(claimed.joined().allSatisfy { $0.ref.attempt == 1 })
        // Each shard is leased to the worker whose request got it: only that worker may complete it.
        let done = try f.store.completeShards([
            (f.ref(2), f.w1, "{}", nil), (f.ref(2), f.w2, "{}", nil), (f.ref(5), f.w2, "{}", nil), (f.ref(5), f.w1, "{}", nil),
        ])
        #expect(done.map(\.accepted) == [false, true, false, true])
        #expect(f.state(f.job, 6) == ("leased", 1))
    }

    @Test("An unsent lease handed back: queued at its old attempt, so the next claim reuses the number; fenced on holder and attempt", arguments: ContractFixture.Backend.available)
    func unlease(_ backend: ContractFixture.Backend) throws {
        let f = try ContractFixture.make(backend, shards: 2)
        defer { f.close() }
        let ddim = ["sampling/ddim"]
        #expect(try f.store.claimShards(workerID: f.w1, limit: 2, capabilities: ddim).map(\.ref) == [f.ref(0), f.ref(1)])
        #expect(try !f.store.unleaseShard(f.ref(1), workerID: f.w2), "not w2's lease")
        #expect(try !f.store.unleaseShard(f.ref(1, attempt: 2), workerID: f.w1), "not the current attempt")
        #expect(try f.store.unleaseShard(f.ref(1), workerID: f.w1))
        #expect(f.state(f.job, 1) == ("queued", 0))
        #expect(try !f.store.unleaseShard(f.ref(1), workerID: f.w1), "already back")
        #expect(try f.store.claimShards(workerID: f.w2, limit: 2, capabilities: ddim).map(\.ref) == [f.ref(1)])
        // Only the new holder may finish it.
        #expect(try f.store.completeShards([(f.ref(1), f.w1, "{}", nil), (f.ref(1), f.w2, "{}", nil)]).map(\.accepted) == [false, true])
    }

    @Test("Fencing: metrics, DONE, FAILED and blobs only from the leaseholder's current attempt", arguments: ContractFixture.Backend.available)
    func fencing(_ backend: ContractFixture.Backend) throws {
        let f = try ContractFixture.make(backend, shards: 2)
        defer { f.close() }
        _ = try f.store.claimShards(workerID: f.w1, limit: 2, capabilities: ["sampling/ddim"])
        let p = [MetricPoint(name: "loss", step: 1, value: 0.5)]
        #expect(try f.store.ingestMetrics([(f.ref(0), f.w2, p), (f.ref(0, attempt: 2), f.w1, p), (f.ref(0), f.w1, p)]) == [false, false, true])
        let sha = String(repeating: "0", count: 64)
        #expect(try f.store.registerBlob(f.ref(0), workerID: f.w2, kind: "checkpoint", step: 1, sha256: sha, size: 1, path: "/x") == false)
        #expect(try f.store.registerBlob(f.ref(0), workerID: f.w1, kind: "checkpoint", step: 1, sha256: sha, size: 1, path: "/x"))
        #expect(try f.store.failShard(f.ref(1), workerID: f.w2, reason: "x", failure: .shardError).0 == .rejected)
        let done = try f.store.completeShards([
            (f.ref(0), f.w2, "{}", nil), (f.ref(0), f.w1, "{\"a\":1}", nil), (f.ref(0), f.w1, "{}", nil),
        ])
        #expect(done.map(\.accepted) == [false, true, false])
        #expect(done.map(\.jobComplete) == [false, false, false])
        let last = try f.store.completeShards([(f.ref(1), f.w1, "not json", nil)])
        #expect(last.map(\.accepted) == [true] && last.map(\.jobComplete) == [true])
        #expect(f.state(f.job, 0) == ("succeeded", 1) && f.state(f.job, 1) == ("succeeded", 1))
    }

    @Test("Logs: only from the leaseholder's current attempt; a replayed batch is stored once; the newest lines per shard are kept", arguments: ContractFixture.Backend.available)
    func logs(_ backend: ContractFixture.Backend) throws {
        let f = try ContractFixture.make(backend, shards: 2)
        defer { f.close() }
        _ = try f.store.claimShards(workerID: f.w1, limit: 2, capabilities: ["sampling/ddim"])
        func batch(_ ref: ShardRef, _ w: Int64, _ seq: UInt64, _ texts: [String]) -> ShardLogBatch {
            ShardLogBatch(ref: ref, workerID: w, sequence: seq, lines: texts.map { LogLine(time: 1, level: .info, message: $0) })
        }
        #expect(try f.store.ingestLogs([
            batch(f.ref(0), f.w2, 0, ["foreign"]), batch(f.ref(0, attempt: 2), f.w1, 0, ["stale"]),
            batch(f.ref(0), f.w1, 0, ["a", "b"]), batch(f.ref(1), f.w1, 0, ["other shard"]),
        ]) == [false, false, true, true])
        // A replay (same attempt and sequence) is accepted and not stored again; the next batch follows.
        #expect(try f.store.ingestLogs([batch(f.ref(0), f.w1, 0, ["a", "b"]), batch(f.ref(0), f.w1, 1, ["c"])]) == [true, true])
        #expect(f.logs(f.job, 0).map(\.message) == ["a", "b", "c"])
        #expect(f.logs(f.job, 1).map(\.message) == ["other shard"])
        // Retention: the shard keeps its newest lines, the other shard's are untouched.
        let n = ShardLogRetention.linesPerShard
        let many = (0..<n).map { "line \($0)" }
        #expect(try f.store.ingestLogs([batch(f.ref(0), f.w1, 2, many)]) == [true])
        let kept = f.logs(f.job, 0).map(\.message)
        #expect(kept.count == n && kept.first == "line 0" && kept.last == "line \(n - 1)")
        #expect(f.logs(f.job, 1).count == 1)
        // Once the shard is no longer leased (it succeeded), its attempt's lines are refused.
        #expect(try f.store.completeShards([(f.ref(1), f.w1, "{}", nil)]).map(\.accepted) == [true])
        #expect(try f.store.ingestLogs([batch(f.ref(1), f.w1, 1, ["late"])]) == [false])
    }

    @Test("Failures: retryable ones cost no attempt; out of attempts the job fails and its other leases come back", arguments: ContractFixture.Backend.available)
    func failures(_ backend: ContractFixture.Backend) throws {
        let f = try ContractFixture.make(backend, shards: 3, maxAttempts: 2)
        defer { f.close() }
        _ = try f.store.claimShards(workerID: f.w1, limit: 1, capabilities: ["sampling/ddim"])
        _ = try f.store.claimShards(workerID: f.w2, limit: 1, capabilities: ["sampling/ddim"])
        #expect(try f.store.failShard(f.ref(0), workerID: f.w1, reason: "lost gpu", failure: .infrastructure) == (.requeued, []))
        #expect(f.state(f.job, 0) == ("queued", 1))
        #expect(try f.store.claimShards(workerID: f.w1, limit: 1, capabilities: ["sampling/ddim"]).map(\.ref) == [f.ref(0, attempt: 2)])
        #expect(try f.store.failShard(f.ref(0, attempt: 2), workerID: f.w1, reason: "bug", failure: .shardError) == (.requeued, []))
        #expect(try f.store.claimShards(workerID: f.w1, limit: 1, capabilities: ["sampling/ddim"]).map(\.ref) == [f.ref(0, attempt: 3)])
        let (outcome, stop) = try f.store.failShard(f.ref(0, attempt: 3), workerID: f.w1, reason: "bug", failure: .shardError)
        #expect(outcome == .jobFailed)
        #expect(stop == [Lease(ref: f.ref(1), workerID: f.w2)])
        #expect(f.state(f.job, 0).state == "failed" && f.state(f.job, 1).state == "cancelled" && f.state(f.job, 2).state == "cancelled")
        #expect(try f.store.claimShards(workerID: f.w1, limit: 5, capabilities: ["sampling/ddim"]).isEmpty)
    }

    @Test("A permanent failure fails the job at once, attempts left or not, and its other leases come back", arguments: ContractFixture.Backend.available)
    func permanentFailure(_ backend: ContractFixture.Backend) throws {
        let f = try ContractFixture.make(backend, shards: 3, maxAttempts: 5)
        defer { f.close() }
        _ = try f.store.claimShards(workerID: f.w1, limit: 1, capabilities: ["sampling/ddim"])
        _ = try f.store.claimShards(workerID: f.w2, limit: 1, capabilities: ["sampling/ddim"])
        // Fenced like any other report: not the holder, nothing happens.
        #expect(try f.store.failShard(f.ref(0), workerID: f.w2, reason: "bad slice", failure: .permanent).0 == .rejected)
        let (outcome, stop) = try f.store.failShard(f.ref(0), workerID: f.w1, reason: "bad slice", failure: .permanent)
        #expect(outcome == .jobFailed)
        #expect(stop == [Lease(ref: f.ref(1), workerID: f.w2)])
        #expect(f.state(f.job, 0) == ("failed", 1))
        #expect(f.state(f.job, 1).state == "cancelled" && f.state(f.job, 2).state == "cancelled")
        #expect(try f.store.claimShards(workerID: f.w1, limit: 5, capabilities: ["sampling/ddim"]).isEmpty)
    }

    @Test("A gone worker's leases are requeued at no cost; re-adoption takes only a still-current attempt", arguments: ContractFixture.Backend.available)
    func requeueAndAdopt(_ backend: ContractFixture.Backend) throws {
        let f = try ContractFixture.make(backend, shards: 2)
        defer { f.close() }
        _ = try f.store.claimShards(workerID: f.w1, limit: 2, capabilities: ["sampling/ddim"])
        #expect(Set(try f.store.requeueShards(ofWorker: f.w1, reason: "lost")) == [f.ref(0), f.ref(1)])
        try f.store.markWorker(f.w1, state: .lost, reason: "lost")
        #expect(try f.store.claimShards(workerID: f.w2, limit: 1, capabilities: ["sampling/ddim"]).map(\.ref) == [f.ref(0, attempt: 2)])
        // w1 comes back still running both at attempt 1: shard 1 is still at that attempt (queued), shard 0 moved on.
        let again = try f.store.registerWorker(name: "w1", host: "h", slots: 4, capabilities: ["sampling/ddim"])
        #expect(try f.store.adoptShards(workerID: again, keys: [f.ref(0), f.ref(1)]) == [f.ref(1)])
        #expect(f.state(f.job, 1) == ("leased", 1))
        // Heartbeats: the stale lease is reported back, the current one renewed.
        let stale = try f.store.renewLeases([(again, [(f.ref(0), 3), (f.ref(1), 4)]), (f.w2, [(f.ref(0, attempt: 2), 1)])])
        #expect(stale == [Lease(ref: f.ref(0), workerID: again)])
        #expect(try f.store.requeueExpiredLeases().isEmpty)
    }

    @Test("A transaction is all or nothing", arguments: ContractFixture.Backend.available)
    func atomic(_ backend: ContractFixture.Backend) throws {
        struct Boom: Error {}
        let f = try ContractFixture.make(backend, shards: 1)
        defer { f.close() }
        #expect(throws: Boom.self) {
            try f.store.transaction {
                _ = try f.store.claimShards(workerID: f.w1, limit: 1, capabilities: ["sampling/ddim"])
                throw Boom()
            }
        }
        #expect(f.state(f.job, 0) == ("queued", 0))
        #expect(try f.store.claimShards(workerID: f.w1, limit: 1, capabilities: ["sampling/ddim"]).map(\.ref) == [f.ref(0)])
    }
}
