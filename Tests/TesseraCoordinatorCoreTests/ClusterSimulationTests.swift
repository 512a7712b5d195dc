// Whole-cluster simulations with no sockets, threads or PostgreSQL: the coordinator's state machine, its writer's
// command runner over the in-memory store (which passes the same contract tests as the PostgreSQL one), and several
// worker state machines, connected by in-memory queues, with simulated time and simulated compute. Deterministic:
// faults (a worker killed, a network partition) happen at chosen instants. The invariants are the guarantees of
// ARCHITECTURE.md: every shard succeeds exactly once, the job is merged once, every metric point of the succeeding
// attempts is stored, and nothing from a superseded attempt is.

import TesseraCoordinatorCore
import TesseraModel
import TesseraProtocol
import TesseraTesting
import TesseraWorkerCore
import Testing

final class SimClock: @unchecked Sendable {
    var now = ContinuousClock.now
}

struct SimWorker {
    var machine: WorkerStateMachine
    var peer: [UInt8]
    var connections = 0
    var connected = false
    var alive = true
    /// Partitioned: frames in both directions are dropped.
    var cut = false
    /// Shards computing: steps done, total, stop requested.
    var computing: [ShardRef: (done: Int64, total: Int64, stop: String?)] = [:]
    var inbox: [Message] = []
    var exited = false
}

struct Cluster {
    let clock = SimClock()
    let store: InMemoryJobStore
    var coordinator: CoordinatorStateMachine
    var workers: [SimWorker] = []
    var toCoordinator: [([UInt8], Message)] = []
    var pendingCommits: [[StoreCommand]] = []
    var merges: [Int64: Int] = [:]
    let tick: Duration = .milliseconds(10)

    init(workers count: Int, slots: Int) {
        let clock = self.clock
        store = InMemoryJobStore(leaseDuration: .seconds(15), now: { clock.now })
        coordinator = CoordinatorStateMachine()
        for i in 0..<count {
            let c = WorkerStateMachine.Configuration(name: "w\(i)", host: "sim", slots: slots, capabilities: ["rl/noop"])
            workers.append(SimWorker(machine: WorkerStateMachine(configuration: c), peer: []))
        }
        for i in workers.indices { performWorker(i, workers[i].machine.handle(.start, now: clock.now)) }
    }

    mutating func submit(shards: Int, steps: Int64) -> Int64 {
        let job = store.submitJob(kind: "rl", algorithm: "noop", slices: (0..<shards).map { ("{\"i\":\($0)}", steps) })
        performCoordinator(coordinator.handle(.queueChanged, now: clock.now))
        return job
    }

    // MARK: Carrying out actions

    mutating func performCoordinator(_ actions: [CoordinatorStateMachine.Action]) {
        for a in actions {
            switch a {
            case .send(let peer, let m):
                if let i = workers.firstIndex(where: { $0.peer == peer && $0.connected && $0.alive && !$0.cut }) {
                    workers[i].inbox.append(m)
                }
            case .commit(let commands):
                pendingCommits.append(commands)
            case .merge(let job):
                // Like the Merger: every completion that finds its job complete asks; a finished job is not merged
                // again.
                if store.job(job)?.state != "succeeded" {
                    merges[job, default: 0] += 1
                    store.finishJob(job)
                }
            case .dropTransfers, .dropTransfer:
                break  // no transfers in the simulation
            case .writeChunk, .serve:
                Issue.record("the simulation sends no blobs or client requests: \(a)")
            }
        }
    }

    mutating func performWorker(_ i: Int, _ actions: [WorkerStateMachine.Action]) {
        for a in actions {
            switch a {
            case .connect:
                workers[i].connections += 1
                workers[i].peer = [UInt8(i), UInt8(workers[i].connections)]
                workers[i].connected = true
                workers[i].inbox = []
            case .disconnect:
                workers[i].connected = false
            case .send(let m):
                if workers[i].connected && !workers[i].cut { toCoordinator.append((workers[i].peer, m)) }
            case .startShard(let d):
                workers[i].computing[d.ref] = (0, d.totalSteps, nil)
            case .stopShard(let ref, let reason):
                workers[i].computing[ref]?.stop = reason
            case .forget(let ref):
                workers[i].computing[ref] = nil
            case .deliverFetch, .deliverReply:
                Issue.record("no fetches in the simulation")
            case .log:
                break
            case .exit:
                workers[i].exited = true
            }
        }
    }

    // MARK: One step of simulated time

    mutating func step() throws {
        clock.now += tick
        // The writer: one batch per step, committed, its outcomes fed back.
        if !pendingCommits.isEmpty {
            let batch = pendingCommits.removeFirst()
            let outcomes = try store.transaction { try StoreCommandRunner.run(batch, on: store, isolated: false) }
            performCoordinator(coordinator.handle(.committed(outcomes), now: clock.now))
        }
        let frames = toCoordinator
        toCoordinator = []
        for (peer, m) in frames { performCoordinator(coordinator.handle(.received(peer, m), now: clock.now)) }
        for i in workers.indices where workers[i].alive && !workers[i].exited {
            let inbox = workers[i].inbox
            workers[i].inbox = []
            for m in inbox { performWorker(i, workers[i].machine.handle(.received(m), now: clock.now)) }
            // Compute: one step per tick, a metric point per step; a stop request ends the shard retryably.
            for ref in workers[i].computing.keys.sorted(by: { $0.shardIndex < $1.shardIndex }) {
                guard var c = workers[i].computing[ref], c.done < c.total || c.stop != nil else { continue }
                var out = WorkerStateMachine.ComputeOutput(step: c.done)
                if let reason = c.stop {
                    out.outcome = .failed(reason: reason, failure: .infrastructure)
                    c.done = c.total
                    c.stop = nil
                } else {
                    c.done += 1
                    out.step = c.done
                    out.points = [MetricPoint(name: "loss", step: c.done, value: Double(ref.shardIndex) + Double(c.done) / 100)]
                    if c.done == c.total { out.outcome = .done(summary: Array("{\"i\":\(ref.shardIndex)}".utf8)) }
                }
                workers[i].computing[ref] = c
                performWorker(i, workers[i].machine.handle(.computed(ref, out), now: clock.now))
            }
            performWorker(i, workers[i].machine.handle(.tick, now: clock.now))
        }
        performCoordinator(coordinator.handle(.tick, now: clock.now))
    }

    /// Steps until the job is merged (or `limit` of simulated time passed); the simulated time it took.
    mutating func run(until job: Int64, limit: Duration = .seconds(120), at fault: (Duration, (inout Cluster) -> Void)? = nil) throws -> Duration {
        let start = clock.now
        var faultDone = fault == nil
        while clock.now - start < limit {
            if !faultDone, let (at, act) = fault, clock.now - start >= at {
                act(&self)
                faultDone = true
            }
            try step()
            if store.job(job)?.state == "succeeded" && faultDone { return clock.now - start }
        }
        return clock.now - start
    }

    /// The guarantees, checked on the store.
    func expectExactlyOnce(job: Int64, shards: Int, steps: Int64, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(store.job(job)?.state == "succeeded", sourceLocation: sourceLocation)
        #expect(merges[job] == 1, "merged exactly once", sourceLocation: sourceLocation)
        let all = store.shards(ofJob: job)
        #expect(all.count == shards, sourceLocation: sourceLocation)
        for (i, s) in all.enumerated() {
            #expect(s.state == "succeeded" && s.successes == 1, "shard \(i): \(s.state), \(s.successes) successes", sourceLocation: sourceLocation)
            #expect(s.summary == "{\"i\":\(i)}", sourceLocation: sourceLocation)
            for step in 1...steps {
                #expect(
                    store.metric(job, Int32(i), "loss", step: step) == Double(i) + Double(step) / 100,
                    "shard \(i) step \(step)", sourceLocation: sourceLocation)
            }
        }
        #expect(store.metricCount == shards * Int(steps), sourceLocation: sourceLocation)
    }
}

@Suite("Cluster simulation: both state machines and the in-memory store")
struct ClusterSimulationTests {
    @Test("A 40-shard job on 3 workers × 2 slots: every shard once, merged once, every metric point stored")
    func healthy() throws {
        var c = Cluster(workers: 3, slots: 2)
        let job = c.submit(shards: 40, steps: 5)
        _ = try c.run(until: job)
        c.expectExactlyOnce(job: job, shards: 40, steps: 5)
        // Credits held: never more than 2 shards computing on a worker (checked on the store: no shard was leased
        // twice at once, which `successes == 1` and the attempts show).
        #expect(c.store.shards(ofJob: job).allSatisfy { $0.attempt == 1 })
        #expect(c.workers.allSatisfy { $0.connections == 1 })
    }

    @Test("A worker killed mid-job: it is declared lost, its shards are re-run elsewhere at attempt + 1, nothing twice")
    func workerKilled() throws {
        var c = Cluster(workers: 2, slots: 2)
        let job = c.submit(shards: 12, steps: 40)
        _ = try c.run(until: job, at: (.milliseconds(700), { cluster in
            cluster.workers[1].alive = false
        }))
        c.expectExactlyOnce(job: job, shards: 12, steps: 40)
        let attempts = c.store.shards(ofJob: job).map(\.attempt)
        #expect(attempts.contains(2), "the killed worker's shards ran again: \(attempts)")
        #expect(c.store.worker(2)?.state == "lost")
    }

    @Test("A worker cut off for good while it keeps computing and retrying: its shards run elsewhere, nothing doubled")
    func cutOff() throws {
        var c = Cluster(workers: 2, slots: 2)
        let job = c.submit(shards: 10, steps: 60)
        _ = try c.run(until: job, at: (.milliseconds(300), { cluster in cluster.workers[0].cut = true }))
        c.expectExactlyOnce(job: job, shards: 10, steps: 60)
    }

    @Test("A partition that heals: reconnect with backoff, READY with the running shards, re-adoption or cancellation")
    func partitionHeals() throws {
        var c = Cluster(workers: 2, slots: 2)
        let job = c.submit(shards: 8, steps: 400)
        // Cut w0 at 0.5 s, heal at 5.5 s (past liveness on both sides).
        var t = Duration.zero
        var healed = false
        while t < .seconds(120) {
            if t >= .milliseconds(500) && !healed { c.workers[0].cut = true }
            if t >= .milliseconds(5500) && !healed {
                c.workers[0].cut = false
                healed = true
            }
            try c.step()
            t += c.tick
            if c.store.job(job)?.state == "succeeded" { break }
        }
        c.expectExactlyOnce(job: job, shards: 8, steps: 400)
        #expect(c.workers[0].connections >= 2, "w0 reconnected")
    }

    @Test("A coordinator restart: uncommitted batches and frames in flight are lost; workers re-register, are re-adopted and replay")
    func coordinatorRestart() throws {
        var c = Cluster(workers: 2, slots: 2)
        let job = c.submit(shards: 6, steps: 200)
        var running: Set<Int32> = []
        _ = try c.run(until: job, at: (.milliseconds(1005), { cluster in
            running = Set(cluster.workers.flatMap { $0.machine.runningShards.map(\.shardIndex) })
            // A new process: fresh state machine, nothing of the old one's memory, queue or writer survives.
            cluster.coordinator = CoordinatorStateMachine()
            cluster.pendingCommits = []
            cluster.toCoordinator = []
            for i in cluster.workers.indices { cluster.workers[i].inbox = [] }
            cluster.performCoordinator(cluster.coordinator.handle(.queueChanged, now: cluster.clock.now))
        }))
        c.expectExactlyOnce(job: job, shards: 6, steps: 200)
        // The shards running at the restart were re-adopted, not re-run: no attempt beyond the first. Shards the old
        // coordinator had leased ahead but never sent are rescued when their lease expires, once.
        #expect(!running.isEmpty)
        for (i, shard) in c.store.shards(ofJob: job).enumerated() {
            #expect(shard.attempt == (running.contains(Int32(i)) ? 1 : shard.attempt) && shard.attempt <= 2, "shard \(i): attempt \(shard.attempt)")
        }
    }

    @Test("Drain: a draining worker finishes its shards, takes no new ones, and leaves; the rest run on the other")
    func drain() throws {
        var c = Cluster(workers: 2, slots: 1)
        let job = c.submit(shards: 6, steps: 30)
        _ = try c.run(until: job, at: (.milliseconds(150), { cluster in
            cluster.performWorker(0, cluster.workers[0].machine.handle(.drainRequested, now: cluster.clock.now))
        }))
        c.expectExactlyOnce(job: job, shards: 6, steps: 30)
        #expect(c.workers[0].exited)
    }
}
