// The worker spool through the real system (issue 10): while the coordinator is down a worker keeps computing, the
// output it cannot send goes to its spool file (not memory), and after the coordinator comes back everything is
// stored once, in order, at no extra attempt. A `noop` shard emits 2,000,000 metric points (56 MB spooled); the
// worker's memory share is 4 MiB (--spool-memory), so without the spool it would stop after about 300,000 points
// (its bounded outbox and unacknowledged batches) and wait for the coordinator.

import Foundation
import LibPQ
import Testing

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct WorkerSpoolTests {
    /// The process's anonymous resident memory (its heap and stacks: where output held in memory would live), not
    /// VmRSS, which also counts the pages of the binary and libraries faulted in as new code paths run.
    static func anonBytes(_ pid: Int32) -> Int {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = s.split(separator: "\n").first(where: { $0.hasPrefix("RssAnon:") }),
            let kb = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
        else { return -1 }
        return kb * 1024
    }

    static func spooled(_ dir: String) -> Int {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return files.filter { $0.hasSuffix(".spool") }.reduce(0) {
            $0 + ((try? FileManager.default.attributesOfItem(atPath: "\(dir)/\($1)")[.size] as? Int) ?? 0)
        }
    }

    @Test func aLongOutageGoesToDiskAndNothingIsLost() throws {
        let c = try Cluster(workers: 0)
        defer { c.shutdown() }
        let spoolDir = "\(c.dir)/w1-data/spool"
        try c.startWorker("w1", extra: ["--data-dir", "\(c.dir)/w1-data", "--spool-memory", "4"])
        try c.waitForWorkers(1)
        // 4,000,000 points (~110 MB of spool): the worker's bounded buffers are a constant few MiB, so the more it
        // spools after the memory sample, the clearer the difference from output held in memory. At 2,000,000 the
        // buffers' own growth came within 2 % of the bound once debug builds computed noop optimised.
        let points = 4_000_000
        let job = try c.submit(text: """
            name: spool
            kind: sampling
            algorithm: noop
            seed: 1
            params: {metrics: \(points)}
            """, name: "spool.yaml")
        // Running and streaming: the first points are stored.
        func stored() throws -> Int64 {
            try c.query("SELECT count(*)::int8 AS n FROM tessera_metrics WHERE job_id = $1", [.int(Int64(job))]).int(0, "n") ?? -1
        }
        let deadline = Date().addingTimeInterval(60)
        while try stored() == 0 {
            guard Date() < deadline else { throw TestFailure("no metric point stored: \(c.log("w1"))") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        guard let pid = c.workers["w1"]?.processIdentifier else { throw TestFailure("no worker process") }
        c.stopCoordinator(SIGKILL)
        let atKill = try stored()
        #expect(atKill < Int64(points) / 2, "the shard was nearly done before the coordinator went: \(atKill) points")

        // The coordinator is gone; the worker goes on and spools. Wait until it has computed everything: the spool
        // stops growing past the size of the points it could not send.
        // Memory is sampled once the spool holds 20 MB: by then the worker's bounded buffers (the shard channel's
        // 200,000-point outbox, the unacknowledged batches, the 4 MiB memory share) have filled, so what it grows by
        // from there on is what it holds per point computed.
        var last = -1
        var still = 0
        var mid: (spooled: Int, anon: Int)? = nil
        let computeDeadline = Date().addingTimeInterval(120)
        while still < 10 {
            guard Date() < computeDeadline else { throw TestFailure("the spool did not settle: \(Self.spooled(spoolDir)) bytes") }
            Thread.sleep(forTimeInterval: 0.2)
            let now = Self.spooled(spoolDir)
            if mid == nil && now >= 20_000_000 { mid = (now, Self.anonBytes(pid)) }
            still = now == last && now > 0 ? still + 1 : 0
            last = now
        }
        let spooled = Self.spooled(spoolDir)
        let anonAfter = Self.anonBytes(pid)
        // 28 bytes per point on disk: well past what memory would have held before the computation waited.
        #expect(spooled > 40_000_000, "spooled only \(spooled) bytes")
        // And not in memory: held there, the points spooled after the sample would take more than their file bytes
        // (48 bytes a point against 28); the worker's heap grew by less than half of those bytes.
        guard let mid else { throw TestFailure("the spool never reached 20 MB: \(spooled) bytes") }
        print("spool: \(spooled) bytes; anonymous memory \(mid.anon >> 20) MiB at \(mid.spooled) bytes spooled, \(anonAfter >> 20) MiB at the end")
        #expect(anonAfter - mid.anon < (spooled - mid.spooled) / 2,
            "anonymous memory \(mid.anon) -> \(anonAfter) while the spool grew \(mid.spooled) -> \(spooled) bytes")

        // Back: everything arrives, once, from the same attempt.
        try c.startCoordinator()
        let wait = try c.cli(["wait", String(job), "--timeout", "240"])
        #expect(wait.status == 0, "\(wait.stdout)\(wait.stderr)\n\(c.log("w1"))")
        let r = try c.query(
            "SELECT count(*)::int8 AS n, count(DISTINCT step)::int8 AS d, min(step) AS lo, max(step) AS hi, bool_and(value = step::float8) AS exact FROM tessera_metrics WHERE job_id = $1",
            [.int(Int64(job))])
        #expect(r.int(0, "n") == Int64(points) && r.int(0, "d") == Int64(points))
        #expect(r.int(0, "lo") == 1 && r.int(0, "hi") == Int64(points))
        #expect(r[0, "exact"] == "t")
        let shard = try c.query("SELECT attempt, failures FROM tessera_shards WHERE job_id = $1", [.int(Int64(job))])
        #expect(shard.int(0, "attempt") == 1 && shard.int(0, "failures") == 0, "\(c.log("w1"))")
        // The spool file went with the shard.
        let gone = Date().addingTimeInterval(10)
        while Self.spooled(spoolDir) > 0 && Date() < gone { Thread.sleep(forTimeInterval: 0.1) }
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: spoolDir)) ?? []).filter { $0.hasSuffix(".spool") }.isEmpty)
        print("spool test: \(atKill) points stored at the kill, \(spooled) bytes spooled, worker heap \(mid.anon >> 20) MiB at \(mid.spooled >> 20) MiB spooled, \(anonAfter >> 20) MiB at the end")
    }
}
