// Issue 11's `tessera logs` and `tessera metrics --follow` through the real coordinator, PostgreSQL and worker
// processes: a training shard killed mid-run and resumed elsewhere leaves the log of both attempts, in order; both
// followers, started before the first point, print every line and point exactly once and end when the job does.

import Foundation
import LibPQ
import Testing

/// `tessera ARGS --coordinator …` in the background, stdout and stderr to their own files.
final class Follower {
    let process = Process()
    let out: String
    let err: String

    init(_ c: Cluster, _ args: [String], name: String) throws {
        out = "\(c.dir)/\(name).out"
        err = "\(c.dir)/\(name).err"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        _ = FileManager.default.createFile(atPath: err, contents: nil)
        process.executableURL = URL(fileURLWithPath: IntegrationEnv.binary)
        process.arguments = args + ["--coordinator", c.endpoint]
        process.standardOutput = FileHandle(forWritingAtPath: out)
        process.standardError = FileHandle(forWritingAtPath: err)
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    /// Waits for it to exit by itself (true), or gives up after `seconds` and kills it (false).
    func waitForExit(seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            return false
        }
        return true
    }

    var stdout: String { (try? String(contentsOfFile: out, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: err, encoding: .utf8)) ?? "" }
}

func jsonLines(_ text: String) throws -> [[String: Any]] {
    try text.split(separator: "\n").map {
        guard let o = try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] else {
            throw TestFailure("not a JSON object: \($0)")
        }
        return o
    }
}

@Suite(
    .serialized,
    .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct ShardLogsTests {
    static let victim = """
        name: rloo-logs
        kind: rl
        algorithm: rloo
        seed: 5
        checkpoint_every: 200
        params:
          problem: {contexts: 32, vocab: 16, length: 1}
          beta: 0.5
          num_generations: 16
          steps: 12000
          learning_rate: 0.01
          log_every: 10
        """

    @Test func logsOfAKilledAndResumedShardAndFollowersThatEndWithTheJob() throws {
        let c = try Cluster(workers: 2, http: true)
        defer { c.shutdown() }
        let job = try c.submit(text: Self.victim, name: "victim.yaml")
        // Both followers start before the shard has stored anything, and keep polling through the kill.
        let logs = try Follower(c, ["logs", String(job), "--follow", "--jsonl", "--interval", "0.2"], name: "logs-follow")
        let metrics = try Follower(c, ["metrics", String(job), "--follow", "--jsonl", "--interval", "0.2"], name: "metrics-follow")
        var holder: String?
        let deadline = Date().addingTimeInterval(300)
        while Date() < deadline, holder == nil {
            // A checkpoint past step 400, and attempt 1's first lines stored: a worker batches its lines for up to
            // 0.5 s, and lines not yet sent when it is killed are lost with it (they are not output a result needs).
            let r = try c.query(
                """
                SELECT w.name FROM tessera_shards s JOIN tessera_workers w ON w.id = s.worker_id
                WHERE s.job_id = $1 AND s.state = 'leased' AND s.checkpoint_step >= 400
                  AND EXISTS (SELECT 1 FROM tessera_shard_logs l WHERE l.job_id = s.job_id AND l.shard_idx = s.idx AND l.attempt = 1)
                """, [.int(Int64(job))])
            if r.rowCount == 1 { holder = r[0, "name"] }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let victim = try #require(holder, "no checkpoint appeared:\n\(c.log("coordinator"))")
        c.signalWorker(victim, SIGKILL)
        let wait = try c.cli(["wait", String(job), "--timeout", "900"])
        #expect(wait.status == 0, "\(wait.stderr)\n\(c.log("coordinator"))")
        let attempt = try #require(try c.query("SELECT attempt FROM tessera_shards WHERE job_id = $1", [.int(Int64(job))]).int(0, "attempt"))
        #expect(attempt >= 2, "the shard was leased again")
        let resumeStep = try #require(try c.query(
            "SELECT max(step) AS step FROM tessera_checkpoints WHERE job_id = $1 AND kind = 'checkpoint' AND attempt = 1",
            [.int(Int64(job))]).int(0, "step"))

        // The followers end by themselves once the job has finished, with status 0.
        #expect(logs.waitForExit(seconds: 120), "logs --follow did not end: \(logs.stderr)")
        #expect(metrics.waitForExit(seconds: 120), "metrics --follow did not end: \(metrics.stderr)")
        #expect(logs.process.terminationStatus == 0, "\(logs.stderr)")
        #expect(metrics.process.terminationStatus == 0, "\(metrics.stderr)")

        // The stored log: ids increasing, attempt 1 first, then the resumed attempt with its milestones.
        let final = try c.cli(["logs", String(job), "--jsonl"])
        #expect(final.status == 0, "\(final.stderr)")
        let lines = try jsonLines(final.stdout)
        let ids = lines.compactMap { $0["id"] as? Int }
        #expect(ids.count == lines.count && ids == ids.sorted() && Set(ids).count == ids.count)
        let attempts = lines.compactMap { $0["attempt"] as? Int }
        #expect(attempts == attempts.sorted(), "attempt 1's lines come before the resumed attempt's")
        #expect(Set(attempts) == Set([1, Int(attempt)]))
        func messages(_ a: Int) -> [String] { lines.filter { $0["attempt"] as? Int == a }.compactMap { $0["message"] as? String } }
        #expect(messages(1).first?.hasPrefix("leased by \(victim): attempt 1 of rl/rloo, from step 0 of 12000") == true, "\(messages(1))")
        #expect(messages(1).contains { $0.contains("training from the reference policy") })
        let last = messages(Int(attempt))
        #expect(last.first?.hasSuffix("resuming from the checkpoint at step \(resumeStep) of 12000") == true, "\(last)")
        #expect(last.contains { $0.contains("resumed from the checkpoint at step \(resumeStep) of 12000") }, "\(last)")
        #expect(last.contains { $0.contains("trained, KL to reference") })
        #expect(last.last == "computation finished at step 12000; sending its outputs")
        #expect(!messages(1).contains { $0.hasPrefix("computation finished") }, "the killed attempt never finished")
        // The follower printed exactly the stored lines, once each.
        #expect(logs.stdout == final.stdout)

        // Plain lines: `shard S attempt A  TIME  LEVEL  message`.
        let plain = try c.cli(["logs", String(job), "--shard", "0"])
        let first = try #require(plain.stdout.split(separator: "\n").first.map(String.init))
        #expect(first.wholeMatch(of: /shard 0 attempt 1  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  info     leased by .*/) != nil, "\(first)")
        #expect(plain.stdout.split(separator: "\n").count == lines.count)

        // metrics --follow printed every stored point exactly once (a point the resumed attempt rewrote is the same
        // point: it keeps the commit number it was first stored with).
        func key(_ o: [String: Any]) -> String { "\(o["shard"]!)/\(o["name"]!)/\(o["step"]!)/\(o["value"]!)" }
        let followed = try jsonLines(metrics.stdout).map(key)
        let stored = try jsonLines(try c.cli(["metrics", String(job), "--jsonl"]).stdout).map(key)
        #expect(!stored.isEmpty)
        #expect(followed.count == stored.count, "followed \(followed.count) points, stored \(stored.count)")
        #expect(Set(followed).count == followed.count, "no point twice")
        #expect(Set(followed) == Set(stored))

        // The same lines through the HTTP JSON API, paged by `after`.
        var after = 0
        var viaHTTP: [Int] = []
        while true {
            let page = try httpGet("\(c.httpURL)/api/v1/jobs/\(job)/logs?limit=7&after=\(after)").json()
            let got = (page["logs"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? Int }
            viaHTTP += got
            after = try #require(page["next"] as? Int)
            if page["more"] as? Bool != true { break }
        }
        #expect(viaHTTP == ids)
        #expect(try httpGet("\(c.httpURL)/api/v1/jobs/\(job)/logs?shard=3").status == 404)

        // Clear errors for what does not exist.
        let noShard = try c.cli(["logs", String(job), "--shard", "3"])
        #expect(noShard.status == 4 && noShard.stderr.contains("job \(job) has no shard 3 (it has 1 shard, 0-0)"), "\(noShard.stderr)")
        let noJob = try c.cli(["logs", "99999"])
        #expect(noJob.status == 4 && noJob.stderr.contains("no job 99999"), "\(noJob.stderr)")
        let noMetricsShard = try c.cli(["metrics", String(job), "--follow", "--shard", "3"])
        #expect(noMetricsShard.status == 4 && noMetricsShard.stderr.contains("has no shard 3"), "\(noMetricsShard.stderr)")
    }

    @Test func followersOfANoopJobEndWithItAndSeeEveryPointOnce() throws {
        // Four shards streaming 3,000 points each, followed from the start: every point once, in commit order.
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let job = try c.submit(
            text: """
                name: follow-noop
                kind: sampling
                algorithm: noop
                seed: 1
                shards: 4
                params: {metrics: 3000, sleep_ms: 300}
                """, name: "noop.yaml")
        let metrics = try Follower(c, ["metrics", String(job), "--follow", "--csv", "--interval", "0.1"], name: "metrics-follow")
        let logs = try Follower(c, ["logs", String(job), "--follow", "--interval", "0.1"], name: "logs-follow")
        #expect(try c.cli(["wait", String(job), "--timeout", "600"]).status == 0)
        #expect(metrics.waitForExit(seconds: 120), "metrics --follow did not end: \(metrics.stderr)")
        #expect(logs.waitForExit(seconds: 120), "logs --follow did not end: \(logs.stderr)")
        #expect(metrics.process.terminationStatus == 0 && logs.process.terminationStatus == 0)
        let rows = metrics.stdout.split(separator: "\n").map(String.init)
        #expect(rows.first == "shard,name,step,value")
        #expect(rows.count == 1 + 4 * 3000)
        #expect(Set(rows.dropFirst()).count == 4 * 3000)
        let stored = try c.cli(["metrics", String(job), "--csv"]).stdout.split(separator: "\n").map(String.init)
        #expect(Set(stored) == Set(rows))
        // Each shard's log: leased, then finished, in that order; plain lines.
        let plain = logs.stdout.split(separator: "\n").map(String.init)
        for s in 0..<4 {
            let mine = plain.filter { $0.hasPrefix("shard \(s) attempt 1  ") }
            #expect(mine.count == 2, "\(plain)")
            #expect(mine.first?.contains("leased by ") == true && mine.last?.hasSuffix("computation finished at step 3000; sending its outputs") == true)
        }
    }
}
