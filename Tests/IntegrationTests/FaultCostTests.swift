// What two faults cost, through the real coordinator, worker and PostgreSQL (issue 10):
// - the coordinator's data dir full (a tmpfs, filled by the test): first out of bytes, then out of inodes, so both
//   the free-space check before a transfer and an ENOSPC from the file system itself are exercised. Shards finish
//   computing, their uploads are deferred (ACK status deferred) and wait; `workers --json` says the storage is full;
//   no temp file is left; when space is freed the job succeeds with every shard at attempt 1 and 0 failures —
//   nothing was recomputed;
// - an error no retry can fix (a `from_job` whose checkpoints were pruned): the job fails at once, after one attempt, with
//   the reason said once.

import Foundation
import LibPQ
import Testing

enum DataDirMount {
    /// Root can mount a tmpfs here (a container without CAP_SYS_ADMIN cannot).
    static let available: Bool = {
        guard geteuid() == 0 else { return false }
        var template = Array("/tmp/tessera-mnt-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { return false }
        let dir = String(cString: p)
        defer { rmdir(dir) }
        guard run("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir]) == 0 else { return false }
        return run("/bin/umount", [dir]) == 0
    }()

    @discardableResult
    static func run(_ tool: String, _ args: [String]) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return -1 }
        p.waitUntilExit()
        return p.terminationStatus
    }

    static func freeBytes(_ path: String) -> UInt64 {
        var st = statvfs()
        guard statvfs(path, &st) == 0 else { return 0 }
        return UInt64(st.f_bavail) * UInt64(st.f_frsize)
    }
}

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct FaultCostTests {
    /// The coordinator's view of its data dir and the deferral count, from `tessera workers --json`.
    static func storage(_ c: Cluster) throws -> (state: String, deferred: Int, json: [String: Any]) {
        let o = try c.json(["workers"]) as? [String: Any]
        let coord = o?["coordinator"] as? [String: Any] ?? [:]
        let s = coord["storage"] as? [String: Any] ?? [:]
        return (s["state"] as? String ?? "?", coord["chunks_deferred"] as? Int ?? -1, s)
    }

    static func shards(_ c: Cluster, _ job: Int) throws -> [(state: String, attempt: Int64, failures: Int64)] {
        let r = try c.query(
            "SELECT state::text AS s, attempt, failures FROM tessera_shards WHERE job_id = $1 ORDER BY idx", [.int(Int64(job))])
        return (0..<r.rowCount).map { (r[$0, "s"] ?? "?", r.int($0, "attempt") ?? -1, r.int($0, "failures") ?? -1) }
    }

    static func waitUntil(_ what: String, timeout: Double = 90, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw TestFailure("timed out waiting for \(what)")
    }

    static func partFiles(_ data: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "\(data)/tmp")) ?? []).filter { $0.hasSuffix(".part") }
    }

    @Test(.enabled(if: DataDirMount.available, "needs root and a tmpfs mount for the coordinator's data dir"))
    func fullDataDirDefersUploadsAndCostsNoAttempt() throws {
        var mounted: String?
        let c = try Cluster(workers: 1, slots: 1, http: true) { dir in
            let data = "\(dir)/data"
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            // 64 MiB and 64 inodes: room for the store's directories, a few blobs and the filler files.
            guard DataDirMount.run("/bin/mount", ["-t", "tmpfs", "-o", "size=64m,nr_inodes=64", "tmpfs", data]) == 0 else {
                throw TestFailure("mount of a tmpfs at \(data) failed")
            }
            mounted = data
        }
        defer {
            c.shutdown()
            if let m = mounted {
                DataDirMount.run("/bin/umount", [m])
                try? FileManager.default.removeItem(atPath: c.dir)
            }
        }
        let data = "\(c.dir)/data"

        // Out of bytes: leave 2 MiB, less than any transfer needs with the store's 16 MiB reserve.
        let filler = "\(data)/filler"
        let fd = open(filler, O_WRONLY | O_CREAT, 0o644)
        #expect(fd >= 0)
        let size = Int(DataDirMount.freeBytes(data)) - (2 << 20)
        #expect(posix_fallocate(fd, 0, off_t(size)) == 0)
        close(fd)
        #expect(DataDirMount.freeBytes(data) < 3 << 20)

        // Two shards on one slot, each with a kept-samples result blob (160 kB).
        let job = try c.submit(text: ringSpec(shards: 2, samples: 20_000, steps: 10), name: "full.yaml")
        try Self.waitUntil("the coordinator to report its data dir full") { try Self.storage(c).state == "full" }
        let full = try Self.storage(c)
        #expect(full.deferred >= 1)
        #expect((full.json["error"] as? String)?.contains("bytes free") == true, "\(full.json)")
        #expect(full.json["full_since"] is String)
        // Waiting costs nothing: a few deferral rounds later the shard is still at its first attempt, not failed,
        // the second shard was not dispatched to compute more output that cannot be stored, and no temp file is left.
        Thread.sleep(forTimeInterval: 4)
        // (Shard 1 may have been leased ahead with shard 0, before the first deferral; it cannot have started, as
        // shard 0 holds the only slot until its upload is done.)
        let waiting = try Self.shards(c, job)
        #expect(waiting[0].state == "leased" && waiting[0].attempt == 1, "\(waiting)")
        #expect(waiting[1].attempt <= 1 && waiting[1].state != "succeeded", "\(waiting)")
        #expect(waiting.map(\.failures) == [0, 0])
        #expect(try Self.storage(c).deferred > full.deferred)
        #expect(Self.partFiles(data).isEmpty, "\(Self.partFiles(data))")
        let status = try c.cli(["status", String(job)])
        #expect(status.stdout.contains("data dir is full") || status.stderr.contains("data dir is full"), "\(status.stdout)\(status.stderr)")
        // And Prometheus sees it (docs/http.md): the gauge is 1, the deferrals are counted.
        func scrape() throws -> [(name: String, labels: [String: String], value: Double)] {
            try prometheusSamples(try httpGet("\(c.httpURL)/metrics").body)
        }
        let fullScrape = try scrape()
        #expect(fullScrape.first { $0.name == "tessera_storage_full" }?.value == 1)
        #expect((fullScrape.first { $0.name == "tessera_storage_full_seconds" }?.value ?? 0) > 0)
        #expect((fullScrape.first { $0.name == "tessera_chunks_deferred_total" }?.value ?? 0) >= Double(full.deferred))

        // Space is back: the kept result goes up, the second shard runs, the job succeeds at no cost.
        try FileManager.default.removeItem(atPath: filler)
        let wait = try c.cli(["wait", String(job), "--timeout", "120"])
        #expect(wait.status == 0, "\(wait.stdout)\(wait.stderr)\n\(c.log("coordinator"))")
        let after = try Self.shards(c, job)
        #expect(after.map(\.state) == ["succeeded", "succeeded"] && after.map(\.attempt) == [1, 1] && after.map(\.failures) == [0, 0], "\(after)")
        #expect(try Self.storage(c).state == "ok")
        #expect(try scrape().first { $0.name == "tessera_storage_full" }?.value == 0)
        #expect(Self.partFiles(data).isEmpty)

        // Out of inodes: bytes are free, but no file can be created, so the transfer's temp file fails with ENOSPC
        // from the file system itself (not the free-space check).
        var fillers: [String] = []
        while true {
            let path = "\(data)/inode-\(fillers.count)"
            let f = open(path, O_WRONLY | O_CREAT, 0o644)
            if f < 0 {
                #expect(errno == ENOSPC)
                break
            }
            close(f)
            fillers.append(path)
            if fillers.count > 1000 { throw TestFailure("the tmpfs inode limit did not apply") }
        }
        let deferredBefore = try Self.storage(c).deferred
        let second = try c.submit(text: ringSpec(shards: 1, samples: 20_000, steps: 10).replacingOccurrences(of: "seed: 7", with: "seed: 8"), name: "inodes.yaml")
        try Self.waitUntil("the coordinator to report its data dir full (inodes)") { try Self.storage(c).state == "full" }
        let inodes = try Self.storage(c)
        #expect(inodes.deferred > deferredBefore)
        #expect((inodes.json["error"] as? String)?.contains("No space left on device") == true, "\(inodes.json)")
        for f in fillers { try FileManager.default.removeItem(atPath: f) }
        let wait2 = try c.cli(["wait", String(second), "--timeout", "120"])
        #expect(wait2.status == 0, "\(wait2.stdout)\(wait2.stderr)")
        #expect(try Self.shards(c, second).map(\.attempt) == [1])
        #expect(try Self.storage(c).state == "ok")
        #expect(Self.partFiles(data).isEmpty)
    }

    @Test func anErrorNoRetryFixesFailsTheJobAtOnce() throws {
        let c = try Cluster(workers: 1)
        defer { c.shutdown() }
        // A small training job; then its checkpoints are pruned (as an operator cleaning up would), so a sampler that
        // loads its network finds none: an error no retry can fix.
        let target = "{type: gmm, means: [[2,0],[0,2]], stds: [0.5,0.5]}"
        let train = try c.submit(text: """
            name: tiny-train
            kind: sampling
            algorithm: ddpm-train
            seed: 11
            params:
              target: \(target)
              network: {hidden: [16]}
              steps: 20
              batch: 64
              eval_samples: 512
              eval_every: 20
              log_every: 10
            """, name: "train.yaml")
        let trained = try c.cli(["wait", String(train), "--timeout", "120"])
        #expect(trained.status == 0, "\(trained.stdout)\(trained.stderr)")
        let pruned = try c.query("DELETE FROM tessera_checkpoints WHERE job_id = $1", [.int(Int64(train))])
        #expect(pruned.affectedRows >= 1)
        let spec = """
            name: from-a-pruned-job
            kind: sampling
            algorithm: ddim
            seed: 7
            shards: 2
            max_attempts: 5
            depends_on: [\(train)]
            params:
              model: {from_job: \(train)}
              target: \(target)
              sampling_steps: 10
              samples: 8192
            """
        let job = try c.submit(text: spec, name: "learned.yaml")
        let wait = try c.cli(["wait", String(job), "--timeout", "120"])
        #expect(wait.status != 0)
        let r = try c.query("SELECT state::text AS s, error FROM tessera_jobs WHERE id = $1", [.int(Int64(job))])
        #expect(r[0, "s"] == "failed")
        let error = r[0, "error"] ?? ""
        #expect(error.contains("not retryable"), "\(error)")
        // Said once, not wrapped in itself per attempt.
        #expect(error.components(separatedBy: "not retryable").count == 2, "\(error)")
        // One attempt of the failing shard, not max_attempts of them.
        let s = try Self.shards(c, job)
        #expect(s.map(\.attempt).max() == 1, "\(s)")
        #expect(s.map(\.failures).reduce(0, +) >= 1 && s.map(\.failures).allSatisfy { $0 <= 1 }, "\(s)")
    }
}
